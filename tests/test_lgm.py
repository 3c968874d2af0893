"""LGM (docs/DESIGN.md §4): the closed-form head gradient against autograd, the K rounds, the real stream, the
Distiller."""

import functools
import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_sfm_test_home_"))

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import color_dataset, make_distiller
from transformers import ViTConfig, ViTModel

from hf_sfm.data.preprocessing import ImagePreprocessing
from hf_sfm.data.real_images import RealBatchStream, RealImages
from hf_sfm.methods import METHODS, LinearGradientMatching, get_method
from hf_sfm.methods.lgm import gradient_matching_loss, linear_head_gradient

SIZE = 32


def _vit(seed=0):
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    return ViTModel(config, add_pooling_layer=False).eval()


def _dataset(num_classes=3, per_class=6, seed=0):
    return color_dataset(num_classes, per_class, SIZE, seed)


# Each test's LGM Distiller: these settings unless the test says otherwise, on a one-layer ViT.
_distiller = functools.partial(
    make_distiller,
    model=_vit,
    dataset=_dataset,
    method="lgm",
    ipc=1,
    num_steps=4,
    learning_rate=0.05,
    image_size=SIZE,
    pyramid_level_every=2,
    method_kwargs={"rounds": 2},
    save_grid=False,
    logging_steps=0,
)


def _autograd_ce_gradient(features, labels, weight, bias, create_graph=False):
    weight = weight.clone().requires_grad_(True)
    bias = bias.clone().requires_grad_(True)
    loss = F.cross_entropy(features @ weight.T + bias, labels)
    grad_weight, grad_bias = torch.autograd.grad(loss, (weight, bias), create_graph=create_graph)
    return torch.cat([grad_weight, grad_bias.unsqueeze(1)], dim=1)


def test_lgm_is_registered_as_a_method():
    assert METHODS["lgm"] is LinearGradientMatching
    assert get_method("lgm").needs_statistics is False


