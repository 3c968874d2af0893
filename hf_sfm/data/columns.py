"""Finding the image and label columns of a `datasets` dataset, and its class names.

Errors here name what was found and the argument that fixes it: a user with an unusual dataset should learn in
one line which column to point at.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import datasets

from .image_checks import CorruptImageError, check_finite_pixels

# Rows per `datasets.map` batch of the passes that decode and embed images (statistics, feature columns, baselines):
# large enough that the map's per-batch cost is small beside the forward, which `frozen_features` chunks anyway.
MAP_BATCH_SIZE = 256

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
    if None in labels:
        raise ValueError(
            f"Label column {label_column!r} has missing (None) labels; drop those rows first, e.g. "
            f"`dataset.filter(lambda label: label is not None, input_columns={label_column!r})`."
        )
    if not labels:
        raise ValueError("The training dataset is empty: there are no labelled images to distil.")
    if min(labels) < 0:
        raise ValueError(f"Label column {label_column!r} has negative labels {sorted(labels)[:3]}; expected 0..C-1.")
    num_classes = max(labels) + 1
    if num_classes > len(dataset):
        raise ValueError(
            f"Label column {label_column!r} goes up to {max(labels)}, i.e. {num_classes:,} classes, but the dataset "
            f"has {len(dataset):,} images and {len(labels):,} distinct labels: these are not class ids 0..C-1. "
            f"Map them to ids first, e.g. `dataset.class_encode_column({label_column!r})`, or cast the column to a "
            "`datasets.ClassLabel`."
        )
    return [str(i) for i in range(num_classes)]


def check_eval_classes(
    class_names: list[str],
    eval_dataset: datasets.Dataset | datasets.IterableDataset,
    label_column: str | None = None,
) -> None:
    """`check_label_sets` for an eval split whose class names can be known (a `ClassLabel`, or a map-style set)."""
    eval_label_column = find_label_column(eval_dataset, label_column)
    feature = _features(eval_dataset)[eval_label_column]
    if isinstance(feature, datasets.ClassLabel) or isinstance(eval_dataset, datasets.Dataset):
        check_label_sets(class_names, class_names_of(eval_dataset, eval_label_column), eval_label_column)


def check_label_sets(train_names: list[str], eval_names: list[str], eval_label_column: str = "label") -> None:
    """Refuse an eval split whose class ids do not mean what they mean in the training split (compared by name).

    A probe trained on the distilled set predicts training class ids: an eval class the training set lacks can
    never be predicted, and the same names in another order would silently score the wrong classes. An eval split
    covering only some of the training classes is fine, as long as every id names the same class.
    """
    unknown = [name for name in eval_names if name not in train_names]
    if unknown:
        raise ValueError(
            f"The eval dataset has classes the training set lacks: {unknown[:10]}"
            + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else "")
            + f". A classifier trained on the distilled set can never predict them. Training classes: "
            f"{list(train_names)[:10]}{' …' if len(train_names) > 10 else ''}. Filter those rows out of the eval split "
            "or add the classes to the training set."
        )
    moved = [(i, name) for i, name in enumerate(eval_names) if train_names.index(name) != i]
    if moved:
        i, name = moved[0]
        raise ValueError(
            f"The eval dataset numbers its classes differently: id {i} is {name!r} there but "
            f"{train_names.index(name)} in the training set ({len(moved)} id(s) differ). Realign it: "
            f"`eval_dataset = eval_dataset.align_labels_with_mapping({{name: i for i, name in "
            f"enumerate(train_class_names)}}, {eval_label_column!r})`."
        )


def undecoded(
    dataset: datasets.Dataset | datasets.IterableDataset, image_column: str
) -> tuple[datasets.Dataset | datasets.IterableDataset, datasets.Image | None]:
    """`dataset` with `image_column` left as raw `{"bytes", "path"}` values, and the `Image` feature to decode them.

    `datasets` decodes an `Image` column while it formats a batch, so one corrupt file raises deep inside
    `datasets` before a batch function sees it. Decoding ourselves (`decode_image`) lets a bad image be skipped
    and counted. Returns `(dataset, None)` when the column is not a decoding `Image` column.
    """
    feature = _features(dataset)[image_column]
    if not isinstance(feature, datasets.Image) or not feature.decode:
        return dataset, None
    return dataset.cast_column(image_column, datasets.Image(mode=feature.mode, decode=False)), feature


def decode_image(value, feature: datasets.Image):
    """One raw `Image` value → an RGB `PIL.Image`, as `datasets` would decode it (EXIF orientation, `mode`).

    Raises `CorruptImageError` (a `ValueError`) for a missing value, for non-finite (NaN/inf) pixels of a float
    image and, with a reason a user can act on, for an image beyond PIL's decompression-bomb limit; PIL's own errors
    (`UnidentifiedImageError`, `OSError` for truncated data, ...) for bytes that are not a readable image.
    """
    import PIL.Image

    from .preprocessing import to_rgb

    if value is None or (isinstance(value, dict) and value.get("bytes") is None and value.get("path") is None):
        raise CorruptImageError("the value is missing (None)")
    if not isinstance(value, dict):  # a PIL image, array or path not encoded yet
        check_finite_pixels(value)
        value = feature.encode_example(value)
    try:
        image = feature.decode_example(value)
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
        # (a warning only when warnings are errors: PIL decodes 1-2x the limit with a warning)
        raise CorruptImageError(_decompression_bomb_reason(value, error)) from error
    return to_rgb(image)


def _decompression_bomb_reason(value: dict, error: Exception) -> str:
    """Why PIL refused an image as a possible decompression bomb, and how to let a trusted one through."""
    import re

    import PIL.Image

    size = _image_size_unchecked(value)
    if size is not None:
        pixels = f"{size[0]}×{size[1]} = {size[0] * size[1]:,} pixels"
    else:
        match = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{int(match.group(1)):,} pixels" if match else "more pixels than allowed"
    limit = PIL.Image.MAX_IMAGE_PIXELS
    refused = "more than twice" if isinstance(error, PIL.Image.DecompressionBombError) else "more than"
    return (
        f"the image has {pixels}, {refused} PIL's `PIL.Image.MAX_IMAGE_PIXELS` ({limit:,}), so PIL refuses it as a "
        "possible decompression bomb. If the image is trusted, raise the limit before the pass, e.g. "
        "`PIL.Image.MAX_IMAGE_PIXELS = 500_000_000` (or `None` to switch the check off); otherwise resize it"
    )


def _image_size_unchecked(value: dict) -> tuple[int, int] | None:
    """`(width, height)` from an image's header, without PIL's size check (which is what refused it), or None."""
    import io

    import PIL.Image

    try:
        data = value.get("bytes")
        if data is None:
            with open(value["path"], "rb") as handle:
                data = handle.read()
        PIL.Image.init()
        for format_id in PIL.Image.ID:  # what `PIL.Image.open` does, less `_decompression_bomb_check`
            factory, accept = PIL.Image.OPEN[format_id]
            if accept is not None and not accept(data[:16]):
                continue
            try:
                return tuple(factory(io.BytesIO(data), None).size)
            except Exception:  # not this format: try the next plugin
                continue
    except Exception:  # a best-effort detail for an error message
        return None
    return None


class DecodeFailure(NamedTuple):
    """An image that could not be decoded: its row and why (`"TypeName: message"`, or hf_sfm's own reason)."""

    row: int
    reason: str
    error: BaseException | None = None  # the exception itself, when it did not cross a process boundary


class DecodedImages(NamedTuple):
    """What `decode_images` made of a list of raw values: the decodable ones and where the others were."""

    images: list  # RGB `PIL.Image`s, in input order
    kept: list[int]  # positions in the input list of `images`, to pick the matching labels
    skipped_rows: list[int]  # row numbers of the undecodable values
    reasons: Sequence[str] = ()  # why each of `skipped_rows` could not be decoded, in the same order


def decode_failure(row: int, error: BaseException) -> DecodeFailure:
    reason = str(error) if isinstance(error, CorruptImageError) else f"{type(error).__name__}: {error}"
    return DecodeFailure(row, reason, error)


def corrupt_image_error(failure: DecodeFailure, image_column: str, row_kind: str = "row") -> ValueError:
    """The error that refuses an undecodable image (`skip_corrupt_images=False`): its row, why, and the fix."""
    return ValueError(
        f"The image in {row_kind} {failure.row} of column {image_column!r} cannot be decoded ({failure.reason}). "
        "Set `skip_corrupt_images=True` to leave such images out (they are counted and reported), or repair the "
        "dataset."
    )


def decode_images(
    values: Sequence[Any],
    rows: Sequence[int],
    feature: datasets.Image | None,
    image_column: str,
    skip_corrupt_images: bool = True,
    row_kind: str = "row",
) -> DecodedImages:
    """Decode raw `Image` values (from `undecoded`) at row numbers `rows`, skipping or refusing the undecodable.

    One place for every pass over real images, so a corrupt, truncated or missing image, one with NaN/inf pixels
    or one beyond PIL's decompression-bomb limit is treated alike everywhere: with `skip_corrupt_images` it is
    left out and its row (and reason) returned; without, the first one raises a `ValueError` naming its row, the
    reason and the fix. `feature=None` (a column `datasets` does not decode, e.g. `Array3D`) keeps the values as
    they are, but still refuses float arrays with non-finite values. `row_kind` names what `rows` number (e.g.
    positions in a shuffled stream).
    """
    images, kept, failures = [], [], []
    for position, (value, row) in enumerate(zip(values, rows, strict=True)):
        try:
            if feature is None:
                check_finite_pixels(value)
                images.append(value)
            else:
                images.append(decode_image(value, feature))
        except Exception as error:  # PIL raises many types for bad bytes; all mean "not an image"
            failure = decode_failure(row, error)
            if not skip_corrupt_images:
                raise corrupt_image_error(failure, image_column, row_kind) from error
            failures.append(failure)
            continue
        kept.append(position)
    return DecodedImages(images, kept, [failure.row for failure in failures], [failure.reason for failure in failures])


def image_file_paths(dataset: datasets.Dataset | datasets.IterableDataset, image_column: str, limit: int = 16) -> list:
    """The local files behind the first `limit` images of a map-style dataset (an image folder keeps their paths),
    for checks on where the data lives. A streamed dataset is not read for this: `[]`."""
    if not isinstance(dataset, datasets.Dataset) or not len(dataset):
        return []
    raw, feature = undecoded(dataset, image_column)
    if feature is None:
        return []
    values = raw.select_columns([image_column])[: min(limit, len(raw))][image_column]
    paths = [value.get("path") for value in values if isinstance(value, dict)]
    return [path for path in paths if isinstance(path, str) and os.path.isabs(path) and os.path.exists(path)]
