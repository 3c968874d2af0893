"""Backbone → one pooled feature vector per image, for any Hugging Face vision model.

Families pool differently (DESIGN §7): DINOv2's `pooler_output` is the layer-normed CLS token, ViT's pooler is an
extra dense+tanh that is random unless trained (so we take the CLS token), CLIP's projected embedding is
`image_embeds`, ResNet pools to `(B, C, 1, 1)`. One small adapter per family decides; users can pass their own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .preprocessing import ImagePreprocessing

FeatureFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _cls_token(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=pixel_values).last_hidden_state[:, 0]


def _pooler_output(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    pooled = model(pixel_values=pixel_values).pooler_output
    return pooled.flatten(1)  # ResNet-style (B, C, 1, 1) → (B, C)


def _clip_embeds(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    outputs = model(pixel_values=pixel_values)
    embeds = getattr(outputs, "image_embeds", None)
    return embeds if embeds is not None else outputs.pooler_output


def _default(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    outputs = model(pixel_values=pixel_values)
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is None or (pooled.dim() == 4 and pooled.shape[-2:] != (1, 1)):
        raise ValueError(
            f"{type(model).__name__} returns no pooled output hf_sfm knows how to use. Pass "
            "`feature_fn=lambda model, pixel_values: ...` returning a (batch, dim) tensor to the Distiller, "
            "or register one with `hf_sfm.features.register_feature_fn(model_type, fn)`."
        )
    return pooled.flatten(1)


# model_type → adapter. One line per family; anything else falls back to `_default`.
FEATURE_FNS: dict[str, FeatureFn] = {
    "vit": _cls_token,
    "deit": _cls_token,
    "dinov2": _pooler_output,
    "dinov2_with_registers": _pooler_output,
    "clip_vision_model": _clip_embeds,
    "siglip_vision_model": _pooler_output,
    "resnet": _pooler_output,
    "convnext": _pooler_output,
    "convnextv2": _pooler_output,
    "efficientnet": _pooler_output,
    "regnet": _pooler_output,
}


def register_feature_fn(model_type: str, feature_fn: FeatureFn) -> None:
    """Teach hf_sfm how to pool a new model family."""
    FEATURE_FNS[model_type] = feature_fn


def base_vision_model(model: nn.Module) -> nn.Module:
    """Strip a task head (`*ForImageClassification`) so features come from the backbone itself.

    CLIP's `CLIPVisionModelWithProjection` is kept whole: its projection *is* the feature.
    """
    if "ForImageClassification" in type(model).__name__:
        prefix = getattr(model, "base_model_prefix", "")
        inner = getattr(model, prefix, None) if prefix else None
        if isinstance(inner, nn.Module):
            return inner
    return model


class FeatureExtractor(nn.Module):
    """φ: images in `[0, 1]`, `(B, 3, H, W)` → pooled features `(B, D)`, through a frozen backbone.

    Normalisation (the image processor's mean/std) happens here, so synthetic and real images are normalised
    identically. The backbone is frozen and kept in eval mode (BatchNorm statistics must not move).
    """

    def __init__(self, model: nn.Module, preprocessing: ImagePreprocessing, feature_fn: FeatureFn | None = None):
        super().__init__()
        self.model = base_vision_model(model)
        self.model.eval()
        self.model.requires_grad_(False)
        model_type = getattr(getattr(self.model, "config", None), "model_type", None)
        self.feature_fn = feature_fn or FEATURE_FNS.get(model_type, _default)
        self.input_size = preprocessing.crop_size
        self.register_buffer("mean", torch.tensor(preprocessing.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.image_std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """The backbone stays in eval mode whatever the caller asks: it is frozen."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixel_values = (images - self.mean) / self.std
        parameter = next(self.model.parameters(), None)
        if parameter is not None and parameter.is_floating_point():
            pixel_values = pixel_values.to(parameter.dtype)
        features = self.feature_fn(self.model, pixel_values)
        if features.dim() != 2:
            raise ValueError(
                f"The feature function must return (batch, dim) features, got shape {tuple(features.shape)}."
            )
        return features.float()
