"""The linear-probe protocol that judges a distilled set, the real-image baselines, and the metrics (DESIGN §6).

Protocol (as the SFM and LGM papers report it): a linear head `N(0, 0.01)` on frozen features of an *eval*
backbone, trained on the (few) training images with flip + random-resized-crop, Adam at `lr · batch / 256` with
`batch = min(100, n_train)`, cosine to zero over 1000 epochs; top-1 (and top-5) on the real test set (resize +
center crop) at the last epoch; `runs` probes with different seeds, reported as mean ± std (population std, as
the reference code's `np.std`). Cross-model evaluation is the same call with another eval backbone.

`ProbeConfig()` holds the papers' values. Two documented reductions make the protocol affordable on a CPU:
`views=V` precomputes `V` augmented views per image once and lets every epoch draw one of them (instead of a
fresh view through the backbone each epoch), and `augment=False` trains on one deterministic view (resize).

Baselines (real images, no synthesis): `random` (ipc random images per class), `centroids` (the image nearest
the class-mean embedding; k-means centroids for ipc > 1), `neighbors` (the image nearest each distilled image),
and the full-dataset probe (`ProbeEvaluator.evaluate_full_dataset`, the upper bound).

Metrics go through `evaluate`, from modules shipped in `hf_sfm/metrics/` (`evaluate.load("accuracy")` would
need the Hub): `load_metric("accuracy")`, `load_metric("top5_accuracy")`. Results are plain dicts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .augment import Augmentation, resize
from .data import class_names_of, find_image_column, find_label_column
from .embedding import embed_dataset, features_and_labels
from .features import FeatureExtractor, FeatureFn
from .preprocessing import ImagePreprocessing
from .real_images import RealImages, check_enough_images, random_real_indices, square_preprocessing
from .versions import library_versions

METRICS_DIR = Path(__file__).parent / "metrics"


@dataclass
class ProbeConfig:
    """Linear-probe hyper-parameters. Defaults are the papers' protocol (1000 epochs, lr 1e-3 · batch / 256).

    Args:
        epochs: passes over the training images (reference: 1000).
        learning_rate: Adam base rate, scaled by `batch / 256` (reference: 1e-3).
        max_batch_size: the batch is `min(max_batch_size, n_train)` (reference: 100).
        init_std: std of the head's weights (reference: 0.01; bias 0).
        augment: flip + random-resized-crop on the training images (reference: True). False trains on one
            deterministic resized view, with features computed once: far cheaper, usually a little weaker.
        crop_scale: area range of the random-resized crop (reference: 0.08–1).
        views: 0 (reference) draws a fresh augmented view through the backbone for every image in every epoch.
            `V > 0` precomputes `V` augmented views per image once and draws one of them per image per epoch:
            `V · n_train` backbone forwards instead of `epochs · n_train`, a documented approximation.
    """

    epochs: int = 1000
    learning_rate: float = 1e-3
    max_batch_size: int = 100
    init_std: float = 0.01
    augment: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    views: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.max_batch_size < 1 or self.learning_rate <= 0 or self.views < 0:
            raise ValueError(
                f"ProbeConfig needs epochs >= 1, max_batch_size >= 1, learning_rate > 0 and views >= 0, got {self}."
            )
        self.crop_scale = tuple(self.crop_scale)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------- features


@torch.no_grad()
def embed_images(feature_extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """`(N, 3, H, W)` images in `[0, 1]` (already at the backbone's resolution) → `(N, D)` features."""
    device = feature_extractor.mean.device
    return torch.cat(
        [feature_extractor(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    )


@torch.no_grad()
def embed_pil_images(
    feature_extractor: FeatureExtractor, preprocessing: ImagePreprocessing, images: list, batch_size: int = 256
) -> torch.Tensor:
    """PIL images → `(N, D)` features with deterministic preprocessing (resize + center crop)."""
    device = feature_extractor.mean.device
    return torch.cat(
        [
            feature_extractor(preprocessing(images[i : i + batch_size]).to(device)).cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


@torch.no_grad()
def embed_resized(feature_extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """`(N, 3, S, S)` images in `[0, 1]` at any `S` → `(N, D)` features of their deterministic resize to the
    backbone's input size (how a synthetic image is seen at evaluation time). Resizes chunk by chunk."""
    size = feature_extractor.input_size
    if len(images) == 0:
        return torch.zeros(0, _feature_dim(feature_extractor, size, feature_extractor.mean.device))
    chunks = [
        embed_images(feature_extractor, resize(images[i : i + batch_size].float(), size), batch_size)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks)


# ---------------------------------------------------------------------------------------------------- the probe


def _initial_head(dim: int, num_classes: int, config: ProbeConfig, seed: int, device: torch.device) -> nn.Linear:
    head = nn.Linear(dim, num_classes).to(device)
    with torch.no_grad():
        head.weight.normal_(0.0, config.init_std, generator=torch.Generator(device).manual_seed(seed))
        head.bias.zero_()
    return head


def _fit(head, batch_features, num_train, labels, config, generator) -> nn.Linear:
    """Adam + per-step cosine schedule over `config.epochs`; `batch_features(index, epoch) → (B, D)`."""
    device = head.weight.device
    batch_size = min(config.max_batch_size, num_train)
    steps_per_epoch = math.ceil(num_train / batch_size)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.learning_rate * batch_size / 256)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    labels = labels.to(device)
    for epoch in range(config.epochs):
        order = torch.randperm(num_train, generator=generator)
        for start in range(0, num_train, batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(head(batch_features(index, epoch)), labels[index.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return head


def fit_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: ProbeConfig | None = None,
    seed: int = 0,
) -> nn.Linear:
    """Train the protocol's linear head on precomputed `(N, D)` features (no augmentation possible)."""
    config = config or ProbeConfig()
    if len(features) == 0:
        raise ValueError("Cannot train a linear probe on zero images.")
    generator = torch.Generator().manual_seed(seed)
    head = _initial_head(features.shape[1], num_classes, config, seed, features.device)
    return _fit(
        head, lambda index, epoch: features[index.to(features.device)], len(features), labels, config, generator
    )


def train_linear_probe(
    feature_extractor: FeatureExtractor,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: ProbeConfig | None = None,
    seed: int = 0,
) -> nn.Linear:
    """Train a linear head on `(N, 3, S, S)` images in `[0, 1]` through the frozen `feature_extractor`.

    With `config.augment`, every epoch sees a flip + random-resized-crop view at the backbone's input resolution
    (fresh each epoch, or one of `config.views` precomputed views); without it, features of the resized images
    are computed once. Deterministic given `seed`.
    """
    config = config or ProbeConfig()
    if len(images) == 0:
        raise ValueError("Cannot train a linear probe on zero images.")
    generator = torch.Generator().manual_seed(seed)
    device = feature_extractor.mean.device
    crop_size = feature_extractor.input_size
    head = _initial_head(_feature_dim(feature_extractor, crop_size, device), num_classes, config, seed, device)
    num_train = len(images)
    if not config.augment:
        fixed = embed_images(feature_extractor, resize(images, crop_size)).to(device)
        return _fit(head, lambda index, epoch: fixed[index.to(device)], num_train, labels, config, generator)

    augmentation = Augmentation(crop_size, flip=True, crop=True, crop_scale=config.crop_scale, noise=False)
    if config.views:
        # (V, N, D): every image's V augmented views, embedded once; each epoch draws one view per image.
        view_features = torch.stack(
            [embed_augmented(feature_extractor, images, augmentation, generator) for _ in range(config.views)]
        ).to(device)
        view_choice = torch.randint(config.views, (config.epochs, num_train), generator=generator)

        def batch_features(index: torch.Tensor, epoch: int) -> torch.Tensor:
            return view_features[view_choice[epoch, index].to(device), index.to(device)]

    else:

        @torch.no_grad()
        def batch_features(index: torch.Tensor, epoch: int) -> torch.Tensor:
            return feature_extractor(augmentation(images[index].to(device), generator))

    return _fit(head, batch_features, num_train, labels, config, generator)


@torch.no_grad()
def embed_augmented(
    feature_extractor: FeatureExtractor,
    images: torch.Tensor,
    augmentation: Augmentation,
    generator: torch.Generator,
    batch_size: int = 256,
) -> torch.Tensor:
    """One augmented view of every image of `(N, 3, S, S)` → `(N, D)` features."""
    device = feature_extractor.mean.device
    return torch.cat(
        [
            feature_extractor(augmentation(images[i : i + batch_size].to(device), generator)).cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


@torch.no_grad()
def probe_accuracy(head: nn.Module, test_features: torch.Tensor, test_labels: torch.Tensor) -> float:
    device = next(head.parameters()).device
    predictions = head(test_features.to(device)).argmax(dim=1).cpu()
    return float((predictions == test_labels.cpu()).float().mean())


@torch.no_grad()
def classifier_accuracy(
    model: nn.Module,
    dataset: datasets.Dataset,
    image_processor: Any = None,
    batch_size: int = 64,
    image_column: str | None = None,
    label_column: str | None = None,
) -> dict[str, Any]:
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
    return {"accuracy": correct / total, "num_test_images": total}


@torch.no_grad()
def _feature_dim(feature_extractor: FeatureExtractor, size: int, device: torch.device) -> int:
    return feature_extractor(torch.zeros(1, 3, size, size, device=device)).shape[1]


# ---------------------------------------------------------------------------------------------------- metrics


def metric_path(name: str) -> Path:
    """The folder of a metric module shipped with hf_sfm (`accuracy`, `top5_accuracy`)."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"hf_sfm ships no metric {name!r}; available: {available}.")
    return path


def load_metric(name: str, **kwargs: Any):
    """`evaluate.load` of a metric module shipped with hf_sfm: works offline, unlike `evaluate.load("accuracy")`.

    Extra keyword arguments go to `evaluate.load`; results are kept in memory unless `keep_in_memory=False`.
    """
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_path(name)), **kwargs)


def summarize(values: list[float]) -> dict[str, Any]:
    """`mean`, `std` (population std, as the reference's `np.std`) and the per-run `values`."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "values": [float(v) for v in array]}


# ---------------------------------------------------------------------------------------------------- evaluator


class ProbeEvaluator:
    """The probe protocol on one *eval* backbone, with the real test split's features computed once.

    Every `evaluate` call (any training images, any number of runs) reuses the cached test features, so the
    cost of a call is only the probe training. For cross-model evaluation, build one evaluator per backbone.

    Args:
        model: the eval backbone (any HF vision model; frozen, never trained).
        image_processor: its image processor (input size and normalisation).
        test_dataset: the real test split, with an image and a label column.
        crop_size: input resolution of the backbone (default: the processor's).
        feature_fn: optional pooled-feature override, as for the `Distiller`.
        num_classes: number of classes (default: from the test split's labels).
        name: how results name the backbone (default: the model config's `_name_or_path`).
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
    ):
        self.preprocessing = ImagePreprocessing.from_image_processor(image_processor, crop_size)
        self.feature_extractor = FeatureExtractor(model, self.preprocessing, feature_fn).to(device or "cpu")
        self.test_dataset = test_dataset
        self.image_column = find_image_column(test_dataset, image_column)
        self.label_column = find_label_column(test_dataset, label_column)
        self.num_classes = num_classes or len(class_names_of(test_dataset, self.label_column))
        config = getattr(self.feature_extractor.model, "config", None)
        self.name = name or str(getattr(config, "_name_or_path", "") or type(self.feature_extractor.model).__name__)
        self.batch_size = batch_size
        self._test_features: torch.Tensor | None = None
        self._test_labels: torch.Tensor | None = None
        self._metrics: dict[str, Any] = {}

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
        if self._test_features is None:
            self._test_features, self._test_labels = features_and_labels(
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
        return self._test_features, self._test_labels

    def metric(self, name: str):
        if name not in self._metrics:
            self._metrics[name] = load_metric(name)
        return self._metrics[name]

    @torch.no_grad()
    def score(self, head: nn.Module) -> dict[str, float]:
        """Top-1 and top-5 accuracy of a trained head on the cached test features, through `evaluate`."""
        features, labels = self.test_features()
        device = next(head.parameters()).device
        logits = torch.cat(
            [head(features[i : i + 4096].to(device)).cpu() for i in range(0, len(features), 4096)]
        ).float()
        references = labels.tolist()
        top1 = self.metric("accuracy").compute(predictions=logits.argmax(dim=1).tolist(), references=references)
        top5 = self.metric("top5_accuracy").compute(prediction_scores=logits.tolist(), references=references, k=5)
        return {"accuracy": top1["accuracy"], "top5_accuracy": top5["top5_accuracy"]}

    def evaluate(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        runs: int = 5,
        probe: ProbeConfig | None = None,
        seed: int = 0,
        images_for_run: Any = None,
    ) -> dict[str, Any]:
        """Train `runs` probes (seeds `seed, seed + 1, …`) on `(N, 3, S, S)` images in `[0, 1]`; score each.

        `images_for_run(run) → (images, labels)`, when given, supplies different training images per run (the
        random-real baseline draws a new subset per seed) and `images`/`labels` may be None.
        """
        probe = probe or ProbeConfig()
        if runs < 1:
            raise ValueError(f"evaluate needs runs >= 1, got {runs}.")
        scores = []
        for run in tqdm(range(runs), desc=f"Probe runs ({self.name})", leave=False):
            run_images, run_labels = images_for_run(run) if images_for_run else (images, labels)
            head = train_linear_probe(
                self.feature_extractor, run_images, torch.as_tensor(run_labels), self.num_classes, probe, seed + run
            )
            scores.append(self.score(head))
        num_train = len(run_images)
        return self._result(scores, num_train, probe, seed)

    def evaluate_features(
        self,
        train_features: torch.Tensor,
        labels: torch.Tensor,
        runs: int = 5,
        probe: ProbeConfig | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """The same protocol on precomputed `(N, D)` training features (no augmentation; `probe.augment` ignored)."""
        probe = dataclasses.replace(probe or ProbeConfig(), augment=False, views=0)
        device = self.feature_extractor.mean.device
        scores = [
            self.score(
                fit_linear_head(train_features.to(device), torch.as_tensor(labels), self.num_classes, probe, seed + run)
            )
            for run in range(runs)
        ]
        return self._result(scores, len(train_features), probe, seed)

    def evaluate_full_dataset(
        self,
        train_dataset: datasets.Dataset,
        runs: int = 3,
        probe: ProbeConfig | None = None,
        seed: int = 0,
        image_size: int | None = None,
    ) -> dict[str, Any]:
        """Upper bound: the probe trained on the whole real training set.

        With `probe.augment=False` the training features are those of the deterministic test-time preprocessing,
        computed once (the affordable choice for a large set); otherwise the images are decoded once at
        `image_size` (default `crop · 8 / 7`) and augmented like synthetic ones.
        """
        probe = probe or ProbeConfig()
        image_column = find_image_column(train_dataset)
        label_column = find_label_column(train_dataset)
        if not probe.augment:
            features, labels = features_and_labels(
                embed_dataset(
                    self.feature_extractor,
                    self.preprocessing,
                    train_dataset,
                    image_column=image_column,
                    label_column=label_column,
                    batch_size=self.batch_size,
                    desc=f"Train features ({self.name})",
                ),
                label_column,
            )
            return self.evaluate_features(features, labels, runs, probe, seed)
        size = image_size or round(self.input_size * 8 / 7)
        real = RealImages.from_dataset(
            train_dataset, square_preprocessing(self.preprocessing, size), image_column, label_column
        )
        return self.evaluate(real.images(), real.labels, runs, probe, seed)

    def _result(self, scores: list[dict[str, float]], num_train: int, probe: ProbeConfig, seed: int) -> dict:
        top1 = summarize([s["accuracy"] for s in scores])
        top5 = summarize([s["top5_accuracy"] for s in scores])
        return {
            "eval_backbone": self.name,
            "input_size": self.input_size,
            "num_train_images": int(num_train),
            "num_test_images": len(self.test_features()[1]),
            "runs": len(scores),
            "seeds": [seed + run for run in range(len(scores))],
            "accuracy": top1["mean"],
            "accuracy_std": top1["std"],
            "accuracy_per_run": top1["values"],
            "top5_accuracy": top5["mean"],
            "top5_accuracy_std": top5["std"],
            "top5_accuracy_per_run": top5["values"],
            "probe": probe.to_dict(),
            "versions": library_versions(),
        }


def evaluate_distilled(
    images: torch.Tensor,
    labels: torch.Tensor,
    eval_model: nn.Module,
    eval_processor: Any,
    test_dataset: datasets.Dataset,
    runs: int = 5,
    probe: ProbeConfig | None = None,
    seed: int = 0,
    crop_size: int | None = None,
    feature_fn: FeatureFn | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """One-call protocol: `runs` linear probes on `(N, 3, S, S)` images with `eval_model`, scored on `test_dataset`.

    Returns a plain dict: `accuracy`, `accuracy_std`, `accuracy_per_run`, the same for `top5_accuracy`, the eval
    backbone, sizes, seeds and the probe settings. For several calls on one backbone, keep a `ProbeEvaluator`.
    """
    evaluator = ProbeEvaluator(
        eval_model, eval_processor, test_dataset, crop_size=crop_size, feature_fn=feature_fn, num_classes=num_classes
    )
    return evaluator.evaluate(images, labels, runs=runs, probe=probe, seed=seed)


# ---------------------------------------------------------------------------------------------------- baselines


def centroid_indices(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ipc: int = 1,
    seed: int = 0,
    class_means: torch.Tensor | None = None,
    kmeans_iterations: int = 50,
) -> torch.Tensor:
    """Per class, the real images nearest its centroids (Euclidean), class-major `(C · ipc,)`.

    ipc = 1: the image nearest the class mean (`class_means` `(C, D)` if given, e.g. `ClassStatistics.class_means`,
    else the mean of `features`). ipc > 1: `ipc` k-means centroids per class (k-means++ seeding, Lloyd
    iterations), each replaced by its nearest not-yet-chosen image, so the ipc images are distinct.
    """
    generator = torch.Generator().manual_seed(seed)
    features = features.double()
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        check_enough_images(members, ipc, c)
        points = features[members]
        if ipc == 1:
            centers = class_means[c : c + 1].double() if class_means is not None else points.mean(0, keepdim=True)
        else:
            centers = kmeans(points, ipc, generator, kmeans_iterations)
        chosen.append(members[_nearest_distinct(points, centers)])
    return torch.cat(chosen)


def neighbor_indices(
    real_features: torch.Tensor, real_labels: torch.Tensor, query_features: torch.Tensor, query_labels: torch.Tensor
) -> torch.Tensor:
    """For each query (distilled image), the nearest real image of the same class, `(Q,)`.

    Within a class, queries take their nearest image not already taken by an earlier query, so ipc > 1 yields
    ipc distinct real images (with ipc = 1 this is plainly the nearest neighbour).
    """
    chosen = torch.empty(len(query_features), dtype=torch.long)
    real_features, query_features = real_features.double(), query_features.double()
    for c in torch.unique(query_labels).tolist():
        queries = (query_labels == c).nonzero().flatten()
        members = (real_labels == c).nonzero().flatten()
        check_enough_images(members, len(queries), c)
        chosen[queries] = members[_nearest_distinct(real_features[members], query_features[queries])]
    return chosen


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 50) -> torch.Tensor:
    """`(n, D)` points → `(k, D)` centroids: k-means++ seeding, then Lloyd iterations (empty clusters keep theirs)."""
    first = torch.randint(len(points), (1,), generator=generator)
    centers = points[first]
    for _ in range(1, k):
        squared = torch.cdist(points, centers).min(dim=1).values.square()
        if float(squared.sum()) == 0:
            pick = torch.randint(len(points), (1,), generator=generator)
        else:
            pick = torch.multinomial(squared / squared.sum(), 1, generator=generator)
        centers = torch.cat([centers, points[pick]])
    for _ in range(iterations):
        assignment = torch.cdist(points, centers).argmin(dim=1)
        updated = centers.clone()
        for j in range(k):
            if bool((assignment == j).any()):
                updated[j] = points[assignment == j].mean(0)
        if torch.equal(updated, centers):
            break
        centers = updated
    return centers


def _nearest_distinct(points: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """For each target in order, the index of the nearest point not yet taken."""
    distances = torch.cdist(targets, points)
    taken = torch.zeros(len(points), dtype=torch.bool)
    picks = []
    for row in distances:
        row = row.masked_fill(taken, math.inf)
        pick = int(row.argmin())
        taken[pick] = True
        picks.append(pick)
    return torch.tensor(picks, dtype=torch.long)


class RealBaselines:
    """The real-image baselines of DESIGN §6, drawn from one real training set.

    Holds the training images decoded once at the synthetic resolution `S` (so a baseline is trained exactly as
    a distilled set is: same size, same probe augmentation) and their features under the *distillation*
    backbone, taken as the synthetic images are seen at evaluation (resize to the backbone's input), which is
    the space where centroids and neighbours are measured.

    Every baseline returns `(images (C · ipc, 3, S, S) in [0, 1], labels (C · ipc,))`, class-major.
    """

    def __init__(
        self,
        real: RealImages,
        features: torch.Tensor,
        num_classes: int | None = None,
        feature_extractor: FeatureExtractor | None = None,
    ):
        if len(features) != len(real):
            raise ValueError(f"{len(real)} real images but {len(features)} feature rows.")
        self.real = real
        self.features = features
        self.num_classes = num_classes or int(real.labels.max()) + 1
        self.feature_extractor = feature_extractor

    @classmethod
    def from_dataset(
        cls,
        dataset: datasets.Dataset,
        feature_extractor: FeatureExtractor,
        image_size: int,
        image_column: str | None = None,
        label_column: str | None = None,
        num_classes: int | None = None,
    ) -> RealBaselines:
        image_column = find_image_column(dataset, image_column)
        label_column = find_label_column(dataset, label_column)
        mean = tuple(feature_extractor.mean.flatten().tolist())
        std = tuple(feature_extractor.std.flatten().tolist())
        preprocessing = ImagePreprocessing(image_size, image_size, mean, std)
        real = RealImages.from_dataset(dataset, preprocessing, image_column, label_column)
        features = embed_resized(feature_extractor, real.images())
        num_classes = num_classes or len(class_names_of(dataset, label_column))
        return cls(real, features, num_classes, feature_extractor)

    @classmethod
    def from_distiller(cls, distiller: Any) -> RealBaselines:
        """From a `Distiller`: its training set, distillation backbone and synthetic resolution."""
        return cls.from_dataset(
            distiller.train_dataset,
            distiller.feature_extractor,
            distiller.image_size,
            distiller.image_column,
            distiller.label_column,
            distiller.num_classes,
        )

    def select(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.real.images(indices), self.real.labels[indices]

    def random(self, ipc: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return self.select(random_real_indices(self.real.labels, self.num_classes, ipc, seed))

    def centroids(
        self, ipc: int = 1, seed: int = 0, class_means: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.select(centroid_indices(self.features, self.real.labels, self.num_classes, ipc, seed, class_means))

    def neighbors(
        self,
        distilled_images: torch.Tensor,
        distilled_labels: torch.Tensor,
        feature_extractor: FeatureExtractor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The real image nearest each distilled image `(N, 3, S, S)`, both embedded by the backbone that built
        `features` (`feature_extractor`, default the one given at construction)."""
        feature_extractor = feature_extractor or self.feature_extractor
        if feature_extractor is None:
            raise ValueError("neighbors() needs the feature_extractor that embedded the real images.")
        query = embed_resized(feature_extractor, distilled_images)
        return self.select(neighbor_indices(self.features, self.real.labels, query, torch.as_tensor(distilled_labels)))
