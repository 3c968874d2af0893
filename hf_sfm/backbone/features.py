"""Backbone → one pooled feature vector per image, for any Hugging Face vision model.

Families pool differently (docs/DESIGN.md §7): DINOv2's `pooler_output` is the layer-normed CLS token, ViT's pooler
is an extra dense+tanh that is random unless trained (so we take the CLS token), CLIP's projected embedding is
`image_embeds`, ResNet pools to `(B, C, 1, 1)`. One line per family names its pooling; the pooling itself is
`modeling_inherited.pool_features`, the same code a saved classifier runs. Users can pass their own `feature_fn`.

A full image-text model (`CLIPModel`, `SiglipModel`, `AlignModel`, `BlipModel`, ...: what `AutoModel` gives for such a
checkpoint) is unwrapped here: by default its projected image embedding (`get_image_features`, pooling
`"image_embeds"`), or with `feature_fn="pooler_output"` its vision tower's pooled output.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..data.preprocessing import ImagePreprocessing
from ..modeling_inherited import FEATURE_POOLINGS, backbone_outputs, pool_outputs
from ..utils.cpu_memory import keep_freed_memory

logger = logging.getLogger(__name__)

FeatureFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class FeatureFunctionError(ValueError):
    """The pooled-feature function cannot turn this backbone's outputs into `(batch, dim)` features."""


# model_type → how its output becomes one `(B, D)` feature: a pooling name of `modeling_inherited.pool_features` (the
# one implementation, shared with the saved classifier, which records the name) or a custom callable. One line per
# family; anything else gets `DEFAULT_POOLING` and a clear error if the model has no usable pooled output.
FEATURE_POOLING: dict[str, str | FeatureFn] = {
    "vit": "cls_token",
    "deit": "cls_token",
    "vit_msn": "cls_token",  # ViTMSNForImageClassification reads last_hidden_state[:, 0] (the model has no pooler)
    "pvt": "cls_token",  # PvtForImageClassification reads last_hidden_state[:, 0] (PVT has a last-stage CLS token)
    "dinov2": "pooler_output",
    "dinov2_with_registers": "pooler_output",
    "clip_vision_model": "image_embeds",
    "siglip_vision_model": "pooler_output",
    "resnet": "pooler_output",
    "convnext": "pooler_output",
    "convnextv2": "pooler_output",
    "efficientnet": "pooler_output",
    "regnet": "pooler_output",
}
DEFAULT_POOLING = "pooler_output"


def siglip2_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """SigLIP2 (NaFlex) embeds patch rows, not images: `(B, 3, H, W)` → `(B, N, p·p·3)` patches in the order of
    `Siglip2ImageProcessor` (row-major patches, each `(p, p, 3)`), all valid, with `spatial_shapes` `(H/p, W/p)`.
    Returns the full model's `get_image_features` (its image embedding) or the vision model's `pooler_output`."""
    config = getattr(model.config, "vision_config", None) or model.config
    size = config.patch_size
    batch, channels, height, width = pixel_values.shape
    rows, columns = height // size, width // size
    patches = pixel_values[:, :, : rows * size, : columns * size].reshape(batch, channels, rows, size, columns, size)
    patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * columns, size * size * channels)
    inputs = {
        "pixel_values": patches,
        "pixel_attention_mask": torch.ones(batch, rows * columns, dtype=torch.long, device=patches.device),
        "spatial_shapes": torch.tensor([[rows, columns]] * batch, device=patches.device),
    }
    entry = getattr(model, "get_image_features", None) or model
    return entry(**inputs).pooler_output


FEATURE_POOLING["siglip2"] = FEATURE_POOLING["siglip2_vision_model"] = siglip2_features


