"""`SFMInheritedClassifier`: the classifier a distilled set inherits, as a `from_pretrained` image classifier.

Classifier inheritance (docs/DESIGN.md §5): a linear head `W` is trained once on the *full real* features of the
distillation backbone `φ_distill`; a linear projector `P: D_eval → D_distill` maps another (evaluation) backbone's
features into that space, fitted on the distilled images only. At inference

    logits = W · P(φ_eval(x))

so the model is: eval backbone (frozen, part of the model, so it predicts from pixels) → `projector` → `classifier`.

This file is deliberately self-contained (it imports only `torch` and `transformers`): `save_pretrained` copies it
next to the weights (`register_for_auto_class`), so users without `hf_sfm` can load a saved classifier with
`AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True)`. Importing `hf_sfm` registers the
classes with the Auto API instead (see `register_auto_classes`), so `trust_remote_code` is then unnecessary.

Two artefacts can be written:
- `save_pretrained(path)` embeds the backbone's weights (self-sufficient, works offline, largest).
- `save_pretrained(path, embed_backbone=False)` writes only projector + head (`D_eval·D_distill + D_distill·C`
  numbers) and a reference (`backbone_name_or_path` + `backbone_revision`) from which `from_pretrained` loads the
  backbone; the backbone's config is still nested in `config.json`, so its architecture is checked on load.

A `config.json` is data someone else may have written, so what it names is checked against allow-lists before
anything is built or loaded from it: `backbone_class` must be a vision model class of `transformers` (not any of its
attributes), `backbone_init_kwargs` may hold only `SAFE_BACKBONE_INIT_KWARGS` (none of which can enable remote code),
and the referenced backbone and the image processor are loaded with `trust_remote_code=False` unless the user passed
`trust_remote_code=True` to `from_pretrained`.
"""

from __future__ import annotations

import contextvars
import os
from typing import Any, ClassVar

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import ImageClassifierOutput

logger = transformers.logging.get_logger(__name__)

MODEL_TYPE = "hf_sfm_inherited"
# How a backbone's output becomes one `(B, D)` feature. The names are what `config.feature_pooling` records (a
# callable cannot be serialised); `hf_sfm.backbone.features` maps its per-family adapters onto these names.
FEATURE_POOLINGS = ("cls_token", "pooler_output", "image_embeds")
# Constructor arguments a config may pass to its backbone class (name → allowed type): module switches only. Anything
# else (`trust_remote_code`, `code_revision`, `attn_implementation` naming a Hub kernel, `subfolder`, ...) can
# fetch or run code, or load other weights, so it is refused.
SAFE_BACKBONE_INIT_KWARGS = {"add_pooling_layer": bool, "use_mask_token": bool}
# Whether the current `from_pretrained` call was given `trust_remote_code=True` by its caller (never by a config).
_TRUST_REMOTE_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar("hf_sfm_trust_remote_code", default=False)


def vision_backbone_class(name: str | None) -> type[PreTrainedModel] | None:
    """The `transformers` vision model class `name` names (`None` → `AutoModel`); anything else is refused.

    A config's `backbone_class` is looked up in `transformers`' namespace, which also holds trainers, pipelines and
    loaders: only a `PreTrainedModel` subclass defined by `transformers` that takes images may be built from it.
    """
    if not name:
        return None
    if not isinstance(name, str):
        raise ValueError(f"backbone_class={name!r} is not a class name.")
    found = getattr(transformers, name, None)
    if found is None:
        raise ValueError(
            f"backbone_class={name!r} is not a class of the installed transformers {transformers.__version__}; "
            "upgrade transformers or clear `backbone_class` to use AutoModel."
        )
    modalities = getattr(found, "input_modalities", ())
    modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities or ())
    if not (
        isinstance(found, type)
        and issubclass(found, PreTrainedModel)
        and found.__module__.startswith("transformers.models.")
        and "image" in modalities
    ):
        raise ValueError(
            f"backbone_class={name!r} is not a transformers vision model class (a PreTrainedModel that takes images, "
            "such as 'ViTModel' or 'CLIPVisionModelWithProjection'); this config cannot be used. Clear it to use "
            "AutoModel, or name the backbone's vision model class."
        )
    return found


