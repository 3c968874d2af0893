"""Memory: backbone gradient checkpointing changes nothing but memory; the memory model predicts measured peaks."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_backbone, color_dataset, make_distiller

from hf_sfm import DistillationConfig
from hf_sfm.backbone.features import FeatureExtractor
from hf_sfm.backbone.memory import (
    checkpoint_blocks,
    checkpointed_activation_bytes,
    enable_gradient_checkpointing,
    estimate_sfm_peak_memory,
    parameter_elements,
    saved_activation_bytes,
)
from hf_sfm.data.preprocessing import ImagePreprocessing

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("family", "block"), [("vit", "ViTLayer"), ("efficientnet", "EfficientNetBlock")])
def test_gradient_checkpointing_keeps_features_and_gradients_and_saves_memory(family, block):
    extractor = FeatureExtractor(build_backbone(family), ImagePreprocessing(32, 32, (0.5,) * 3, (0.5,) * 3))
    images = torch.rand(3, 3, 32, 32, requires_grad=True)
    features = extractor(images)
    (gradient,) = torch.autograd.grad(features.square().sum(), images)
    full = saved_activation_bytes(extractor, 32)

    blocks = enable_gradient_checkpointing(extractor.model)
    assert blocks > 1 and type(checkpoint_blocks(extractor.model)[0]).__name__ == block
    assert enable_gradient_checkpointing(extractor.model) == blocks  # idempotent: blocks are wrapped once
    images = images.detach().requires_grad_()
    checkpointed_features = extractor(images)
    (checkpointed_gradient,) = torch.autograd.grad(checkpointed_features.square().sum(), images)
    assert torch.equal(checkpointed_features, features)
    torch.testing.assert_close(checkpointed_gradient, gradient, rtol=1e-6, atol=1e-8)
    assert saved_activation_bytes(extractor, 32) < full / 2
    with torch.no_grad():  # no graph: the blocks run as they are
        assert torch.equal(extractor(images), features)


# A short SFM run on the tiny ViT; the memory levers below must reproduce it.
_distiller = functools.partial(
    make_distiller, dataset=lambda: color_dataset(3, 4), num_steps=3, ipc=2, learning_rate=0.05, save_grid=False
)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The run without gradient checkpointing or chunks, trained once: the reference both levers are held to."""
    distiller = _distiller(tmp_path_factory.mktemp("plain") / "out")
    distiller.train()
    return torch.tensor(distiller.losses), distiller.synthetic_images()


def test_distilling_with_gradient_checkpointing_gives_the_same_losses(plain_run, tmp_path):
    distiller = _distiller(tmp_path / "out", gradient_checkpointing=True)
    distiller.train()
    torch.testing.assert_close(torch.tensor(distiller.losses), plain_run[0], rtol=1e-5, atol=1e-6)


