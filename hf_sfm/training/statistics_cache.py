"""The class statistics of a run, computed once and kept: key, load, verify, save, and the per-process pass.

A statistics file is reused only when it was computed from the same backbone (name, revision, weights, feature
function), preprocessing, dataset version, columns and class names; anything else is refused with the difference
named, since statistics of another backbone or dataset would steer the synthetic images towards the wrong target
without any error. With several processes each one maps its own shard of the dataset and the per-class sums are
all-reduced, so the result equals a one-process pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from datasets.fingerprint import Hasher

from ..backbone.frozen import FrozenBackbone
from ..backbone.group import FrozenBackbones, as_list
from ..data.pass_features import PassFeatures
from ..data.preprocessing import ImagePreprocessing
from ..data.real_data import RealData
from ..data.statistics import (
    STATISTICS_FILE,
    ClassStatistics,
    combine_data_digests,
    companion_statistics_path,
    compute_class_statistics,
    expected_metadata,
)
from ..utils.versions import library_versions
from .outputs import statistics_lock

__all__ = ["ClassStatistics", "StatisticsCache", "StatisticsCaches", "check_statistics_usable", "statistics_key"]

logger = get_logger(__name__)

# Bump when the rows of the statistics map change, so a stale `datasets` cache of the old layout is not reused.
STATISTICS_FORMAT = "partial-sums-v2"


def statistics_key(
    real_data: RealData, preprocessing: ImagePreprocessing, backbone: Mapping[str, str]
) -> dict[str, str]:
    """What identifies a statistics computation. `backbone`: `name`, `revision`, `weights`, `feature_fn`."""
    return {
        "backbone": backbone["name"],
        "backbone_revision": backbone["revision"],
        "preprocessing": json.dumps(preprocessing.to_dict(), sort_keys=True),
        "dataset_fingerprint": real_data.fingerprint(),
        "backbone_weights": backbone["weights"],
        "feature_fn": backbone["feature_fn"],
        "image_column": real_data.image_column,
        "label_column": real_data.label_column,
        "class_names": json.dumps(real_data.class_names),
        "versions": json.dumps(library_versions(), sort_keys=True),
    }


class StatisticsCache:
    """The statistics file of one run: `path`, checked against the key (`statistics_key`) before reuse.

    Args:
        accelerator: its processes share the pass; the main process writes the file.
        real_data: the training set.
        backbone: the frozen backbone the features come from (its identity and preprocessing are in the key).
        path: the statistics file.
        recompute: compute anew even when a matching file (or `datasets` cache) exists.
        overwrite: replace an existing file (else only one hf_sfm wrote).
        usable: keyword arguments of `check_statistics_usable` (what the run needs of the statistics).
        keep_features: the pass keeps every image's feature (`features()`: the centroid init and baselines choose
            from them, so the training set is embedded once).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        real_data: RealData,
        backbone: FrozenBackbone,
        path: Path,
        recompute: bool = False,
        overwrite: bool = False,
        usable: dict | None = None,
        keep_features: bool = False,
    ):
        if path.is_dir():
            raise ValueError(
                f"statistics_path={str(path)!r} is a folder; point it at a statistics file (e.g. "
                f"{path / STATISTICS_FILE})."
            )
        self.accelerator, self.real_data, self.backbone, self.path = accelerator, real_data, backbone, path
        self.preprocessing = backbone.preprocessing
        self.key = statistics_key(real_data, backbone.preprocessing, backbone.identity)
        self.feature_dim = backbone.feature_extractor.feature_dim()
        self.recompute, self.overwrite, self.usable = recompute, overwrite, usable
        self.announce_path = False  # the user named the file: say when it is created
        self.keep_features, self._features = keep_features, None

    @classmethod
    def from_config(cls, args, accelerator: Accelerator, real_data: RealData, backbone: FrozenBackbone):
        """`args.statistics_path` (default `<output_dir>/statistics.safetensors`), recomputed if asked."""
        path = Path(args.statistics_path) if args.statistics_path else Path(args.output_dir) / STATISTICS_FILE
        needs = dict(needs_flow=args.method_class.needs_statistics, init=args.init, ipc=args.ipc)
        choose_real = args.init == "centroid" or bool(
            set(args.eval_baselines) & {"centroids", "near_mean", "neighbors"}
        )
        cache = cls(
            accelerator, real_data, backbone, path, args.recompute_statistics, args.overwrite_output_dir, needs,
            keep_features=choose_real,
        )  # fmt: skip
        cache.announce_path = bool(args.statistics_path)
        return cache

    def check(self, statistics: ClassStatistics, where: str = "The given statistics") -> None:
        """Refuse statistics of other classes, another feature size, or (where recorded) another computation."""
        statistics.check_matches(self.real_data.class_names, self.feature_dim, where)
        statistics.check_compatible({k: v for k, v in self.key.items() if k in statistics.metadata}, "statistics=")

    def load_or_compute(self, recompute: bool | None = None) -> ClassStatistics:
        """Reuse the file when it exists and matches the key, else compute (all processes) and save it (main);
        then refuse statistics the run cannot start from (`check_statistics_usable`, with `usable`). `recompute`
        (default: the cache's own) computes anew even when the file and the `datasets` cache match."""
        if recompute is not None:
            self.recompute = recompute
        with statistics_lock(self.path, self.accelerator.is_main_process):  # other runs may share the file
            statistics = self._load_or_compute()
        if self.usable is not None:
            check_statistics_usable(statistics, self.real_data, backbone=self.backbone.class_name, **self.usable)
        return statistics

    def _load_or_compute(self) -> ClassStatistics:
        statistics = self.load_saved()
        if statistics is None:
            statistics = self.compute(
                self.backbone.embed_pixels, keep_features=self.keep_features and self.can_keep_features
            )
            self._features = statistics.features
            self.save(statistics)
        return statistics

    def load_saved(self) -> ClassStatistics | None:
        """The saved statistics when the file exists and matches the key (a mismatch raises); `None` when they
        must be computed (no file, or `recompute`)."""
        path, real_data = self.path, self.real_data
        if path.exists() and not self.recompute:
            statistics = ClassStatistics.load(path)
            # A streamed set's fingerprint does not cover its content: the file must match a digest of it too.
            expected = expected_metadata(real_data.dataset, self.key, real_data.image_column, real_data.label_column)
            statistics.check_compatible(expected, path)
            statistics.check_matches(self.real_data.class_names, self.feature_dim, f"The statistics in {path}")
            logger.info(f"Loaded class statistics from {path}", main_process_only=True)
            return statistics
        if path.exists():
            logger.info(f"recompute_statistics=True: recomputing {path}.", main_process_only=True)
        elif self.announce_path:
            logger.info(f"{path} does not exist yet; computing class statistics into it.", main_process_only=True)
        return None

    def save(self, statistics: ClassStatistics) -> None:
        """Write `statistics` to the file (main process), then wait for every process."""
        if self.accelerator.is_main_process:
            statistics.save(self.path, self.overwrite, "overwrite_output_dir=True")
        self.accelerator.wait_for_everyone()

    @property
    def can_keep_features(self) -> bool:
        """A map-style set: its pass can keep the features and select from them (a stream is read once, in order)."""
        return not self.real_data.is_streaming

    def features(self) -> PassFeatures | GatheredFeatures:
        """Every training image's feature as the statistics pass computed it: kept by this run's pass, else read
        from the `datasets` cache of an identical pass (same key as the statistics), else computed by one."""
        if self._features is None:
            self._features = self.compute(self.backbone.embed_pixels, keep_features=True).features
        return self._features

    def feature_source(self, exact_for: ImagePreprocessing | None = None) -> Callable[[], PassFeatures] | None:
        """`features` where the pass can give them (map-style), else `None`. With `exact_for` (the baselines, which
        run on the main process alone), only in one process and where they equal a float32 embedding under that
        preprocessing (no autocast)."""
        if not self.can_keep_features:
            return None
        if exact_for is not None and (
            exact_for != self.preprocessing
            or self.backbone.precision.dtype is not None
            or self.accelerator.num_processes > 1  # with several, reading them is a collective
        ):
            return None
        return self.features

    def compute(
        self,
        embed: Callable[[torch.Tensor], torch.Tensor],
        preprocessing: Any = None,
        key: Any = None,
        metadata: dict[str, str] | None = None,
        keep_features: bool = False,
    ) -> ClassStatistics:
        """One pass over this process's shard of the set, the per-class sums all-reduced across processes.

        `preprocessing`, `key` and `metadata` default to this cache's (a joint pass of several backbones passes
        its own: `StatisticsCaches`). `keep_features`: the pass also keeps every image's feature (`features()`)."""
        accelerator, real_data = self.accelerator, self.real_data
        dataset = real_data.dataset
        if accelerator.num_processes > 1:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(
                dataset, rank=accelerator.process_index, world_size=accelerator.num_processes
            )
        # Each process maps its own shard under its own fingerprint, so no cache file is shared and the passes run
        # side by side (`main_process_first` would only serialise them).
        key = self.key if key is None else key
        fingerprint = Hasher.hash([STATISTICS_FORMAT, key, accelerator.process_index, accelerator.num_processes])
        quiet = not accelerator.is_local_main_process and datasets.is_progress_bar_enabled()
        if quiet:  # one progress bar per machine
            datasets.disable_progress_bars()
        try:
            statistics = compute_class_statistics(
                dataset,
                embed,
                image_column=real_data.image_column,
                label_column=real_data.label_column,
                class_names=real_data.class_names,
                batch_size=real_data.batch_size,
                num_proc=real_data.num_proc,
                new_fingerprint=fingerprint,
                metadata=self.key if metadata is None else metadata,
                skip_corrupt_images=real_data.skip_corrupt_images,
                load_from_cache_file=not self.recompute,  # recompute means recompute, not a cache hit
                # decoded and preprocessed in worker processes on a GPU
                preprocessing=preprocessing or self.preprocessing,
                device=accelerator.device,
                keep_features=keep_features,
            )
        finally:
            if quiet:
                datasets.enable_progress_bars()
        if accelerator.num_processes > 1:
            device = accelerator.device
            statistics.feature_sums = accelerator.reduce(statistics.feature_sums.to(device), "sum").cpu()
            statistics.counts = accelerator.reduce(statistics.counts.to(device), "sum").cpu()
            if "data_digest" in statistics.metadata:  # a streamed pass: the digest of every process's shard
                digests = gather_object([statistics.metadata["data_digest"]])
                statistics.metadata["data_digest"] = combine_data_digests(digests)
            if statistics.features is not None:  # each kept its contiguous shard (rank 0 first): rows from there
                offset = sum(gather_object([len(dataset)])[: accelerator.process_index])
                statistics.features = GatheredFeatures(statistics.features, offset)
        return statistics


