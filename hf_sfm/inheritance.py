"""Classifier inheritance (docs/DESIGN.md §5): train the parts of an [`SFMInheritedClassifier`], from explicit parts.

1. **Inherited head** `W: D_distill → C`, a linear head on the *full real* features of the distillation backbone.
   Reference: Adam 5e-4, batch 128, 10 epochs, cosine, flip + random-resized crop. Ten epochs of ImageNet-1k are
   about 100k optimiser steps; ten epochs of a small dataset are only a few hundred, too few for Adam at 5e-4 to
   fit the head, so by default the epochs are raised until the run has at least `min_steps` steps — inert at
   ImageNet scale. The default is also the cheap variant: every image is
   embedded once (deterministic resize + center crop) into a `datasets` column by a cached `datasets.map`, and the
   epochs run on that column; `augment=True` re-embeds a fresh augmented view per epoch as the reference does.
2. **Projector** `P: D_eval → D_distill`, fitted on the distilled images only, labels unused:
   `MSE(P(φ_eval(a(x))), φ_distill(a(x)))`, both backbones seeing the *same* augmented view `a(x)` (flip +
   random-resized crop, no noise); head frozen. Reference: Adam `1e-2 · batch / 256`, `batch = min(100, N)`,
   cosine, 1000 epochs. When the eval backbone *is* the distillation backbone the optimum is the identity and the
   loss is exactly 0 there, so the projector is set to the identity without training.
3. **Inference**: `logits = W · P(φ_eval(x))`, packaged as a `from_pretrained` model (`modeling_inherited.py`).

Optional: a *KD* student head on the eval backbone, trained on the distilled set with
`α · T² · KL(teacher ‖ student) + (1 − α) · CE` where the teacher is the inherited head on the distillation
backbone's features of the same view (reference: T = 4, α = 0.5, Adam `1e-3 · batch / 256`).

All three are `linear_fit.fit_linear` with their own `LinearFitConfig`; `ClassifierInheritance` holds what has been
trained (`head`, `projector`) as plain attributes, and `classifier()` refuses to assemble a model that lacks one.

**Cost.** The projector and KD embed their augmented views once, into a bank of `views=200` views per distilled
image that both backbones see (the reference draws a fresh view per epoch: `1000 · N` passes of each backbone instead
of `200 · N`); above `BANK_LIMIT` view rows the bank would not fit in memory and fresh views are drawn instead. The
head, unlike the §6 probe whose protocol is fixed, stops once its loss has flattened (`tolerance`/`patience`,
`linear_fit`), so its epoch count is a maximum. `ProjectorConfig(views=None)`, `InheritedHeadConfig(tolerance=None)`
are the reference (benchmarks/bench_inheritance.py --speed times both side by side).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from torch import nn

from .backbone.embedding import embed_dataset, embedded_rows, features_and_labels
from .backbone.features import FeatureExtractor, FeatureFn, frozen_features
from .backbone.frozen import FrozenBackbone
from .data.preprocessing import ImagePreprocessing
from .data.real_data import RealData
from .data.real_images import square_preprocessing
from .evaluation.linear_fit import LinearFitConfig, ViewFeatures, fit_linear, new_linear
from .modeling_inherited import SFMInheritedClassifier, SFMInheritedConfig
from .synthesis.augment import Augmentation
from .utils.versions import library_versions

logger = get_logger(__name__)

REFERENCE_HEAD_EPOCHS = 10  # docs/DESIGN.md §5, for ImageNet-1k
# The most `views · N` rows a projector / KD view bank may hold (per backbone, `D` floats each: ~1.3 GB at D = 1280);
# beyond it the fit draws fresh views per epoch, and its convergence stop keeps the number of epochs down.
BANK_LIMIT = 2**18


@dataclass
class InheritedHeadConfig(LinearFitConfig):
    """The inherited head on the full real features of the distillation backbone (docs/DESIGN.md §5).

    Reference settings (Adam 5e-4, unscaled, batch 128, cosine, `N(0, 0.01)` head), except that `epochs=None` means
    "10 epochs, or more if that is under `min_steps` optimiser steps" (see the module doc), and `augment=False`:
    features are computed once and cached as a `datasets` column instead of re-embedding an augmented view of every
    real image in every epoch. An explicit `epochs` is used as given. Those epochs are a maximum: the fit stops
    once the loss has flattened (`tolerance=1e-3` over windows of `patience=20` epochs, then a 20-epoch cooldown;
    `tolerance=None` runs them all). Cross-entropy on separable features keeps falling, so this mostly stops heads
    on hard, non-separable data.
    """

    epochs: int | None = None
    learning_rate: float = 5e-4
    batch_size: int = 128
    scale_learning_rate: bool = False
    min_steps: int = 3000
    augment: bool = False
    seed: int = 0
    tolerance: float | None = 1e-3
    patience: int = 20

    def __post_init__(self):
        super().__post_init__()
        if self.min_steps < 0:
            raise ValueError(f"InheritedHeadConfig.min_steps must be >= 0, got {self.min_steps}.")

    def num_epochs(self, num_examples: int) -> int:
        """`epochs` if given, else the reference's 10 raised to reach `min_steps` steps on `num_examples`."""
        if self.epochs is not None:
            return self.epochs
        steps_per_epoch = math.ceil(num_examples / self.batch_size)
        return max(REFERENCE_HEAD_EPOCHS, math.ceil(self.min_steps / steps_per_epoch))


