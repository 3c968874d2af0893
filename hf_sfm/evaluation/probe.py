"""The linear-probe protocol that judges a distilled set, and its metrics (docs/DESIGN.md §6). One implementation.

Protocol (as the SFM and LGM papers report it; `ProbeConfig()` holds their values): a linear head `N(0, 0.01)` on
frozen features of an *eval* backbone, trained on the (few) training images with a fresh flip + random-resized-crop
view every epoch, Adam at `1e-3 · batch / 256` with `batch = min(100, n_train)`, cosine to zero over 1000 epochs;
top-1 (and top-5) on the real test set (resize + center crop) at the last epoch; 5 runs with different seeds,
mean ± population std. Cross-model evaluation is the same call with another eval backbone.

Two labelled reductions make it affordable on a CPU: `views=V` draws each epoch's view from `V` views embedded
once (`linear_fit.ViewFeatures`), and `augment=False` trains on one deterministic resized view.
`DistillationConfig.probe_protocol` picks between the papers' fresh views ("paper") and a `FAST_PROBE_VIEWS` bank
("fast", the default); `evaluate_training_sets` logs which protocol ran (`protocol_description`). All runs of all
training sets of one call train together (`train_linear_probes`), each run as it would alone.

`ProbeEvaluator` caches the test split's features once per eval backbone; `evaluate_training_sets` probes any
number of training sets (the distilled set, real-image baselines from `hf_sfm.evaluation.baselines`) into one typed
`EvaluationReport` (`hf_sfm.evaluation.results`), whose `metrics("eval")` is what `Distiller.evaluate()` returns.

Metrics go through `evaluate`, from modules shipped in `hf_sfm/evaluation/metrics/` (`evaluate.load("accuracy")`
would need the Hub). A `compute_metrics(EvalPrediction) -> dict` as in `Trainer` replaces them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import EvalPrediction

from ..backbone.embedding import embed_dataset, features_and_labels
from ..backbone.features import FeatureExtractor, FeatureFn
from ..backbone.frozen import FrozenBackbone
from ..data.columns import class_names_of, find_image_column, find_label_column
from ..data.preprocessing import ImagePreprocessing
from ..data.real_data import RealData
from ..data.real_images import RealImages, square_preprocessing
from ..synthesis.augment import Augmentation
from .baselines import RealBaselines
from .linear_fit import LinearFitConfig, ViewFeatures, embed_resized, fit_linear, fit_linear_stack
from .results import INHERITED, TRAINING_SETS, EvaluationReport, ProbeScores

logger = logging.getLogger(__name__)
# A log record's attribute (`extra=`) marking a message the run record keeps out of the card's "warnings".
NOT_FOR_CARD = "hf_sfm_not_for_card"
METRICS_DIR = Path(__file__).parent / "metrics"
ComputeMetrics = Callable[[EvalPrediction], Mapping[str, float]]
# run → (images (N, 3, S, S) in [0, 1], labels (N,)): a training set, possibly drawn anew per run (random real).
TrainingSet = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ProbeConfig(LinearFitConfig):
    """The §6 linear probe. Defaults are the papers' protocol (see the module docstring).

    Args (beyond `LinearFitConfig`'s `epochs`, `learning_rate`, `batch_size`, `init_std`, `views`, `crop_scale`):
        augment: flip + random-resized crop on the training images (reference: True). False trains on one
            deterministic resized view, features computed once: far cheaper, usually a little weaker.

    Short probes. The protocol's rate `1e-3 · batch / 256` is tiny on a few images (3 images: 1.2e-5), and its
    1000 epochs are what make up for it. Cut the epochs and the head barely leaves its `N(0, 0.01)` start: every
    training set, distilled or real, then scores chance. `step_budget` (the sum of the learning rates over all
    steps, which bounds how far Adam can move any weight) measures this; below `MIN_PROBE_STEP_BUDGET` the probe
    logs a warning, since its accuracy says nothing. For a meaningful short probe set a fixed rate:
    `ProbeConfig(epochs=50, learning_rate=1e-2, scale_learning_rate=False)` (recipe: `--probe_learning_rate 1e-2`).
    """

    augment: bool = True

    def step_budget(self, num_examples: int) -> float:
        """`Σ lr` over the fit's steps (`epochs · ⌈N / batch⌉ · lr`, ignoring the cosine's factor ½): how far Adam
        can move one weight. The papers' protocol gives 0.039 for 10 images and 3.9 for ImageNet-1k at ipc 1."""
        steps = self.num_epochs(num_examples) * math.ceil(num_examples / self.batch_for(num_examples))
        return steps * self.learning_rate_for(num_examples)

    def too_short(self, num_examples: int) -> str | None:
        """Why a probe on `num_examples` images cannot leave chance, or `None` when its step budget suffices."""
        budget = self.step_budget(num_examples)
        if budget >= MIN_PROBE_STEP_BUDGET:
            return None
        return (
            f"The linear probe on {num_examples} images can barely move its head: {self.num_epochs(num_examples)} "
            f"epochs at learning rate {self.learning_rate_for(num_examples):.2g} (step budget {budget:.2g} < "
            f"{MIN_PROBE_STEP_BUDGET}), so its accuracy is about chance whatever the images. Use the protocol's "
            "1000 epochs (probe_epochs), or a fixed rate for short probes: ProbeConfig(learning_rate=1e-2, "
            "scale_learning_rate=False) (recipe: --probe_learning_rate 1e-2)."
        )


