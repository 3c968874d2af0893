"""Per-class feature statistics of the real data: the only way real images enter SFM (DESIGN §2.1).

`μ_c = mean φ(x)` over the real training images of class `c`, with the count `n_c`. Computed once by a batched
`datasets.map` that turns each batch into per-class *partial sums* (one row per class present in the batch), so
the pass shards across processes and datasets, and the cached result is a few rows, not one row per image.
Saved as safetensors with the metadata needed to refuse a mismatched reuse.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .data import decode_images, undecoded
from .io_utils import atomic_path

logger = logging.getLogger(__name__)

# Metadata keys that must agree before saved statistics may stand in for a fresh computation.
COMPATIBILITY_KEYS = ("backbone", "backbone_revision", "preprocessing", "dataset_fingerprint", "feature_fn")


@dataclass
class ClassStatistics:
    """Per-class feature sums `(C, D)` (float64) and image counts `(C,)` of the real training data."""

    feature_sums: torch.Tensor
    counts: torch.Tensor
    class_names: list[str]
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.feature_sums.shape[0] != self.counts.shape[0] or len(self.class_names) != self.counts.shape[0]:
            raise ValueError(
                f"Statistics disagree on the number of classes: sums {tuple(self.feature_sums.shape)}, "
                f"counts {tuple(self.counts.shape)}, {len(self.class_names)} class names."
            )

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
            names = [self.class_names[i] for i in empty]
            raise ValueError(
                f"Classes {names} have no training images, so their feature mean is undefined. "
                "Remove them from the label set (e.g. `dataset.align_labels_with_mapping`) or add images."
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
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
        class_names = json.loads(metadata.pop("class_names", "null")) or [
            str(i) for i in range(tensors["counts"].shape[0])
        ]
        return cls(tensors["feature_sums"], tensors["counts"], class_names, metadata)

    def check_compatible(self, expected: dict[str, str], path: str | Path | None = None) -> None:
        """Refuse statistics computed with another backbone, preprocessing or dataset version."""
        mismatches = [
            f"{key}: saved {self.metadata.get(key)!r} vs current {expected[key]!r}"
            for key in COMPATIBILITY_KEYS
            if key in expected and self.metadata.get(key) != expected[key]
        ]
        if mismatches:
            where = f" in {path}" if path else ""
            raise ValueError(
                f"The class statistics{where} were computed under other conditions ({'; '.join(mismatches)}). "
                "Set `recompute_statistics=True` to recompute (and overwrite) them, or point `statistics_path` "
                "elsewhere."
            )


def batch_class_sums(
    images: list[Any],
    labels: list[int],
    embed: Callable[[list[Any]], torch.Tensor],
    rows: str = "",
) -> dict[str, list]:
    """One batch → one row per class present: `label`, `feature_sum` (float64) and `count`.

    Non-finite features raise `FloatingPointError` (`rows` names the batch in the message): a NaN here would
    silently poison a class mean, and through it every flow.
    """
    features = embed(images).double().cpu()
    finite = torch.isfinite(features).all(dim=1)
    if not bool(finite.all()):
        raise FloatingPointError(
            f"The backbone returned NaN/Inf features for {int((~finite).sum())} of {len(images)} images"
            + (f" in {rows}" if rows else "")
            + " of the statistics pass. Likely causes: float16 overflow (mixed_precision='fp16'; use 'bf16' or "
            "'no'), a feature_fn that divides by zero, or backbone weights that hold NaN."
        )
    labels = torch.as_tensor(labels, dtype=torch.long)
    present, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(present), features.shape[1], dtype=torch.float64).index_add_(0, inverse, features)
    counts = torch.bincount(inverse, minlength=len(present))
    return {"label": present.tolist(), "feature_sum": sums.numpy(), "count": counts.tolist()}


def reduce_class_sums(
    partial_sums: datasets.Dataset | datasets.IterableDataset, num_classes: int, skipped_rows: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the per-batch partial rows into `(C, D)` sums and `(C,)` counts (one pass: a streamed map runs once).

    Rows of skipped images, when the partial sums carry them, are appended to `skipped_rows`.
    """
    feature_sums, counts = None, torch.zeros(num_classes, dtype=torch.long)
    for batch in partial_sums.iter(batch_size=1024):
        if skipped_rows is not None and "skipped_rows" in batch:
            skipped_rows.extend(row for rows in batch["skipped_rows"] for row in rows)
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