@dataclass
class ProjectorConfig(LinearFitConfig):
    """The projector on the distilled images (docs/DESIGN.md §5): Adam `1e-2 · batch / 256`, `nn.Linear`'s default init.

    `crop_scale` is the view `a(x)`'s random-resized-crop range: the standard one, as in the probe, not the
    distillation's own, since the projector must map the views an eval backbone sees at inference, not the
    distillation's (the narrower range showed no gain; `benchmarks/bench_inheritance.py` compares them).

    Cost (module doc): a bank of `views=200` views per image embedded once (fresh views when `views · N` exceeds
    `BANK_LIMIT`); `views=None` is the reference's fresh view per epoch. A bank of a few hundred views per image
    matches the reference's accuracy at a fraction of its backbone passes (`bench_inheritance.py --speed` measures
    both). On the bank all 1000 epochs run, as they are cheap once the views are embedded; stopping once the MSE
    flattens would end the cosine schedule before its small-rate tail, which is where the fit settles. With fresh
    views, where each epoch costs two backbone passes per image, set `tolerance`.
    """

    learning_rate: float = 1e-2
    init_std: float | None = None
    seed: int = 0
    views: int | None = 200


@dataclass
class KDConfig(LinearFitConfig):
    """A student head on the eval backbone, distilled from the inherited head (`T`, `α` as the reference); views
    as `ProjectorConfig` (a bank of 200 views embedded once, all epochs on it)."""

    temperature: float = 4.0
    alpha: float = 0.5
    seed: int = 0
    views: int | None = 200

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise ValueError(f"KDConfig needs 0 <= alpha <= 1 and temperature > 0; got {self}.")


@dataclass
class InheritedHead:
    """The trained head `(D_distill → C)` and how it was trained."""

    layer: nn.Linear
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class Projector:
    """The fitted projector `(D_eval → D_distill)`, the eval backbone it reads, and how it was fitted."""

    layer: nn.Linear
    eval_extractor: FeatureExtractor
    eval_preprocessing: ImagePreprocessing
    record: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- the fits