# Below this `ProbeConfig.step_budget` a probe's accuracy is chance on the tiny test backbones (0.0035: chance;
# 0.012, the protocol on 3 images: well above), so it is reported as meaningless.
MIN_PROBE_STEP_BUDGET = 0.01


# The protocols `DistillationConfig.probe_protocol` names, as the view bank each uses (`None`: fresh views).
# "paper": the SFM/LGM papers' (a fresh view per image and epoch). "fast": the same runs and epochs, each epoch's view
# drawn from a bank of `FAST_PROBE_VIEWS` views per image embedded once: `V · N` backbone passes instead of
# `epochs · N`. benchmarks/eval_speed.py measures both side by side, in stds of the papers' protocol.
FAST_PROBE_VIEWS = 64
PROBE_PROTOCOLS: dict[str, int | None] = {"fast": FAST_PROBE_VIEWS, "paper": None}
PAPER_EPOCHS, PAPER_RUNS = 1000, 5


def protocol_views(protocol: str, epochs: int) -> int | None:
    """`ProbeConfig.views` of `protocol` for `epochs` epochs. With at most `FAST_PROBE_VIEWS` epochs a fresh view per
    epoch costs no more than the bank, so "fast" is then the papers' fresh views."""
    if protocol not in PROBE_PROTOCOLS:
        raise ValueError(f"Unknown probe protocol {protocol!r}; choose one of {tuple(PROBE_PROTOCOLS)}.")
    views = PROBE_PROTOCOLS[protocol]
    return views if views is not None and epochs > views else None


def protocol_description(config: ProbeConfig, runs: int) -> str:
    """Which protocol a probe ran, in words: the papers' (fresh views), the fast one (the bank), or another, with its
    runs, epochs and views."""
    if not config.augment:
        kind, views = "a custom probe protocol", "one deterministic resized view (no augmentation)"
    elif config.views is None:
        kind, views = "the papers' probe protocol", "a fresh augmented view per image and epoch"
    else:
        kind = "the fast probe protocol" if config.views == FAST_PROBE_VIEWS else "a custom probe protocol"
        views = f"each epoch's view drawn from a bank of {config.views} augmented views per image"
    shape = f"{runs} runs x {config.epochs} epochs, {views}"
    if (runs, config.epochs) != (PAPER_RUNS, PAPER_EPOCHS):
        shape += f"; the papers run {PAPER_RUNS} x {PAPER_EPOCHS}"
    if config.augment and config.views is not None:
        shape += "; probe_protocol='paper' for fresh views"
    return f"{kind} ({shape})"


# ---------------------------------------------------------------------------------------------------- the probe


def train_linear_probe(
    feature_extractor: FeatureExtractor,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: ProbeConfig | None = None,
    seed: int = 0,
) -> nn.Linear:
    """Train the protocol's head on `(N, 3, S, S)` images in `[0, 1]` through the frozen `feature_extractor`.

    With `config.augment`, every epoch sees a flip + random-resized-crop view at the backbone's input resolution
    (fresh each epoch, or one of `config.views` embedded views); without it, the resized images' features are
    computed once. Deterministic given `seed`. `train_linear_probes` trains many of these at once.
    """
    config = config or ProbeConfig()
    if len(images) == 0:
        raise ValueError("Cannot train a linear probe on zero images.")
    generator = torch.Generator().manual_seed(seed)
    features_of = _probe_features(feature_extractor, images, config, generator)
    device = feature_extractor.mean.device
    return fit_probe(features_of, feature_extractor.feature_dim(), labels, num_classes, config, seed, generator, device)