def check_backbone_init_kwargs(kwargs: Any) -> dict[str, Any]:
    """`kwargs` if every key is in `SAFE_BACKBONE_INIT_KWARGS` with a value of its type, else a `ValueError`."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"backbone_init_kwargs must be a dict, got {type(kwargs).__name__}.")
    refused = {
        key: value
        for key, value in kwargs.items()
        if key not in SAFE_BACKBONE_INIT_KWARGS or not isinstance(value, SAFE_BACKBONE_INIT_KWARGS[key])
    }
    if refused:
        raise ValueError(
            f"backbone_init_kwargs {sorted(map(str, refused))} are not allowed in a classifier config (allowed: "
            f"{sorted(SAFE_BACKBONE_INIT_KWARGS)} with boolean values): other arguments can load code or other "
            "weights. Remove them from config.json; pass trust_remote_code=True to from_pretrained yourself if the "
            "backbone truly needs its own code."
        )
    return dict(kwargs)


def pool_features(backbone: nn.Module, pixel_values: torch.Tensor, pooling: str) -> torch.Tensor:
    """Normalised pixels `(B, 3, H, W)` → pooled backbone feature `(B, D)`, as named by `pooling`."""
    return pool_outputs(backbone_outputs(backbone, pixel_values, pooling), pooling, type(backbone).__name__)


def backbone_outputs(backbone: nn.Module, pixel_values: torch.Tensor, pooling: str) -> Any:
    """The outputs `pool_outputs` reads: the backbone's forward, or for `image_embeds` on a full image-text model
    (CLIP, SigLIP, BLIP, ALIGN, ...: it has `get_image_features`) the family's own projected image embedding.

    `get_image_features` returns the vision tower's outputs with `pooler_output` replaced by the projected embedding
    (or a plain `(B, D)` tensor in older releases); either way `pool_outputs(..., "image_embeds")` reads it.
    """
    if pooling == "image_embeds" and callable(getattr(backbone, "get_image_features", None)):
        outputs = backbone.get_image_features(pixel_values=pixel_values)
        return {"image_embeds": outputs} if isinstance(outputs, torch.Tensor) else outputs
    return backbone(pixel_values=pixel_values)


def pool_outputs(outputs: Any, pooling: str, backbone_name: str = "The backbone") -> torch.Tensor:
    """A backbone's outputs → one `(B, D)` feature, as named by `pooling`.

    `cls_token`: `last_hidden_state[:, 0]` (ViT/DeiT, whose pooler is an untrained dense+tanh);
    `pooler_output`: flattened, so ResNet's `(B, C, 1, 1)` becomes `(B, C)` (DINOv2, ConvNeXt, EfficientNet, ...);
    `image_embeds`: the projected image embedding (`CLIPVisionModelWithProjection.image_embeds`, or a full image-text
    model's `get_image_features`, see `backbone_outputs`); falls back to `pooler_output` without a projection.
    """
    if pooling == "cls_token":
        return outputs.last_hidden_state[:, 0]
    if pooling == "image_embeds":
        embeds = outputs.get("image_embeds") if isinstance(outputs, dict) else getattr(outputs, "image_embeds", None)
        if embeds is not None:
            return embeds
        pooling = "pooler_output"  # no projection: the pooled output is the embedding (get_image_features, ALIGN)
    if pooling == "pooler_output":
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is not None and not isinstance(pooled, torch.Tensor):  # VLMs: one tensor per image, not a batch
            raise ValueError(
                f"{backbone_name} returns a {type(pooled).__name__} as `pooler_output`, not a (batch, dim) tensor"
            )
        if pooled is None or (pooled.dim() == 4 and tuple(pooled.shape[-2:]) != (1, 1)):
            found = "no `pooler_output`" if pooled is None else f"a spatial `pooler_output` {tuple(pooled.shape)}"
            raise ValueError(
                f"{backbone_name} returns {found}; use another of {FEATURE_POOLINGS} that the backbone supports."
            )
        return pooled.flatten(1)
    raise ValueError(f"feature_pooling={pooling!r} is not supported; choose one of {FEATURE_POOLINGS}.")


class SFMInheritedConfig(PreTrainedConfig):
    r"""Configuration of an [`SFMInheritedClassifier`].

    Args:
        vision_config (`dict` or `PreTrainedConfig`): config of the evaluation backbone, nested like LLaVA's
            `vision_config` (its `model_type` selects the config class).
        backbone_class (`str`, *optional*): `transformers` class of the backbone (`"ViTModel"`,
            `"CLIPVisionModelWithProjection"`, ...); `AutoModel.from_config` when unset.
        backbone_init_kwargs (`dict`, *optional*): extra constructor arguments, e.g. `{"add_pooling_layer": False}`.
        feature_pooling (`str`): how the backbone output becomes a `(B, D)` feature, one of `FEATURE_POOLINGS`.
        eval_feature_dim, distill_feature_dim (`int`): `D_eval` (backbone feature) and `D_distill` (head input).
        embed_backbone (`bool`): whether the checkpoint holds the backbone weights, or only projector + head.
        backbone_name_or_path, backbone_revision (`str`, *optional*): where the backbone weights come from
            (required to load a checkpoint saved with `embed_backbone=False`).
        distill_backbone_name_or_path, distill_backbone_revision (`str`, *optional*): the backbone the head was
            trained on (provenance only).
        inheritance (`dict`, *optional*): how head and projector were trained (settings, dataset, losses).
    """

    model_type = MODEL_TYPE
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit")
    }

    vision_config: dict | PreTrainedConfig | None = None
    backbone_class: str | None = None
    backbone_init_kwargs: dict | None = None
    feature_pooling: str = "cls_token"
    eval_feature_dim: int = 768
    distill_feature_dim: int = 768
    embed_backbone: bool = True
    backbone_name_or_path: str | None = None
    backbone_revision: str | None = None
    distill_backbone_name_or_path: str | None = None
    distill_backbone_revision: str | None = None
    inheritance: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.feature_pooling not in FEATURE_POOLINGS:
            raise ValueError(
                f"SFMInheritedConfig.feature_pooling={self.feature_pooling!r} is not supported; "
                f"choose one of {FEATURE_POOLINGS}."
            )
        for name in ("eval_feature_dim", "distill_feature_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SFMInheritedConfig.{name} must be >= 1, got {getattr(self, name)}.")
        check_backbone_init_kwargs(self.backbone_init_kwargs)  # before anything is built or loaded from them
        if self.backbone_class is not None and not isinstance(self.backbone_class, str):
            raise ValueError(f"SFMInheritedConfig.backbone_class={self.backbone_class!r} is not a class name.")
        if self.backbone_class and getattr(transformers, self.backbone_class, None) is not None:
            vision_backbone_class(self.backbone_class)  # present but not a vision model: refused now


class SFMInheritedPreTrainedModel(PreTrainedModel):
    config_class = SFMInheritedConfig
    config: SFMInheritedConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        """Projector starts as the identity when square (exact inheritance for the same backbone), head at 0.01."""
        if module is getattr(self, "projector", None):
            if module.in_features == module.out_features:
                init.eye_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            init.zeros_(module.bias)
        elif module is getattr(self, "classifier", None):
            init.normal_(module.weight, mean=0.0, std=0.01)
            init.zeros_(module.bias)


def build_backbone(config: SFMInheritedConfig) -> PreTrainedModel:
    """A randomly initialised backbone with the architecture `config.vision_config` describes."""
    kwargs = check_backbone_init_kwargs(config.backbone_init_kwargs)
    backbone_class = vision_backbone_class(config.backbone_class)
    if backbone_class is not None:
        return backbone_class(config.vision_config, **kwargs)
    return AutoModel.from_config(config.vision_config, trust_remote_code=_TRUST_REMOTE_CODE.get(), **kwargs)


class SFMInheritedClassifier(SFMInheritedPreTrainedModel):
    """Frozen eval backbone → `projector` (D_eval → D_distill) → inherited `classifier` (D_distill → C).

    Input: `pixel_values` `(B, 3, H, W)`, normalised by the image processor saved with the model.
    Output: `ImageClassifierOutput` with `logits` `(B, C)`; with `output_hidden_states=True`, `hidden_states` is
    `(backbone feature (B, D_eval), projected feature (B, D_distill))`.
    """

    def __init__(self, config: SFMInheritedConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.backbone = build_backbone(config)
        self.projector = nn.Linear(config.eval_feature_dim, config.distill_feature_dim)
        self.classifier = nn.Linear(config.distill_feature_dim, config.num_labels)
        self.image_processor = None  # set by hf_sfm when built; written by `save_pretrained` when present
        self.post_init()
        if not config.embed_backbone:
            # The checkpoint holds projector + head only; the backbone is loaded from its reference afterwards.
            self._keys_to_ignore_on_load_missing = set(self._keys_to_ignore_on_load_missing or ()) | {r"^backbone\."}

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple:
        if pixel_values is None:
            raise ValueError("SFMInheritedClassifier needs `pixel_values` (B, 3, H, W) from its image processor.")
        parameter = next(self.backbone.parameters(), None)
        if parameter is not None and parameter.is_floating_point():
            pixel_values = pixel_values.to(parameter.dtype)
        features = pool_features(self.backbone, pixel_values, self.config.feature_pooling)
        projected = self.projector(features.to(self.projector.weight.dtype))
        logits = self.classifier(projected)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device))
        hidden_states = (features, projected) if output_hidden_states else None
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            output = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss, *output)) if loss is not None else output
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)

    def train(self, mode: bool = True) -> SFMInheritedClassifier:
        """The backbone stays in eval mode (BatchNorm statistics and dropout of a frozen backbone must not move)."""
        super().train(mode)
        self.backbone.eval()
        return self

    # ------------------------------------------------------------------ saving and loading

    def save_pretrained(self, save_directory: str | os.PathLike, *args, embed_backbone: bool | None = None, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the image processor, and optionally without the backbone.

        Args:
            embed_backbone: `False` writes projector + head only and references the backbone by
                `config.backbone_name_or_path` (+ `backbone_revision`); default: `config.embed_backbone`.
        """
        embed = self.config.embed_backbone if embed_backbone is None else bool(embed_backbone)
        if not embed and not self.config.backbone_name_or_path:
            raise ValueError(
                "save_pretrained(embed_backbone=False) needs `config.backbone_name_or_path` (a Hub id or folder the "
                "backbone can be loaded from); set it, or save with embed_backbone=True."
            )
        previous = self.config.embed_backbone
        self.config.embed_backbone = embed
        try:
            if not embed and kwargs.get("state_dict") is None:
                kwargs["state_dict"] = {
                    name: tensor for name, tensor in self.state_dict().items() if not name.startswith("backbone.")
                }
            result = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.config.embed_backbone = previous
        if self.image_processor is not None and kwargs.get("is_main_process", True):
            self.image_processor.save_pretrained(save_directory)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a projector+head checkpoint also loads its referenced backbone."""
        wants_info = bool(kwargs.get("output_loading_info", False))
        kwargs["output_loading_info"] = True
        trust_remote_code = kwargs.get("trust_remote_code") is True  # the caller's choice; a config never grants it
        token = _TRUST_REMOTE_CODE.set(trust_remote_code)
        try:
            model, loading_info = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        finally:
            _TRUST_REMOTE_CODE.reset(token)
        hub_kwargs = {
            key: kwargs[key] for key in ("cache_dir", "local_files_only", "token", "proxies") if key in kwargs
        }
        hub_kwargs["trust_remote_code"] = trust_remote_code
        if not model.config.embed_backbone:
            model.load_referenced_backbone(**hub_kwargs)
        # The processor saved next to the weights, so that a loaded model saves (and pipelines) like the original.
        model.image_processor = _saved_image_processor(
            pretrained_model_name_or_path, revision=kwargs.get("revision"), **hub_kwargs
        )
        model.eval()
        return (model, loading_info) if wants_info else model

    def load_referenced_backbone(self, trust_remote_code: bool = False, **hub_kwargs: Any) -> None:
        """Fill the backbone from `config.backbone_name_or_path` at `config.backbone_revision` (strict).

        The class and constructor arguments come from the config, so they are checked against the allow-lists
        (`vision_backbone_class`, `check_backbone_init_kwargs`), and the load runs with `trust_remote_code` as the
        caller passed it (default `False`), never as the config says."""
        reference = self.config.backbone_name_or_path
        if not reference:
            raise ValueError(
                "This checkpoint was saved without its backbone (embed_backbone=False) and names no "
                "`backbone_name_or_path` to load it from."
            )
        backbone_class = vision_backbone_class(self.config.backbone_class) or AutoModel
        init_kwargs = check_backbone_init_kwargs(self.config.backbone_init_kwargs)
        revision = self.config.backbone_revision or None
        # A referenced classifier checkpoint (most Hub backbones) holds a head the backbone drops on purpose: its
        # LOAD REPORT is noise, as for the recipe's backbone. Weights the backbone lacks are refused below.
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            source, loading = backbone_class.from_pretrained(
                reference,
                revision=revision,
                trust_remote_code=bool(trust_remote_code),
                output_loading_info=True,
                **init_kwargs,
                **hub_kwargs,
            )
        except OSError as error:
            raise OSError(
                f"This classifier stores only its projector and head; its backbone is referenced as {reference!r}"
                f"{f' at revision {revision!r}' if revision else ''} and could not be loaded from there ({error}). "
                "Make it available (download it, or fix `backbone_name_or_path` in config.json)."
            ) from error
        finally:
            transformers.logging.set_verbosity(verbosity)
        absent = sorted(loading.get("missing_keys") or []) + [str(k) for k in loading.get("mismatched_keys") or []]
        if absent:  # they start at random (harmless only where the pooled feature does not read them)
            logger.warning(
                f"The referenced backbone {reference!r} lacks {len(absent)} weight(s) of {backbone_class.__name__}, "
                f"which start at random: {absent[:8]}{' ...' if len(absent) > 8 else ''}"
            )
        state = source.state_dict()
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"The referenced backbone {reference!r} does not match the architecture in this config "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})."
            )
        self.backbone.to(device=self.projector.weight.device, dtype=self.projector.weight.dtype)

    def num_parameters_by_part(self) -> dict[str, int]:
        """Parameter counts of backbone, projector and head: what each artefact stores."""
        return {
            "backbone": sum(p.numel() for p in self.backbone.parameters()),
            "projector": sum(p.numel() for p in self.projector.parameters()),
            "classifier": sum(p.numel() for p in self.classifier.parameters()),
        }


SFMInheritedConfig.register_for_auto_class()
SFMInheritedClassifier.register_for_auto_class("AutoModelForImageClassification")


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModelForImageClassification` resolve `model_type="hf_sfm_inherited"`.

    Called when `hf_sfm` is imported. Not at this module's import: the copy that `trust_remote_code` loads must not
    collide with the registration of an installed `hf_sfm`.
    """
    from transformers import AutoModelForImageClassification

    AutoConfig.register(MODEL_TYPE, SFMInheritedConfig, exist_ok=True)
    AutoModelForImageClassification.register(SFMInheritedConfig, SFMInheritedClassifier, exist_ok=True)


def _saved_image_processor(name_or_path, trust_remote_code: bool = False, **hub_kwargs: Any):
    """The image processor stored with a checkpoint, or `None` if it has none (or one that needs remote code the
    caller did not allow)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **hub_kwargs)
    except (OSError, ValueError):
        return None
