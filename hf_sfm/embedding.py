"""The features of a whole `datasets.Dataset` as a cached column: every real image through a backbone once.

The inherited head, the full-data probe and the evaluator's test split all need the frozen backbone's features of
every image of a split. `embed_dataset` computes them with one `datasets.map` whose fingerprint is the backbone's
weights, the preprocessing and the dataset's own fingerprint, so a second call (or a second run, for a dataset with
cache files) reads the column instead of running the backbone again.
"""

from __future__ import annotations

import hashlib
from typing import Any

import datasets
import numpy as np
import torch
from datasets.fingerprint import Hasher
from torch import nn

from .data import find_image_column, find_label_column
from .features import FeatureExtractor
from .preprocessing import ImagePreprocessing

FEATURES_COLUMN = "features"


def weights_digest(model: nn.Module) -> str:
    """A content hash of a model's parameters and buffers: identifies a backbone even without a name.

    Used in `datasets` fingerprints instead of hashing the module object (whose pickle differs run to run).
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def embed_dataset(
    feature_extractor: FeatureExtractor,
    preprocessing: ImagePreprocessing,
    dataset: datasets.Dataset,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 64,
    num_proc: int | None = None,
    desc: str = "Features",
) -> datasets.Dataset:
    """Embed every image once: `dataset` → a `datasets.Dataset` with `features` `(N, D)` float32 and the labels.

    The map's fingerprint is built from the backbone's weights, the preprocessing, the feature function and the
    dataset's own fingerprint, so a cached dataset reuses the column across calls and runs instead of
    recomputing it; the returned dataset is formatted as torch tensors.
    """
    image_column = find_image_column(dataset, image_column)
    label_column = find_label_column(dataset, label_column)
    device = feature_extractor.mean.device
    fingerprint = Hasher.hash(
        [
            "hf_sfm.embedding.embed_dataset",
            weights_digest(feature_extractor.model),
            getattr(feature_extractor.feature_fn, "__qualname__", "custom"),
            preprocessing.to_dict(),
            dataset._fingerprint,
            image_column,
            label_column,
        ]
    )

    def embed(batch: dict[str, list]) -> dict[str, Any]:
        if num_proc and num_proc > 1:
            torch.set_num_threads(1)  # a forked worker inheriting torch's thread pool hangs (DESIGN §9)
        with torch.no_grad():
            features = feature_extractor(preprocessing(batch[image_column]).to(device))
        return {FEATURES_COLUMN: features.cpu().numpy().astype(np.float32)}

    embedded = dataset.map(
        embed,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=[name for name in dataset.column_names if name != label_column],
        new_fingerprint=fingerprint,
        desc=desc,
    )
    return embedded.with_format("torch", columns=[FEATURES_COLUMN, label_column])


def features_and_labels(
    embedded: datasets.Dataset, label_column: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(N, D)` float32 features and `(N,)` int64 labels from an `embed_dataset` result."""
    label_column = label_column or next(name for name in embedded.column_names if name != FEATURES_COLUMN)
    columns = embedded[:]  # one formatted read of both columns (a bare `embedded[name]` is a lazy Column)
    return columns[FEATURES_COLUMN].float(), columns[label_column].long()