def register_feature_fn(model_type: str, feature_fn: FeatureFn | str) -> None:
    """Teach hf_sfm how to pool a new model family: a pooling name (`FEATURE_POOLINGS`) or a callable.

    A named pooling can be recorded in a saved classifier; a callable cannot (see `SFMInheritedConfig`).
    """
    if isinstance(feature_fn, str) and feature_fn not in FEATURE_POOLINGS:
        raise ValueError(f"Unknown pooling {feature_fn!r}; choose one of {FEATURE_POOLINGS} or pass a callable.")
    FEATURE_POOLING[model_type] = feature_fn


# Where a full image-text model keeps its vision tower (CLIP & co: `vision_model`; FLAVA: `image_model`; VLMs:
# `vision_tower`). The tower is what `pooler_output` / `cls_token` read; `image_embeds` uses the whole model.
VISION_TOWER_ATTRIBUTES = ("vision_model", "image_model", "vision_tower", "vision_encoder")


def vision_tower(model: nn.Module) -> nn.Module | None:
    """The vision tower of a full image-text model (one with `get_image_features`), or `None` for anything else."""
    if not callable(getattr(model, "get_image_features", None)):
        return None
    for name in VISION_TOWER_ATTRIBUTES:
        tower = getattr(model, name, None)
        if isinstance(tower, nn.Module):
            return tower
    return None