def test_real_gradient_equals_autograd_cross_entropy_gradient():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(17, 6, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(4, (17,), generator=generator)
    weight = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    closed_form = linear_head_gradient(features, labels, weight, bias)
    assert closed_form.shape == (4, 7)
    torch.testing.assert_close(closed_form, _autograd_ce_gradient(features, labels, weight, bias))


def test_synthetic_gradient_is_second_order_like_autograd_with_create_graph():
    """d(loss)/d(features) through the closed form equals the create_graph=True double backward."""
    generator = torch.Generator().manual_seed(1)
    real = linear_head_gradient(
        torch.randn(9, 5, generator=generator, dtype=torch.float64),
        torch.randint(3, (9,), generator=generator),
        weight := torch.randn(3, 5, generator=generator, dtype=torch.float64) * 0.01,
        bias := torch.zeros(3, dtype=torch.float64),
    )
    synthetic = torch.randn(6, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ours = torch.autograd.grad(
        gradient_matching_loss(real, linear_head_gradient(synthetic, labels, weight, bias)), synthetic
    )
    reference_gradient = _autograd_ce_gradient(synthetic, labels, weight, bias, create_graph=True)
    reference = torch.autograd.grad(gradient_matching_loss(real, reference_gradient), synthetic)
    torch.testing.assert_close(ours[0], reference[0])
    assert ours[0].abs().sum() > 0


def test_reduce_sum_gives_the_gradient_of_the_global_batch():
    """Two "processes" holding halves of a batch, summed, give the gradient of the whole batch."""
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(3, (10,), generator=generator)
    weight = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    bias = torch.zeros(3, dtype=torch.float64)
    other_half = (features[6:], labels[6:])

    def reduce_sum(tensor):  # adds what the other process would contribute
        if tensor.dim() == 0:
            return tensor + len(other_half[0])
        residual = (other_half[0] @ weight.T + bias).softmax(1) - F.one_hot(other_half[1], 3)
        return tensor + torch.cat([residual.T @ other_half[0], residual.sum(0, keepdim=True).T], dim=1)

    split = linear_head_gradient(features[:6], labels[:6], weight, bias, reduce_sum)
    torch.testing.assert_close(split, linear_head_gradient(features, labels, weight, bias))


class _Stream:
    def __init__(self, images, labels):
        self.images, self.labels, self.calls = images, labels, 0

    def __next__(self):
        self.calls += 1
        return self.images, self.labels


def test_forward_uses_k_rounds_and_one_real_batch_and_fresh_heads():
    generator = torch.Generator().manual_seed(3)
    real = _Stream(torch.rand(12, 3, 8, 8, generator=generator), torch.arange(12) % 3)
    method = LinearGradientMatching(3, real, rounds=4, seed=0)
    projection = torch.randn(3 * 64, 5, generator=generator)
    calls = []

    def embed(images):
        calls.append(len(images))
        return images.flatten(1) @ projection

    synthetic = torch.rand(3, 3, 8, 8, generator=generator, requires_grad=True)
    labels = torch.arange(3)
    loss = method(synthetic, labels, embed)
    assert calls == [3, 3, 3, 3, 12]  # K synthetic rounds, then one real batch
    assert real.calls == 1
    loss.backward()
    assert synthetic.grad is not None and synthetic.grad.abs().sum() > 0
    first_head = method.random_head(5, torch.device("cpu"))[0]
    second_head = method.random_head(5, torch.device("cpu"))[0]
    assert not torch.equal(first_head, second_head)
    assert abs(float(first_head.std()) - 0.01) < 0.005


def test_real_stream_is_seeded_and_cached_or_decoded_alike():
    dataset = _dataset()
    preprocessing = ImagePreprocessing(SIZE, SIZE, (0.5,) * 3, (0.5,) * 3)
    cached = RealBatchStream(dataset, preprocessing, 5, "image", "label", seed=7)
    decoded = RealBatchStream(dataset, preprocessing, 5, "image", "label", seed=7, max_cached_bytes=0)
    assert cached.cached and not decoded.cached
    for _ in range(3):
        (a, la), (b, lb) = next(cached), next(decoded)
        assert a.shape == (5, 3, SIZE, SIZE) and a.dtype == torch.float32
        torch.testing.assert_close(a, b)
        assert torch.equal(la, lb)
    # Every streamed image is one of the dataset's images, with its own label.
    bank = RealImages.from_dataset(dataset, preprocessing, "image", "label", progress=False)
    images, labels = next(RealBatchStream(dataset, preprocessing, 4, "image", "label", seed=1))
    for image, label in zip(images, labels):
        match = (bank.images() - image).abs().flatten(1).amax(1) == 0
        assert bool(match.any()) and int(bank.labels[match][0]) == int(label)


def test_real_stream_reads_an_iterable_dataset_endlessly():
    dataset = _dataset(per_class=2).to_iterable_dataset()
    preprocessing = ImagePreprocessing(SIZE, SIZE, (0.5,) * 3, (0.5,) * 3)
    stream = RealBatchStream(dataset, preprocessing, 4, "image", "label", seed=0)
    batches = [next(stream) for _ in range(4)]  # 16 images from a 6-image stream: wraps around
    assert all(images.shape == (4, 3, SIZE, SIZE) for images, _ in batches)


@pytest.fixture(scope="module")
def lgm_run(tmp_path_factory):
    """One LGM distillation at the settings above, trained once; the tests below only read it."""
    distiller = _distiller(tmp_path_factory.mktemp("lgm") / "a")
    return distiller, distiller.train()


def test_distiller_trains_lgm_without_statistics_and_with_the_default_real_batch(lgm_run):
    distiller, output = lgm_run
    assert distiller.statistics is None  # LGM needs no class statistics
    assert output.global_step == 4 and all(0 <= loss <= 2 for loss in distiller.losses)
    method = distiller.create_method()
    assert method.rounds == 2
    assert method.real_batches.batch_size == 1 * 2 * 3  # ipc · K · C
    assert method.real_batches.cached


def test_lgm_distillation_is_deterministic_per_seed(lgm_run, tmp_path):
    first, _ = lgm_run
    second = _distiller(tmp_path / "b")
    second.train()
    assert torch.equal(first.synthetic_images(), second.synthetic_images())
    third = _distiller(tmp_path / "c", seed=1)
    third.train()
    assert not torch.equal(first.synthetic_images(), third.synthetic_images())


@pytest.mark.parametrize("rounds", [1, 2])
def test_lgm_lowers_its_loss(tmp_path, rounds):
    distiller = _distiller(
        tmp_path, method_kwargs={"rounds": rounds}, num_steps=20, parameterization="pixels", learning_rate=0.05
    )
    distiller.train()
    losses = distiller.losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