class GatheredFeatures:
    """The features every process's pass kept of its shard, read as one set: `class_members(c)` gathers class `c`'s
    from all processes (one class in memory at a time), so it is a collective that every process calls in the same
    order, as the centroid init does. `row_offset`: where this process's contiguous shard starts in the dataset."""

    def __init__(self, local: PassFeatures, row_offset: int):
        self.local, self.row_offset = local, row_offset

    def of_columns(self, start: int, stop: int) -> GatheredFeatures:
        return GatheredFeatures(self.local.of_columns(start, stop), self.row_offset)

    def class_members(self, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        features, rows = self.local.class_members(label)
        parts = [part for part in gather_object([(features, rows + self.row_offset)]) if len(part[1])]
        if not parts:
            return features, rows
        features, rows = torch.cat([part[0] for part in parts]), torch.cat([part[1] for part in parts])
        order = rows.argsort()
        return features[order], rows[order]


class StatisticsCaches:
    """The statistics of every backbone of a run (`FrozenBackbones`): one `StatisticsCache` (file, key) each.

    Files that exist and match are reused (a mismatch is refused per backbone, as with one); the others are
    computed together in ONE pass over the data that decodes each image once (`JointPreprocessing`), their
    features side by side, then split per backbone and saved to each one's own file. The primary's file is
    `statistics_path` (default `<output_dir>/statistics.safetensors`); backbone `k > 0`'s sits beside it as
    `<stem>-<short_name>.safetensors`. With one backbone this is exactly its `StatisticsCache`.
    """

    def __init__(self, caches: list[StatisticsCache], backbones: FrozenBackbones):
        self.caches, self.backbones = caches, backbones

    @classmethod
    def from_config(cls, args, accelerator: Accelerator, real_data: RealData, backbones: FrozenBackbones):
        primary = StatisticsCache.from_config(args, accelerator, real_data, backbones.primary)
        caches = [primary]
        for backbone in backbones.members[1:]:
            path = companion_statistics_path(primary.path, backbone.short_name)
            cache = StatisticsCache.from_config(args, accelerator, real_data, backbone)
            cache.path = path
            if path.is_dir():
                raise ValueError(f"{path} (the statistics of {backbone.short_name}) is a folder; move it away.")
            caches.append(cache)
        return cls(caches, backbones)

    # The primary's, for callers that know one backbone.
    real_data = property(lambda self: self.caches[0].real_data)
    key = property(lambda self: self.caches[0].key)
    path = property(lambda self: self.caches[0].path)

    def check(self, statistics: list[ClassStatistics]) -> None:
        """Refuse given statistics (one per backbone, in order) that do not fit their backbone."""
        if len(statistics) != len(self.caches):
            raise ValueError(
                f"statistics= holds {len(statistics)} ClassStatistics for {len(self.caches)} backbones: pass one "
                "per backbone, in the order of `model=[...]`, or none."
            )
        for cache, each in zip(self.caches, statistics, strict=True):
            cache.check(each, f"The given statistics of {cache.backbone.short_name}")

    def given(self, statistics: ClassStatistics | list[ClassStatistics] | None) -> list[ClassStatistics] | None:
        """A run's `statistics=` as one per backbone, checked now (a mismatch would otherwise fail deep inside the
        loss); None when none were given."""
        if statistics is None:
            return None
        statistics = as_list(statistics)
        self.check(statistics)
        return statistics

    def features(self) -> PassFeatures | GatheredFeatures:
        """The primary's per-image features (`StatisticsCache.features`)."""
        return self.caches[0].features()

    def feature_source(self, exact_for: ImagePreprocessing | None = None) -> Callable[[], PassFeatures] | None:
        """The primary's per-image features (`StatisticsCache.feature_source`): the centroid init and baselines
        choose in the primary's feature space. A joint pass that computed the primary's statistics kept them (its
        columns of the pass's features, `compute_jointly`); where the primary's statistics came from a file, they
        come from the `datasets` cache of an identical primary pass, or one more pass."""
        return self.caches[0].feature_source(exact_for)

    def load_or_compute(self, recompute: bool | None = None) -> list[ClassStatistics]:
        """Every backbone's statistics, in order: reused where they match, the rest computed in one pass."""
        if len(self.caches) == 1:
            return [self.caches[0].load_or_compute(recompute)]
        main = self.caches[0].accelerator.is_main_process
        with ExitStack() as locks:
            for cache in self.caches:
                if recompute is not None:
                    cache.recompute = recompute
                locks.enter_context(statistics_lock(cache.path, main))
            statistics = [cache.load_saved() for cache in self.caches]
            missing = [index for index, each in enumerate(statistics) if each is None]
            if missing:
                for index, computed in zip(missing, self.compute_jointly(missing), strict=True):
                    self.caches[index].save(computed)
                    statistics[index] = computed
        for cache, each in zip(self.caches, statistics, strict=True):
            if cache.usable is not None:
                check_statistics_usable(each, cache.real_data, backbone=cache.backbone.class_name, **cache.usable)
        return statistics

    def compute_jointly(self, indices: list[int]) -> list[ClassStatistics]:
        """One pass for backbones `indices`: features side by side, each image decoded once, split per backbone."""
        caches = [self.caches[index] for index in indices]
        backbones = FrozenBackbones([self.backbones[index] for index in indices], [1.0] * len(indices))
        primary = self.caches[0]
        # The primary's features are its own columns of the joint pass, equal to a pass of its own (each backbone
        # sees its own preprocessing of the same batches): kept when something will choose real images from them.
        keep = indices[0] == 0 and primary.keep_features and primary.can_keep_features
        joint = caches[0].compute(
            backbones.embed_pixels,
            preprocessing=backbones.joint_preprocessing(),
            key=[cache.key for cache in caches],
            metadata={},
            keep_features=keep,
        )
        if keep:
            primary._features = joint.features.of_columns(0, primary.feature_dim)
        statistics, start = [], 0
        for cache in caches:
            sums = joint.feature_sums[:, start : start + cache.feature_dim].clone()
            start += cache.feature_dim
            metadata = {**cache.key, **joint.metadata}
            statistics.append(ClassStatistics(sums, joint.counts.clone(), list(joint.class_names), metadata))
        return statistics


def check_statistics_usable(
    statistics: ClassStatistics, real_data: RealData, *, needs_flow: bool, init: str, ipc: int, backbone: str
) -> None:
    """Refuse statistics a run cannot start from: other classes, a zero flow (the backbone ignores the image),
    or too few images per class for `init='real'`/`'centroid'`."""
    if statistics.num_classes != real_data.num_classes:
        raise ValueError(
            f"The statistics describe {statistics.num_classes} classes but the dataset has {real_data.num_classes}."
        )
    means = statistics.class_means  # raises, naming the classes without images
    spread = (means - means.mean(dim=0, keepdim=True)).norm()
    if needs_flow and float(spread) <= 1e-6 * max(1.0, float(means.norm())):
        raise ValueError(
            "Every class has the same mean feature (the real statistical flow is zero), so there is nothing to "
            f"distil: {backbone}'s features do not depend on the image (all zero or constant). Check the backbone's "
            "weights, its pooled output, or `feature_fn`."
        )
    if init in ("real", "centroid") and int(statistics.counts.min()) < ipc:
        small = int(statistics.counts.argmin())
        raise ValueError(
            f"init={init!r} needs ipc={ipc} real images per class, but class {real_data.class_names[small]!r} has "
            f"only {int(statistics.counts[small])}. Lower ipc or use init='noise'."
        )
