"""A validation split carved out of the training set, for choosing the best step without touching a test split.

Best-step selection needs images the distillation never read: choosing a step on the test split would report a
number tuned on it, and choosing on training images would reward memorising them. When the user gives no
`eval_dataset`, `carve_validation_split` holds out a stratified, seeded part of the training set with `datasets`'
own `train_test_split(stratify_by_column=...)`, and the run distils (statistics, init) from the rest only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import datasets

ROW_COLUMN = "__hf_sfm_row__"


@dataclass(frozen=True)
class ValidationSplit:
    """Where a carved validation split came from (the run record and the card say it).

    Args:
        size: the `validation_split_size` asked for (a fraction or a count).
        num_images: images in the validation split; num_train_images: images left to distil from.
        seed: the split's seed; stratified: class proportions kept (always, when carved here).
        source: the split it was carved from.
    """

    size: float
    num_images: int
    num_train_images: int
    seed: int
    stratified: bool = True
    source: str = "train"

    def to_dict(self) -> dict:
        return asdict(self)

    def description(self) -> str:
        share = f"{100 * self.size:g} %" if self.size < 1 else f"{int(self.size)} images"
        kind = "stratified by label, " if self.stratified else ""
        return (
            f"a validation split of {self.num_images} images ({share}) carved out of the `{self.source}` split "
            f"({kind}seed {self.seed}) and removed from the {self.num_train_images} images the statistics and "
            "init read"
        )


def carve_validation_split(
    dataset: datasets.Dataset | datasets.IterableDataset, label_column: str, size: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset, ValidationSplit]:
    """`(train, validation, origin)`: `size` (a fraction or a count) of `dataset` held out per class proportion.

    The split is computed on the label column alone (cheap, and the user's features stay as they are: a plain
    integer or string label is encoded to a `ClassLabel` only there), then both parts select their rows of the
    original in their original order, so the same seed gives the same rows."""
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            "Best-step selection without eval_dataset carves a validation split out of train_dataset, which needs a "
            "map-style `datasets.Dataset`; this one is streaming. Pass eval_dataset= (a validation split)."
        )
    count = len(dataset)
    if not (0 < size < 1 or 1 <= size < count):
        raise ValueError(
            f"validation_split_size={size} must be a fraction in (0, 1) or a count in [1, {count}) of the "
            f"{count} training images."
        )
    labels = dataset.select_columns([label_column])
    labels = labels.add_column(ROW_COLUMN, list(range(count)))
    if not isinstance(labels.features[label_column], datasets.ClassLabel):
        labels = labels.class_encode_column(label_column)
    try:
        parts = labels.train_test_split(
            test_size=size if size < 1 else int(size), seed=seed, stratify_by_column=label_column
        )
    except ValueError as error:  # e.g. fewer validation images than classes
        raise ValueError(
            f"validation_split_size={size} cannot hold out a stratified split of {count} images: {error}. Raise "
            "validation_split_size (at least one image per class), or pass eval_dataset=."
        ) from error
    train_rows, validation_rows = (sorted(parts[name][ROW_COLUMN]) for name in ("train", "test"))
    origin = ValidationSplit(size=size, num_images=len(validation_rows), num_train_images=len(train_rows), seed=seed)
    return dataset.select(train_rows), dataset.select(validation_rows), origin


def validation_split_for(
    train_dataset: datasets.Dataset | datasets.IterableDataset, args
) -> tuple[datasets.Dataset, datasets.Dataset, ValidationSplit]:
    """The split `DistillationConfig` asks for: `validation_split_size` (default 0.1) at `validation_split_seed`
    (default `seed`), stratified by the run's label column."""
    from .columns import find_label_column

    size = 0.1 if args.validation_split_size is None else args.validation_split_size
    seed = args.seed if args.validation_split_seed is None else args.validation_split_seed
    label_column = find_label_column(train_dataset, args.label_column)
    return carve_validation_split(train_dataset, label_column, size, seed)
