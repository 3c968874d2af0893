"""The instrument of issue 12's lever measurements measures what it claims (`benchmarks/transfer_levers.py`): a
wrong one would make a dropped lever look tried."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import _unit_batchnorm
from transformers import EfficientNetConfig, EfficientNetModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from transfer_levers import DepthTaps, ghost_hooks


def _features_and_gradient(model, images, hooks=()):
    images = images.clone().requires_grad_(True)
    features = model(pixel_values=images).pooler_output.flatten(1)
    (features * torch.linspace(-1, 1, features.shape[1])).sum().backward()
    for handle in hooks:
        handle.remove()
    return features.detach(), images.grad


@pytest.fixture
def efficientnet():
    """A tiny random EfficientNet deep enough to have residual blocks (the shared tiny one has none); He-initialised
    convolutions, so that ten blocks of random weights still pass a signal and a gradient."""
    torch.manual_seed(0)
    config = EfficientNetConfig(
        width_coefficient=0.25, depth_coefficient=0.5, hidden_dim=320, image_size=32, hidden_act="relu6"
    )
    model = _unit_batchnorm(EfficientNetModel(config)).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    assert any(block.projection.apply_dropout for block in model.encoder.blocks), "no residual block to test"
    return model


def test_skip_gradient_keeps_the_forward_and_scales_only_the_residual_branches(efficientnet):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    clean = _features_and_gradient(efficientnet, images)
    unit = _features_and_gradient(efficientnet, images, ghost_hooks(efficientnet, "sgm", 1.0, torch.Generator()))
    half = _features_and_gradient(efficientnet, images, ghost_hooks(efficientnet, "sgm", 0.5, torch.Generator()))
    torch.testing.assert_close(unit[1], clean[1])  # γ = 1 is no lever at all
    torch.testing.assert_close(half[0], clean[0])  # the forward pass is untouched...
    assert not torch.allclose(half[1], clean[1], rtol=1e-3, atol=1e-6)  # ...the gradient is not


@pytest.mark.parametrize("lever, value", [("sgm", 0.5), ("skip", 0.3), ("dropout", 0.2)])
def test_model_side_levers_act_only_inside_a_synthetic_step(efficientnet, lever, value):
    """Statistics, centroid init and evaluation run without a gradient: there the backbone must be the real one."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        clean = efficientnet(pixel_values=images).pooler_output
        hooks = ghost_hooks(efficientnet, lever, value, torch.Generator().manual_seed(0))
        hooked = efficientnet(pixel_values=images).pooler_output
    torch.testing.assert_close(hooked, clean)
    stepped = efficientnet(pixel_values=images.clone().requires_grad_(True)).pooler_output
    for handle in hooks:
        handle.remove()
    if lever != "sgm":  # the network itself is perturbed in the step
        assert not torch.allclose(stepped, clean)


def test_depth_taps_pool_the_chosen_blocks_and_end_with_the_output(efficientnet):
    taps = DepthTaps(efficientnet, [0, len(efficientnet.encoder.blocks) - 1])
    output = efficientnet(pixel_values=torch.rand(3, 3, 32, 32)).pooler_output.flatten(1)
    features = taps.features(output)
    taps.remove()
    widths = [efficientnet.encoder.blocks[b].projection.project_conv.out_channels for b in taps.blocks]
    assert [f.shape for f in features] == [torch.Size([3, widths[0]]), torch.Size([3, widths[1]]), output.shape]
    assert features[-1] is output
    efficientnet(pixel_values=torch.rand(1, 3, 32, 32))
    assert taps.pooled[0].shape[0] == 3  # removed: the taps no longer record
