"""Per-class feature statistics of the real data: the only way real images enter SFM (DESIGN §2.1).

`μ_c = mean φ(x)` over the real training images of class `c`, with the count `n_c`. Computed once by a batched
`datasets.map` that turns each batch into per-class *partial sums* (one row per class present in the batch), so
the pass shards across processes and datasets, and the cached result is a few rows, not one row per image.
Saved as safetensors with the metadata needed to refuse a mismatched reuse.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .io_utils import atomic_path

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

    def save(self, path: str | Path) -> Path:
        """Write `feature_sums`, `counts` and the metadata (plus class names) to one safetensors file, atomically."""
        metadata = dict(self.metadata, class_names=json.dumps(self.class_names))
        with atomic_path(path) as staged:
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
                "Delete the file or point `statistics_path` elsewhere to recompute them."
            )


def batch_class_sums(
    images: list[Any],
    labels: list[int],
    embed: Callable[[list[Any]], torch.Tensor],
) -> dict[str, list]:
    """One batch → one row per class present: `label`, `feature_sum` (float64) and `count`."""
    features = embed(images).double().cpu()
    labels = torch.as_tensor(labels, dtype=torch.long)
    present, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(present), features.shape[1], dtype=torch.float64).index_add_(0, inverse, features)
    counts = torch.bincount(inverse, minlength=len(present))
    return {"label": present.tolist(), "feature_sum": sums.numpy(), "count": counts.tolist()}


def reduce_class_sums(
    partial_sums: datasets.Dataset | datasets.IterableDataset, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the per-batch partial rows into `(C, D)` sums and `(C,)` counts."""
    feature_sums, counts = None, torch.zeros(num_classes, dtype=torch.long)
    for batch in partial_sums.iter(batch_size=1024):
        labels = torch.as_tensor(batch["label"], dtype=torch.long)
        sums = torch.as_tensor(np.asarray(batch["feature_sum"], dtype=np.float64))
        if feature_sums is None:
            feature_sums = torch.zeros(num_classes, sums.shape[1], dtype=torch.float64)
        feature_sums.index_add_(0, labels, sums)
        counts.index_add_(0, labels, torch.as_tensor(batch["count"], dtype=torch.long))
    if feature_sums is None:
        raise ValueError("The training dataset is empty: there are no images to compute class statistics from.")
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
) -> ClassStatistics:
    """Per-class feature sums and counts of `dataset` through `embed` (PIL images → `(B, D)` features).

    `new_fingerprint` should identify backbone + preprocessing + dataset, so `datasets` caches the pass without
    hashing the model (which would give a new hash every run).
    """
    num_classes = len(class_names)

    def partial_sums(batch: dict[str, list]) -> dict[str, list]:
        if num_proc and num_proc > 1:
            torch.set_num_threads(1)  # a forked worker inheriting torch's thread pool hangs (DESIGN §9)
        labels = batch[label_column]
        bad = [label for label in labels if not 0 <= int(label) < num_classes]
        if bad:
            raise ValueError(
                f"Label values {sorted(set(bad))[:5]} in column '{label_column}' are outside 0..{num_classes - 1}; "
                "check the label column or the class names."
            )
        return batch_class_sums(batch[image_column], labels, embed)

    map_kwargs: dict[str, Any] = {"batched": True, "batch_size": batch_size, "remove_columns": _columns(dataset)}
    if isinstance(dataset, datasets.Dataset):
        map_kwargs.update(num_proc=num_proc, new_fingerprint=new_fingerprint, desc="Class statistics")
    partial = dataset.map(partial_sums, **map_kwargs)
    feature_sums, counts = reduce_class_sums(partial, num_classes)
    return ClassStatistics(feature_sums, counts, list(class_names), dict(metadata or {}))


def _columns(dataset: datasets.Dataset | datasets.IterableDataset) -> list[str]:
    names = dataset.column_names
    if names is None:  # an IterableDataset without resolved features
        names = list(next(iter(dataset)).keys())
    return list(names)
