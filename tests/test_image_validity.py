"""Images that decode but cannot be used are corrupt too: non-finite pixels, and decompression bombs with a reason.

A float image with one NaN or inf pixel used to be scaled by its non-finite maximum and enter the statistics as a
black image; now it is skipped and counted (or refused naming its row), like undecodable bytes, by the one decoder
(`data.decode_images`). An image beyond PIL's decompression-bomb limit is reported with its size, the limit and
how to raise it for a trusted image, instead of a bare "could not be decoded".
"""

import io
import json
import warnings

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from hf_sfm.data.columns import decode_images, undecoded
from hf_sfm.data.preprocessing import ImagePreprocessing, to_rgb
from hf_sfm.data.statistics import compute_class_statistics

PREPROCESSING = ImagePreprocessing(crop_size=8, resize_size=8, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)


def embed_pixels(pixels):
    return ImagePreprocessing.to_unit_range(pixels).double().mean((2, 3))


def float_image_dataset():
    """Six 8x8 float32 ("F") images in [0, 1]; row 2 has one NaN pixel, row 5 one +inf pixel."""
    arrays = [np.full((8, 8), 0.25 + 0.1 * i, dtype=np.float32) for i in range(6)]
    arrays[2][3, 4] = np.nan
    arrays[5][0, 0] = np.inf
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    return datasets.Dataset.from_dict({"image": arrays, "label": [0, 1] * 3}, features=features)


def _statistics(dataset, **kwargs):
    return compute_class_statistics(
        dataset,
        embed_pixels,
        image_column="image",
        label_column="label",
        class_names=["a", "b"],
        batch_size=3,
        preprocessing=PREPROCESSING,
        **kwargs,
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_float_images_with_non_finite_pixels_are_skipped_not_blackened(num_workers, caplog):
    dataset = float_image_dataset()
    with caplog.at_level("WARNING", logger="hf_sfm.data.statistics"):
        statistics = _statistics(dataset, num_workers=num_workers)
    assert json.loads(statistics.metadata["skipped_rows"]) == [2, 5]
    assert statistics.counts.tolist() == [2, 2]
    clean = _statistics(dataset.select([0, 1, 3, 4]))
    torch.testing.assert_close(statistics.feature_sums, clean.feature_sums)  # no black image among them
    assert "row 2: 1 of its 64 pixel values are NaN or infinite" in caplog.text


@pytest.mark.parametrize("num_workers", [0, 2])
def test_non_finite_pixels_are_refused_naming_the_row(num_workers):
    with pytest.raises(
        ValueError, match=r"row 2 of column 'image' cannot be decoded \(1 of its 64 pixel values are NaN"
    ):
        _statistics(float_image_dataset(), num_workers=num_workers, skip_corrupt_images=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_to_rgb_refuses_a_float_image_with_a_non_finite_pixel(bad):
    values = np.full((4, 4), 0.5, dtype=np.float32)
    values[1, 2] = bad
    with pytest.raises(ValueError, match="1 of its 16 pixel values are NaN or infinite"):
        to_rgb(PIL.Image.fromarray(values))
    values[1, 2] = 0.5
    assert tuple(np.asarray(to_rgb(PIL.Image.fromarray(values)))[0, 0]) == (128, 128, 128)


def test_unencoded_float_arrays_and_array_columns_are_checked_too():
    """A raw float array given to the decoder, and an `Array3D` column the map passes through undecoded."""
    image_feature = datasets.Image()
    array = np.full((4, 4), 0.5, dtype=np.float32)
    array[0, 0] = np.nan
    decoded = decode_images([array, np.zeros((4, 4), np.float32)], [7, 8], image_feature, "image")
    assert decoded.kept == [1] and decoded.skipped_rows == [7] and "NaN or infinite" in decoded.reasons[0]

    pixels = np.full((2, 4, 4, 3), 0.5, dtype=np.float32)
    pixels[1, 2, 2, 0] = np.inf
    features = datasets.Features(
        {"image": datasets.Array3D((4, 4, 3), "float32"), "label": datasets.ClassLabel(names=["a", "b"])}
    )
    dataset = datasets.Dataset.from_dict({"image": list(pixels), "label": [0, 1]}, features=features)
    source, feature = undecoded(dataset, "image")
    assert feature is None
    decoded = decode_images(source["image"], [0, 1], None, "image")
    assert decoded.kept == [0] and decoded.skipped_rows == [1]

    def embed_arrays(values):
        return torch.as_tensor(np.asarray(values, dtype=np.float64)).mean((1, 2))

    statistics = compute_class_statistics(
        dataset, embed_arrays, image_column="image", label_column="label", class_names=["a", "b"], batch_size=2
    )
    assert statistics.counts.tolist() == [1, 0] and statistics.metadata["skipped_rows"] == "[1]"


# ---------------------------------------------------------------------------------------------- decompression bombs


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_dataset():
    """Four 10x10 images and, at row 2, a 40x30 one (1,200 pixels)."""
    small = PIL.Image.fromarray(np.full((10, 10, 3), 100, dtype=np.uint8))
    large = PIL.Image.fromarray(np.full((30, 40, 3), 200, dtype=np.uint8))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    images = [small, small, large, small, small]
    return datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1, 0]}, features=features)


