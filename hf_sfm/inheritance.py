"""Classifier inheritance (DESIGN §5): train the parts of an [`SFMInheritedClassifier`].

1. **Inherited head** `W: D_distill → C`, a linear head on the *full real* features of the distillation backbone.
   Reference: Adam 5e-4, batch 128, 10 epochs, cosine, flip + random-resized crop. Ten epochs of ImageNet-1k are
   ~100k optimiser steps; ten epochs of a small dataset are a few hundred and leave the head underfitted (4000
   MNIST images: 86.0% after 320 steps vs 93.5% after 3200), so by default the epochs are raised until the run
   has at least `min_steps` steps — inert at ImageNet scale. The default is also the cheap variant: every image is
   embedded once (deterministic resize + center crop) into a `datasets` column by a cached `datasets.map`, and the
   epochs run on that column; `augment=True` re-embeds a fresh augmented view per epoch as the reference does
   (epochs × the feature pass).
2. **Projector** `P: D_eval → D_distill`, fitted on the distilled images only, labels unused:
   `MSE(P(φ_eval(a(x))), φ_distill(a(x)))`, both backbones seeing the *same* augmented view `a(x)` (flip +
   random-resized crop, no noise); head frozen. Reference: Adam `1e-2 · batch / 256`, `batch = min(100, N)`,
   cosine, 1000 epochs. When the eval backbone *is* the distillation backbone the optimum is the identity and the
   loss is exactly 0 there, so the projector is set to the identity without training.
3. **Inference**: `logits = W · P(φ_eval(x))`, packaged as a `from_pretrained` model (`modeling_inherited.py`).

Optional, measured in `benchmarks/bench_inheritance.py`: a *KD* student head on the eval backbone, trained on the
distilled set with `α · T² · KL(teacher ‖ student) + (1 − α) · CE` where the teacher is the inherited head on the
distillation backbone's features of the same view (reference: T = 4, α = 0.5, Adam `1e-3 · batch / 256`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from torch import nn
from tqdm.auto import tqdm

from . import features as feature_adapters
from .augment import Augmentation, resize
from .embedding import embed_dataset, embedded_rows, features_and_labels
from .features import FeatureExtractor, FeatureFn
from .modeling_inherited import SFMInheritedClassifier, SFMInheritedConfig
from .preprocessing import ImagePreprocessing
from .versions import library_versions

if TYPE_CHECKING:
    from .distiller import Distiller

logger = get_logger(__name__)

REFERENCE_HEAD_EPOCHS = 10  # DESIGN §5, for ImageNet-1k


@dataclass
class InheritedHeadConfig:
    """Training of the inherited head on the full real features of the distillation backbone (DESIGN §5).

    Defaults are the reference settings, except that `epochs=None` means "10 epochs, or more if that is under
    `min_steps` optimiser steps" (see the module doc), and `augment=False`: features are computed once and cached as
    a `datasets` column instead of re-embedding an augmented view of every real image in every epoch. An explicit
    `epochs` is used as given.
    """

    epochs: int | None = None
    min_steps: int = 3000
    learning_rate: float = 5e-4
    batch_size: int = 128
    init_std: float = 0.01
    augment: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    seed: int = 0

    def __post_init__(self):
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError(
                f"InheritedHeadConfig needs epochs None or >= 1, batch_size >= 1, learning_rate > 0; got {self}."
            )
        if self.min_steps < 0:
            raise ValueError(f"InheritedHeadConfig.min_steps must be >= 0, got {self.min_steps}.")

    def num_epochs(self, num_examples: int) -> int:
        """`epochs` if given, else the reference's 10 raised to reach `min_steps` steps on `num_examples`."""
        if self.epochs is not None:
            return self.epochs
        steps_per_epoch = math.ceil(num_examples / self.batch_size)
        return max(REFERENCE_HEAD_EPOCHS, math.ceil(self.min_steps / steps_per_epoch))