def compute_class_statistics(
    dataset: datasets.Dataset | datasets.IterableDataset,
    embed: Callable[[list[Any]], torch.Tensor],
    *,
    image_column: str,
    label_column: str,
    class_names: list[str],
    batch_size: int = 64,
    num_proc: int | None = None,
    new_fingerprint: str | None = None,
    metadata: dict[str, str] | None = None,
    skip_corrupt_images: bool = True,
) -> ClassStatistics:
    """Per-class feature sums and counts of `dataset` through `embed` (PIL images → `(B, D)` features).

    `new_fingerprint` should identify backbone + preprocessing + dataset, so `datasets` caches the pass without
    hashing the model (which would give a new hash every run).

    Images are decoded here, not by `datasets`, so that an undecodable one (corrupt or truncated bytes, a missing
    value) does not abort the pass minutes in: with `skip_corrupt_images` it is left out of the statistics, counted
    in `metadata["skipped_images"]` (its row numbers in `metadata["skipped_rows"]`) and reported by a warning;
    without, the first one raises a `ValueError` naming its row.
    """
    num_classes = len(class_names)
    dataset, image_feature = undecoded(dataset, image_column)

    def partial_sums(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        if num_proc and num_proc > 1:
            torch.set_num_threads(1)  # a forked worker inheriting torch's thread pool hangs (DESIGN §9)
        labels = batch[label_column]
        bad = [label for label in labels if label is None or not 0 <= int(label) < num_classes]
        if bad:
            raise ValueError(
                f"Label values {sorted(set(bad), key=str)[:5]} in column '{label_column}' are outside "
                f"0..{num_classes - 1}; check the label column or the class names"
                + (" (-1 is how `datasets` marks an unlabelled example, e.g. in a test split)." if -1 in bad else ".")
            )
        decoded = decode_images(batch[image_column], indices, image_feature, image_column, skip_corrupt_images)
        images, skipped = decoded.images, decoded.skipped_rows
        kept_labels = [labels[position] for position in decoded.kept]
        if not images:  # nothing decodable: one placeholder row (label -1) carries the skipped rows
            return {"label": [-1], "feature_sum": [[]], "count": [0], "skipped_rows": [skipped]} if skipped else {}
        rows = f"rows {indices[0]}..{indices[-1]}" if indices else ""
        result = batch_class_sums(images, kept_labels, embed, rows=rows)
        result["skipped_rows"] = [skipped] + [[] for _ in result["label"][1:]]
        return result

    features = datasets.Features(
        {
            "label": datasets.Value("int64"),
            "feature_sum": datasets.List(datasets.Value("float64")),
            "count": datasets.Value("int64"),
            "skipped_rows": datasets.List(datasets.Value("int64")),
        }
    )
    map_kwargs: dict[str, Any] = {
        "batched": True,
        "batch_size": batch_size,
        "with_indices": True,
        "remove_columns": _columns(dataset),
        "features": features,
    }
    if isinstance(dataset, datasets.Dataset):
        map_kwargs.update(num_proc=num_proc, new_fingerprint=new_fingerprint, desc="Class statistics")
    partial = dataset.map(partial_sums, **map_kwargs)
    skipped_rows: list[int] = []
    feature_sums, counts = reduce_class_sums(partial, num_classes, skipped_rows)
    skipped_rows.sort()
    metadata = dict(metadata or {})
    if skipped_rows:
        if not skip_corrupt_images:  # statistics cached by an earlier skipping pass
            raise ValueError(
                f"{len(skipped_rows)} images of column {image_column!r} cannot be decoded (rows "
                f"{skipped_rows[:10]}). Set `skip_corrupt_images=True` to leave them out, or repair the dataset."
            )
        logger.warning(
            f"Skipped {len(skipped_rows)} training image(s) that could not be decoded (rows {skipped_rows[:10]}"
            + (" …" if len(skipped_rows) > 10 else "")
            + "); the class statistics use the others."
        )
    metadata["skipped_images"] = str(len(skipped_rows))
    metadata["skipped_rows"] = json.dumps(skipped_rows[:1000])
    return ClassStatistics(feature_sums, counts, list(class_names), metadata)


def _columns(dataset: datasets.Dataset | datasets.IterableDataset) -> list[str]:
    names = dataset.column_names
    if names is None:  # an IterableDataset without resolved features
        names = list(next(iter(dataset)).keys())
    return list(names)