def fit_projector(
    distill_extractor: FeatureExtractor,
    eval_extractor: FeatureExtractor,
    images: torch.Tensor,
    augmentation: Augmentation,
    config: ProjectorConfig | None = None,
    progress_desc: str | None = "Fitting projector",
    views: ViewFeatures | None = None,
) -> tuple[nn.Linear, list[float]]:
    """Fit `P: D_eval → D_distill` on `images` `(N, 3, S, S)` in `[0, 1]` by `MSE(P(φ_eval(a(x))), φ_distill(a(x)))`.

    Both backbones see the same augmented view `a(x)` (resized for the eval backbone when its input size differs).
    `views` shares one `ViewFeatures(images, [eval, distill], ...)` between fits (e.g. a bank). Returns the
    projector and the per-epoch mean MSE.
    """
    config = config or ProjectorConfig()
    device = distill_extractor.mean.device
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own initialisation, seeded, leaving the global RNG alone
        torch.manual_seed(config.seed)
        projector = nn.Linear(eval_extractor.feature_dim(), distill_extractor.feature_dim()).to(device)
    views = views or _paired_views(images, eval_extractor, distill_extractor, augmentation, generator, config)
    losses = fit_linear(
        projector, lambda index, epoch: views(index, epoch), F.mse_loss, len(images), config, generator, progress_desc
    )
    return projector, losses


def bank_views(config: LinearFitConfig, num_images: int) -> int | None:
    """The view bank a projector / KD fit on `num_images` images uses: `config.views`, or `None` (fresh views per
    epoch) when that bank would exceed `BANK_LIMIT` rows."""
    if config.views is None or config.views * num_images > BANK_LIMIT:
        return None
    return config.views


def _lookahead(config: LinearFitConfig) -> int:
    """Fresh views embedded ahead: a few batches when the fit may stop early (views past the stop are wasted), the
    long default otherwise (which keeps the generator's draws, hence the results, of a full-length fit)."""
    return 512 if config.tolerance is not None else 4096


def _paired_views(images, eval_extractor, distill_extractor, augmentation, generator, config) -> ViewFeatures:
    """The same augmented views through both backbones: what the projector and KD fit on."""
    return ViewFeatures(
        images,
        [eval_extractor, distill_extractor],
        augmentation,
        generator,
        bank_views(config, len(images)),
        lookahead=_lookahead(config),
        epochs=config.num_epochs(len(images)),  # the last look-ahead block stops where the fit does
    )


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
    views = ViewFeatures(images, [eval_extractor, distill_extractor], augmentation, torch.Generator().manual_seed(seed))
    every = torch.arange(len(images))
    return float(np.mean([F.mse_loss(projector(e), d).item() for e, d in (views(every) for _ in range(rounds))]))


def train_kd_head(
    distill_extractor: FeatureExtractor,
    eval_extractor: FeatureExtractor,
    teacher_head: nn.Linear,
    images: torch.Tensor,
    labels: torch.Tensor,
    augmentation: Augmentation,
    config: KDConfig | None = None,
    progress_desc: str | None = "KD head",
    views: ViewFeatures | None = None,
) -> nn.Linear:
    """Student head `D_eval → C` on the distilled set: `α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE`.

    Teacher logits `t = W · φ_distill(a(x))` (the inherited head), student `s = head(φ_eval(a(x)))`, same view.
    """
    config = config or KDConfig()
    device = distill_extractor.mean.device
    generator = torch.Generator().manual_seed(config.seed)
    student = new_linear(eval_extractor.feature_dim(), teacher_head.out_features, config, generator, device)
    views = views or _paired_views(images, eval_extractor, distill_extractor, augmentation, generator, config)
    labels = torch.as_tensor(labels).to(device)
    temperature = config.temperature

    def batches(index: torch.Tensor, epoch: int):
        eval_features, distill_features = views(index, epoch)
        with torch.no_grad():
            soft_targets = F.softmax(teacher_head(distill_features) / temperature, dim=1)
        return eval_features, (soft_targets, labels[index.to(device)])

    def kd_loss(logits: torch.Tensor, targets) -> torch.Tensor:
        soft_targets, hard_targets = targets
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft_targets, reduction="batchmean")
        return config.alpha * kl * temperature**2 + (1 - config.alpha) * F.cross_entropy(logits, hard_targets)

    fit_linear(student, batches, kd_loss, len(images), config, generator, progress_desc)
    return student


