"""Finding the image and label columns of a `datasets` dataset, and its class names.

Errors here name what was found and the argument that fixes it: a user with an unusual dataset should learn in
one line which column to point at.
"""

from __future__ import annotations

import datasets

IMAGE_COLUMN_NAMES = ("image", "img", "images", "picture", "pixel_values")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "class", "target", "y")


def _features(dataset: datasets.Dataset | datasets.IterableDataset) -> datasets.Features:
    features = dataset.features
    if features is None:  # IterableDataset whose features were never resolved
        features = dataset._resolve_features().features
    return features


def find_image_column(dataset: datasets.Dataset | datasets.IterableDataset, image_column: str | None = None) -> str:
    features = _features(dataset)
    if image_column is not None:
        if image_column not in features:
            raise ValueError(
                f"image_column={image_column!r} is not a column of the dataset; columns: {list(features)}."
            )
        if not isinstance(features[image_column], datasets.Image):
            raise ValueError(
                f"Column {image_column!r} holds {features[image_column]!r}, not images. Cast it with "
                f"`dataset.cast_column({image_column!r}, datasets.Image())` or choose another image_column."
            )
        return image_column
    image_columns = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if len(image_columns) == 1:
        return image_columns[0]
    named = [name for name in IMAGE_COLUMN_NAMES if name in image_columns]
    if named:
        return named[0]
    raise ValueError(
        f"Could not find the image column among {dict(features)}: no column has the `datasets.Image` feature"
        + (f" (several do: {image_columns})" if image_columns else "")
        + ". Set `image_column=` (and cast it with `datasets.Image()` if it holds paths or bytes)."
    )


def find_label_column(dataset: datasets.Dataset | datasets.IterableDataset, label_column: str | None = None) -> str:
    features = _features(dataset)
    if label_column is not None:
        if label_column not in features:
            raise ValueError(
                f"label_column={label_column!r} is not a column of the dataset; columns: {list(features)}."
            )
        return label_column
    class_label_columns = [name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
    if len(class_label_columns) == 1:
        return class_label_columns[0]
    candidates = class_label_columns or list(features)
    for name in LABEL_COLUMN_NAMES:
        if name in candidates:
            return name
    raise ValueError(
        f"Could not find the label column among the columns {list(features)}. "
        "Set `label_column=` to the column holding integer class labels."
    )


def class_names_of(dataset: datasets.Dataset | datasets.IterableDataset, label_column: str) -> list[str]:
    """The `ClassLabel` names; for a plain integer column, names `"0" … "C-1"` derived from the labels seen."""
    feature = _features(dataset)[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if not isinstance(feature, datasets.Value) or not feature.dtype.startswith(("int", "uint")):
        raise ValueError(
            f"Label column {label_column!r} holds {feature!r}; hf_sfm needs integer class ids. Convert it with "
            f"`dataset.class_encode_column({label_column!r})`."
        )
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"Label column {label_column!r} of a streaming dataset is not a `ClassLabel`, so the classes cannot be "
            f"known in advance. Cast it: `dataset.cast_column({label_column!r}, datasets.ClassLabel(names=[...]))`."
        )
    labels = dataset.unique(label_column)
    if min(labels) < 0:
        raise ValueError(f"Label column {label_column!r} has negative labels {sorted(labels)[:3]}; expected 0..C-1.")
    return [str(i) for i in range(max(labels) + 1)]