def _probe_features(
    feature_extractor: FeatureExtractor, images: torch.Tensor, config: ProbeConfig, generator: torch.Generator
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """`(index, epoch) → (B, D)`: augmented views (fresh or from a bank, drawn from `generator`) or fixed features."""
    if config.augment:
        augmentation = Augmentation(
            feature_extractor.input_size, flip=True, crop=True, crop_scale=config.crop_scale, noise=False
        )
        epochs = config.num_epochs(len(images))
        views = ViewFeatures(images, [feature_extractor], augmentation, generator, config.views, epochs=epochs)

        def features_of(index: torch.Tensor, epoch: int) -> torch.Tensor:
            return views(index, epoch)[0]
    else:
        fixed = embed_resized(feature_extractor, images).to(feature_extractor.mean.device)

        def features_of(index: torch.Tensor, epoch: int) -> torch.Tensor:
            return fixed[index.to(fixed.device)]

    return features_of


def train_linear_probes(
    feature_extractor: FeatureExtractor,
    training_sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    config: ProbeConfig | None = None,
    seeds: Sequence[int] = (),
) -> list[nn.Linear]:
    """`train_linear_probe(feature_extractor, images, labels, num_classes, config, seed)` for every
    `(images, labels)` of `training_sets` with its seed, trained together: the sets of the same size are one stacked
    linear fit (`linear_fit.fit_linear_stack`), one optimiser step per mini-batch for all of them.

    Each run draws its views and shuffles from its own generator in the order the one-by-one probe does, so each
    head equals `train_linear_probe`'s up to float rounding (the batched matmul). Views are embedded per run, each
    look-ahead block of fresh views (or bank) in one `frozen_features` call: already the backbone's full batch.
    """
    config = config or ProbeConfig()
    if len(seeds) != len(training_sets):
        raise ValueError(
            f"train_linear_probes needs one seed per training set, got {len(seeds)} for {len(training_sets)}."
        )
    by_size: dict[int, list[int]] = {}
    for position, (images, labels) in enumerate(training_sets):
        if len(images) == 0:
            raise ValueError("Cannot train a linear probe on zero images.")
        if len(labels) != len(images):
            raise ValueError(f"A training set has {len(images)} images but {len(labels)} labels.")
        by_size.setdefault(len(images), []).append(position)
    device = feature_extractor.mean.device
    dim = feature_extractor.feature_dim()
    heads: list[nn.Linear | None] = [None] * len(training_sets)
    for num_images, positions in by_size.items():
        if reason := config.too_short(num_images):
            _warn_once(reason)
        generators, batches = [], []
        for position in positions:
            images, labels = training_sets[position]
            generator = torch.Generator().manual_seed(seeds[position])
            features_of = _probe_features(feature_extractor, images, config, generator)
            probe_labels = torch.as_tensor(labels).to(device)
            heads[position] = _probe_head(dim, num_classes, config, seeds[position], device)
            generators.append(generator)
            batches.append(_labelled_batches(features_of, probe_labels))
        progress = f"Probing ({len(positions)} runs of {num_images} images together)"
        fit_linear_stack(
            [heads[p] for p in positions], batches, stacked_cross_entropy, num_images, config, generators, progress
        )
    return heads


def _labelled_batches(features_of: Callable[[torch.Tensor, int], torch.Tensor], labels: torch.Tensor):
    def batches(index: torch.Tensor, epoch: int):
        return features_of(index, epoch), labels[index.to(labels.device)]

    return batches


def stacked_cross_entropy(logits: torch.Tensor, targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """`(R, B, C)` logits and `R` target vectors `(B,)` → `(R,)`: each run's mean cross-entropy."""
    runs, batch = logits.shape[:2]
    flat = F.cross_entropy(logits.flatten(0, 1), torch.cat(list(targets)), reduction="none")
    return flat.view(runs, batch).mean(dim=1)


def fit_probe(
    features_of: Callable[[torch.Tensor, int], torch.Tensor],
    feature_dim: int,
    labels: torch.Tensor,
    num_classes: int,
    config: ProbeConfig | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> nn.Linear:
    """The protocol's head trained on `features_of(index, epoch) → (B, D)` (e.g. a shared `ViewFeatures`)."""
    config = config or ProbeConfig()
    generator = generator or torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    if isinstance(config, ProbeConfig) and (reason := config.too_short(len(labels))):
        _warn_once(reason)
    device = device or labels.device
    probe_labels = labels.to(device)
    head = _probe_head(feature_dim, num_classes, config, seed, device)

    def batches(index: torch.Tensor, epoch: int):
        return features_of(index, epoch), probe_labels[index.to(device)]

    fit_linear(head, batches, F.cross_entropy, len(labels), config, generator)
    return head


def fit_probe_on_features(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, config: ProbeConfig | None = None, seed: int = 0
) -> nn.Linear:
    """The protocol's head on precomputed `(N, D)` features (no augmentation possible): the full-data probe."""
    if len(features) == 0:
        raise ValueError("Cannot train a linear probe on zero images.")
    return fit_probe(
        lambda index, epoch: features[index.to(features.device)],
        features.shape[1],
        labels,
        num_classes,
        config,
        seed,
        device=features.device,
    )


@functools.lru_cache(maxsize=16)
def _warn_once(message: str) -> None:
    """Log a warning once (a probe runs `eval_runs` times per training set and evaluation), until
    `forget_warnings`: a recorded run starts with it, so its card carries its own warnings even when an earlier run
    in the same process gave the same one."""
    logger.warning(message)


def forget_warnings() -> None:
    """Let the probe's once-only warnings be logged again (the start of a run whose warnings are recorded)."""
    _warn_once.cache_clear()


def say_protocol(message: str) -> None:
    """Say which probe protocol ran, at warning level so a default-configured Python user sees it. It is a
    statement, not a caveat, and a card gives the protocol in its own section, so the run record keeps it out of
    the card's warnings (`NOT_FOR_CARD`)."""
    logger.warning(message, extra={NOT_FOR_CARD: True})


def _probe_head(dim: int, num_classes: int, config: ProbeConfig, seed: int, device: torch.device) -> nn.Linear:
    """`N(0, init_std)` weights from the run's own device generator (so the head does not shift the view draws)."""
    head = nn.Linear(dim, num_classes).to(device)
    with torch.no_grad():
        head.weight.normal_(0.0, config.init_std, generator=torch.Generator(device).manual_seed(seed))
        head.bias.zero_()
    return head


# ---------------------------------------------------------------------------------------------------- metrics


def metric_path(name: str) -> Path:
    """The folder of a metric module shipped with hf_sfm (`accuracy`, `top5_accuracy`)."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"hf_sfm ships no metric {name!r}; available: {available}.")
    return path


def load_metric(name: str, **kwargs: Any):
    """`evaluate.load` of a metric module shipped with hf_sfm: works offline, unlike `evaluate.load("accuracy")`."""
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_path(name)), **kwargs)


class DefaultMetrics:
    """`compute_metrics` of the protocol: top-1 and top-5 accuracy through the shipped `evaluate` modules."""

    def __init__(self):
        self.accuracy = load_metric("accuracy")
        self.top5 = load_metric("top5_accuracy")

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        logits, references = np.asarray(prediction.predictions), np.asarray(prediction.label_ids).tolist()
        top1 = self.accuracy.compute(predictions=logits.argmax(axis=1).tolist(), references=references)
        top5 = self.top5.compute(prediction_scores=logits.tolist(), references=references, k=5)
        return {"accuracy": top1["accuracy"], "top5_accuracy": top5["top5_accuracy"]}


# ---------------------------------------------------------------------------------------------------- evaluator


class ProbeEvaluator:
    """The probe protocol on one *eval* backbone, with the real test split's features computed once.

    Args:
        model: the eval backbone (any HF vision model; frozen, never trained).
        image_processor: its image processor (input size and normalisation).
        test_dataset: the real test split, with an image and a label column.
        crop_size: input resolution of the backbone (default: the processor's).
        feature_fn: optional pooled-feature override, as for the `Distiller`.
        num_classes: number of classes (default: from the test split's labels).
        name: how results name the backbone (default: the model config's `_name_or_path`).
        compute_metrics: `EvalPrediction(predictions=(N_test, C) logits, label_ids=(N_test,)) → {name: value}`, as
            in `Trainer`; default top-1 and top-5 accuracy.
    """

    def __init__(
        self,
        model: nn.Module,
        image_processor: Any,
        test_dataset: datasets.Dataset,
        crop_size: int | None = None,
        feature_fn: FeatureFn | None = None,
        image_column: str | None = None,
        label_column: str | None = None,
        num_classes: int | None = None,
        name: str | None = None,
        device: torch.device | str | None = None,
        batch_size: int = 256,
        compute_metrics: ComputeMetrics | None = None,
        feature_extractor: FeatureExtractor | None = None,
    ):
        self.preprocessing = ImagePreprocessing.from_image_processor(image_processor, crop_size)
        self.feature_extractor = feature_extractor or FeatureExtractor(model, self.preprocessing, feature_fn)
        self.feature_extractor.to(device or self.feature_extractor.mean.device)
        self.test_dataset = test_dataset
        self.image_column = find_image_column(test_dataset, image_column)
        self.label_column = find_label_column(test_dataset, label_column)
        self.num_classes = num_classes or len(class_names_of(test_dataset, self.label_column))
        config = getattr(self.feature_extractor.model, "config", None)
        self.name = name or str(getattr(config, "_name_or_path", "") or type(self.feature_extractor.model).__name__)
        self.batch_size = batch_size
        self.compute_metrics = compute_metrics
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, test_dataset: datasets.Dataset, **kwargs: Any) -> ProbeEvaluator:
        """Load backbone and image processor from a `save_pretrained` folder (or Hub id) and build the evaluator."""
        from transformers import AutoImageProcessor, AutoModel

        kwargs.setdefault("name", str(path))
        return cls(AutoModel.from_pretrained(path), AutoImageProcessor.from_pretrained(path), test_dataset, **kwargs)

    @property
    def input_size(self) -> int:
        return self.feature_extractor.input_size

    def test_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(N_test, D)` features and `(N_test,)` labels of the test split, computed on first use only."""
        if self._test is None:
            self._test = features_and_labels(
                embed_dataset(
                    self.feature_extractor,
                    self.preprocessing,
                    self.test_dataset,
                    image_column=self.image_column,
                    label_column=self.label_column,
                    batch_size=self.batch_size,
                    desc=f"Test features ({self.name})",
                ),
                self.label_column,
            )
        return self._test

    @torch.no_grad()
    def score(self, head: nn.Module) -> dict[str, float]:
        """`compute_metrics` of a trained head's logits on the cached test features."""
        if self.compute_metrics is None:
            self.compute_metrics = DefaultMetrics()
        features, labels = self.test_features()
        device = next(head.parameters()).device
        logits = torch.cat([head(features[i : i + 4096].to(device)).cpu() for i in range(0, len(features), 4096)])
        metrics = self.compute_metrics(EvalPrediction(predictions=logits.float().numpy(), label_ids=labels.numpy()))
        return {name: float(value) for name, value in metrics.items()}

    def probe(
        self, name: str, training_set: TrainingSet, runs: int = 5, config: ProbeConfig | None = None, seed: int = 0
    ) -> ProbeScores:
        """Train `runs` probes (seeds `seed, seed + 1, …`) on `training_set(run)` and score each."""
        return self.probe_together({name: training_set}, runs, config, seed)[0]

    def probe_together(
        self, training_sets: Mapping[str, TrainingSet], runs: int = 5, config: ProbeConfig | None = None, seed: int = 0
    ) -> list[ProbeScores]:
        """`probe(name, training_set, runs, config, seed)` for every named training set, all runs of all sets trained
        together (`train_linear_probes`); each run's head is the one `probe` alone would train."""
        if runs < 1:
            raise ValueError(f"A probe needs runs >= 1, got {runs}.")
        drawn = {name: [training_set(run) for run in range(runs)] for name, training_set in training_sets.items()}
        flat = [run_set for run_sets in drawn.values() for run_set in run_sets]
        seeds = [seed + run for _ in drawn for run in range(runs)]
        heads = iter(train_linear_probes(self.feature_extractor, flat, self.num_classes, config, seeds))
        scores = []
        for name, run_sets in drawn.items():
            per_run = tuple(self.score(next(heads)) for _ in run_sets)
            scores.append(ProbeScores(name, per_run, tuple(range(seed, seed + runs)), len(run_sets[-1][0])))
        return scores

    def probe_full_dataset(
        self,
        train_data: RealData | datasets.Dataset,
        runs: int = 5,
        config: ProbeConfig | None = None,
        seed: int = 0,
        image_size: int | None = None,
    ) -> ProbeScores:
        """Upper bound: the probe trained on the whole real training set.

        With `config.augment=False` the training features are those of the deterministic test-time preprocessing,
        computed once (the affordable choice for a large set); otherwise the images are decoded once at
        `image_size` (default `crop · 8 / 7`) and augmented like synthetic ones. A bare dataset's columns are
        detected; a `RealData` brings the user's columns and corrupt-image policy.
        """
        config = config or ProbeConfig()
        data = train_data if isinstance(train_data, RealData) else RealData.from_dataset(train_data)
        if config.augment:
            size = image_size or round(self.input_size * 8 / 7)
            real = RealImages.from_dataset(
                data.dataset,
                square_preprocessing(self.preprocessing, size),
                data.image_column,
                data.label_column,
                skip_corrupt_images=data.skip_corrupt_images,
            )
            return self.probe("full_dataset", lambda run: (real.images(), real.labels), runs, config, seed)
        features, labels = features_and_labels(
            embed_dataset(
                self.feature_extractor,
                self.preprocessing,
                data.dataset,
                image_column=data.image_column,
                label_column=data.label_column,
                batch_size=self.batch_size,
                num_proc=data.num_proc,
                skip_corrupt_images=data.skip_corrupt_images,
                desc=f"Train features ({self.name})",
            ),
            data.label_column,
        )
        device = self.feature_extractor.mean.device
        per_run = [
            self.score(fit_probe_on_features(features.to(device), labels, self.num_classes, config, seed + run))
            for run in range(runs)
        ]
        return ProbeScores("full_dataset", tuple(per_run), tuple(range(seed, seed + runs)), len(features))

    def report(self) -> EvaluationReport:
        """An empty report for this backbone (test-split size filled in), to `add` probe scores to."""
        return EvaluationReport(eval_backbone=self.name, num_test_images=len(self.test_features()[1]))


def evaluate_training_sets(
    evaluator: ProbeEvaluator,
    training_sets: Mapping[str, TrainingSet],
    runs: int = 5,
    config: ProbeConfig | None = None,
    seed: int = 0,
    full_dataset: RealData | datasets.Dataset | None = None,
) -> EvaluationReport:
    """Probe each training set (`name → run → (images, labels)`) with the same protocol, seeds and test split.

    `full_dataset`, when given, adds the full-data upper bound (deterministic view: `augment=False`).
    """
    config = config or ProbeConfig()
    start = time.perf_counter()
    report = evaluator.report()
    report.probe_epochs = config.epochs
    report.probe_views = config.views or 0
    report.probe_augment = config.augment
    say_protocol(
        f"Linear probes of {', '.join(training_sets)} on {evaluator.name}: {protocol_description(config, runs)}."
    )
    for scores in evaluator.probe_together(training_sets, runs, config, seed):
        report.add(scores)
    if full_dataset is not None:
        full_config = dataclasses.replace(config, augment=False, views=None)
        report.add(evaluator.probe_full_dataset(full_dataset, runs, full_config, seed))
    report.runtime = time.perf_counter() - start
    return report


@torch.no_grad()
def classifier_accuracy(
    model: nn.Module,
    dataset: datasets.Dataset,
    image_processor: Any = None,
    batch_size: int = 64,
    image_column: str | None = None,
    label_column: str | None = None,
) -> float:
    """Top-1 of an image-classification model from pixels, as users will run it: its own image processor, its logits.

    For the inherited classifier this measures the saved artefact (processor → backbone → projector → head), not
    the training-side feature path. `image_processor` defaults to `model.image_processor`.
    """
    image_processor = image_processor if image_processor is not None else getattr(model, "image_processor", None)
    if image_processor is None:
        raise ValueError("classifier_accuracy needs the model's image processor: pass image_processor=.")
    image_column = find_image_column(dataset, image_column)
    label_column = find_label_column(dataset, label_column)
    device = next(model.parameters()).device
    correct = total = 0
    for batch in dataset.iter(batch_size=batch_size):
        pixel_values = image_processor(batch[image_column], return_tensors="pt")["pixel_values"].to(device)
        predictions = model(pixel_values=pixel_values).logits.argmax(dim=1).cpu()
        labels = torch.as_tensor(batch[label_column])
        correct += int((predictions == labels).sum())
        total += len(labels)
    if total == 0:
        raise ValueError("classifier_accuracy got an empty dataset.")
    return correct / total


EVAL_MODEL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Words the metric keys of `EvaluationReport.metrics` already use after the prefix: an eval model named so would
# write `eval_<word>_…` over (or be read back as) another entry.
RESERVED_EVAL_MODEL_NAMES = frozenset(
    {"mean", "backbone", "runs", "num", "probe", "runtime", "top5", INHERITED, *TRAINING_SETS}
)


@dataclass(frozen=True)
class EvalModel:
    """A named extra eval backbone of `Distiller(eval_models=...)`: its metrics read `eval_<name>_accuracy`."""

    name: str
    model: nn.Module
    image_processor: Any = None  # None: the distillation backbone's processor
    feature_fn: FeatureFn | None = None


def named_eval_models(
    distillation_models: Mapping[str, Any] | None, eval_models: Mapping[str, Any] | None = None
) -> list[EvalModel]:
    """`{"lite1": model | (model, processor) | (model, processor, feature_fn)}` as `EvalModel`s, names checked
    (lowercase slugs, unique, not a word the metric keys already use) before any work. `distillation_models` are
    the run's other distillation backbones (named by their short names), evaluated first; a user's eval model
    under one of their names is refused rather than silently replacing it."""
    distillation_models = dict(distillation_models or {})
    if eval_models is not None and isinstance(eval_models, Mapping):
        clash = sorted(set(distillation_models) & set(eval_models))
        if clash:
            raise ValueError(
                f"eval_models names {clash} are already the names of distillation backbones, which evaluate() probes "
                "anyway (eval_<name>_accuracy); drop them from eval_models or rename them."
            )
        eval_models = {**distillation_models, **eval_models}
    elif eval_models is None:
        eval_models = distillation_models or None
    if eval_models is None:
        return []
    if not isinstance(eval_models, Mapping):
        raise TypeError(
            f"eval_models must be a dict {{name: model or (model, processor[, feature_fn])}}, got "
            f"{type(eval_models).__name__}."
        )
    named = []
    for name, value in eval_models.items():
        if not isinstance(name, str) or not EVAL_MODEL_NAME.match(name):
            raise ValueError(
                f"eval_models name {name!r} must be a lowercase slug (letters, digits, '_', starting with a letter), "
                "e.g. 'lite1': it becomes the metric key eval_<name>_accuracy."
            )
        if name in RESERVED_EVAL_MODEL_NAMES or any(name.startswith(f"{word}_") for word in TRAINING_SETS):
            raise ValueError(
                f"eval_models name {name!r} clashes with the metric keys evaluate() already writes "
                f"(eval_{name}_…); choose another, e.g. 'eval_{name}'."
            )
        parts = value if isinstance(value, tuple | list) else (value,)
        if not 1 <= len(parts) <= 3 or not isinstance(parts[0], nn.Module):
            raise ValueError(
                f"eval_models[{name!r}] must be a model, (model, processor) or (model, processor, feature_fn), got "
                f"{type(value).__name__}."
            )
        named.append(EvalModel(name, *parts))
    return named


class DistilledSetEvaluator:
    """`Distiller.evaluate()`'s work, from explicit parts: the distilled set and its real-image baselines, probed on
    any eval split and backbone. Keeps one `ProbeEvaluator` (test features) per split and backbone, and the
    baselines' feature column, so evaluating every `eval_steps` pays for them once.

    Args:
        feature_extractor, image_processor: the distillation backbone (the default eval backbone; centroids and
            neighbours are chosen in its feature space).
        real_data: the real training set with its columns, classes and pass settings (baselines, full data).
        image_size: the synthetic resolution (baselines are decoded at it, as a distilled set is).
        crop_size: the eval backbones' input size (default: each processor's own).
        probe, runs: the protocol (`ProbeConfig`, probe runs per training set).
        name: how reports name the distillation backbone.
        compute_metrics: as in `Trainer`, applied to every probe run.
        train_features: the statistics pass's per-image features, where they equal what the baselines would
            compute (same backbone, preprocessing, float32): the baselines choose from them instead of a new pass.
        eval_models: the run's named eval backbones, which `metrics` probes beside the default one.
    """

    def __init__(
        self,
        feature_extractor: FeatureExtractor,
        image_processor: Any,
        real_data: RealData,
        *,
        image_size: int,
        crop_size: int | None = None,
        probe: ProbeConfig | None = None,
        runs: int = 5,
        name: str | None = None,
        compute_metrics: ComputeMetrics | None = None,
        train_features: Callable[[], Any] | None = None,
        eval_models: Sequence[EvalModel] = (),
    ):
        self.feature_extractor = feature_extractor
        self.train_features = train_features
        self.image_processor = image_processor
        self.real_data = real_data
        self.label_column, self.class_names = real_data.label_column, real_data.class_names
        self.image_size, self.crop_size = image_size, crop_size
        self.probe, self.runs = probe or ProbeConfig(), runs
        self.name = name
        self.compute_metrics = compute_metrics
        self.preprocessing = ImagePreprocessing.from_image_processor(image_processor, crop_size)
        self._evaluators: list[tuple[Any, Any, ProbeEvaluator]] = []
        self._baselines: RealBaselines | None = None
        self.eval_models: Sequence[EvalModel] = eval_models

    @classmethod
    def from_config(
        cls,
        args,
        backbone: FrozenBackbone,
        image_processor: Any,
        real_data: RealData,
        *,
        image_size: int,
        eval_models: Sequence[EvalModel] = (),
        compute_metrics: ComputeMetrics | None = None,
        train_features: Callable[[], Any] | None = None,
    ) -> DistilledSetEvaluator:
        """The evaluator of a run configured by `args` (a `DistillationConfig`: crop size, probe protocol, runs) on
        its primary `backbone` (read through `image_processor`) and its named `eval_models`."""
        return cls(
            backbone.feature_extractor,
            image_processor,
            real_data,
            image_size=image_size,
            crop_size=args.crop_size,
            probe=args.probe_config(),
            runs=args.eval_runs,
            name=backbone.name,
            compute_metrics=compute_metrics,
            train_features=train_features,
            eval_models=eval_models,
        )

    def metrics(
        self,
        eval_dataset: datasets.Dataset,
        images: torch.Tensor,
        labels: torch.Tensor,
        baselines: Sequence[str] = (),
        prefix: str = "eval",
        *,
        class_means: torch.Tensor | None = None,
        seed: int = 0,
        eval_model: nn.Module | None = None,
        eval_image_processor: Any = None,
        eval_feature_fn: FeatureFn | None = None,
    ) -> dict[str, Any]:
        """`Distiller.evaluate()`'s flat metrics: the `report` on `eval_model` (default: the distillation backbone)
        under `prefix`, and without an `eval_model`, every named eval model's too with their mean
        (`eval_model_metrics`)."""
        report = self.report(
            eval_dataset, images, labels, list(baselines), class_means=class_means, seed=seed, eval_model=eval_model,
            eval_image_processor=eval_image_processor, eval_feature_fn=eval_feature_fn,
        )  # fmt: skip
        metrics = report.metrics(prefix)
        if eval_model is None and self.eval_models:
            metrics.update(
                self.eval_model_metrics(
                    eval_dataset, images, labels, self.eval_models, metrics, prefix, baselines, class_means, seed
                )
            )
        return metrics

    def report(
        self,
        eval_dataset: datasets.Dataset,
        images: torch.Tensor,
        labels: torch.Tensor,
        baselines: list[str] = (),
        *,
        eval_model: nn.Module | None = None,
        eval_image_processor: Any = None,
        eval_feature_fn: FeatureFn | None = None,
        class_means: torch.Tensor | None = None,
        seed: int = 0,
    ) -> EvaluationReport:
        """Probe `(images, labels)` and the asked `baselines` on `eval_dataset` through `eval_model` (default: the
        distillation backbone). Random real images are drawn anew in every run (seeds `1000 + run`)."""
        evaluator = self.evaluator(eval_dataset, eval_model, eval_image_processor, eval_feature_fn)
        ipc = max(1, len(labels) // len(self.class_names))
        training_sets: dict[str, TrainingSet] = {"distilled": lambda run: (images, labels)}
        if "random_real" in baselines:
            training_sets["random_real"] = lambda run: self.baselines().random(ipc, seed=1000 + run)
        if "centroids" in baselines:
            centroids = self.baselines().centroids(ipc, seed=seed, class_means=class_means)
            training_sets["centroids"] = lambda run: centroids
        if "near_mean" in baselines:  # another near-mean set in every run: the centroid set's luck, as a spread
            training_sets["near_mean"] = lambda run: self.baselines().near_mean(ipc, run, seed, class_means)
        if "neighbors" in baselines:
            neighbors = self.baselines().neighbors(images, labels)
            training_sets["neighbors"] = lambda run: neighbors
        full = self.real_data if "full_dataset" in baselines else None
        return evaluate_training_sets(evaluator, training_sets, self.runs, self.probe, full_dataset=full)

    def eval_model_metrics(
        self,
        eval_dataset: datasets.Dataset,
        images: torch.Tensor,
        labels: torch.Tensor,
        eval_models: Sequence[EvalModel],
        metrics: Mapping[str, Any],
        prefix: str = "eval",
        baselines: Sequence[str] = (),
        class_means: torch.Tensor | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """The distilled set (and the asked `baselines`, chosen in the distillation backbone's feature space as for
        the default backbone) probed on each named eval model (`{prefix}_<name>_accuracy`, …) and
        `{prefix}_mean_accuracy`, the mean over `metrics`' own accuracy (the default backbone) and theirs."""
        flat: dict[str, Any] = {}
        for eval_model in eval_models:
            processor = eval_model.image_processor or self.image_processor
            report = self.report(
                eval_dataset,
                images,
                labels,
                list(baselines),
                class_means=class_means,
                seed=seed,
                eval_model=eval_model.model,
                eval_image_processor=processor,
                eval_feature_fn=eval_model.feature_fn,
            )
            flat.update(report.metrics(f"{prefix}_{eval_model.name}"))
        keys = [f"{prefix}_accuracy", *(f"{prefix}_{m.name}_accuracy" for m in eval_models)]
        values = [({**metrics, **flat}).get(key) for key in keys]
        if eval_models and all(isinstance(value, int | float) for value in values):
            flat[f"{prefix}_mean_accuracy"] = float(np.mean(values))
        return flat

    def evaluator(self, dataset, eval_model=None, eval_image_processor=None, eval_feature_fn=None) -> ProbeEvaluator:
        """The cached `ProbeEvaluator` of `dataset` on `eval_model` (default: the distillation backbone)."""
        for known_dataset, known_model, evaluator in self._evaluators:
            if known_dataset is dataset and known_model is eval_model:
                return evaluator
        if eval_model is not None and eval_image_processor is None:
            raise ValueError("evaluate(eval_model=...) needs eval_image_processor= (input size, normalisation).")
        evaluator = ProbeEvaluator(
            eval_model,
            eval_image_processor if eval_model is not None else self.image_processor,
            dataset,
            crop_size=self.crop_size,
            feature_fn=eval_feature_fn,
            label_column=self.label_column if self.label_column in dataset.column_names else None,
            num_classes=len(self.class_names),
            name=None if eval_model is not None else self.name,
            device=self.feature_extractor.mean.device,
            compute_metrics=self.compute_metrics,
            feature_extractor=None if eval_model is not None else self.feature_extractor,
        )
        self._evaluators.append((dataset, eval_model, evaluator))
        return evaluator

    def baselines(self) -> RealBaselines:
        """The real-image baselines of the training set (their feature column computed on first use)."""
        if self._baselines is None:
            real = self.real_data
            self._baselines = RealBaselines(
                real.dataset,
                self.feature_extractor,
                self.preprocessing,
                self.image_size,
                image_column=real.image_column,
                label_column=real.label_column,
                class_names=real.class_names,
                batch_size=real.batch_size,
                num_proc=real.num_proc,
                skip_corrupt_images=real.skip_corrupt_images,
                pass_features=self.train_features,
            )
        return self._baselines