def test_a_decompression_bomb_is_refused_with_its_size_the_limit_and_the_fix(monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 500)  # 1,200 > 2 x 500: PIL raises DecompressionBombError
    with pytest.raises(ValueError) as caught:
        _statistics(bomb_dataset(), skip_corrupt_images=False)
    message = str(caught.value)
    assert "row 2 of column 'image'" in message
    assert "40×30 = 1,200 pixels" in message and "`PIL.Image.MAX_IMAGE_PIXELS` (500)" in message
    assert "If the image is trusted, raise the limit" in message


def test_a_skipped_decompression_bomb_is_reported_with_its_reason(monkeypatch, caplog):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 500)
    with caplog.at_level("WARNING", logger="hf_sfm.data.statistics"):
        statistics = _statistics(bomb_dataset(), num_workers=2)
    assert statistics.metadata["skipped_rows"] == "[2]" and statistics.counts.tolist() == [2, 2]
    assert "row 2: the image has 40×30 = 1,200 pixels" in caplog.text and "MAX_IMAGE_PIXELS" in caplog.text


def test_a_bomb_warning_turned_into_an_error_gets_the_same_reason(monkeypatch, tmp_path):
    """Between 1x and 2x the limit PIL only warns; under `-W error` the warning is what refuses the image."""
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "large.png"
    PIL.Image.new("RGB", (40, 30)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        decoded = decode_images([{"path": str(path), "bytes": None}], [9], datasets.Image(), "image")
    assert decoded.skipped_rows == [9]
    assert decoded.reasons[0].startswith("the image has 40×30 = 1,200 pixels, more than PIL's")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)  # PIL's default: decoded, with a warning
        assert decode_images([{"path": str(path), "bytes": None}], [9], datasets.Image(), "image").kept == [0]


def test_feature_columns_log_why_an_image_was_skipped(monkeypatch, caplog):
    from conftest import build_backbone

    from hf_sfm.backbone.embedding import embed_dataset
    from hf_sfm.backbone.features import FeatureExtractor

    preprocessing = ImagePreprocessing(crop_size=32, resize_size=32, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    extractor = FeatureExtractor(build_backbone("vit"), preprocessing)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 500)
    with caplog.at_level("WARNING", logger="hf_sfm.backbone.embedding"):
        embedded = embed_dataset(extractor, preprocessing, bomb_dataset(), batch_size=2)
    assert len(embedded) == 4
    assert "row 2 of column 'image': the image has 40×30 = 1,200 pixels" in caplog.text
