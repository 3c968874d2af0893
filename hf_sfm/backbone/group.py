"""The frozen backbones a run distils against: one or several, the first the primary.

A set distilled on one backbone carries what that backbone reads and can lose on another (issue 28); matching the
statistical flow of several backbones at every step lets only edits that all of them read pay. Each backbone keeps
its own preprocessing, precision, identity and (in the run) its own class means; the group adds what they share:
the loss weights, the identity a checkpoint records, and a statistics pass that decodes every image once for all.
With one backbone everything here reduces to that backbone's own objects, so a one-backbone run is today's run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.preprocessing import ImagePreprocessing
from .features import FeatureFn
from .frozen import FrozenBackbone

__all__ = ["FrozenBackbones", "JointPreprocessing", "as_list"]


def as_list(value: Any, count: int | None = None, name: str = "") -> list[Any]:
    """`value` as a list (a single value, or `None`, is repeated `count` times); a list of another length raises."""
    if isinstance(value, list | tuple):
        values = list(value)
        if count is not None and len(values) != count:
            raise ValueError(
                f"{name} has {len(values)} entries but there are {count} backbones: pass one per model, in the "
                "same order (or a single one for all)."
            )
        return values
    return [value] * (count or 1)


def loss_weights(backbone_weights: Sequence[float] | None, count: int) -> list[float]:
    """The per-backbone loss weights, normalised to sum 1 (`None`: equal). Checked before any long work."""
    if backbone_weights is None:
        return [1.0 / count] * count
    weights = list(backbone_weights)
    if len(weights) != count:
        raise ValueError(
            f"DistillationConfig.backbone_weights has {len(weights)} values {weights} but the run has {count} "
            "backbone(s): give one positive weight per model, in the order of `model=[...]`, or None for equal."
        )
    if not all(isinstance(w, int | float) and math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"DistillationConfig.backbone_weights must be finite positive numbers, got {weights}.")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


@dataclass(frozen=True)
class JointPreprocessing:
    """The preprocessing of several backbones' statistics pass, for one decode of every image.

    `pixels` returns one uint8 batch per backbone (`ImagePreprocessing.pixels`); backbones with the same geometry
    (crop and resize size; normalisation is the feature extractor's) share one resized batch.
    """

    members: tuple[ImagePreprocessing, ...]

    def pixels(self, images: list[Any]) -> tuple[torch.Tensor, ...]:
        resized: dict[tuple[int, int], torch.Tensor] = {}
        for preprocessing in self.members:
            geometry = (preprocessing.crop_size, preprocessing.resize_size)
            if geometry not in resized:
                resized[geometry] = preprocessing.pixels(images)
        return tuple(resized[(p.crop_size, p.resize_size)] for p in self.members)

    to_unit_range = staticmethod(ImagePreprocessing.to_unit_range)


@dataclass
class FrozenBackbones:
    """The backbones of a run (`members[0]` is the primary: evaluation default, image size, init) and the weights
    of their losses (normalised to sum 1)."""

    members: list[FrozenBackbone]
    weights: list[float]

    @classmethod
    def from_config(
        cls,
        models: nn.Module | Sequence[nn.Module],
        image_processors: Any,
        feature_fns: FeatureFn | Sequence[FeatureFn | None] | None,
        args,
        device: torch.device,
    ) -> FrozenBackbones:
        """Prepare every backbone (`FrozenBackbone.from_config`), refusing before any long work a list of the wrong
        length, a weight list that does not fit, two backbones under one short name, or a method that cannot
        combine backbones."""
        models = as_list(models)
        if not models:
            raise ValueError("model=[] names no backbone: pass a model, or a list of them.")
        count = len(models)
        processors = as_list(image_processors, count, "image_processor")
        feature_fns = as_list(feature_fns, count, "feature_fn")
        weights = loss_weights(args.backbone_weights, count)
        if count > 1 and args.method_class.needs_real_images:
            raise ValueError(
                f"method={args.method!r} draws real images at every step and cannot be combined over several "
                f"backbones yet; distil against one backbone, or use method='sfm' / 'sfm_decouple' with {count}."
            )
        members = [
            FrozenBackbone.from_config(model, processor, feature_fn, args, device)
            for model, processor, feature_fn in zip(models, processors, feature_fns, strict=True)
        ]
        names = [member.short_name for member in members]
        if len(set(names)) != len(names):
            raise ValueError(
                f"Two backbones share a short name ({names}): their metrics and statistics files would collide. "
                "Set distinct `model.config._name_or_path` values."
            )
        return cls(members, weights)

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    def __getitem__(self, index: int) -> FrozenBackbone:
        return self.members[index]

    @property
    def primary(self) -> FrozenBackbone:
        return self.members[0]

    @property
    def short_names(self) -> list[str]:
        return [member.short_name for member in self.members]

    @property
    def identity(self) -> dict[str, str]:
        """What a checkpoint records: the primary's identity alone, or every backbone's (in order) joined."""
        if len(self.members) == 1:
            return self.primary.identity
        return {key: " + ".join(m.identity[key] for m in self.members) for key in self.primary.identity}

    def descriptions(self) -> list[dict[str, Any]]:
        """What a card says of each backbone, the primary first: `name`, `revision`, `short_name`, loss `weight`."""
        return [
            {"name": m.name, "revision": m.identity["revision"], "short_name": m.short_name, "weight": weight}
            for m, weight in zip(self.members, self.weights, strict=True)
        ]

    def eval_models(self, image_processors: Any, feature_fns: Any) -> dict[str, tuple]:
        """Every backbone after the primary as a named eval model, `{short_name: (model, processor, feature_fn)}`,
        so `evaluate()` probes the set on each backbone it was made for (`eval_<short_name>_accuracy`)."""
        processors = as_list(image_processors, len(self.members), "image_processor")
        feature_fns = as_list(feature_fns, len(self.members), "feature_fn")
        return {
            member.short_name: (member.feature_extractor.model, processor, feature_fn)
            for member, processor, feature_fn in list(zip(self.members, processors, feature_fns, strict=True))[1:]
        }

    @staticmethod
    def joint_means(class_means: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
        """The class means a checkpoint's digest covers: the primary's alone, or every backbone's, flattened."""
        if len(class_means) == 1 or any(means is None for means in class_means):
            return class_means[0]
        return torch.cat([means.detach().float().cpu().flatten() for means in class_means])

    def joint_preprocessing(self) -> JointPreprocessing:
        return JointPreprocessing(tuple(member.preprocessing for member in self.members))

    def embed_pixels(self, pixels: Sequence[torch.Tensor]) -> torch.Tensor:
        """One uint8 batch per backbone (`JointPreprocessing.pixels`) → `(B, D_1 + … + D_K)` features, the
        backbones' side by side, so one pass of per-class sums serves every backbone (sums are per column)."""
        return torch.cat([m.embed_pixels(p).float() for m, p in zip(self.members, pixels, strict=True)], dim=1)