@dataclass
class ProjectorConfig:
    """Fitting of the projector on the distilled images (DESIGN §5). `learning_rate` is scaled by `batch / 256`."""

    epochs: int = 1000
    learning_rate: float = 1e-2
    max_batch_size: int = 100
    seed: int = 0
    # The view a(x): flip + random-resized crop over this area range (the standard RRC, as in the §6 probe), no
    # noise; not the distillation's own range. Measured on the embedded default (ipc 1, lite0 → lite2, one seed):
    # 46.3% with 0.08–1 vs 44.4% with the demo's 0.5–1 — within seed noise, so the standard range is kept.
    crop_scale: tuple[float, float] = (0.08, 1.0)
    # None: a fresh augmented view of every image in every epoch (the reference). An int V: embed V views of each
    # image once (through both backbones) and draw one of them per image and epoch — seconds instead of minutes on
    # a CPU, at the price of a finite set of views.
    view_bank: int | None = None

    def __post_init__(self):
        if self.epochs < 1 or self.max_batch_size < 1 or self.learning_rate <= 0:
            raise ValueError(f"ProjectorConfig needs epochs >= 1, max_batch_size >= 1, learning_rate > 0; got {self}.")
        if self.view_bank is not None and self.view_bank < 1:
            raise ValueError(f"ProjectorConfig.view_bank must be None or >= 1, got {self.view_bank}.")


@dataclass
class KDConfig:
    """Student head on the eval backbone, distilled from the inherited head. `learning_rate` is × `batch / 256`."""

    epochs: int = 1000
    learning_rate: float = 1e-3
    max_batch_size: int = 100
    temperature: float = 4.0
    alpha: float = 0.5
    init_std: float = 0.01
    seed: int = 0
    view_bank: int | None = None  # as `ProjectorConfig.view_bank`

    def __post_init__(self):
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise ValueError(f"KDConfig needs 0 <= alpha <= 1 and temperature > 0; got {self}.")


@dataclass
class InheritanceState:
    """What the Distiller's inheritance methods have produced so far (kept on the Distiller between calls)."""

    head: nn.Linear | None = None
    head_record: dict[str, Any] = field(default_factory=dict)
    eval_extractor: FeatureExtractor | None = None
    eval_preprocessing: ImagePreprocessing | None = None
    projector: nn.Linear | None = None
    projector_record: dict[str, Any] = field(default_factory=dict)


def inheritance_state(distiller: Distiller) -> InheritanceState:
    state = getattr(distiller, "_inheritance", None)
    if state is None:
        state = InheritanceState()
        distiller._inheritance = state
    return state


# ---------------------------------------------------------------------------------------------------- features


def feature_pooling_name(feature_fn: FeatureFn) -> str:
    """The `SFMInheritedConfig.feature_pooling` name of an `hf_sfm.features` adapter (callables don't serialise)."""
    known = {
        feature_adapters._cls_token: "cls_token",
        feature_adapters._pooler_output: "pooler_output",
        feature_adapters._default: "pooler_output",
        feature_adapters._clip_embeds: "image_embeds",
    }
    if feature_fn not in known:
        raise ValueError(
            f"The feature function {getattr(feature_fn, '__qualname__', feature_fn)!r} is custom, and a saved "
            "classifier can only record the built-in poolings ('cls_token', 'pooler_output', 'image_embeds'). "
            "Use a backbone whose pooled feature is one of these (or register the family with "
            "`hf_sfm.features.register_feature_fn` using one of hf_sfm's adapters)."
        )
    return known[feature_fn]


def backbone_reference(model: nn.Module) -> tuple[str | None, str | None]:
    """Where a backbone's weights come from: `(name_or_path, revision)`, `None` where unknown."""
    config = getattr(model, "config", None)
    name = str(getattr(config, "_name_or_path", "") or "") or None
    revision = str(getattr(config, "_commit_hash", "") or "") or None
    return name, revision


# ---------------------------------------------------------------------------------------------------- training


def _cosine_adam(parameters, learning_rate: float, total_steps: int):
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return optimizer, scheduler


