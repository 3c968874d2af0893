"""Per-class feature statistics of the real data: the only way real images enter SFM (docs/DESIGN.md §2.1).

`μ_c = mean φ(x)` over the real training images of class `c`, with the count `n_c`. Computed once by a batched
`datasets.map` that turns each batch into per-class *partial sums* (one row per class present in the batch), so
the pass shards across processes and datasets, and the cached result is a few rows, not one row per image.
Saved as safetensors with the metadata needed to refuse a mismatched reuse, and validated when loaded (finite sums,
non-negative integer counts, consistent shapes).

A streamed dataset has no fingerprint of its content (`datasets` keys it on its features and shards), so its pass
also keeps a digest of what it read (`DataDigest`: every example's label and image bytes); saved statistics of a
stream are reused only when a digest of the stream as it is now matches (`expected_metadata`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import PIL.Image
import torch
import torch.utils.data
from datasets.fingerprint import Hasher
from safetensors.torch import load_file, save_file

from ..utils.io_utils import atomic_path, check_regular_file, is_regular_file
from .columns import MAP_BATCH_SIZE, DecodeFailure, corrupt_image_error, decode_images, undecoded
from .pass_features import MEMBER_COLUMNS, MEMBER_FEATURES, MEMBER_ROWS, PassFeatures
from .preprocessing import ImagePreprocessing

logger = logging.getLogger(__name__)

# Metadata keys that must agree before saved statistics may stand in for a fresh computation.
COMPATIBILITY_KEYS = (
    "backbone",
    "backbone_revision",
    "backbone_weights",  # a digest of the weights themselves: a name or a folder does not pin them
    "preprocessing",
    "dataset_fingerprint",
    "feature_fn",
    "image_column",
    "label_column",
    "class_names",
    "data_digest",  # a streamed dataset's content (see `DataDigest`); compared only when the current one is known
)
DIGEST_BITS = 256


# A run's (and its `distilled/` folder's) statistics of the primary backbone; the others' beside it.
STATISTICS_FILE = "statistics.safetensors"


def companion_statistics_path(primary: str | Path, short_name: str) -> Path:
    """Where backbone `short_name`'s statistics sit beside the primary's, in a run with several backbones (the run's
    own files and its `distilled/` folder name them alike, so a reopened run finds each backbone's)."""
    primary = Path(primary)
    return primary.with_name(f"{primary.stem}-{short_name}{primary.suffix}")


class StatisticsFileError(ValueError):
    """A statistics file that cannot be read (empty, truncated, not safetensors, missing its tensors)."""


@dataclass
class ClassStatistics:
    """Per-class feature sums `(C, D)` (float64) and image counts `(C,)` of the real training data."""

    feature_sums: torch.Tensor
    counts: torch.Tensor
    class_names: list[str]
    metadata: dict[str, str] = field(default_factory=dict)
    # The per-image features of the pass that computed these (`keep_features=True`); never saved, `None` when loaded.
    features: PassFeatures | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        sums, counts = self.feature_sums, self.counts
        if not isinstance(sums, torch.Tensor) or not isinstance(counts, torch.Tensor):
            raise ValueError("Statistics need tensors: feature_sums (C, D) and counts (C,).")
        if sums.dim() != 2 or counts.dim() != 1 or not isinstance(self.class_names, list | tuple):
            raise ValueError(
                f"Statistics need feature_sums of shape (C, D) and counts of shape (C,), got "
                f"{tuple(sums.shape)} and {tuple(counts.shape)}."
            )
        if sums.shape[0] != counts.shape[0] or len(self.class_names) != counts.shape[0]:
            raise ValueError(
                f"Statistics disagree on the number of classes: sums {tuple(sums.shape)}, "
                f"counts {tuple(counts.shape)}, {len(self.class_names)} class names."
            )
        if not sums.is_floating_point() or not bool(torch.isfinite(sums).all()):
            raise ValueError(f"The feature sums ({sums.dtype}) hold NaN/Inf or are not floating point.")
        if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool or bool((counts < 0).any()):
            raise ValueError(f"Image counts must be non-negative integers, got {counts.dtype} {counts.tolist()[:5]}.")

    @property
    def num_classes(self) -> int:
        return self.counts.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.feature_sums.shape[1]

    @property
    def class_means(self) -> torch.Tensor:
        """`μ`, `(C, D)` float32. Classes without images raise: their mean is undefined."""
        empty = (self.counts == 0).nonzero().flatten().tolist()
        if empty:
            skipped = {int(k): v for k, v in json.loads(self.metadata.get("skipped_per_class", "{}")).items()}
            undecodable = [i for i in empty if skipped.get(i)]
            if undecodable:  # the class has images: none of them could be decoded
                names = [f"{self.class_names[i]!r} ({skipped[i]} images)" for i in undecodable[:10]]
                raise ValueError(
                    f"Every training image of {len(undecodable):,} class(es) could not be decoded and was skipped "
                    f"({', '.join(names)}; rows {self.metadata.get('skipped_rows', '[]')[:200]}), so their feature "
                    "mean is undefined. Repair or replace those image files (the warning of the statistics pass "
                    "gives why each failed), then recompute the statistics (recompute_statistics=True)."
                )
            names = [self.class_names[i] for i in empty[:10]]
            more = f" and {len(empty) - 10:,} more" if len(empty) > 10 else ""
            raise ValueError(
                f"{len(empty):,} of {self.num_classes:,} classes have no training images ({names}{more}), so their "
                "feature mean is undefined. Remove them from the label set (e.g. `dataset.align_labels_with_mapping`) "
                "or add images."
            )
        return (self.feature_sums / self.counts.unsqueeze(1).double()).float()

    def save(self, path: str | Path, overwrite: bool = False, flag: str = "overwrite=True") -> Path:
        """Write `feature_sums`, `counts` and the metadata (plus class names) to one safetensors file, atomically.

        An existing file is replaced only if hf_sfm wrote it (or `overwrite`; `flag` names that for the error)."""
        metadata = dict(self.metadata, class_names=json.dumps(self.class_names))
        with atomic_path(path, overwrite, flag) as staged:
            save_file(
                {"feature_sums": self.feature_sums.contiguous(), "counts": self.counts.contiguous()},
                str(staged),
                metadata=metadata,
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ClassStatistics:
        """Read a `save`d file; an unreadable one raises `StatisticsFileError` naming it and the fix."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        fix = "Delete it, or set `recompute_statistics=True` (with `overwrite_output_dir=True` if it is not hf_sfm's)."
        if path.is_dir():
            raise StatisticsFileError(f"{path} is a folder, not a statistics file. Point statistics_path at a file.")
        try:
            check_regular_file(path, "statistics file")  # a FIFO would block the read forever
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise StatisticsFileError(
                f"{path} is not a readable hf_sfm statistics file ({type(error).__name__}: {error}; empty, "
                f"truncated or not a regular file?). {fix}"
            ) from error
        try:
            class_names = json.loads(metadata.pop("class_names", "null")) or [
                str(i) for i in range(tensors["counts"].shape[0])
            ]
            if not all(isinstance(name, str) for name in class_names):
                raise ValueError(f"class names {class_names[:5]!r} are not strings")
            return cls(tensors["feature_sums"], tensors["counts"], list(class_names), metadata)
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            raise StatisticsFileError(
                f"{path} holds invalid class statistics ({type(error).__name__}: {error}): a run on them would "
                f"train towards meaningless targets. {fix}"
            ) from error

    def check_matches(self, class_names: list[str], feature_dim: int, where: str = "The statistics") -> None:
        """Refuse statistics of other classes (names, count, order) or another feature size, before any work."""
        if list(self.class_names) != list(class_names):
            differing = [
                (i, a, b) for i, (a, b) in enumerate(zip(self.class_names, class_names, strict=False)) if a != b
            ][:3]
            raise ValueError(
                f"{where} describe {self.num_classes} classes {self.class_names[:5]}… but the dataset has "
                f"{len(class_names)} {list(class_names)[:5]}…"
                + (f" (first differences at ids {differing})" if differing else "")
                + ". Pass statistics computed on this dataset's label column, or let the Distiller compute them."
            )
        if self.feature_dim != feature_dim:
            raise ValueError(
                f"{where} have {self.feature_dim}-dim features but the backbone gives {feature_dim}: they were "
                "computed with another backbone or feature function. Recompute them with this one."
            )

    def check_compatible(self, expected: dict[str, str], path: str | Path | None = None) -> None:
        """Refuse statistics computed with another backbone, preprocessing or dataset version."""
        saved = dict(self.metadata, class_names=json.dumps(self.class_names))
        mismatches = [
            f"{key}: saved {saved[key]!r} vs current {expected[key]!r}" if key in saved else f"{key}: not recorded"
            for key in COMPATIBILITY_KEYS
            if key in expected and saved.get(key) != expected[key]
        ]
        if mismatches:
            where = f" in {path}" if path else ""
            raise ValueError(
                f"The class statistics{where} were computed under other conditions ({'; '.join(mismatches)}). "
                "Set `recompute_statistics=True` to recompute (and overwrite) them, or point `statistics_path` "
                "elsewhere."
            )


class DataDigest:
    """What a pass over a streamed dataset read: a digest of every example's label and raw image bytes.

    Order-independent (the sum of the examples' SHA-256 modulo 2^256), so the digests of the processes' shards of a
    stream add up to the digest of the whole stream, whichever way it was split (`combine_data_digests`).
    """

    def __init__(self, value: int = 0):
        self.value = value
        self.examples = 0

    def update(self, images: list[Any], labels: list[Any]) -> None:
        for image, label in zip(images, labels, strict=True):
            example = hashlib.sha256(json.dumps(label).encode() + b"\0" + _image_bytes(image)).digest()
            self.value = (self.value + int.from_bytes(example, "big")) % (1 << DIGEST_BITS)
            self.examples += 1

    def hexdigest(self) -> str:
        return f"{self.value:064x}:{self.examples}"


def combine_data_digests(digests: list[str | None]) -> str | None:
    """The digest of a stream from the digests of its shards (one per process); `None` when any is unknown."""
    if not digests or any(digest is None for digest in digests):
        return None
    total, examples = 0, 0
    for digest in digests:
        value, count = digest.split(":")
        total, examples = (total + int(value, 16)) % (1 << DIGEST_BITS), examples + int(count)
    return f"{total:064x}:{examples}"


def _image_bytes(value: Any) -> bytes:
    """The bytes that identify one undecoded image value: its encoded bytes, or the content of its local file."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        path = value.get("path")
        if path and is_regular_file(path):
            return Path(path).read_bytes()
        return json.dumps(path).encode()
    if isinstance(value, PIL.Image.Image):
        return value.tobytes()
    return repr(value).encode()


def stream_digest(
    dataset: datasets.IterableDataset, image_column: str, label_column: str, batch_size: int = 256
) -> str:
    """`DataDigest` of a streamed dataset as it is now: one read of the stream, without decoding or a backbone."""
    raw, _ = undecoded(dataset, image_column)
    digest = DataDigest()
    for batch in raw.select_columns([image_column, label_column]).iter(batch_size=batch_size):
        digest.update(batch[image_column], batch[label_column])
    return digest.hexdigest()


def expected_metadata(
    dataset: datasets.Dataset | datasets.IterableDataset, metadata: dict[str, str], image_column: str, label_column: str
) -> dict[str, str]:
    """What saved statistics must match to stand in for a pass over `dataset`: `metadata`, plus for a streamed
    dataset the digest of what it holds now (its fingerprint does not cover its content)."""
    if isinstance(dataset, datasets.IterableDataset):
        return {**metadata, "data_digest": stream_digest(dataset, image_column, label_column)}
    return metadata


def batch_class_sums(
    images: list[Any] | torch.Tensor,
    labels: list[int],
    embed: Callable[[Any], torch.Tensor],
    rows: str = "",
    member_rows: Sequence[int] | None = None,
) -> dict[str, list]:
    """One batch → one row per class present: `label`, `feature_sum` (float64) and `count`; with `member_rows`
    (each image's dataset row) also that class's rows and float32 features (`pass_features.MEMBER_COLUMNS`).

    Non-finite features raise `FloatingPointError` (`rows` names the batch in the message): a NaN here would
    silently poison a class mean, and through it every flow.
    """
    features = embed(images).double().cpu()
    finite = torch.isfinite(features).all(dim=1)
    if not bool(finite.all()):
        raise FloatingPointError(
            f"The backbone returned NaN/Inf features for {int((~finite).sum())} of {len(features)} images"
            + (f" in {rows}" if rows else "")
            + " of the statistics pass. Likely causes: float16 overflow (mixed_precision='fp16'; use 'bf16' or "
            "'no'), a feature_fn that divides by zero, or backbone weights that hold NaN."
        )
    labels = torch.as_tensor(labels, dtype=torch.long)
    present, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(present), features.shape[1], dtype=torch.float64).index_add_(0, inverse, features)
    counts = torch.bincount(inverse, minlength=len(present))
    result = {"label": present.tolist(), "feature_sum": sums.numpy(), "count": counts.tolist()}
    if member_rows is not None:  # float32 → float64 → float32 is exact: these are the features as computed
        members = torch.as_tensor(list(member_rows), dtype=torch.long)
        result[MEMBER_ROWS] = [members[inverse == k].tolist() for k in range(len(present))]
        result[MEMBER_FEATURES] = [features[inverse == k].float().numpy() for k in range(len(present))]
    return result


def reduce_class_sums(
    partial_sums: datasets.Dataset | datasets.IterableDataset,
    num_classes: int,
    skipped_rows: list[int] | None = None,
    skipped_reasons: list[str] | None = None,
    skipped_labels: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the per-batch partial rows into `(C, D)` sums and `(C,)` counts (one pass: a streamed map runs once).

    Rows of skipped images, when the partial sums carry them, are appended to `skipped_rows`, and why each was
    skipped to `skipped_reasons` (statistics cached before reasons were recorded carry none).
    """
    feature_sums, counts = None, torch.zeros(num_classes, dtype=torch.long)
    for batch in partial_sums.iter(batch_size=1024):
        if skipped_rows is not None and "skipped_rows" in batch:
            skipped_rows.extend(row for rows in batch["skipped_rows"] for row in rows)
        if skipped_reasons is not None and "skipped_reasons" in batch:
            skipped_reasons.extend(reason for reasons in batch["skipped_reasons"] for reason in reasons)
        if skipped_labels is not None and "skipped_labels" in batch:
            skipped_labels.extend(label for labels in batch["skipped_labels"] for label in labels)
        keep = [i for i, label in enumerate(batch["label"]) if label >= 0]  # label -1: a batch of skipped images
        if not keep:
            continue
        labels = torch.as_tensor([batch["label"][i] for i in keep], dtype=torch.long)
        sums = torch.as_tensor(np.asarray([batch["feature_sum"][i] for i in keep], dtype=np.float64))
        if feature_sums is None:
            feature_sums = torch.zeros(num_classes, sums.shape[1], dtype=torch.float64)
        feature_sums.index_add_(0, labels, sums)
        counts.index_add_(0, labels, torch.as_tensor([batch["count"][i] for i in keep], dtype=torch.long))
    if feature_sums is None:
        raise ValueError(
            "The training dataset is empty (or none of its images could be decoded): there are no images to "
            "compute class statistics from."
        )
    return feature_sums, counts


# ---------------------------------------------------------------------------------------------- decoding off the path


class PreparedBatch(NamedTuple):
    """One batch of the statistics map, decoded (and preprocessed): what `embed` needs, and what was skipped.

    `images` is `(K, 3, S, S)` uint8 (`ImagePreprocessing.pixels`) when the pass has a `preprocessing`, else `K` RGB
    `PIL.Image`s; `kept` are their positions in the batch (to pick the labels), `skipped_rows`/`reasons` the rows
    that could not be decoded and why.
    """

    start: int
    stop: int
    images: torch.Tensor | list
    kept: list[int]
    skipped_rows: list[int]
    reasons: list[str]


def prepare_batch(
    values: list[Any],
    rows: Sequence[int],
    image_feature: datasets.Image | None,
    image_column: str,
    preprocessing: ImagePreprocessing | None,
    skip_corrupt_images: bool,
) -> PreparedBatch:
    """Decode (`data.decode_images`) and preprocess the raw image values of rows `rows` (the map's `indices`)."""
    decoded = decode_images(values, rows, image_feature, image_column, skip_corrupt_images)
    images = decoded.images
    if preprocessing is not None and images:
        images = preprocessing.pixels(images)
    start, stop = (rows[0], rows[-1] + 1) if len(rows) else (0, 0)
    return PreparedBatch(start, stop, images, decoded.kept, decoded.skipped_rows, list(decoded.reasons))


def statistics_num_workers(device: torch.device | str | None = None) -> int:
    """How many decoding workers the statistics pass uses by default on `device` (`num_workers=None`).

    On CPU the backbone needs every core and decoding is a small part of each batch (MNIST, EfficientNet-Lite0 at
    64 px, 2 cores: 0.35 ms of 3.5 ms per image), so workers only compete with it: 0, today's one-process map. On a
    GPU the device would idle while JPEGs decode, so up to 8 workers, leaving one core per local process for the
    process itself (`LOCAL_WORLD_SIZE` processes share this machine's cores).
    """
    if device is None or torch.device(device).type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, cores // processes - 1))


def _start_worker(max_image_pixels: int | None, worker_id: int) -> None:
    """A decoding worker applies the parent's decompression-bomb limit (a spawned worker would start at PIL's)."""
    PIL.Image.MAX_IMAGE_PIXELS = max_image_pixels


def _as_is(batch: PreparedBatch) -> PreparedBatch:
    return batch


class _MapBatches(torch.utils.data.Dataset):
    """Item `k`: rows `[start + k·b, min(start + (k + 1)·b, n))` of `source`, prepared (the map's batches)."""

    def __init__(self, prefetcher: _Prefetcher, start: int):
        self.source, self.image_column = prefetcher.source, prefetcher.image_column
        self.image_feature, self.preprocessing = prefetcher.image_feature, prefetcher.preprocessing
        self.batch_size, self.start = prefetcher.batch_size, start

    def __len__(self) -> int:
        return -(-(len(self.source) - self.start) // self.batch_size)

    def __getitem__(self, k: int) -> PreparedBatch:
        first = self.start + k * self.batch_size
        rows = range(first, min(first + self.batch_size, len(self.source)))
        values = self.source[rows.start : rows.stop][self.image_column]
        # Never raise here: the map's process refuses a bad image (`skip_corrupt_images=False`) naming its row.
        return prepare_batch(values, rows, self.image_feature, self.image_column, self.preprocessing, True)


class _Prefetcher:
    """Decodes and preprocesses the statistics map's next batches in `DataLoader` workers while `embed` runs.

    Called with each map batch's `indices`, it returns that batch prepared. The workers are started lazily at the
    first batch (so a map served from the `datasets` cache starts none) and produce the batches that follow it,
    `batch_size` rows at a time, in order. A call whose rows are not the next prefetched batch (the map resumed
    part of a cached pass, or `datasets` batches differently) restarts the workers there, a few times at most,
    then prepares its batch in this process: the result never depends on the prefetching.
    """

    MAX_STARTS = 4

    def __init__(
        self,
        source: datasets.Dataset,
        image_column: str,
        image_feature: datasets.Image,
        preprocessing: ImagePreprocessing | None,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        skip_corrupt_images: bool,
    ):
        self.source = source.select_columns([image_column])
        self.image_column, self.image_feature, self.preprocessing = image_column, image_feature, preprocessing
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.skip_corrupt_images = skip_corrupt_images
        self._batches: Any = None  # the DataLoader's iterator
        self._next_start = -1
        self._starts = 0
        self.prefetched = self.prepared_here = 0  # batches served each way (logged at the end)

    def __call__(self, indices: list[int]) -> PreparedBatch:
        rows = range(indices[0], indices[-1] + 1) if indices else range(0)
        contiguous = bool(indices) and list(rows) == list(indices)
        if contiguous and rows.start != self._next_start:
            self._start(rows.start)
        if contiguous and self._batches is not None:
            prepared = next(self._batches, None)
            if prepared is not None and (prepared.start, prepared.stop) == (rows.start, rows.stop):
                self._next_start = rows.stop
                self.prefetched += 1
                return prepared
            self.close()  # out of step with the map: the next call restarts (or decodes here)
        self.prepared_here += 1
        values = self.source[rows.start : rows.stop] if contiguous else self.source[list(indices)]
        return prepare_batch(
            values[self.image_column], indices, self.image_feature, self.image_column, self.preprocessing,
            self.skip_corrupt_images,
        )  # fmt: skip

    def _start(self, start: int) -> None:
        self.close()
        remaining = -(-(len(self.source) - start) // self.batch_size)
        if self._starts >= self.MAX_STARTS or remaining < 2:  # one batch: nothing to overlap
            return
        self._starts += 1
        loader = torch.utils.data.DataLoader(
            _MapBatches(self, start),
            batch_size=None,
            num_workers=min(self.num_workers, remaining),
            collate_fn=_as_is,
            pin_memory=self.pin_memory,
            worker_init_fn=functools.partial(_start_worker, PIL.Image.MAX_IMAGE_PIXELS),
        )
        self._batches = iter(loader)
        self._next_start = start

    def close(self) -> None:
        """Stop the workers (at the end of the map, or when it raised)."""
        if self._batches is not None:
            logger.debug(
                f"Statistics pass: {self.prefetched} batches prefetched by {self.num_workers} worker(s) so far, "
                f"{self.prepared_here} prepared in the map's process."
            )
            shutdown = getattr(self._batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self._batches = None
        self._next_start = -1


# ---------------------------------------------------------------------------------------------- the pass


def compute_class_statistics(
    dataset: datasets.Dataset | datasets.IterableDataset,
    embed: Callable[[Any], torch.Tensor],
    *,
    image_column: str,
    label_column: str,
    class_names: list[str],
    batch_size: int = MAP_BATCH_SIZE,
    num_proc: int | None = None,
    new_fingerprint: str | None = None,
    metadata: dict[str, str] | None = None,
    skip_corrupt_images: bool = True,
    load_from_cache_file: bool = True,
    preprocessing: ImagePreprocessing | None = None,
    num_workers: int | None = None,
    device: torch.device | str = "cpu",
    keep_features: bool = False,
) -> ClassStatistics:
    """Per-class feature sums and counts of `dataset` through `embed` (a batch of images → `(B, D)` features).

    What `embed` receives: with `preprocessing`, the batch preprocessed, `(B, 3, S, S)` uint8 on the CPU
    (`ImagePreprocessing.pixels`; `ImagePreprocessing.to_unit_range` gives the `[0, 1]` floats, best after the
    move to the device); without, `B` RGB `PIL.Image`s. Any object with `pixels` serves as `preprocessing`: several
    backbones' pass (`hf_sfm.backbone.group.JointPreprocessing`) gets one batch per backbone from one decode.
    `device` is where `embed` runs: on CUDA, prefetched batches come in pinned memory, so `embed` can move them
    with `.to(device, non_blocking=True)`.

    `new_fingerprint` should identify backbone + preprocessing + dataset, so `datasets` caches the pass without
    hashing the model (which would give a new hash every run). The pass is one `datasets.map` whose fingerprint is
    derived from `new_fingerprint` and the layout of its output columns, so a second call with the same fingerprint
    on a cached dataset reads the result instead of running the backbone (and a pass cached by a version with
    other columns is recomputed, not misread).

    `num_workers` `DataLoader` worker processes decode and preprocess the next batches while `embed` runs on this
    one (`None`: `statistics_num_workers(device)`, 0 on CPU; 0: everything in this process, as before). Each map
    batch is checked to be the rows that were prefetched, and the result is the same with or without workers. A
    streaming dataset, `num_proc > 1` or a column `datasets` does not decode as `Image` is always processed in the
    map's own process(es).

    Images are decoded here, not by `datasets`, so that an undecodable one (corrupt or truncated bytes, a missing
    value, NaN/inf pixels, beyond PIL's decompression-bomb limit) does not abort the pass minutes in: with
    `skip_corrupt_images` it is left out of the statistics, counted in `metadata["skipped_images"]` (its row
    numbers in `metadata["skipped_rows"]`) and reported by a warning with the reasons; without, the first one
    raises a `ValueError` naming its row and why.

    `keep_features` (a map-style dataset) keeps every image's feature in the map's output, returned as the
    statistics' `features` (`PassFeatures`): the centroid init and baselines then need no second pass.
    """
    num_classes = len(class_names)
    keep_features = keep_features and isinstance(dataset, datasets.Dataset)
    dataset, image_feature = undecoded(dataset, image_column)
    if preprocessing is not None and image_feature is None:
        raise ValueError(
            f"Column {image_column!r} is not a decoding `datasets.Image` column, so `preprocessing` cannot apply to "
            f"it. Cast it with `dataset.cast_column({image_column!r}, datasets.Image())`, or pass "
            "`preprocessing=None` and an `embed` that takes the raw values."
        )
    if num_workers is None:
        num_workers = statistics_num_workers(device)
    pin_memory = torch.device(device).type == "cuda"
    rows_per_batch = batch_size if batch_size and batch_size > 0 else None
    prefetcher = None
    if (
        num_workers > 0
        and isinstance(dataset, datasets.Dataset)
        and not (num_proc and num_proc > 1)
        and image_feature is not None
    ):
        prefetcher = _Prefetcher(
            dataset, image_column, image_feature, preprocessing, rows_per_batch or max(1, len(dataset)),
            num_workers, pin_memory, skip_corrupt_images,
        )  # fmt: skip

    def check_labels(labels: list) -> None:
        bad = [label for label in labels if label is None or not 0 <= int(label) < num_classes]
        if bad:
            raise ValueError(
                f"Label values {sorted(set(bad), key=str)[:5]} in column '{label_column}' are outside "
                f"0..{num_classes - 1}; check the label column or the class names"
                + (" (-1 is how `datasets` marks an unlabelled example, e.g. in a test split)." if -1 in bad else ".")
            )

    def sums_of(prepared: PreparedBatch, labels: list, indices: list[int]) -> dict[str, list]:
        if prepared.skipped_rows and not skip_corrupt_images:  # prefetched: the worker only recorded it
            failure = DecodeFailure(prepared.skipped_rows[0], prepared.reasons[0])
            raise corrupt_image_error(failure, image_column)
        skipped, reasons = list(prepared.skipped_rows), list(prepared.reasons)
        position = {row: i for i, row in enumerate(indices)}
        skipped_labels = [int(labels[position[row]]) for row in skipped if row in position]
        if not prepared.kept:  # nothing decodable: one placeholder row (label -1) carries the skipped rows
            if not skipped:
                return {}
            return {
                "label": [-1],
                "feature_sum": [[]],
                "count": [0],
                "skipped_rows": [skipped],
                "skipped_reasons": [reasons],
                "skipped_labels": [skipped_labels],
                **({name: [[]] for name in MEMBER_COLUMNS} if keep_features else {}),
            }
        kept_labels = [labels[position] for position in prepared.kept]
        rows = f"rows {indices[0]}..{indices[-1]}" if indices else ""
        kept_rows = [indices[position] for position in prepared.kept] if keep_features else None
        result = batch_class_sums(prepared.images, kept_labels, embed, rows=rows, member_rows=kept_rows)
        empty: list[list] = [[] for _ in result["label"][1:]]
        result["skipped_rows"] = [skipped, *empty]
        result["skipped_reasons"] = [reasons, *empty]
        result["skipped_labels"] = [skipped_labels, *empty]
        return result

    streamed = isinstance(dataset, datasets.IterableDataset)
    digest = DataDigest()  # what a streamed pass read (a map-style dataset's fingerprint already covers it)

    def partial_sums(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        if num_proc and num_proc > 1:
            torch.set_num_threads(1)  # a forked worker inheriting torch's thread pool hangs (docs/DESIGN.md §10)
        labels = batch[label_column]
        check_labels(labels)
        if streamed:
            digest.update(batch[image_column], labels)
        prepared = prepare_batch(
            batch[image_column], indices, image_feature, image_column, preprocessing, skip_corrupt_images
        )
        return sums_of(prepared, labels, indices)

    def prefetched_partial_sums(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        labels = batch[label_column]
        check_labels(labels)
        return sums_of(prefetcher(indices), labels, indices)

    features = datasets.Features(
        {
            "label": datasets.Value("int64"),
            "feature_sum": datasets.List(datasets.Value("float64")),
            "count": datasets.Value("int64"),
            "skipped_rows": datasets.List(datasets.Value("int64")),
            "skipped_reasons": datasets.List(datasets.Value("string")),
            "skipped_labels": datasets.List(datasets.Value("int64")),
            **(MEMBER_COLUMNS if keep_features else {}),
        }
    )
    # With a prefetcher the map reads only the labels: the workers read the image bytes themselves.
    mapped = dataset.select_columns([label_column]) if prefetcher is not None else dataset
    map_kwargs: dict[str, Any] = {
        "batched": True,
        "batch_size": batch_size,
        "with_indices": True,
        "remove_columns": _columns(mapped),
        "features": features,
    }
    if isinstance(dataset, datasets.Dataset):
        if new_fingerprint is not None:  # a cached pass of another output layout would not load: key on it too
            new_fingerprint = Hasher.hash([new_fingerprint, list(features)])
        map_kwargs.update(num_proc=num_proc, new_fingerprint=new_fingerprint, desc="Class statistics")
    calls = [0]  # batches this process computed: none at all means `datasets` served a cached pass

    def counted(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        calls[0] += 1
        return (prefetched_partial_sums if prefetcher is not None else partial_sums)(batch, indices)

    if isinstance(dataset, datasets.Dataset):
        map_kwargs["load_from_cache_file"] = load_from_cache_file
    try:
        partial = mapped.map(counted, **map_kwargs)
    finally:
        if prefetcher is not None:
            prefetcher.close()
    if isinstance(dataset, datasets.Dataset) and len(dataset) and not calls[0] and not (num_proc and num_proc > 1):
        logger.info(
            "Class statistics: reused the `datasets` cache of an identical pass (same backbone weights, "
            "preprocessing, data and columns); set recompute_statistics=True to recompute."
        )
    skipped_rows: list[int] = []
    skipped_reasons: list[str] = []
    skipped_labels: list[int] = []
    feature_sums, counts = reduce_class_sums(partial, num_classes, skipped_rows, skipped_reasons, skipped_labels)
    order = sorted(range(len(skipped_rows)), key=skipped_rows.__getitem__)
    reasons = [skipped_reasons[i] for i in order] if len(skipped_reasons) == len(skipped_rows) else []
    skipped_rows = [skipped_rows[i] for i in order]
    metadata = dict(metadata or {})
    if skipped_rows:
        why = _reasons_text(skipped_rows, reasons)
        if not skip_corrupt_images:  # statistics cached by an earlier skipping pass
            raise ValueError(
                f"{len(skipped_rows)} images of column {image_column!r} cannot be decoded (rows "
                f"{skipped_rows[:10]}){why}. Set `skip_corrupt_images=True` to leave them out, or repair the dataset."
            )
        logger.warning(
            f"Skipped {len(skipped_rows)} training image(s) that could not be decoded (rows {skipped_rows[:10]}"
            + (" …" if len(skipped_rows) > 10 else "")
            + f"); the class statistics use the others{why}."
        )
    metadata["skipped_images"] = str(len(skipped_rows))
    metadata["skipped_rows"] = json.dumps(skipped_rows[:1000])
    if skipped_labels:
        per_class = torch.bincount(torch.as_tensor(skipped_labels), minlength=num_classes)
        metadata["skipped_per_class"] = json.dumps({i: int(n) for i, n in enumerate(per_class.tolist()) if n})
    if streamed:
        metadata["data_digest"] = digest.hexdigest()
    pass_features = PassFeatures(partial) if keep_features else None
    return ClassStatistics(feature_sums, counts, list(class_names), metadata, features=pass_features)


def _reasons_text(rows: list[int], reasons: list[str], shown: int = 3) -> str:
    """`"; why: row 12: …; row 13: …"` for the first `shown` distinct reasons (empty without reasons)."""
    first: dict[str, int] = {}
    for row, reason in zip(rows, reasons, strict=False):
        first.setdefault(reason, row)
    if not first:
        return ""
    items = [f"row {row}: {reason}" for reason, row in list(first.items())[:shown]]
    return "; why: " + "; ".join(items) + (" …" if len(first) > shown else "")


def _columns(dataset: datasets.Dataset | datasets.IterableDataset) -> list[str]:
    names = dataset.column_names
    if names is None:  # an IterableDataset without resolved features
        names = list(next(iter(dataset)).keys())
    return list(names)