@torch.no_grad()
def accuracy(logits_of, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 of `logits_of(features)` against `labels`, in batches."""
    correct = 0
    for start in range(0, len(labels), 4096):
        predictions = logits_of(features[start : start + 4096]).argmax(dim=1).cpu()
        correct += int((predictions == labels[start : start + 4096].cpu()).sum())
    return correct / max(1, len(labels))


def backbone_reference(model: nn.Module) -> tuple[str | None, str | None]:
    """Where a backbone's weights come from: `(name_or_path, revision)`, `None` where unknown."""
    config = getattr(model, "config", None)
    name = str(getattr(config, "_name_or_path", "") or "") or None
    revision = str(getattr(config, "_commit_hash", "") or "") or None
    return name, revision


def pooling_name(extractor: FeatureExtractor) -> str:
    """The `SFMInheritedConfig.feature_pooling` of an extractor; a custom callable cannot be saved."""
    if extractor.pooling is None:
        raise ValueError(
            f"The feature function {extractor.feature_fn_name!r} is custom, and a saved classifier can only record "
            "the built-in poolings ('cls_token', 'pooler_output', 'image_embeds'). Use a backbone whose pooled "
            "feature is one of these, or register the family with "
            "`hf_sfm.register_feature_fn(model_type, '<pooling name>')`."
        )
    return extractor.pooling


# ---------------------------------------------------------------------------------------------------- the object


class ClassifierInheritance:
    """Trains an inherited head and projectors for one distillation backbone, from explicit parts.

    Args:
        feature_extractor: the distillation backbone φ_distill (frozen), with its normalisation.
        preprocessing: its deterministic preprocessing (the real features' view).
        class_names: the `C` class names, in label order.
        real_data: the real training set the head is trained on, with its columns, corrupt-image policy and the
            batch size and processes of its feature pass (`embedding.embed_dataset`).
        accelerator: optional; its `main_process_first` guards the cached feature column, its device is used.
        image_size: the synthetic resolution (real images are decoded at it for the augmented head).
        crop_size: the crop both backbones see in the projector's views (default: each processor's own).
        distillation: what produced the distilled set (method, ipc, seed), recorded in the classifier.
    """

    def __init__(
        self,
        feature_extractor: FeatureExtractor,
        preprocessing: ImagePreprocessing,
        class_names: list[str],
        *,
        real_data: RealData | None = None,
        accelerator: Accelerator | None = None,
        image_size: int | None = None,
        crop_size: int | None = None,
        distillation: dict[str, Any] | None = None,
    ):
        self.feature_extractor = feature_extractor
        self.preprocessing = preprocessing
        self.class_names = list(class_names)
        self.real_data = real_data
        self.train_dataset = real_data.dataset if real_data is not None else None
        self.image_column = real_data.image_column if real_data is not None else None
        self.label_column = real_data.label_column if real_data is not None else None
        self.accelerator = accelerator
        self.image_size = image_size or round(preprocessing.crop_size * 8 / 7)
        self.crop_size = crop_size
        self.batch_size = real_data.batch_size if real_data is not None else 64
        self.num_proc = real_data.num_proc if real_data is not None else None
        self.skip_corrupt_images = real_data.skip_corrupt_images if real_data is not None else True
        self.distillation = dict(distillation or {})
        self.head: InheritedHead | None = None
        self.projector: Projector | None = None

    @classmethod
    def from_config(
        cls, args, backbone: FrozenBackbone, real_data: RealData, accelerator: Accelerator, image_size: int
    ) -> ClassifierInheritance:
        """The inheritance of a run configured by `args` (a `DistillationConfig`: crop size, and the method, ipc and
        seed recorded in the classifier) on its distillation `backbone`, from its real data at `image_size`."""
        return cls(
            backbone.feature_extractor,
            backbone.preprocessing,
            real_data.class_names,
            real_data=real_data,
            accelerator=accelerator,
            image_size=image_size,
            crop_size=args.crop_size,
            distillation={"method": args.method, "ipc": args.ipc, "seed": args.seed},
        )

    @property
    def device(self) -> torch.device:
        return self.feature_extractor.mean.device

    @property
    def show_progress(self) -> bool:
        return self.accelerator is None or self.accelerator.is_local_main_process

    def real_features(self, dataset: datasets.Dataset | None = None, desc: str = "Real features") -> datasets.Dataset:
        """The distillation backbone's features of `dataset` (default: the training set), cached as a column."""
        dataset = self.train_dataset if dataset is None else dataset
        if not isinstance(dataset, datasets.Dataset):
            raise ValueError("Classifier inheritance needs a map-style `datasets.Dataset` of real training images.")
        guard = self.accelerator.main_process_first() if self.accelerator is not None else contextlib.nullcontext()
        with guard:
            return embed_dataset(
                self.feature_extractor,
                self.preprocessing,
                dataset,
                image_column=self.image_column if self.image_column in dataset.column_names else None,
                label_column=self.label_column if self.label_column in dataset.column_names else None,
                batch_size=self.batch_size,
                num_proc=self.num_proc,
                skip_corrupt_images=self.skip_corrupt_images,
                desc=desc,
            )

    def train_head(self, config: InheritedHeadConfig | None = None, **overrides: Any) -> nn.Linear:
        """Train the inherited head on the full real training set (see the module doc); keeps it as `self.head`."""
        config = _override(config or InheritedHeadConfig(), overrides)
        embedded = self.real_features()
        cached_features, labels = features_and_labels(embedded, self.label_column)
        device = self.device
        generator = torch.Generator().manual_seed(config.seed)
        head = new_linear(cached_features.shape[1], len(self.class_names), config, generator, device)
        labels_on_device = labels.to(device)
        if config.augment:
            features_of = self._augmented_real_features(embedded, config)
        else:

            def features_of(index: torch.Tensor) -> torch.Tensor:
                return cached_features[index]

        losses = fit_linear(
            head,
            lambda index, epoch: (features_of(index), labels_on_device[index.to(device)]),
            F.cross_entropy,
            len(labels),
            config,
            generator,
            "Inherited head" if self.show_progress else None,
        )
        train_accuracy = accuracy(head, cached_features.to(device), labels)
        self.head = InheritedHead(
            head,
            {
                "head": dict(
                    dataclasses.asdict(config), epochs=len(losses), train_accuracy=train_accuracy, final_loss=losses[-1]
                ),
                "num_real_images": len(labels),
                "dataset_fingerprint": str(getattr(self.train_dataset, "_fingerprint", "")),
                "preprocessing": self.preprocessing.to_dict(),
            },
        )
        logger.info(f"Inherited head: train accuracy {train_accuracy:.4f}, final loss {losses[-1]:.4f}")
        return head

    def _augmented_real_features(self, embedded: datasets.Dataset, config: InheritedHeadConfig):
        """A fresh flip + random-resized-crop view of each real image at every call (the reference's head)."""
        rows = embedded_rows(embedded)  # the dataset rows of the embedded examples (undecodable images left out)
        source = square_preprocessing(self.preprocessing, self.image_size)
        augmentation = Augmentation(
            self.preprocessing.crop_size, flip=True, crop=True, crop_scale=config.crop_scale, noise=False
        )
        generator = torch.Generator().manual_seed(config.seed + 1)
        image_column = self.image_column

        @torch.no_grad()
        def features_of(index: torch.Tensor) -> torch.Tensor:
            images = source(self.train_dataset[rows[index].tolist()][image_column]).to(self.device)
            return frozen_features(self.feature_extractor, augmentation(images, generator))

        return features_of

    def eval_backbone(
        self, eval_model: nn.Module | None = None, eval_image_processor: Any = None, eval_feature_fn=None
    ) -> tuple[FeatureExtractor, ImagePreprocessing]:
        """The eval backbone as a `FeatureExtractor` and its preprocessing; `None` is the distillation backbone.

        The crop follows `crop_size` when set (both backbones then see the same views), else the eval processor's.
        """
        if eval_model is None:
            return self.feature_extractor, self.preprocessing
        if eval_image_processor is None:
            name, _ = backbone_reference(eval_model)
            if not name:
                raise ValueError(
                    "fit_projector(eval_model=...) needs `eval_image_processor=` (its input size and normalisation): "
                    "the eval model records no name or path to load one from."
                )
            from transformers import AutoImageProcessor

            eval_image_processor = AutoImageProcessor.from_pretrained(name)
        preprocessing = ImagePreprocessing.from_image_processor(eval_image_processor, self.crop_size)
        return FeatureExtractor(eval_model, preprocessing, eval_feature_fn).to(self.device), preprocessing

    def view_augmentation(self, crop_scale: tuple[float, float] = (0.08, 1.0)) -> Augmentation:
        """The projector's view `a(x)`: flip + random-resized crop at the distillation crop size, no noise."""
        return Augmentation(
            self.preprocessing.crop_size, flip=True, crop=True, crop_scale=tuple(crop_scale), noise=False
        )

    def fit_projector(
        self,
        images: torch.Tensor,
        eval_model: nn.Module | None = None,
        eval_image_processor: Any = None,
        eval_feature_fn: FeatureFn | None = None,
        config: ProjectorConfig | None = None,
        **overrides: Any,
    ) -> nn.Linear:
        """Fit the projector from `eval_model` features into the distillation space on the distilled `images`
        `(N, 3, S, S)` (labels unused); keeps it as `self.projector`. Same backbone → identity, no training."""
        config = _override(config or ProjectorConfig(), overrides)
        eval_extractor, eval_preprocessing = self.eval_backbone(eval_model, eval_image_processor, eval_feature_fn)
        augmentation = self.view_augmentation(config.crop_scale)
        same_backbone = eval_extractor.model is self.feature_extractor.model
        if same_backbone:
            layer, losses = identity_projector(eval_extractor.feature_dim(), self.device), [0.0]
        else:
            layer, losses = fit_projector(
                self.feature_extractor,
                eval_extractor,
                images,
                augmentation,
                config,
                progress_desc="Fitting projector" if self.show_progress else None,
            )
        record = {
            "projector": dict(
                dataclasses.asdict(config),
                identity=same_backbone,
                initial_mse=losses[0],
                final_mse=losses[-1],
                epochs_run=len(losses),
                bank_views=None if same_backbone else bank_views(config, len(images)),
                num_distilled_images=len(images),
                augmentation=dataclasses.asdict(augmentation),
            )
        }
        self.projector = Projector(layer, eval_extractor, eval_preprocessing, record)
        return layer

    def classifier(self) -> SFMInheritedClassifier:
        """The `from_pretrained` classifier: eval backbone → projector → inherited head. Trains nothing."""
        missing = [
            name for name, part in (("train_head()", self.head), ("fit_projector(...)", self.projector)) if not part
        ]
        if missing:
            raise RuntimeError(
                f"The inherited classifier needs its head and projector: call {' and '.join(missing)} first."
            )
        return build_inherited_classifier(
            self.projector.eval_extractor,
            self.projector.eval_preprocessing,
            self.projector.layer,
            self.head.layer,
            self.class_names,
            distill_backbone=self.feature_extractor.model,
            record={**self.head.record, **self.projector.record, "distillation": self.distillation},
        )


def _override(config, overrides: dict[str, Any]):
    unknown = set(overrides) - {f.name for f in dataclasses.fields(config)}
    if unknown:
        raise TypeError(f"Unknown {type(config).__name__} fields {sorted(unknown)}.")
    return dataclasses.replace(config, **overrides) if overrides else config


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
        feature_pooling=pooling_name(eval_extractor),
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
    with torch.no_grad():  # copies: the classifier never shares a tensor with the trained parts
        model.projector.load_state_dict({k: v.detach().cpu() for k, v in projector.state_dict().items()})
        model.classifier.load_state_dict({k: v.detach().cpu() for k, v in head.state_dict().items()})
    model.image_processor = image_processor_for(eval_preprocessing)
    return model.eval()