def train_linear_head(
    features_of: Callable[[torch.Tensor, int], torch.Tensor],
    labels: torch.Tensor,
    feature_dim: int,
    num_classes: int,
    config: InheritedHeadConfig,
    device: torch.device | str = "cpu",
    progress_desc: str | None = None,
) -> tuple[nn.Linear, list[float]]:
    """Train `nn.Linear(feature_dim, num_classes)` with cross-entropy, Adam and a cosine schedule over all steps.

    `features_of(index, epoch)` returns the `(B, feature_dim)` features of the examples `index` (a cached column
    row lookup, or a fresh augmented pass); `labels` `(N,)`. Returns the head and the per-epoch mean loss.
    """
    generator = torch.Generator().manual_seed(config.seed)
    head = nn.Linear(feature_dim, num_classes).to(device)
    with torch.no_grad():
        head.weight.copy_(torch.randn(num_classes, feature_dim, generator=generator) * config.init_std)
        head.bias.zero_()
    num_examples = len(labels)
    steps_per_epoch = math.ceil(num_examples / config.batch_size)
    epochs = config.num_epochs(num_examples)
    optimizer, scheduler = _cosine_adam(head.parameters(), config.learning_rate, epochs * steps_per_epoch)
    labels = labels.to(device)
    epoch_losses = []
    for epoch in tqdm(range(epochs), desc=progress_desc, disable=progress_desc is None):
        order = torch.randperm(num_examples, generator=generator)
        total = 0.0
        for start in range(0, num_examples, config.batch_size):
            index = order[start : start + config.batch_size]
            loss = F.cross_entropy(head(features_of(index, epoch).to(device)), labels[index.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(index)
        epoch_losses.append(total / num_examples)
    return head.eval(), epoch_losses


def _view_pairs(
    distill_extractor: FeatureExtractor,
    eval_extractor: FeatureExtractor,
    images: torch.Tensor,
    augmentation: Augmentation,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented view `a(x)` per image, seen by both backbones: `(φ_eval(a(x)), φ_distill(a(x)))`."""
    device = distill_extractor.mean.device
    with torch.no_grad():
        views = augmentation(images.to(device), generator)
        distill_features = distill_extractor(views)
        if eval_extractor is distill_extractor:
            return distill_features, distill_features
        eval_features = eval_extractor(resize(views, eval_extractor.input_size))
    return eval_features, distill_features


@torch.no_grad()
def view_feature_bank(
    distill_extractor: FeatureExtractor,
    eval_extractor: FeatureExtractor,
    images: torch.Tensor,
    augmentation: Augmentation,
    views: int,
    seed: int = 0,
    batch_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`views` augmented views of each of the `N` images through both backbones, computed once.

    Returns `(views, N, D_eval)` and `(views, N, D_distill)`; view `v` of image `i` is the same pixels for both.
    """
    generator = torch.Generator().manual_seed(seed)
    eval_bank, distill_bank = [], []
    for _ in tqdm(range(views), desc="View bank", leave=False, disable=views < 20):
        eval_rows, distill_rows = [], []
        for start in range(0, len(images), batch_size):
            eval_features, distill_features = _view_pairs(
                distill_extractor, eval_extractor, images[start : start + batch_size], augmentation, generator
            )
            eval_rows.append(eval_features)
            distill_rows.append(distill_features)
        eval_bank.append(torch.cat(eval_rows))
        distill_bank.append(torch.cat(distill_rows))
    return torch.stack(eval_bank), torch.stack(distill_bank)


def _view_sampler(
    distill_extractor: FeatureExtractor,
    eval_extractor: FeatureExtractor,
    images: torch.Tensor,
    augmentation: Augmentation,
    view_bank: int | None,
    generator: torch.Generator,
    bank: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """`index (B,)` → `(φ_eval(a(x)), φ_distill(a(x)))` of those images: a fresh view, or one drawn from a bank.

    `bank` is a precomputed `view_feature_bank(...)` result (shared by several fits); otherwise `view_bank` views
    are computed here, or none at all when it is `None`.
    """
    if bank is None and not view_bank:
        return lambda index: _view_pairs(distill_extractor, eval_extractor, images[index], augmentation, generator)
    if bank is None:
        seed = int(torch.randint(2**31, (1,), generator=generator))
        bank = view_feature_bank(distill_extractor, eval_extractor, images, augmentation, view_bank, seed=seed)
    eval_bank, distill_bank = bank
    if eval_bank.shape[1] != len(images) or distill_bank.shape[:2] != eval_bank.shape[:2]:
        raise ValueError(
            f"The view bank holds {tuple(eval_bank.shape[:2])} / {tuple(distill_bank.shape[:2])} (views, images) "
            f"features, but {len(images)} images were given."
        )
    num_views = eval_bank.shape[0]

    def sample(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view = torch.randint(num_views, (len(index),), generator=generator)
        return eval_bank[view, index], distill_bank[view, index]

    return sample


def fit_projector(
    distill_extractor: FeatureExtractor,
    eval_extractor: FeatureExtractor,
    images: torch.Tensor,
    augmentation: Augmentation,
    config: ProjectorConfig | None = None,
    progress_desc: str | None = "Fitting projector",
    bank: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[nn.Linear, list[float]]:
    """Fit `P: D_eval → D_distill` on `images` `(N, 3, S, S)` in `[0, 1]` by `MSE(P(φ_eval(a(x))), φ_distill(a(x)))`.

    Both backbones see the same augmented view `a(x)` (resized for the eval backbone when its input size
    differs). `nn.Linear`'s default initialisation (as the reference), Adam at `lr · batch / 256` with
    `batch = min(max_batch_size, N)`, cosine to 0 over all steps; `config.view_bank` trades fresh views for a
    precomputed bank, and `bank` passes one in (a `view_feature_bank` result). Returns the projector and the
    per-epoch mean MSE.
    """
    config = config or ProjectorConfig()
    device = distill_extractor.mean.device
    generator = torch.Generator().manual_seed(config.seed)
    eval_dim = _feature_dim(eval_extractor)
    distill_dim = _feature_dim(distill_extractor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        projector = nn.Linear(eval_dim, distill_dim).to(device)
    batch_size = min(config.max_batch_size, len(images))
    steps_per_epoch = math.ceil(len(images) / batch_size)
    optimizer, scheduler = _cosine_adam(
        projector.parameters(), config.learning_rate * batch_size / 256, config.epochs * steps_per_epoch
    )
    view_pairs = _view_sampler(
        distill_extractor, eval_extractor, images, augmentation, config.view_bank, generator, bank
    )
    epoch_losses = []
    for _ in tqdm(range(config.epochs), desc=progress_desc, disable=progress_desc is None, leave=False):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(images), batch_size):
            index = order[start : start + batch_size]
            eval_features, distill_features = view_pairs(index)
            loss = F.mse_loss(projector(eval_features), distill_features)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(index)
        epoch_losses.append(total / len(images))
    return projector.eval(), epoch_losses


def identity_projector(dim: int, device: torch.device | str = "cpu") -> nn.Linear:
    """`P = I`: the exact projector when the eval backbone is the distillation backbone."""
    projector = nn.Linear(dim, dim).to(device)
    with torch.no_grad():
        projector.weight.copy_(torch.eye(dim))
        projector.bias.zero_()
    return projector.eval()


@torch.no_grad()
def projection_mse(
    projector: nn.Module,
    distill_extractor: FeatureExtractor,
    eval_extractor: FeatureExtractor,
    images: torch.Tensor,
    augmentation: Augmentation,
    seed: int = 0,
    rounds: int = 4,
) -> float:
    """Mean `MSE(P(φ_eval(a(x))), φ_distill(a(x)))` over `rounds` seeded augmented views of `images`."""
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(rounds):
        eval_features, distill_features = _view_pairs(
            distill_extractor, eval_extractor, images, augmentation, generator
        )
        losses.append(F.mse_loss(projector(eval_features), distill_features).item())
    return float(np.mean(losses))


def train_kd_head(
    distill_extractor: FeatureExtractor,
    eval_extractor: FeatureExtractor,
    teacher_head: nn.Linear,
    images: torch.Tensor,
    labels: torch.Tensor,
    augmentation: Augmentation,
    config: KDConfig | None = None,
    progress_desc: str | None = "KD head",
    bank: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> nn.Linear:
    """Student head `D_eval → C` on the distilled set: `α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE`.

    Teacher logits `t = W · φ_distill(a(x))` (the inherited head), student `s = head(φ_eval(a(x)))`, same view.
    """
    config = config or KDConfig()
    device = distill_extractor.mean.device
    generator = torch.Generator().manual_seed(config.seed)
    num_classes = teacher_head.out_features
    eval_dim = _feature_dim(eval_extractor)
    student = nn.Linear(eval_dim, num_classes).to(device)
    with torch.no_grad():
        student.weight.copy_(torch.randn(num_classes, eval_dim, generator=generator) * config.init_std)
        student.bias.zero_()
    batch_size = min(config.max_batch_size, len(images))
    steps_per_epoch = math.ceil(len(images) / batch_size)
    optimizer, scheduler = _cosine_adam(
        student.parameters(), config.learning_rate * batch_size / 256, config.epochs * steps_per_epoch
    )
    labels = labels.to(device)
    temperature = config.temperature
    view_pairs = _view_sampler(
        distill_extractor, eval_extractor, images, augmentation, config.view_bank, generator, bank
    )
    for _ in tqdm(range(config.epochs), desc=progress_desc, disable=progress_desc is None, leave=False):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            index = order[start : start + batch_size]
            eval_features, distill_features = view_pairs(index)
            with torch.no_grad():
                soft_targets = F.softmax(teacher_head(distill_features) / temperature, dim=1)
            logits = student(eval_features)
            kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft_targets, reduction="batchmean")
            loss = config.alpha * kl * temperature**2 + (1 - config.alpha) * F.cross_entropy(
                logits, labels[index.to(device)]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return student.eval()


@torch.no_grad()
def _feature_dim(feature_extractor: FeatureExtractor) -> int:
    size = feature_extractor.input_size
    return feature_extractor(torch.zeros(1, 3, size, size, device=feature_extractor.mean.device)).shape[1]


@torch.no_grad()
def accuracy(logits_of: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 of `logits_of(features)` against `labels`, in batches."""
    correct = 0
    for start in range(0, len(labels), 4096):
        predictions = logits_of(features[start : start + 4096]).argmax(dim=1).cpu()
        correct += int((predictions == labels[start : start + 4096].cpu()).sum())
    return correct / max(1, len(labels))


# ---------------------------------------------------------------------------------------------------- packaging


def image_processor_for(preprocessing: ImagePreprocessing):
    """A `transformers` image processor that reproduces `preprocessing` (+ the backbone's normalisation).

    Shorter side → `resize_size` (bicubic), center crop `crop_size`, scale to `[0, 1]`, normalise, RGB: what
    `ImagePreprocessing` + `FeatureExtractor` do. `CLIPImageProcessor` is the stock processor with exactly these
    steps; the PIL backend is used because it resizes like `ImagePreprocessing` does.
    """
    try:
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:  # older transformers: one class with a PIL implementation
        from transformers import CLIPImageProcessor as processor_class

    return processor_class(
        do_resize=True,
        size={"shortest_edge": preprocessing.resize_size},
        resample=3,  # PIL.Image.Resampling.BICUBIC
        do_center_crop=True,
        crop_size={"height": preprocessing.crop_size, "width": preprocessing.crop_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(preprocessing.image_mean),
        image_std=list(preprocessing.image_std),
        do_convert_rgb=True,
    )


def _backbone_init_kwargs(backbone: nn.Module) -> dict[str, Any]:
    """Constructor arguments needed to rebuild `backbone` with the same modules (e.g. ViT without pooler)."""
    import inspect

    parameters = inspect.signature(type(backbone).__init__).parameters
    if "add_pooling_layer" in parameters and getattr(backbone, "pooler", "absent") is None:
        return {"add_pooling_layer": False}
    return {}


def build_inherited_classifier(
    eval_extractor: FeatureExtractor,
    eval_preprocessing: ImagePreprocessing,
    projector: nn.Linear,
    head: nn.Linear,
    class_names: list[str],
    *,
    distill_backbone: nn.Module | None = None,
    record: dict[str, Any] | None = None,
) -> SFMInheritedClassifier:
    """Assemble an [`SFMInheritedClassifier`] from a frozen eval backbone, a projector and an inherited head.

    The eval backbone's config is nested in the classifier's config and its weights are copied in; its feature
    function is recorded by name (`feature_pooling`); the image processor reproduces `eval_preprocessing`.
    """
    import transformers

    backbone = eval_extractor.model
    backbone_config = getattr(backbone, "config", None)
    if backbone_config is None or not hasattr(backbone_config, "to_dict"):
        raise ValueError(
            f"The eval backbone {type(backbone).__name__} has no `transformers` config, so it cannot be saved inside "
            "a from_pretrained classifier. Use a `transformers` vision model."
        )
    class_name = type(backbone).__name__
    name_or_path, revision = backbone_reference(backbone)
    distill_name, distill_revision = (
        backbone_reference(distill_backbone) if distill_backbone is not None else (None, None)
    )
    config = SFMInheritedConfig(
        vision_config=backbone_config.to_dict(),
        backbone_class=class_name if getattr(transformers, class_name, None) is type(backbone) else None,
        backbone_init_kwargs=_backbone_init_kwargs(backbone) or None,
        feature_pooling=feature_pooling_name(eval_extractor.feature_fn),
        eval_feature_dim=projector.in_features,
        distill_feature_dim=projector.out_features,
        backbone_name_or_path=name_or_path,
        backbone_revision=revision,
        distill_backbone_name_or_path=distill_name,
        distill_backbone_revision=distill_revision,
        id2label=dict(enumerate(class_names)),
        label2id={name: index for index, name in enumerate(class_names)},
        inheritance=dict(record or {}, versions=library_versions()),
    )
    if head.in_features != projector.out_features:
        raise ValueError(
            f"The head expects {head.in_features}-dim features but the projector outputs {projector.out_features}."
        )
    model = SFMInheritedClassifier(config)
    missing, unexpected = model.backbone.load_state_dict(backbone.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"Rebuilding {class_name} from its config gave other modules (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); this backbone cannot be embedded yet."
        )
    with torch.no_grad():
        model.projector.load_state_dict({k: v.detach().cpu() for k, v in projector.state_dict().items()})
        model.classifier.load_state_dict({k: v.detach().cpu() for k, v in head.state_dict().items()})
    model.image_processor = image_processor_for(eval_preprocessing)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- Distiller API


def _override(config, overrides: dict[str, Any]):
    unknown = set(overrides) - {f.name for f in dataclasses.fields(config)}
    if unknown:
        raise TypeError(f"Unknown {type(config).__name__} fields {sorted(unknown)}.")
    return dataclasses.replace(config, **overrides) if overrides else config


def real_features(distiller: Distiller, dataset: datasets.Dataset | None = None, desc: str = "Real features"):
    """The distillation backbone's features of `dataset` (default: the training set), cached as a column."""
    dataset = distiller.train_dataset if dataset is None else dataset
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError("Classifier inheritance needs a map-style `datasets.Dataset`, not a streaming one.")
    with distiller.accelerator.main_process_first():
        return embed_dataset(
            distiller.feature_extractor,
            distiller.preprocessing,
            dataset,
            image_column=distiller.image_column if distiller.image_column in dataset.column_names else None,
            label_column=distiller.label_column if distiller.label_column in dataset.column_names else None,
            batch_size=distiller.args.statistics_batch_size,
            num_proc=distiller.args.statistics_num_proc,
            skip_corrupt_images=distiller.args.skip_corrupt_images,
            desc=desc,
        )


def train_inherited_head(distiller: Distiller, config: InheritedHeadConfig | None = None, **overrides) -> nn.Linear:
    """Train the inherited head on the full real training set through the distillation backbone (see module doc)."""
    config = _override(config or InheritedHeadConfig(), overrides)
    device = distiller.accelerator.device
    dataset = distiller.train_dataset
    embedded = real_features(distiller)
    cached_features, labels = features_and_labels(embedded, distiller.label_column)
    rows = embedded_rows(embedded)  # the dataset rows of the embedded examples (undecodable images are left out)
    if config.augment:
        size = distiller.image_size
        source = ImagePreprocessing(size, size, distiller.preprocessing.image_mean, distiller.preprocessing.image_std)
        augmentation = Augmentation(
            distiller.preprocessing.crop_size, flip=True, crop=True, crop_scale=config.crop_scale, noise=False
        )
        generator = torch.Generator().manual_seed(config.seed + 1)

        def features_of(index: torch.Tensor, epoch: int) -> torch.Tensor:
            images = source(dataset[rows[index].tolist()][distiller.image_column]).to(device)
            with torch.no_grad():
                return distiller.feature_extractor(augmentation(images, generator))
    else:

        def features_of(index: torch.Tensor, epoch: int) -> torch.Tensor:
            return cached_features[index]

    head, losses = train_linear_head(
        features_of,
        labels,
        cached_features.shape[1],
        distiller.num_classes,
        config,
        device=device,
        progress_desc="Inherited head" if distiller.accelerator.is_local_main_process else None,
    )
    train_accuracy = accuracy(head, cached_features.to(device), labels)
    state = inheritance_state(distiller)
    state.head = head
    state.head_record = {
        "head": dict(
            dataclasses.asdict(config), epochs=len(losses), train_accuracy=train_accuracy, final_loss=losses[-1]
        ),
        "num_real_images": len(labels),
        "dataset_fingerprint": str(getattr(dataset, "_fingerprint", "")),
        "preprocessing": distiller.preprocessing.to_dict(),
    }
    logger.info(f"Inherited head: train accuracy {train_accuracy:.4f}, final loss {losses[-1]:.4f}")
    return head


def eval_feature_extractor(
    distiller: Distiller,
    eval_model: nn.Module | None = None,
    eval_image_processor: Any = None,
    eval_feature_fn: FeatureFn | None = None,
) -> tuple[FeatureExtractor, ImagePreprocessing]:
    """The eval backbone as a `FeatureExtractor` and its deterministic preprocessing.

    `eval_model=None` means the distillation backbone itself. The crop size follows `args.crop_size` when set
    (both backbones then see the same views), else the eval processor's own.
    """
    if eval_model is None:
        return distiller.feature_extractor, distiller.preprocessing
    if eval_image_processor is None:
        name, _ = backbone_reference(eval_model)
        if not name:
            raise ValueError(
                "fit_projector(eval_model=...) needs `eval_image_processor=` (its input size and normalisation): the "
                "eval model records no name or path to load one from."
            )
        from transformers import AutoImageProcessor

        eval_image_processor = AutoImageProcessor.from_pretrained(name)
    preprocessing = ImagePreprocessing.from_image_processor(eval_image_processor, distiller.args.crop_size)
    extractor = FeatureExtractor(eval_model, preprocessing, eval_feature_fn).to(distiller.accelerator.device)
    return extractor, preprocessing


def projector_augmentation(distiller: Distiller, crop_scale: tuple[float, float] = (0.08, 1.0)) -> Augmentation:
    """The distiller's augmentation (flip + random-resized crop at its crop size) with `crop_scale` and no noise."""
    return dataclasses.replace(distiller.augmentation, flip=True, crop=True, crop_scale=tuple(crop_scale), noise=False)


def fit_projector_for(
    distiller: Distiller,
    eval_model: nn.Module | None = None,
    eval_image_processor: Any = None,
    eval_feature_fn: FeatureFn | None = None,
    images: torch.Tensor | None = None,
    config: ProjectorConfig | None = None,
    **overrides,
) -> nn.Linear:
    """Fit the projector from `eval_model` features into the distillation backbone's feature space.

    `images` default to the distilled set (`distiller.synthetic_images()`). The augmentation is the distiller's
    with flip + random-resized crop over `config.crop_scale` and noise off. Same backbone → identity, no training.
    """
    config = _override(config or ProjectorConfig(), overrides)
    eval_extractor, eval_preprocessing = eval_feature_extractor(
        distiller, eval_model, eval_image_processor, eval_feature_fn
    )
    images = distiller.synthetic_images() if images is None else images
    augmentation = projector_augmentation(distiller, config.crop_scale)
    state = inheritance_state(distiller)
    same_backbone = eval_extractor.model is distiller.feature_extractor.model
    if same_backbone:
        projector, losses = identity_projector(_feature_dim(eval_extractor), distiller.accelerator.device), [0.0]
    else:
        projector, losses = fit_projector(
            distiller.feature_extractor,
            eval_extractor,
            images,
            augmentation,
            config,
            progress_desc="Fitting projector" if distiller.accelerator.is_local_main_process else None,
        )
    state.eval_extractor, state.eval_preprocessing, state.projector = eval_extractor, eval_preprocessing, projector
    state.projector_record = {
        "projector": dict(
            dataclasses.asdict(config),
            identity=same_backbone,
            initial_mse=losses[0],
            final_mse=losses[-1],
            num_distilled_images=len(images),
            augmentation=dataclasses.asdict(augmentation),
        )
    }
    return projector


def inherited_classifier(distiller: Distiller) -> SFMInheritedClassifier:
    """The `from_pretrained` classifier: eval backbone → projector → inherited head (trains the missing parts)."""
    state = inheritance_state(distiller)
    if state.head is None:
        train_inherited_head(distiller)
    if state.projector is None:
        fit_projector_for(distiller)
    record = {
        **state.head_record,
        **state.projector_record,
        "distillation": {"method": distiller.args.method, "ipc": distiller.args.ipc, "seed": distiller.args.seed},
    }
    return build_inherited_classifier(
        state.eval_extractor,
        state.eval_preprocessing,
        copy.deepcopy(state.projector),
        copy.deepcopy(state.head),
        list(distiller.class_names),
        distill_backbone=distiller.feature_extractor.model,
        record=record,
    )
