"""The per-image features a statistics pass kept, read back one class at a time.

The centroid init (and the centroid, near-mean and neighbour baselines) pick real images by their distance to the
class means, so they need every training image's feature; the class means need a whole pass first. Rather than
embed the training set a second time, the statistics pass can keep what it computed (`keep_features=True` of
`compute_class_statistics`): each of its per-class partial-sum rows then also holds the dataset rows and float32
features of that class's images in the batch. That map's output is a `datasets` cache file for a dataset with one
(memory-mapped: it costs disk, not RAM) and is keyed like the statistics, so a later run reuses it with them.
"""

from __future__ import annotations

import copy

import datasets
import numpy as np
import pyarrow as pa
import torch

MEMBER_ROWS, MEMBER_FEATURES = "member_rows", "member_features"
MEMBER_COLUMNS = {
    MEMBER_ROWS: datasets.List(datasets.Value("int64")),
    MEMBER_FEATURES: datasets.List(datasets.List(datasets.Value("float32"))),
}


class PassFeatures:
    """The kept features of one statistics pass (`partial`: its map's output, one row per class and batch).

    `columns`: the feature columns read back; a joint pass of several backbones keeps their features side by side,
    and each backbone reads its own (`of_columns`)."""

    def __init__(self, partial: datasets.Dataset, columns: slice = slice(None)):
        self.partial = partial.select_columns(["label", MEMBER_ROWS, MEMBER_FEATURES])
        self.row_labels = np.asarray(partial.select_columns(["label"]).with_format("numpy")[:]["label"])
        self.columns = columns

    def of_columns(self, start: int, stop: int) -> PassFeatures:
        """The same kept features, read back as columns `start:stop` (one backbone's of a joint pass)."""
        chosen = copy.copy(self)
        chosen.columns = slice(start, stop)
        return chosen

    def class_members(self, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Class `label`'s images: `(n, D)` float32 features and `(n,)` dataset rows, in dataset order."""
        positions = np.flatnonzero(self.row_labels == label).tolist()
        table = self.partial.with_format("arrow")[positions] if positions else None
        if table is None or table.num_rows == 0:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
        rows = _flat(table[MEMBER_ROWS]).to_numpy()
        values = _flat(_flat(table[MEMBER_FEATURES])).to_numpy(zero_copy_only=False)
        features = torch.from_numpy(np.array(values, dtype=np.float32).reshape(len(rows), -1)[:, self.columns])
        return features.contiguous(), torch.from_numpy(np.array(rows, dtype=np.int64))

    def all(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(N, D)` features, `(N,)` labels and `(N,)` dataset rows of every kept image, in dataset order."""
        parts = [self.class_members(c) for c in range(num_classes)]
        parts = [(features, rows, torch.full_like(rows, c)) for c, (features, rows) in enumerate(parts) if len(rows)]
        features = torch.cat([p[0] for p in parts])
        rows, labels = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
        order = rows.argsort()
        return features[order], labels[order], rows[order]


def _flat(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten()
