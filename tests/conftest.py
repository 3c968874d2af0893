"""Shared fixtures: tiny random backbones of every supported family and small in-memory image datasets.

No test touches the network: the Hub is switched off and `HF_HOME` points at a temporary folder before any
Hugging Face library is imported.
"""

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_sfm_test_home_"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    ConvNextConfig,
    ConvNextModel,
    Dinov2Config,
    Dinov2Model,
    EfficientNetConfig,
    EfficientNetModel,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from hf_sfm import DistillationConfig, Distiller

# Under pytest-xdist (`-n 2`, the README's command) each worker is one process on one core: two torch threads
# per worker would spin against each other, and subprocesses a test starts inherit the one-thread setting.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)

IMAGE_SIZE = 32


def _vit():
    return ViTModel(
        ViTConfig(
            image_size=IMAGE_SIZE,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        add_pooling_layer=False,
    )


def _unit_batchnorm(model):
    """HF initialises BatchNorm scales at N(0, 0.02): through relu6 the activations of a deep random net die out."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
    return model


# family → (builder, expected feature dim). Each model is tiny and random; built under a fixed seed.
TINY_BACKBONES = {
    "vit": (_vit, 32),
    "dinov2": (
        lambda: Dinov2Model(
            Dinov2Config(
                image_size=IMAGE_SIZE,
                patch_size=8,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                mlp_ratio=2,
            )
        ),
        32,
    ),
    "clip": (
        lambda: CLIPVisionModel(
            CLIPVisionConfig(
                image_size=IMAGE_SIZE,
                patch_size=8,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
            )
        ),
        32,
    ),
    "clip_projection": (
        lambda: CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                image_size=IMAGE_SIZE,
                patch_size=8,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                projection_dim=24,
            )
        ),
        24,
    ),
    "resnet": (
        lambda: ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")),
        16,
    ),
    "convnext": (
        lambda: ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)),
        16,
    ),
    "efficientnet": (
        lambda: _unit_batchnorm(
            EfficientNetModel(
                EfficientNetConfig(
                    width_coefficient=0.25,
                    depth_coefficient=0.25,
                    hidden_dim=320,
                    image_size=IMAGE_SIZE,
                    hidden_act="relu6",
                )
            )
        ),
        320,
    ),
}


def build_backbone(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TINY_BACKBONES[family][0]().eval()


@pytest.fixture
def tiny_vit():
    return build_backbone("vit")


def tiny_image_processor(size: int = IMAGE_SIZE) -> ViTImageProcessor:
    """Resize to `size` and scale pixels to [-1, 1]: the processor the tiny backbones are run with."""
    return ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


@pytest.fixture
def tiny_processor():
    return tiny_image_processor()


def color_dataset(
    num_classes: int = 3, per_class: int = 8, size: int = IMAGE_SIZE, seed: int = 0, names=None
) -> datasets.Dataset:
    """Noisy images whose class is their dominant colour channel (plus a class-specific stripe for C > 3)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(num_classes):
        for _ in range(per_class):
            array = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            array[..., c % 3] += 140
            if c >= 3:
                array[(c - 3) * 4 : (c - 3) * 4 + 4] = 255
            images.append(PIL.Image.fromarray(array))
            labels.append(c)
    names = names or [f"class_{c}" for c in range(num_classes)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture
def toy_dataset():
    return color_dataset()


# Keywords `Distiller.__init__` takes itself; every other keyword of `make_distiller` is a `DistillationConfig` field.
DISTILLER_KEYWORDS = ("eval_dataset", "feature_fn", "statistics", "accelerator", "callbacks", "compute_metrics")


def make_distiller(output_dir, dataset=None, *, model=None, processor=None, family: str = "vit", **settings):
    """A `Distiller` writing to `output_dir`, on a tiny random backbone of `family` and `color_dataset()` unless
    given. `model` and `dataset` may be builders, called for each Distiller so that none shares a backbone with
    another. A test file fixes its own settings once with `functools.partial(make_distiller, ...)`; a call's
    keywords win over the partial's."""
    keywords = {key: settings.pop(key) for key in DISTILLER_KEYWORDS if key in settings}
    model = build_backbone(family) if model is None else model
    dataset = color_dataset() if dataset is None else dataset
    return Distiller(
        model=model if isinstance(model, torch.nn.Module) else model(),
        args=DistillationConfig(output_dir=str(output_dir), **settings),
        train_dataset=dataset() if callable(dataset) else dataset,
        image_processor=processor if processor is not None else tiny_image_processor(),
        **keywords,
    )


# ------------------------------------------------------------------------------------------ the recipe, in-process

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "distill.py"


def load_recipe(name: str = "distill_recipe"):
    """`recipes/distill.py` as a fresh module named `name`, to call its `main` in the test's own process."""
    spec = importlib.util.spec_from_file_location(name, RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the annotations through the module
    spec.loader.exec_module(module)
    return module


def run_recipe_main(recipe, argv: list[str]):
    """`recipe.main(argv)` in this process (a launch spends most of a test importing; the tests that launch the
    script prove the launch), with the recipe's process-wide settings put back afterwards."""
    with recipe_settings_restored():
        return recipe.main(argv)


@contextlib.contextmanager
def recipe_settings_restored():
    """Puts back the log levels and progress bars the recipe's `main` sets, so no later test sees them."""
    import transformers

    levels = {name: logging.getLogger(name).level for name in ("hf_sfm", "recipes")}
    datasets_bars = not datasets.are_progress_bars_disabled()
    transformers_bars = transformers.utils.logging.is_progress_bar_enabled()
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if datasets_bars:
            datasets.enable_progress_bars()
        if transformers_bars:
            transformers.utils.logging.enable_progress_bar()
