"""The features of a whole `datasets.Dataset` as a cached column: every real image through a backbone once.

The inherited head, the full-data probe and the evaluator's test split all need the frozen backbone's features of
every image of a split. `embed_dataset` computes them with one `datasets.map` whose fingerprint is the backbone's
weights, the preprocessing and the dataset's own fingerprint, so a second call (or a second run, for a dataset with
cache files) reads the column instead of running the backbone again. Undecodable images are skipped or refused as
everywhere else (`data.decode_images`).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import datasets
import numpy as np
import torch
from datasets.fingerprint import Hasher
from torch import nn

from ..data.columns import MAP_BATCH_SIZE, decode_images, find_image_column, find_label_column, undecoded
from ..data.preprocessing import ImagePreprocessing
from .features import FeatureExtractor, frozen_features

FEATURES_COLUMN = "features"
ROW_COLUMN = "row"  # each example's row in the source dataset (undecodable images are left out)
MAX_REASONS_SHOWN = 3  # undecodable images whose reason is logged, per pass (and process)

logger = logging.getLogger(__name__)


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
    batch_size: int = MAP_BATCH_SIZE,
    num_proc: int | None = None,
    skip_corrupt_images: bool = True,
    desc: str = "Features",
) -> datasets.Dataset:
    """Embed every image once: `dataset` → a `datasets.Dataset` of `features` `(N, D)` float32, labels and `row`.

    The map's fingerprint is built from the backbone's weights, the preprocessing, the feature function and the
    dataset's own fingerprint, so a cached dataset reuses the column across calls and runs instead of
    recomputing it; the returned dataset is formatted as torch tensors. Images are decoded by
    `data.decode_images`: an undecodable one is left out (one warning; `row` keeps each kept example's row in
    `dataset`) or, with `skip_corrupt_images=False`, refused naming its row.
    """
    image_column = find_image_column(dataset, image_column)
    label_column = find_label_column(dataset, label_column)
    label_feature = dataset.features[label_column]
    source, image_feature = undecoded(dataset, image_column)
    fingerprint = Hasher.hash(
        [
            "hf_sfm.backbone.embedding.embed_dataset",
            weights_digest(feature_extractor.model),
            feature_extractor.feature_fn_name,
            preprocessing.to_dict(),
            dataset._fingerprint,
            image_column,
            label_column,
            skip_corrupt_images,
        ]
    )

    reasons_shown = 0

    def embed(batch: dict[str, list], indices: list[int]) -> dict[str, Any]:
        nonlocal reasons_shown
        if num_proc and num_proc > 1:
            torch.set_num_threads(1)  # a forked worker inheriting torch's thread pool hangs (docs/DESIGN.md §10)
        decoded = decode_images(batch[image_column], indices, image_feature, image_column, skip_corrupt_images)
        for row, reason in zip(decoded.skipped_rows, decoded.reasons):
            if reasons_shown < MAX_REASONS_SHOWN:  # why, for the first few (the count comes after the map)
                reasons_shown += 1
                logger.warning(f"Skipping the image in row {row} of column {image_column!r}: {reason}.")
        features: Any = []
        if decoded.images:
            features = (
                frozen_features(feature_extractor, preprocessing(decoded.images)).cpu().numpy().astype(np.float32)
            )
        return {
            FEATURES_COLUMN: features,
            label_column: [batch[label_column][position] for position in decoded.kept],
            ROW_COLUMN: [indices[position] for position in decoded.kept],
        }

    embedded = source.map(
        embed,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        num_proc=num_proc,
        remove_columns=source.column_names,
        features=datasets.Features(
            {
                FEATURES_COLUMN: datasets.List(datasets.Value("float32")),
                label_column: label_feature,
                ROW_COLUMN: datasets.Value("int64"),
            }
        ),
        new_fingerprint=fingerprint,
        desc=desc,
    )
    if len(embedded) < len(dataset):
        kept = torch.zeros(len(dataset), dtype=torch.bool)
        kept[embedded_rows(embedded)] = True
        skipped = (~kept).nonzero().flatten().tolist()
        logger.warning(
            f"Skipped {len(skipped)} image(s) of column {image_column!r} that could not be decoded (rows "
            f"{skipped[:10]}{' …' if len(skipped) > 10 else ''}); the features cover the other {len(embedded)}."
        )
    return embedded.with_format("torch", columns=[FEATURES_COLUMN, label_column, ROW_COLUMN])


def features_and_labels(
    embedded: datasets.Dataset, label_column: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(N, D)` float32 features and `(N,)` int64 labels from an `embed_dataset` result."""
    label_column = label_column or next(
        name for name in embedded.column_names if name not in (FEATURES_COLUMN, ROW_COLUMN)
    )
    columns = embedded[:]  # one formatted read of both columns (a bare `embedded[name]` is a lazy Column)
    return columns[FEATURES_COLUMN].float(), columns[label_column].long()


def embedded_rows(embedded: datasets.Dataset) -> torch.Tensor:
    """`(N,)` int64: each example's row in the source dataset of an `embed_dataset` result."""
    return torch.as_tensor(embedded.select_columns([ROW_COLUMN]).with_format("numpy")[:][ROW_COLUMN], dtype=torch.long)