def _saved_bytes(function) -> int:
    """Bytes autograd keeps for the backward pass while `function` runs (tensors packed by saved-tensor hooks)."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = function()
    return total, result


@pytest.mark.parametrize("family", ["vit", "efficientnet"])
def test_chunked_embedding_gives_the_exact_sfm_gradient_and_keeps_one_chunk_of_graph(family):
    from hf_sfm.backbone.memory import embed_in_chunks
    from hf_sfm.methods.sfm import StatisticalFlowMatching

    extractor = FeatureExtractor(build_backbone(family), ImagePreprocessing(32, 32, (0.5,) * 3, (0.5,) * 3))
    method = StatisticalFlowMatching(torch.randn(3, extractor(torch.rand(1, 3, 32, 32)).shape[1]))
    labels = torch.arange(3).repeat_interleave(4)
    pixels = torch.rand(12, 3, 32, 32)

    def gradient(chunk_size):
        images = pixels.clone().requires_grad_()
        saved, loss = _saved_bytes(
            lambda: method(images, labels, lambda views: embed_in_chunks(extractor, views, chunk_size))
        )
        loss.backward()
        return loss.detach(), images.grad, saved

    loss, reference, full_graph = gradient(None)
    for chunk_size in (1, 5, 12):
        chunked_loss, chunked, graph = gradient(chunk_size)
        torch.testing.assert_close(chunked_loss, loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(chunked, reference, rtol=1e-4, atol=1e-7)
        if chunk_size < 12:  # the forward pass keeps the chunk inputs only, not the backbone's activations
            assert graph < full_graph / 4
    with torch.no_grad():  # without a graph there is nothing to recompute: one plain pass
        assert torch.equal(embed_in_chunks(extractor, pixels, 5), extractor(pixels))


def test_distilling_in_chunks_follows_the_unchunked_run(plain_run, tmp_path):
    distiller = _distiller(tmp_path / "out", embed_chunk_size=2)
    distiller.train()
    torch.testing.assert_close(torch.tensor(distiller.losses), plain_run[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(distiller.synthetic_images(), plain_run[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="embed_chunk_size"):
        DistillationConfig(embed_chunk_size=0)


# ImageNet-1k with a ViT-B-sized backbone at 256 px (224 px crop): the setting of recipes/README.md's predictions.
IMAGENET_VIT_B = dict(
    num_classes=1000, image_size=256, crop_size=224, activation_bytes_per_image=70 * 2**20,
    backbone_bytes=330 * 2**20, feature_dim=768,
)  # fmt: skip


def test_the_estimate_with_chunks_counts_one_chunk_of_activations_and_every_input():
    common = dict(IMAGENET_VIT_B, ipc=10)
    whole, chunked = estimate_sfm_peak_memory(**common), estimate_sfm_peak_memory(**common, embed_chunk_size=64)
    assert whole.activations == 10_000 * 70 * 2**20
    assert chunked.activations == 64 * 70 * 2**20 + 10_000 * 4 * 3 * 224**2
    assert (chunked.static, chunked.state, chunked.decode) == (whole.static, whole.state, whole.decode)


def test_the_estimate_divides_every_per_image_term_by_the_number_of_processes():
    common = dict(IMAGENET_VIT_B, ipc=1)
    one, eight = estimate_sfm_peak_memory(**common), estimate_sfm_peak_memory(**common, num_processes=8)
    assert (one.images_per_process, eight.images_per_process) == (1000, 125)
    assert one.static == eight.static
    for term in ("state", "decode", "activations"):
        assert getattr(one, term) == 8 * getattr(eight, term)
    # 3 · (1² + 2² + … + 128² + 256²) floats per pyramid image; 16 bytes each (value, grad, two Adam moments)
    assert parameter_elements(256) == 3 * 87381 and one.state == 1000 * 16 * 3 * 87381
    assert checkpointed_activation_bytes(full=120, block_inputs=10, num_blocks=12) == 20


@pytest.mark.slow
def test_the_memory_model_predicts_the_measured_peak_at_10_and_100_classes(tmp_path):
    """Peak resident memory of real runs (CPU) against the model of hf_sfm.backbone.memory / recipes/README.md."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    command = [sys.executable, str(REPO / "recipes" / "measure_memory.py"), "sfm", "--num_classes", "10", "100"]
    command += ["--crop", "64", "--image_size", "64", "--steps", "7", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    small, large = (json.loads(line)[0] for line in result.stdout.strip().splitlines())
    assert (small["num_classes"], large["num_classes"]) == (10, 100)
    # The model is per image: the growth from 10 to 100 classes must match it ...
    measured_slope = (large["measured_peak_mib"] - small["measured_peak_mib"]) / 90
    predicted_slope = (large["predicted_peak_mib"] - small["predicted_peak_mib"]) / 90
    assert 0.7 < measured_slope / predicted_slope < 1.3, (small, large)
    # ... and at 100 classes the per-image terms dominate the total.
    assert 0.7 < large["ratio_measured_over_predicted"] < 1.3, large
