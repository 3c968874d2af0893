"""Memory: backbone gradient checkpointing changes nothing but memory; the memory model predicts measured peaks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_backbone, color_dataset
from transformers import ViTImageProcessor

from hf_sfm import DistillationConfig, Distiller
from hf_sfm.features import FeatureExtractor
from hf_sfm.memory import (
    checkpoint_blocks,
    checkpointed_activation_bytes,
    enable_gradient_checkpointing,
    estimate_sfm_peak_memory,
    parameter_elements,
    saved_activation_bytes,
)
from hf_sfm.preprocessing import ImagePreprocessing

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


def test_distilling_with_gradient_checkpointing_gives_the_same_losses(tmp_path):
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    losses = {}
    for checkpointing in (False, True):
        args = DistillationConfig(
            output_dir=str(tmp_path / str(checkpointing)), num_steps=3, ipc=2, learning_rate=0.05, save_grid=False,
            gradient_checkpointing=checkpointing,
        )  # fmt: skip
        distiller = Distiller(build_backbone("vit"), args, color_dataset(3, 4), image_processor=processor)
        losses[checkpointing] = distiller.train().losses
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-5, atol=1e-6)


def test_the_estimate_divides_every_per_image_term_by_the_number_of_processes():
    common = dict(
        num_classes=1000, ipc=1, image_size=256, crop_size=224, activation_bytes_per_image=70 * 2**20,
        backbone_bytes=330 * 2**20, feature_dim=768,
    )  # fmt: skip
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
    """Peak resident memory of real runs (CPU) against the model of hf_sfm.memory / recipes/README.md."""
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
