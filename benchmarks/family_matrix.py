"""The family matrix: every image-model family, built tiny and random from its config, distils or is refused.

For each family: does `Distiller` distil two steps with it (or refuse it at construction with a message naming the
fix, `feature_fn`), how `hf_sfm.backbone.features` pools it, and whether the features equal the family's own
forward (the tensor its own image classifier or `get_image_features` reads). Full image-text models (CLIP, SigLIP,
SigLIP2, ALIGN, BLIP, ...) are rows of their own, as `AutoModel` loads such checkpoints. Offline; about half a minute
on a CPU.

    python benchmarks/family_matrix.py            # prints the markdown table
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported

import datasets
import numpy as np
import PIL.Image
import torch
import transformers
from torch import nn

from hf_sfm import DistillationConfig, Distiller
from hf_sfm.backbone.features import FeatureExtractor
from hf_sfm.data.preprocessing import ImagePreprocessing

IMAGE_SIZE = 32
VIT = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
VIT["intermediate_size"] = 64
TEXT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=99)
TEXT.update(bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _cls_token(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=pixel_values).last_hidden_state[:, 0]


def _pooler_output(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=pixel_values).pooler_output.flatten(1)


def _image_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    return model.get_image_features(pixel_values=pixel_values).pooler_output


def _siglip2_own(entry: Callable, pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """SigLIP2's own input: each image cut into patches by its image processor's `convert_image_to_patches`."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

    patches = torch.stack(
        [torch.from_numpy(convert_image_to_patches(image.numpy(), patch_size)) for image in pixel_values]
    )
    batch, num_patches = patches.shape[:2]
    side = int(num_patches**0.5)
    return entry(
        pixel_values=patches,
        pixel_attention_mask=torch.ones(batch, num_patches, dtype=torch.long),
        spatial_shapes=torch.tensor([[side, side]] * batch),
    ).pooler_output


def _token_mean(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=pixel_values).last_hidden_state.mean(1)


@dataclass(frozen=True)
class Family:
    """A tiny random model of one family and its own feature: what its classifier head (or `get_image_features`)
    reads, written out from the family's modelling code."""

    build: Callable[[], nn.Module]
    own_feature: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    own_feature_name: str


def _config(name: str, **kwargs: Any):
    return getattr(transformers, name)(**kwargs)