def default_pooling(model: nn.Module) -> str | FeatureFn:
    """Its `FEATURE_POOLING` entry, `image_embeds` for a full image-text model, else `DEFAULT_POOLING`."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in FEATURE_POOLING:
        return FEATURE_POOLING[model_type]
    if vision_tower(model) is not None:
        return "image_embeds"
    return DEFAULT_POOLING


def base_vision_model(model: nn.Module, pooling: str | FeatureFn | None = None) -> nn.Module:
    """The module features come from, for `pooling` (`None`: the vision backbone itself).

    Strips a task head (`*ForImageClassification`). A full image-text model (`CLIPModel`, `SiglipModel`, ...) is kept
    whole for `image_embeds` (its `get_image_features` is the feature) and for a custom callable (which may call it);
    for any other pooling its vision tower is used (`CLIPModel.vision_model`, a `CLIPVisionModel`). CLIP's
    `CLIPVisionModelWithProjection` is kept whole: its projection *is* the `image_embeds` feature.
    """
    if "ForImageClassification" in type(model).__name__:
        prefix = getattr(model, "base_model_prefix", "")
        inner = getattr(model, prefix, None) if prefix else None
        if isinstance(inner, nn.Module):
            return inner
    tower = vision_tower(model)
    if tower is not None and not (pooling == "image_embeds" or callable(pooling)):
        return tower
    return model


class FeatureExtractor(nn.Module):
    """φ: images in `[0, 1]`, `(B, 3, H, W)` → pooled features `(B, D)`, through a frozen backbone.

    Normalisation (the image processor's mean/std) happens here, so synthetic and real images are normalised
    identically. The backbone is frozen and kept in eval mode (BatchNorm statistics must not move).

    `pooling` names the built-in pooling used (`None` with a custom `feature_fn`): what a saved classifier records.
    `feature_fn` is a callable `(model, pixel_values) -> (B, D)` or one of `FEATURE_POOLINGS` by name, e.g.
    `"pooler_output"` for a full CLIP/SigLIP model's vision tower instead of its projected `"image_embeds"`.
    """

    def __init__(self, model: nn.Module, preprocessing: ImagePreprocessing, feature_fn: FeatureFn | None = None):
        super().__init__()
        if isinstance(feature_fn, str) and feature_fn not in FEATURE_POOLINGS:
            raise ValueError(
                f"feature_fn={feature_fn!r} is not a pooling; choose one of {FEATURE_POOLINGS} or a callable."
            )
        stripped = base_vision_model(model, feature_fn or "image_embeds")  # head stripped, image-text model kept
        chosen = feature_fn or default_pooling(stripped)
        self.model = base_vision_model(stripped, chosen)
        self.model.eval()
        self.model.requires_grad_(False)
        # Channels-last: the layout GPU tensor cores want, and 0-20 % faster convolutions on a quiet CPU at ipc >= 10
        # (benchmarks/RESULTS.md, step profile). It changes only the memory layout of 4-D weights, not a value.
        self.model.to(memory_format=torch.channels_last)
        self.pooling: str | None = chosen if isinstance(chosen, str) else None
        self.custom_feature_fn: FeatureFn | None = None if isinstance(chosen, str) else chosen
        self.input_size = preprocessing.crop_size
        self.register_buffer("mean", torch.tensor(preprocessing.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.image_std).view(1, 3, 1, 1), persistent=False)

    @property
    def feature_fn_name(self) -> str:
        """How features are pooled, as recorded in statistics metadata: the pooling name or the callable's name."""
        if self.pooling is not None:
            return self.pooling
        return getattr(self.custom_feature_fn, "__qualname__", "custom")

    def train(self, mode: bool = True) -> FeatureExtractor:
        """The backbone stays in eval mode whatever the caller asks: it is frozen."""
        super().train(mode)
        self.model.eval()
        return self

    def pool(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised pixels → the backbone's pooled `(B, D)` feature."""
        if self.custom_feature_fn is not None:
            return self.custom_feature_fn(self.model, pixel_values)
        outputs = backbone_outputs(self.model, pixel_values, self.pooling)
        try:
            return pool_outputs(outputs, self.pooling, type(self.model).__name__)
        except ValueError as error:
            raise FeatureFunctionError(
                f"{type(self.model).__name__} returns no pooled output hf_sfm knows how to use ({error}). Pass "
                "`feature_fn=lambda model, pixel_values: ...` returning a (batch, dim) tensor to the Distiller, "
                "or register one with `hf_sfm.backbone.features.register_feature_fn(model_type, fn_or_pooling_name)`."
            ) from error

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.model.training:  # a caller's `model.train()` must not bring dropout or BatchNorm updates in
            self.model.eval()
        pixel_values = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        parameter = next(self.model.parameters(), None)
        if parameter is not None and parameter.is_floating_point():
            pixel_values = pixel_values.to(parameter.dtype)
        features = self.pool(pixel_values)
        if features.dim() != 2:
            raise FeatureFunctionError(
                f"The feature function must return (batch, dim) features, got shape {tuple(features.shape)}."
            )
        return features.float()

    def feature_dim(self) -> int:
        """`D`, from one grey image at the input size (through `frozen_features`, as every read-only forward)."""
        size = self.input_size
        return int(frozen_features(self, torch.full((1, 3, size, size), 0.5, device=self.mean.device)).shape[1])

    @torch.no_grad()
    def check_forward(self, image_processor: Any = None) -> int:
        """Run two grey `(2, 3, S, S)` images through the backbone once; return the feature dim `D`.

        A processor that does not fit the model (another input size, channel count or family) otherwise fails
        deep inside torch, minutes into the statistics pass; here it fails at once with a message naming both.
        """
        device = self.mean.device
        images = torch.full((2, 3, self.input_size, self.input_size), 0.5, device=device)
        try:
            features = self(images)
        except FeatureFunctionError:
            raise
        except Exception as error:  # whatever the backbone raises on an input it cannot take
            raise self._forward_error(error, image_processor) from error
        if not bool(torch.isfinite(features).all()):
            raise FloatingPointError(self._non_finite_reason())
        return int(features.shape[1])

    def _non_finite_reason(self) -> str:
        """Why a plain grey image gave NaN/Inf features, from the evidence: non-finite weights, a custom feature_fn,
        half-precision weights, or (weights finite, float32) a forward that itself makes NaN."""
        name = type(self.model).__name__
        tensors = [*self.model.parameters(), *self.model.buffers()]
        broken = [t for t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if broken:
            return f"{name} returns NaN/Inf features for a plain grey image: its weights hold NaN/Inf (bad checkpoint)."
        if self.custom_feature_fn is not None:
            return (
                f"{name}'s weights are finite but feature_fn={self.feature_fn_name!r} returns NaN/Inf for a plain grey "
                "image (a division by a zero norm or variance?). Fix the feature_fn, or use one of "
                f"{FEATURE_POOLINGS}."
            )
        if any(t.dtype in (torch.float16, torch.bfloat16) for t in tensors):
            return (
                f"{name} returns NaN/Inf features for a plain grey image with finite weights: its half-precision "
                "dtype overflows; load it in float32."
            )
        return (
            f"{name} returns NaN/Inf features for a plain grey image although its weights are finite and float32: "
            "its forward pass makes them (e.g. a normalisation of a constant input). Check its config and pooled "
            "output, or pass a feature_fn."
        )

    def _forward_error(self, error: Exception, image_processor: Any) -> ValueError:
        """Why the backbone could not embed two plain RGB images, blaming the image processor only when the evidence
        points to it: the model declares another input size or channel count, or the error is about sizes/shapes."""
        name, size = type(self.model).__name__, self.input_size
        config = getattr(self.model, "config", None)
        config = getattr(config, "vision_config", None) or config
        declared = getattr(config, "image_size", None)
        declared = declared if isinstance(declared, int) else None
        message = f"{type(error).__name__}: {error}"
        about_inputs = any(word in str(error) for word in EXTRA_INPUTS) or bool(_extra_inputs(self.model))
        about_input_size = not about_inputs and (
            (declared is not None and declared != size)
            or any(word in str(error).lower() for word in ("image size", "channel", "shape", "size of tensor"))
        )
        if about_input_size:
            processor = f" ({type(image_processor).__name__})" if image_processor is not None else ""
            expected = f" (the model's config says image_size={declared})" if declared else ""
            return ValueError(
                f"{name} cannot embed {size}x{size} RGB images{expected} ({message}). The image processor{processor} "
                "probably does not belong to this model: pass the model's own "
                "`AutoImageProcessor.from_pretrained(<checkpoint>)`, or set `crop_size` to the model's input size."
            )
        return FeatureFunctionError(
            f"{name} cannot embed images from `pixel_values` alone ({message}). "
            + (f"It takes {_extra_inputs(self.model) or 'other inputs'} too. " if about_inputs else "")
            + "Pass `feature_fn=` to the Distiller: one of "
            f"{FEATURE_POOLINGS} (e.g. 'pooler_output' for a vision tower), or a callable "
            "`(model, pixel_values) -> (batch, dim)` that calls the model as it needs to be called."
        )


# Images per chunk of a frozen forward, by device type. On a CPU the chunk is moderate: with glibc's defaults a large
# chunk's activations are mapped fresh from the kernel at every layer (page-fault bound), which
# `utils.cpu_memory.keep_freed_memory` removes, and beyond that a bigger chunk only spills the caches. CUDA's caching
# allocator reuses memory at any size, so there a big chunk only fills the device better. `benchmarks/frozen_paths.py`
# measures the plain loop at several batch sizes.
FROZEN_CHUNK_SIZES = {"cpu": 128}
DEFAULT_FROZEN_CHUNK_SIZE = 256


def frozen_chunk_size(device: torch.device | str) -> int:
    """Images per backbone call for a frozen forward on `device` (`FROZEN_CHUNK_SIZES`, else the default)."""
    return FROZEN_CHUNK_SIZES.get(torch.device(device).type, DEFAULT_FROZEN_CHUNK_SIZE)


def frozen_features(
    feature_extractor: FeatureExtractor, images: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """The one frozen, no-grad forward: `(N, 3, S, S)` images in `[0, 1]` → `(N, D)` float32 features on the
    extractor's device, equal to `feature_extractor(images)` up to float rounding.

    Every path that only reads features (statistics, test/train feature columns, probe views and view banks, the
    projector's bank, baselines) goes through here, so they all run at the backbone's best speed: under
    `torch.inference_mode` (no version counters or autograd bookkeeping), in chunks of `frozen_chunk_size` images
    (see `FROZEN_CHUNK_SIZES`), written into one output tensor. The model is already channels-last
    (`FeatureExtractor`). The result is an ordinary tensor, usable as the input of a trained layer.
    """
    device = feature_extractor.mean.device
    if device.type == "cpu":
        keep_freed_memory()
    chunk_size = chunk_size or frozen_chunk_size(device)
    output: torch.Tensor | None = None
    for start in range(0, len(images), chunk_size):
        with torch.inference_mode():
            features = feature_extractor(images[start : start + chunk_size].to(device, non_blocking=True))
        if output is None:  # allocated outside inference mode: autograd may read it later
            output = torch.empty(len(images), features.shape[1], device=features.device)
        output[start : start + len(features)].copy_(features)
    if output is None:
        output = torch.empty(0, feature_extractor.feature_dim(), device=device)
    return output


def check_image_processor(model: nn.Module, image_processor: Any) -> None:
    """Refuse a backbone hf_sfm cannot feed, and warn when the image processor is not its family's.

    Errors for what cannot work (a backbone that does not take 3-channel RGB input); only a warning for a processor
    class that transformers does not pair with the model type, because processors are shared across families
    (DINOv2 uses `BitImageProcessor`) and a hand-built one with the right normalisation is legitimate. A processor
    that truly does not fit (size, channels) is caught by `FeatureExtractor.check_forward`.
    """
    config = getattr(base_vision_model(model), "config", None)
    num_channels = getattr(config, "num_channels", 3)
    if isinstance(num_channels, int) and num_channels != 3:
        raise ValueError(
            f"{type(model).__name__} expects {num_channels}-channel input, but hf_sfm feeds RGB images (3 channels; "
            "grayscale and RGBA images are converted). Use a backbone configured with num_channels=3."
        )
    model_type = getattr(config, "model_type", None)
    if image_processor is None or not model_type:
        return
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    paired = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or IMAGE_PROCESSOR_MAPPING_NAMES.get(
        model_type.removesuffix("_vision_model")
    )
    if not paired:
        return
    names = paired.values() if isinstance(paired, dict) else paired if isinstance(paired, tuple | list) else [paired]
    expected = {_base_processor_name(name) for name in names if name}
    actual = _base_processor_name(type(image_processor).__name__)
    if expected and actual not in expected:
        logger.warning(
            f"The image processor {type(image_processor).__name__} is not the kind transformers pairs with "
            f"{model_type!r} models ({', '.join(sorted(expected))}); check that its size and normalisation "
            f"(mean {getattr(image_processor, 'image_mean', None)}, std {getattr(image_processor, 'image_std', None)}) "
            "are the backbone's, e.g. by loading `AutoImageProcessor.from_pretrained(<the model's checkpoint>)`."
        )


# Inputs beside `pixel_values` that a model needs to embed an image: text (a full model's `forward`), or SigLIP2's
# patchified NaFlex layout. A model whose image entry point takes them cannot be fed `(B, 3, H, W)` pixels alone.
EXTRA_INPUTS = ("input_ids", "spatial_shapes", "pixel_attention_mask")


def _extra_inputs(model: nn.Module) -> list[str]:
    """`EXTRA_INPUTS` that the model's image entry point (`get_image_features`, else `forward`) takes."""
    entry = getattr(model, "get_image_features", None) or getattr(model, "forward", None)
    try:
        parameters = inspect.signature(entry).parameters
    except (TypeError, ValueError):
        return []
    return [name for name in EXTRA_INPUTS if name in parameters]


def _base_processor_name(name: str) -> str:
    """`ViTImageProcessorPil`/`ViTImageProcessorFast` → `ViTImageProcessor`."""
    for suffix in ("Pil", "Fast"):
        name = name.removesuffix(suffix)
    return name
