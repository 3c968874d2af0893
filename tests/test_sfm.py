"""The SFM equations against hand computations (docs/DESIGN.md §2)."""

import torch
import torch.nn.functional as F

from hf_sfm.methods import ClassMeanMatching, StatisticalFlowMatching, class_means, flow_matching_loss, statistical_flow


def test_flow_matches_hand_computation():
    means = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    expected = torch.tensor(
        [
            [(0.0 + 3.0) / 2 - 1.0, (2.0 + 3.0) / 2 - 0.0],
            [(1.0 + 3.0) / 2 - 0.0, (0.0 + 3.0) / 2 - 2.0],
            [(1.0 + 0.0) / 2 - 3.0, (0.0 + 2.0) / 2 - 3.0],
        ]
    )
    torch.testing.assert_close(statistical_flow(means), expected)


def test_flows_of_all_classes_sum_to_zero_only_up_to_scale():
    means = torch.randn(5, 7)
    # Σ_c F_c = Σ_c (mean_{k≠c} μ_k − μ_c) = Σ μ − Σ μ = 0: the flow is translation invariant.
    torch.testing.assert_close(statistical_flow(means).sum(0), torch.zeros(7), atol=1e-5, rtol=0)
    torch.testing.assert_close(statistical_flow(means + 3.0), statistical_flow(means), atol=1e-5, rtol=0)


def test_class_means_for_ipc_gt_1_average_within_each_class():
    features = torch.tensor([[1.0, 1.0], [3.0, 5.0], [0.0, 2.0], [2.0, 0.0], [10.0, 10.0], [20.0, 30.0]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    torch.testing.assert_close(class_means(features, labels, 3), torch.tensor([[2.0, 3.0], [1.0, 1.0], [15.0, 20.0]]))


def test_flow_matches_hand_computation_for_ipc_gt_1():
    """ipc > 1: class means first, then the flow — not the `C·ipc − 1` divisor of the reference code."""
    torch.manual_seed(0)
    num_classes, ipc, dim = 4, 3, 5
    features = torch.randn(num_classes * ipc, dim)
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    per_class = features.view(num_classes, ipc, dim).mean(1)
    hand = torch.stack([per_class[[k for k in range(num_classes) if k != c]].mean(0) - per_class[c] for c in range(4)])
    ours = statistical_flow(class_means(features, labels, num_classes))
    torch.testing.assert_close(ours, hand)
    # The reference's per-image divisor gives a different (tilted) flow: the test would catch that formula.
    tilted = torch.stack(
        [(features.sum(0) - features[labels == c].sum(0)) / (num_classes * ipc - 1) - per_class[c] for c in range(4)]
    )
    assert not torch.allclose(tilted, hand)


def test_loss_is_one_minus_cosine_of_flattened_flows():
    real, synthetic = torch.randn(3, 4), torch.randn(3, 4)
    expected = 1 - (real.flatten() @ synthetic.flatten()) / (real.norm() * synthetic.norm())
    torch.testing.assert_close(flow_matching_loss(real, synthetic), expected)
    torch.testing.assert_close(flow_matching_loss(real, real * 7.0), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(flow_matching_loss(real, -real), torch.tensor(2.0))


def test_sfm_loss_is_zero_when_synthetic_means_equal_real_means():
    real_means = torch.randn(3, 6)
    method = StatisticalFlowMatching(real_means)
    features = real_means.repeat_interleave(2, dim=0)
    labels = torch.arange(3).repeat_interleave(2)
    loss = method(torch.zeros(6, 3, 4, 4), labels, embed=lambda images: features)
    assert abs(loss.item()) < 1e-6


def test_sfm_decouple_is_mse_between_class_means():
    real_means = torch.randn(3, 6)
    features = torch.randn(6, 6)
    labels = torch.arange(3).repeat_interleave(2)
    loss = ClassMeanMatching(real_means)(torch.zeros(6, 3, 4, 4), labels, embed=lambda images: features)
    torch.testing.assert_close(loss, F.mse_loss(features.view(3, 2, 6).mean(1), real_means))


def test_loss_gradient_reaches_the_features_and_is_first_order():
    real_means = torch.randn(3, 6)
    features = torch.randn(6, 6, requires_grad=True)
    labels = torch.arange(3).repeat_interleave(2)
    loss = StatisticalFlowMatching(real_means)(torch.zeros(6, 3, 4, 4), labels, embed=lambda images: features)
    (gradient,) = torch.autograd.grad(loss, features)
    assert gradient.abs().sum() > 0
