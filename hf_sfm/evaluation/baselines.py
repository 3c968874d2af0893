"""The real-image baselines a distilled set must beat (docs/DESIGN.md §6): random, centroids, near-mean, neighbours.

They cost nothing but a selection: `random` takes `ipc` random real images per class, `centroids` the image nearest
each class mean (k-means centroids for ipc > 1), `near_mean` another set like the centroids in every probe run (the
2nd, 3rd, … nearest image), `neighbors` the real image nearest each distilled image. A distilled set is worth
publishing only if it beats them — on its own backbone and on others.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import datasets
import torch

from ..backbone.embedding import embed_dataset, embedded_rows, features_and_labels
from ..backbone.features import FeatureExtractor
from ..data.columns import MAP_BATCH_SIZE, class_names_of, find_image_column, find_label_column
from ..data.pass_features import PassFeatures
from ..data.preprocessing import ImagePreprocessing
from ..data.real_images import check_enough_images, sample_real_images, square_preprocessing
from .linear_fit import embed_resized

# class c → its images' `(n, D)` features and `(n,)` ids (positions or dataset rows), in dataset order.
ClassMembers = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def members_of(features: torch.Tensor, labels: torch.Tensor) -> ClassMembers:
    """`ClassMembers` of `(N, D)` features and `(N,)` labels held in memory (ids: positions in them)."""

    def members(label: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = (labels == label).nonzero().flatten()
        return features[positions], positions

    return members


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
    return class_centroids(members_of(features, labels), num_classes, ipc, seed, class_means, kmeans_iterations)


def class_centroids(
    members: ClassMembers,
    num_classes: int,
    ipc: int = 1,
    seed: int = 0,
    class_means: torch.Tensor | None = None,
    kmeans_iterations: int = 50,
) -> torch.Tensor:
    """`centroid_indices` reading one class at a time from `members` (so the features need not fit in memory)."""
    if ipc == 1:
        return class_nearest_to_mean(members, num_classes, 1, class_means)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        points, ids = members(c)
        check_enough_images(ids, ipc, c)
        points = points.double()
        chosen.append(ids[_nearest_distinct(points, kmeans(points, ipc, generator, kmeans_iterations))])
    return torch.cat(chosen)


def nearest_to_mean_indices(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    rank: int,
    class_means: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per class, the `rank`-th nearest image to its mean (rank 1: the centroid set at ipc 1), class-major `(C,)`."""
    return class_nearest_to_mean(members_of(features, labels), num_classes, rank, class_means)


def class_nearest_to_mean(
    members: ClassMembers, num_classes: int, rank: int, class_means: torch.Tensor | None = None
) -> torch.Tensor:
    """`nearest_to_mean_indices` reading one class at a time from `members`."""
    chosen = []
    for c in range(num_classes):
        points, ids = members(c)
        check_enough_images(ids, rank, c)
        points = points.double()
        center = class_means[c : c + 1].double() if class_means is not None else points.mean(0, keepdim=True)
        distances = torch.cdist(center, points)[0]
        chosen.append(ids[distances.argsort(stable=True)[rank - 1]])
    return torch.stack(chosen)