def _model(model_name: str, config_name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return lambda: _informative(getattr(transformers, model_name)(_config(config_name, **kwargs)))


def _informative(model: nn.Module) -> nn.Module:
    """HF initialises convolutions and BatchNorm scales at N(0, 0.02): the activations of a deep random CNN die out
    (constant features, refused by the Distiller as a broken backbone). He-initialised convolutions and unit
    BatchNorm scales keep a random net's features image-dependent, as trained weights are."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


def _pair(model_name: str, config_name: str, vision: dict, text: dict, **kwargs: Any) -> Callable[[], nn.Module]:
    return lambda: _informative(
        getattr(transformers, model_name)(_config(config_name, vision_config=vision, text_config=text, **kwargs))
    )


CNN = dict(hidden_sizes=[8, 16], depths=[1, 1])
SWIN = dict(image_size=IMAGE_SIZE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4)
FAMILIES: dict[str, Family] = {
    # vision backbones (`AutoModel` of a vision checkpoint)
    "ViT": Family(_model("ViTModel", "ViTConfig", **VIT), _cls_token, "last_hidden_state[:, 0]"),
    "DeiT": Family(_model("DeiTModel", "DeiTConfig", **VIT), _cls_token, "last_hidden_state[:, 0]"),
    "BEiT": Family(_model("BeitModel", "BeitConfig", **VIT, use_mean_pooling=True), _pooler_output, "pooler_output"),
    "Data2VecVision": Family(
        _model("Data2VecVisionModel", "Data2VecVisionConfig", **VIT, use_mean_pooling=True),
        _pooler_output,
        "pooler_output",
    ),
    "DINOv2": Family(
        _model("Dinov2Model", "Dinov2Config", **{k: v for k, v in VIT.items() if k != "intermediate_size"}),
        _pooler_output,
        "pooler_output",
    ),
    "CLIPVision": Family(_model("CLIPVisionModel", "CLIPVisionConfig", **VIT), _pooler_output, "pooler_output"),
    "CLIPVisionWithProjection": Family(
        _model("CLIPVisionModelWithProjection", "CLIPVisionConfig", **VIT, projection_dim=12),
        lambda model, pixel_values: model(pixel_values=pixel_values).image_embeds,
        "image_embeds",
    ),
    "SiglipVision": Family(_model("SiglipVisionModel", "SiglipVisionConfig", **VIT), _pooler_output, "pooler_output"),
    "ResNet": Family(
        _model("ResNetModel", "ResNetConfig", embedding_size=8, layer_type="basic", **CNN),
        _pooler_output,
        "pooler_output",
    ),
    "ConvNeXt": Family(_model("ConvNextModel", "ConvNextConfig", num_stages=2, **CNN), _pooler_output, "pooler_output"),
    "ConvNeXtV2": Family(
        _model("ConvNextV2Model", "ConvNextV2Config", num_stages=2, **CNN), _pooler_output, "pooler_output"
    ),
    "RegNet": Family(
        _model("RegNetModel", "RegNetConfig", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8),
        _pooler_output,
        "pooler_output",
    ),
    "MobileNetV2": Family(
        _model("MobileNetV2Model", "MobileNetV2Config", image_size=IMAGE_SIZE, depth_multiplier=0.35),
        _pooler_output,
        "pooler_output",
    ),
    "MobileViT": Family(
        _model(
            "MobileViTModel",
            "MobileViTConfig",
            image_size=IMAGE_SIZE,
            hidden_sizes=[16, 16, 16],
            neck_hidden_sizes=[8, 8, 8, 8, 8, 8, 16],
            num_attention_heads=2,
        ),
        _pooler_output,
        "pooler_output",
    ),
    "Swin": Family(
        _model(
            "SwinModel",
            "SwinConfig",
            **SWIN,
        ),
        _pooler_output,
        "pooler_output",
    ),
    "Hiera": Family(
        _model(
            "HieraModel",
            "HieraConfig",
            image_size=[IMAGE_SIZE, IMAGE_SIZE],
            patch_size=[3, 3],
            patch_stride=[2, 2],
            patch_padding=[1, 1],
            embed_dim=8,
            depths=[1, 1],
            num_heads=[1, 2],
            masked_unit_size=[4, 4],
            query_stride=[2, 2],
            num_query_pool=1,
        ),
        _pooler_output,
        "pooler_output",
    ),
    "PVT": Family(
        _model(
            "PvtModel",
            "PvtConfig",
            image_size=IMAGE_SIZE,
            num_encoder_blocks=2,
            depths=[1, 1],
            sequence_reduction_ratios=[2, 1],
            hidden_sizes=[8, 16],
            patch_sizes=[4, 2],
            strides=[4, 2],
            num_attention_heads=[1, 2],
            mlp_ratios=[2, 2],
        ),
        _cls_token,
        "last_hidden_state[:, 0]",
    ),
    "PVTv2": Family(
        _model(
            "PvtV2Model",
            "PvtV2Config",
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[8, 16],
            patch_sizes=[3, 3],
            strides=[2, 2],
            num_attention_heads=[1, 2],
            mlp_ratios=[2, 2],
        ),
        lambda model, pixel_values: model(pixel_values=pixel_values).last_hidden_state.mean((2, 3)),
        "last_hidden_state.mean((2, 3))",
    ),
    "DINOv2 with registers": Family(
        _model(
            "Dinov2WithRegistersModel",
            "Dinov2WithRegistersConfig",
            **{k: v for k, v in VIT.items() if k != "intermediate_size"},
            num_register_tokens=2,
        ),
        _pooler_output,
        "pooler_output",
    ),
    "EfficientNet": Family(
        _model(
            "EfficientNetModel",
            "EfficientNetConfig",
            image_size=IMAGE_SIZE,
            width_coefficient=0.25,
            depth_coefficient=0.25,
            hidden_dim=320,
            hidden_act="relu6",
        ),
        _pooler_output,
        "pooler_output",
    ),
    "SwinV2": Family(
        _model(
            "Swinv2Model",
            "Swinv2Config",
            **SWIN,
        ),
        _pooler_output,
        "pooler_output",
    ),
    "ViTMSN": Family(_model("ViTMSNModel", "ViTMSNConfig", **VIT), _cls_token, "last_hidden_state[:, 0]"),
    "FocalNet": Family(
        _model(
            "FocalNetModel",
            "FocalNetConfig",
            image_size=IMAGE_SIZE,
            patch_size=4,
            embed_dim=8,
            depths=[1, 1],
            focal_levels=[2, 2],
            focal_windows=[3, 3],
        ),
        _pooler_output,
        "pooler_output",
    ),
    "LeViT": Family(
        _model(
            "LevitModel",
            "LevitConfig",
            image_size=IMAGE_SIZE,
            hidden_sizes=[16, 32, 48],
            num_attention_heads=[1, 2, 3],
            depths=[1, 1, 1],
            key_dim=[8, 8, 8],
        ),
        _pooler_output,
        "pooler_output",
    ),
    "MobileNetV1": Family(
        _model("MobileNetV1Model", "MobileNetV1Config", image_size=IMAGE_SIZE, depth_multiplier=0.25),
        _pooler_output,
        "pooler_output",
    ),
    "PoolFormer": Family(
        _model("PoolFormerModel", "PoolFormerConfig", hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1]),
        lambda model, pixel_values: model(pixel_values=pixel_values).last_hidden_state.mean((2, 3)),
        "norm(last_hidden_state).mean((2, 3))",
    ),
    "I-JEPA": Family(_model("IJepaModel", "IJepaConfig", **VIT), _token_mean, "last_hidden_state.mean(1)"),
    # full image-text models (`AutoModel` of a CLIP / SigLIP / ... checkpoint)
    "CLIP (full)": Family(
        _pair("CLIPModel", "CLIPConfig", VIT, TEXT, projection_dim=12), _image_features, "get_image_features"
    ),
    "SigLIP (full)": Family(_pair("SiglipModel", "SiglipConfig", VIT, TEXT), _image_features, "get_image_features"),
    "SigLIP2 (full)": Family(
        _pair("Siglip2Model", "Siglip2Config", {**VIT, "num_patches": 16}, TEXT),
        lambda model, pixel_values: _siglip2_own(model.get_image_features, pixel_values, 8),
        "get_image_features(Siglip2ImageProcessor patches)",
    ),
    "SigLIP2Vision": Family(
        _model("Siglip2VisionModel", "Siglip2VisionConfig", **VIT, num_patches=16),
        lambda model, pixel_values: _siglip2_own(model, pixel_values, 8),
        "pooler_output(Siglip2ImageProcessor patches)",
    ),
    "ALIGN (full)": Family(
        _pair(
            "AlignModel",
            "AlignConfig",
            dict(
                image_size=IMAGE_SIZE,
                width_coefficient=0.25,
                depth_coefficient=0.25,
                hidden_dim=320,
                hidden_act="relu6",
            ),
            TEXT,
        ),
        _image_features,
        "get_image_features",
    ),
    "BLIP (full)": Family(  # BLIP's vision tower initialises at std 1e-10: its features would be constant
        _pair("BlipModel", "BlipConfig", {**VIT, "initializer_range": 0.02}, TEXT, projection_dim=12),
        _image_features,
        "get_image_features",
    ),
    "AltCLIP (full)": Family(
        _pair("AltCLIPModel", "AltCLIPConfig", VIT, {**TEXT, "project_dim": 16}, projection_dim=12),
        _image_features,
        "get_image_features",
    ),
    "ChineseCLIP (full)": Family(
        _pair("ChineseCLIPModel", "ChineseCLIPConfig", VIT, TEXT, projection_dim=12),
        _image_features,
        "get_image_features",
    ),
    "MetaCLIP2 (full)": Family(
        _pair("MetaClip2Model", "MetaClip2Config", VIT, TEXT, projection_dim=12), _image_features, "get_image_features"
    ),
}


@dataclass
class Row:
    family: str
    outcome: str  # "works" | "refused" | "error"
    model_class: str
    pooling: str
    equal: bool | None
    note: str

    def markdown(self) -> str:
        equal = {True: "yes", False: "**no**", None: "–"}[self.equal]
        return f"| {self.family} | {self.outcome} | `{self.model_class}` | {self.pooling} | {equal} | {self.note} |"


def toy_dataset(num_classes: int = 3, per_class: int = 2) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [
        PIL.Image.fromarray((rng.integers(0, 90, (IMAGE_SIZE, IMAGE_SIZE, 3)) + 140 * np.eye(3)[c]).astype(np.uint8))
        for c in range(num_classes)
        for _ in range(per_class)
    ]
    labels = [c for c in range(num_classes) for _ in range(per_class)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{c}" for c in range(num_classes)])}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


PREPROCESSING = ImagePreprocessing(IMAGE_SIZE, IMAGE_SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def check_family(name: str, num_steps: int = 2, output_dir: str | None = None) -> Row:
    """Distil `num_steps` with the family's tiny model, and compare its features with the family's own forward."""
    family = FAMILIES[name]
    torch.manual_seed(0)
    model = family.build().eval()
    processor = transformers.ViTImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    with tempfile.TemporaryDirectory() as scratch:
        config = DistillationConfig(
            output_dir=output_dir or scratch,
            num_steps=num_steps,
            ipc=1,
            image_size=IMAGE_SIZE,
            crop_size=IMAGE_SIZE,
            save_steps=0,
            grid_steps=0,
            save_grid=False,
            logging_steps=num_steps,
            statistics_batch_size=8,
        )
        try:
            distiller = Distiller(model, config, toy_dataset(), image_processor=processor)
        except ValueError as error:
            return Row(name, "refused", type(model).__name__, "–", None, _short(error))
        extractor = distiller.feature_extractor
        try:
            distiller.compute_statistics()
            losses = distiller.train().metrics
        except Exception as error:  # a family that passes the checks but fails later is a bug to report
            return Row(name, "error", type(model).__name__, extractor.feature_fn_name, None, _short(error))
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    extractor = FeatureExtractor(model, PREPROCESSING, extractor.custom_feature_fn or extractor.pooling)
    with torch.no_grad():
        ours = extractor(images)
        own = family.own_feature(model, (images - 0.5) / 0.25).float()
    equal = ours.shape == own.shape and torch.allclose(ours, own, atol=1e-5)
    pooling = f"`{extractor.feature_fn_name}` of `{type(extractor.model).__name__}`"
    note = f"own: `{family.own_feature_name}`; D={ours.shape[1]}; loss {losses.get('train_loss', float('nan')):.3f}"
    return Row(name, "works", type(model).__name__, pooling, bool(equal), note)


def _short(error: Exception) -> str:
    text = str(error).replace("|", "\\|").replace("\n", " ")
    return text if len(text) < 260 else text[:257] + "..."


def other_image_families() -> list[str]:
    """Image-classification model types of the installed transformers that the matrix does not build."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    covered = set()
    for family in FAMILIES.values():
        model = family.build.__closure__  # the class names the builders close over
        covered |= {cell.cell_contents for cell in model or () if isinstance(cell.cell_contents, str)}
    return sorted(
        model_type
        for model_type, class_name in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items()
        if (class_name[0] if isinstance(class_name, tuple) else class_name).replace("ForImageClassification", "Model")
        not in covered
    )


def quiet() -> None:
    """No progress bars or warnings (a tiny random model with a generic processor warns about both)."""
    import logging

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    for name in ("hf_sfm", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:
    quiet()
    with contextlib.redirect_stdout(io.StringIO()):  # the Distiller's own log lines
        rows = [check_family(name) for name in FAMILIES]
    print(f"transformers {transformers.__version__}, torch {torch.__version__}\n")
    print("| family | outcome | AutoModel gives | how pooled | features = own forward | note |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row.markdown())
    others = other_image_families()
    print(f"\nImage-classification families of this transformers not built here ({len(others)}): {', '.join(others)}.")


if __name__ == "__main__":
    main()