def near_mean_indices(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ipc: int = 1,
    draw: int = 0,
    seed: int = 0,
    class_means: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw `draw` (0, 1, …) of a set chosen like the centroids but not the centroid set, class-major `(C · ipc,)`.

    ipc = 1: per class the (draw + 2)-th nearest image to its mean. ipc > 1: the images nearest the k-means
    centroids of seed `seed + 1 + draw` (the centroid set uses `seed`). Why: the centroid set is one draw of
    `C · ipc` images, and on a backbone it was not chosen on, its score carries that draw's luck (up to ±5 points
    at 10 images, benchmarks/RESULTS.md); a new draw per probe run puts that spread in the baseline's ±.
    """
    return class_near_mean(members_of(features, labels), num_classes, ipc, draw, seed, class_means)


def class_near_mean(
    members: ClassMembers,
    num_classes: int,
    ipc: int = 1,
    draw: int = 0,
    seed: int = 0,
    class_means: torch.Tensor | None = None,
) -> torch.Tensor:
    """`near_mean_indices` reading one class at a time from `members`."""
    if ipc > 1:
        return class_centroids(members, num_classes, ipc, seed + 1 + draw, class_means)
    return class_nearest_to_mean(members, num_classes, draw + 2, class_means)


def neighbor_indices(
    real_features: torch.Tensor, real_labels: torch.Tensor, query_features: torch.Tensor, query_labels: torch.Tensor
) -> torch.Tensor:
    """For each query (distilled image), the nearest real image of the same class, `(Q,)`.

    Within a class, queries take their nearest image not already taken by an earlier query, so ipc > 1 yields
    ipc distinct real images (with ipc = 1 this is plainly the nearest neighbour).
    """
    return class_neighbors(members_of(real_features, real_labels), query_features, query_labels)


def class_neighbors(members: ClassMembers, query_features: torch.Tensor, query_labels: torch.Tensor) -> torch.Tensor:
    """`neighbor_indices` reading one class at a time from `members`."""
    chosen = torch.empty(len(query_features), dtype=torch.long)
    query_features = query_features.double()
    for c in torch.unique(query_labels).tolist():
        queries = (query_labels == c).nonzero().flatten()
        points, ids = members(c)
        check_enough_images(ids, len(queries), c)
        chosen[queries] = ids[_nearest_distinct(points.double(), query_features[queries])]
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
    """The real-image baselines of one training set, chosen in the distillation backbone's feature space.

    Features are the backbone's view of every training image under its deterministic preprocessing (the view the
    class statistics were computed from): those the statistics pass kept (`pass_features`, a `PassFeatures` read a
    class at a time from its memory-mapped `datasets` cache file) when they are exactly what this backbone and
    preprocessing give, else computed once as a cached `datasets` column (`embedding.embed_dataset`). Only the
    chosen images are decoded, at the synthetic resolution `S`, so a baseline is trained exactly as a distilled set
    is (same size, same probe augmentation). Scales to any map-style dataset the statistics pass can read.

    Every baseline returns `(images (C · ipc, 3, S, S) in [0, 1], labels (C · ipc,))`, class-major.
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        feature_extractor: FeatureExtractor,
        preprocessing: ImagePreprocessing,
        image_size: int,
        *,
        image_column: str | None = None,
        label_column: str | None = None,
        class_names: list[str] | None = None,
        batch_size: int = MAP_BATCH_SIZE,
        num_proc: int | None = None,
        skip_corrupt_images: bool = True,
        pass_features: Callable[[], PassFeatures] | None = None,
    ):
        if not isinstance(dataset, datasets.Dataset):
            raise ValueError("Real-image baselines need a map-style `datasets.Dataset`, not a streaming one.")
        self.dataset = dataset
        self.feature_extractor = feature_extractor
        self.preprocessing = preprocessing
        self.image_column = find_image_column(dataset, image_column)
        self.label_column = find_label_column(dataset, label_column)
        self.class_names = class_names or class_names_of(dataset, self.label_column)
        self.image_preprocessing = square_preprocessing(preprocessing, image_size)
        self.batch_size = batch_size
        self.num_proc = num_proc
        self.skip_corrupt_images = skip_corrupt_images
        self.pass_features = pass_features
        self._features: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def using(self, pass_features: Callable[[], PassFeatures] | None) -> RealBaselines:
        """These baselines choosing from `pass_features` (a statistics pass's own; `None`: unchanged)."""
        if pass_features is None:
            return self
        chosen = copy.copy(self)
        chosen.pass_features, chosen._features = pass_features, None
        return chosen

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def features(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(N, D)` features, `(N,)` labels and `(N,)` dataset rows of every decodable training image (cached)."""
        if self._features is None and self.pass_features is not None:
            self._features = self.pass_features().all(self.num_classes)
        if self._features is None:
            embedded = embed_dataset(
                self.feature_extractor,
                self.preprocessing,
                self.dataset,
                image_column=self.image_column,
                label_column=self.label_column,
                batch_size=self.batch_size,
                num_proc=self.num_proc,
                skip_corrupt_images=self.skip_corrupt_images,
                desc="Real features (baselines)",
            )
            features, labels = features_and_labels(embedded, self.label_column)
            self._features = (features, labels, embedded_rows(embedded))
        return self._features

    def class_members(self, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Class `label`'s `(n, D)` features and `(n,)` dataset rows (`ClassMembers`), one class in memory at a time
        when they come from the statistics pass."""
        if self.pass_features is not None and self._features is None:
            return self.pass_features().class_members(label)
        features, labels, rows = self.features()
        positions = (labels == label).nonzero().flatten()
        return features[positions], rows[positions]

    def images(self, rows: torch.Tensor) -> torch.Tensor:
        """The training images at dataset `rows`, at the synthetic resolution: `(B, 3, S, S)` in `[0, 1]`."""
        return self.image_preprocessing(self.dataset[[int(row) for row in rows]][self.image_column])

    def _class_major(self, rows: torch.Tensor, ipc: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images(rows), torch.arange(self.num_classes).repeat_interleave(ipc)

    def random(self, ipc: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        images = sample_real_images(
            self.dataset,
            self.image_preprocessing,
            image_column=self.image_column,
            label_column=self.label_column,
            class_names=self.class_names,
            ipc=ipc,
            seed=seed,
            skip_corrupt_images=self.skip_corrupt_images,
        )
        return images, torch.arange(self.num_classes).repeat_interleave(ipc)

    def centroid_rows(self, ipc: int = 1, seed: int = 0, class_means: torch.Tensor | None = None) -> torch.Tensor:
        """The dataset rows of `centroids`, class-major `(C · ipc,)`."""
        return class_centroids(self.class_members, self.num_classes, ipc, seed, class_means)

    def centroids(
        self, ipc: int = 1, seed: int = 0, class_means: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per class, the image nearest its mean (`class_means` `(C, D)`, e.g. the run's statistics), or the images
        nearest `ipc` k-means centroids."""
        return self._class_major(self.centroid_rows(ipc, seed, class_means), ipc)

    def near_mean(
        self, ipc: int = 1, draw: int = 0, seed: int = 0, class_means: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw `draw` of a set chosen like the centroids, other than the centroid set (`near_mean_indices`)."""
        rows = class_near_mean(self.class_members, self.num_classes, ipc, draw, seed, class_means)
        return self._class_major(rows, ipc)

    def neighbors(
        self, distilled_images: torch.Tensor, distilled_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The real image nearest each distilled image `(N, 3, S, S)` (seen as at evaluation), same class."""
        query = embed_resized(self.feature_extractor, distilled_images)
        labels = torch.as_tensor(distilled_labels)
        return self.images(class_neighbors(self.class_members, query, labels)), labels
