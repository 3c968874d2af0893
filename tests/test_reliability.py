"""Bad real-world input gets a clear error (or documented handling), faults lose nothing, results reproduce.

Each test pins down what a user sees for one kind of bad input: the exception type and the words that name the
problem and its fix. Covered elsewhere, not repeated here: single class, ipc > smallest class with init='real' and
a label column that cannot be found (tests/test_distiller.py); an empty class in `ClassStatistics`
(tests/test_statistics.py); an incompatible checkpoint and SIGKILL during a run + resume (tests/test_resume.py).
"""

import functools
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_sfm_test_home_"))

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_distiller, tiny_image_processor
from safetensors import safe_open
from transformers import ConvNextImageProcessor, ViTConfig, ViTModel
from transformers.modeling_outputs import BaseModelOutput

from hf_sfm.backbone.embedding import embed_dataset, embedded_rows, features_and_labels
from hf_sfm.data.preprocessing import ImagePreprocessing, to_rgb
from hf_sfm.data.real_images import RealBatchStream, RealImages, random_real_indices
from hf_sfm.data.statistics import ClassStatistics, compute_class_statistics
from hf_sfm.evaluation.probe import ProbeConfig
from hf_sfm.utils.io_utils import STAGING_MARKER

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


def _vit(seed=0, **config):
    torch.manual_seed(seed)
    settings = dict(
        image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    return ViTModel(ViTConfig(**{**settings, **config}), add_pooling_layer=False).eval()


def _pil_images(num_classes, per_class, seed=0):
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(num_classes):
        for _ in range(per_class):
            array = rng.integers(0, 90, (SIZE, SIZE, 3), dtype=np.uint8)
            array[..., c % 3] += 140
            images.append(PIL.Image.fromarray(array))
            labels.append(c)
    return images, labels


def _dataset(num_classes=3, per_class=4, names=None, seed=0):
    images, labels = _pil_images(num_classes, per_class, seed)
    names = names or [f"c{c}" for c in range(num_classes)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


# Each test's Distiller: these settings unless the test says otherwise, on a one-layer ViT and 12 colour images.
_distiller = functools.partial(
    make_distiller,
    model=_vit,
    dataset=_dataset,
    num_steps=2,
    image_size=SIZE,
    pyramid_level_every=1,
    save_grid=False,
    logging_steps=0,
    statistics_batch_size=4,
)


def _png(image: PIL.Image.Image, format="PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- dataset shape


def test_no_label_column_names_the_columns_seen_and_the_argument(tmp_path):
    images, _ = _pil_images(2, 2)
    dataset = datasets.Dataset.from_dict({"image": images, "caption": ["a"] * 4}).cast_column("image", datasets.Image())
    with pytest.raises(ValueError, match=r"among the columns \['image', 'caption'\]\. Set `label_column=`"):
        _distiller(tmp_path / "out", dataset=dataset)


def test_string_labels_are_refused_with_the_conversion_to_run(tmp_path):
    images, labels = _pil_images(2, 2)
    dataset = datasets.Dataset.from_dict({"image": images, "label": [str(label) for label in labels]})
    dataset = dataset.cast_column("image", datasets.Image())
    with pytest.raises(ValueError, match=r"dataset\.class_encode_column\('label'\)"):
        _distiller(tmp_path / "out", dataset=dataset)


def test_integer_labels_without_class_label_get_derived_names(tmp_path):
    images, labels = _pil_images(3, 2)
    dataset = datasets.Dataset.from_dict({"image": images, "target": labels}).cast_column("image", datasets.Image())
    assert _distiller(tmp_path / "out", dataset=dataset).class_names == ["0", "1", "2"]


def test_missing_labels_are_refused(tmp_path):
    images, labels = _pil_images(2, 2)
    dataset = datasets.Dataset.from_dict({"image": images, "label": [None, *labels[1:]]})
    dataset = dataset.cast_column("image", datasets.Image())
    with pytest.raises(ValueError, match=r"missing \(None\) labels"):
        _distiller(tmp_path / "out", dataset=dataset)


def test_unlabelled_marker_minus_one_is_explained(tmp_path):
    dataset = _dataset()
    dataset = dataset.map(
        lambda row, i: {"label": -1 if i == 2 else row["label"]}, with_indices=True, features=dataset.features
    )
    with pytest.raises(ValueError, match="-1 is how `datasets` marks an unlabelled example"):
        _distiller(tmp_path / "out", dataset=dataset).compute_statistics()


def test_no_image_column_says_how_to_cast(tmp_path):
    dataset = datasets.Dataset.from_dict({"path": ["a.png", "b.png"], "label": [0, 1]})
    with pytest.raises(ValueError, match=r"no column has the `datasets\.Image` feature.*Set `image_column=`"):
        _distiller(tmp_path / "out", dataset=dataset)


def test_non_image_values_in_the_chosen_column_are_refused(tmp_path):
    dataset = _dataset().add_column("caption", ["x"] * 12)
    with pytest.raises(ValueError, match=r"holds Value\('string'.*cast_column\('caption', datasets\.Image\(\)\)"):
        _distiller(tmp_path / "out", dataset=dataset, image_column="caption")


def test_a_class_with_zero_training_images_is_named(tmp_path):
    dataset = _dataset(num_classes=2, names=["cat", "dog", "axolotl"])
    with pytest.raises(ValueError, match=r"1 of 3 classes have no training images \(\['axolotl'\]\)"):
        _distiller(tmp_path / "out", dataset=dataset).compute_statistics()


def test_eval_classes_missing_from_train_are_named(tmp_path):
    train = _dataset(num_classes=2, names=["cat", "dog"])
    test = _dataset(num_classes=3, names=["cat", "dog", "fox"])
    with pytest.raises(ValueError, match=r"classes the training set lacks: \['fox'\]"):
        _distiller(tmp_path / "out", dataset=train, eval_dataset=test)


def test_eval_classes_in_another_order_are_refused_with_the_realignment(tmp_path):
    train = _dataset(num_classes=2, names=["cat", "dog"])
    test = _dataset(num_classes=2, names=["dog", "cat"])
    with pytest.raises(ValueError, match=r"id 0 is 'dog' there but 1.*align_labels_with_mapping"):
        _distiller(tmp_path / "out", dataset=train, eval_dataset=test)
    subset = _dataset(num_classes=1, names=["cat"])  # fewer classes, same ids: fine
    _distiller(tmp_path / "out", dataset=train, eval_dataset=subset)


# ---------------------------------------------------------------------------------------------- image content


@pytest.mark.parametrize(
    ("make", "expected_rgb"),
    [
        (lambda: PIL.Image.new("L", (4, 4), 77), (77, 77, 77)),
        (lambda: PIL.Image.new("1", (4, 4), 1), (255, 255, 255)),
        (lambda: PIL.Image.new("RGBA", (4, 4), (200, 100, 50, 255)), (200, 100, 50)),
        (lambda: PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),  # transparent → white, not black
        (lambda: PIL.Image.new("LA", (4, 4), (10, 0)), (255, 255, 255)),
        (lambda: PIL.Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),  # cyan-free, full M+Y: red
        (lambda: PIL.Image.new("RGB", (4, 4), (0, 102, 204)).convert("P"), (0, 102, 204)),  # web palette entry
        (lambda: PIL.Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)), (128, 128, 128)),  # I;16
        (lambda: PIL.Image.fromarray(np.full((4, 4), 0.25, dtype=np.float32)), (64, 64, 64)),  # F in [0, 1]
    ],
    ids=["L", "1", "RGBA", "RGBA-transparent", "LA-transparent", "CMYK", "P", "I;16", "F"],
)
def test_every_pil_mode_becomes_the_right_rgb(make, expected_rgb):
    rgb = to_rgb(make())
    assert rgb.mode == "RGB"
    assert tuple(np.asarray(rgb)[0, 0]) == expected_rgb


def test_palette_with_transparency_is_composited_over_white():
    image = PIL.Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0])
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    assert np.asarray(to_rgb(image)).tolist() == [[[255, 255, 255], [0, 255, 0]]]


def test_sixteen_bit_png_survives_the_dataset_round_trip():
    """A 16-bit grayscale PNG decodes as I;16: rescaled 65535 → 255, not clipped to white at 255."""
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    png = _png(PIL.Image.fromarray(values))
    dataset = datasets.Dataset.from_dict({"image": [{"bytes": png, "path": None}]}).cast_column(
        "image", datasets.Image()
    )
    decoded = dataset[0]["image"]
    assert decoded.mode.startswith("I;16")
    assert np.asarray(to_rgb(decoded))[0, :, 0].tolist() == [0, 1, 128, 255]


def test_statistics_of_mixed_modes_equal_those_of_their_rgb_versions():
    rgb, labels = _pil_images(2, 3)
    modes = ["L", "RGBA", "P", "CMYK", "RGB", "LA"]
    mixed = [image.convert(mode) for image, mode in zip(rgb, modes)]
    expected = [to_rgb(image) for image in mixed]  # what each mode should become

    def embed(images):
        return torch.stack([torch.as_tensor(np.array(image), dtype=torch.float64).mean((0, 1)) for image in images])

    kwargs = dict(image_column="image", label_column="label", class_names=["a", "b"], batch_size=2)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    stored = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": _png(image, "TIFF" if image.mode == "CMYK" else "PNG")} for image in mixed],
            "label": labels,
        },
        features=features,
    )
    statistics = compute_class_statistics(stored, embed, **kwargs)
    direct = torch.zeros(2, 3, dtype=torch.float64).index_add_(0, torch.tensor(labels), embed(expected))
    torch.testing.assert_close(statistics.feature_sums, direct)


def test_images_smaller_than_the_crop_are_upscaled():
    preprocessing = ImagePreprocessing(crop_size=32, resize_size=36, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    tiny = preprocessing([PIL.Image.new("RGB", (5, 3), (10, 200, 30)), PIL.Image.new("L", (1, 1), 9)])
    assert tiny.shape == (2, 3, 32, 32)
    torch.testing.assert_close(tiny[0, :, 16, 16], torch.tensor([10, 200, 30]) / 255.0)


def _corrupt_dataset():
    """12 good images (3 classes x 4) plus: garbage bytes, a truncated PNG, a missing value (rows 12, 13, 14)."""
    images, labels = _pil_images(3, 4)
    values = [{"bytes": _png(image), "path": None} for image in images]
    truncated = _png(PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)))
    values += [{"bytes": b"\x89PNG not really", "path": None}, {"bytes": truncated[:400], "path": None}, None]
    labels += [0, 1, 2]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    return datasets.Dataset.from_dict({"image": values, "label": labels}, features=features)


def test_corrupt_images_are_skipped_counted_and_reported(tmp_path, caplog):
    dataset = _corrupt_dataset()
    distiller = _distiller(tmp_path / "out", dataset=dataset)
    with caplog.at_level("WARNING", logger="hf_sfm.data.statistics"):
        statistics = distiller.compute_statistics()
    assert statistics.counts.tolist() == [4, 4, 4]
    assert statistics.metadata["skipped_images"] == "3" and json.loads(statistics.metadata["skipped_rows"]) == [
        12,
        13,
        14,
    ]
    assert "Skipped 3 training image(s)" in caplog.text
    clean = _distiller(tmp_path / "clean" / "out", dataset=dataset.select(range(12))).compute_statistics()
    torch.testing.assert_close(statistics.feature_sums, clean.feature_sums)  # the bad rows left no trace
    saved = ClassStatistics.load(tmp_path / "out" / "statistics.safetensors")
    assert saved.metadata["skipped_images"] == "3"


def test_feature_column_skips_undecodable_images_and_keeps_their_rows(tmp_path, caplog):
    order = [12, *range(6), 13, *range(6, 12), 14]  # the bad rows (12, 13, 14) at positions 0, 7 and 14
    dataset = _corrupt_dataset().select(order)
    distiller = _distiller(tmp_path / "out", dataset=dataset)
    with caplog.at_level("WARNING", logger="hf_sfm.backbone.embedding"):
        embedded = embed_dataset(distiller.feature_extractor, distiller.preprocessing, dataset)
    features, labels = features_and_labels(embedded)
    clean = embed_dataset(distiller.feature_extractor, distiller.preprocessing, _corrupt_dataset().select(range(12)))
    clean_features, clean_labels = features_and_labels(clean)
    torch.testing.assert_close(features, clean_features)  # the bad rows left no trace
    assert torch.equal(labels, clean_labels)
    assert embedded_rows(embedded).tolist() == [*range(1, 7), *range(8, 14)]
    assert "Skipped 3 image(s) of column 'image'" in caplog.text and "[0, 7, 14]" in caplog.text
    head = distiller.classifier_inheritance().train_head(epochs=2, augment=True, batch_size=8)  # decodes by row
    assert head.weight.shape == (3, 32)
    with pytest.raises(ValueError, match=r"row 0 of column 'image' cannot be decoded.*skip_corrupt_images=True"):
        embed_dataset(distiller.feature_extractor, distiller.preprocessing, dataset, skip_corrupt_images=False)


def test_evaluator_test_and_full_data_features_skip_undecodable_images(tmp_path):
    from hf_sfm.evaluation.probe import ProbeEvaluator

    dataset = _corrupt_dataset()
    evaluator = ProbeEvaluator(_vit(), tiny_image_processor(), dataset, name="tiny")
    features, labels = evaluator.test_features()
    assert features.shape[0] == labels.shape[0] == 12
    result = evaluator.probe_full_dataset(dataset, runs=1, config=ProbeConfig(epochs=2, augment=False))
    assert result.num_train_images == 12  # the features and their labels stay aligned


def test_corrupt_images_raise_naming_the_row_when_asked(tmp_path):
    distiller = _distiller(tmp_path / "out", dataset=_corrupt_dataset(), skip_corrupt_images=False)
    with pytest.raises(ValueError, match=r"row 12 of column 'image' cannot be decoded \(UnidentifiedImageError"):
        distiller.compute_statistics()


def test_a_batch_of_only_corrupt_images_and_streaming_are_handled():
    dataset = _corrupt_dataset()

    def embed(images):
        return torch.stack([torch.as_tensor(np.array(image), dtype=torch.float64).mean((0, 1)) for image in images])

    kwargs = dict(image_column="image", label_column="label", class_names=["a", "b", "c"], batch_size=3)
    in_memory = compute_class_statistics(dataset, embed, **kwargs)  # the last batch holds only the 3 bad rows
    streamed = compute_class_statistics(dataset.to_iterable_dataset(num_shards=1), embed, **kwargs)
    assert in_memory.counts.tolist() == streamed.counts.tolist() == [4, 4, 4]
    assert in_memory.metadata["skipped_images"] == streamed.metadata["skipped_images"] == "3"
    torch.testing.assert_close(in_memory.feature_sums, streamed.feature_sums)


_GOOD_ROWS = range(12)  # of `_corrupt_dataset`; rows 12 (garbage bytes), 13 (truncated), 14 (None) are bad
_SQUARE = ImagePreprocessing(SIZE, SIZE, (0.5,) * 3, (0.5,) * 3)


def _decoded_rows(distiller, rows):
    """The training images at `rows`, decoded by `datasets` and preprocessed as synthetic-size real images."""
    from hf_sfm.data.real_images import square_preprocessing

    preprocessing = square_preprocessing(distiller.preprocessing, distiller.image_size)
    return preprocessing(distiller.train_dataset[[int(row) for row in rows]]["image"])


def test_sampled_real_images_of_a_clean_dataset_are_unchanged(tmp_path):
    """The decodability check must not move the seeded choice: same rows, same pixels as a plain decode."""
    distiller = _distiller(tmp_path / "out")
    labels = torch.as_tensor(distiller.train_dataset["label"])
    for seed in range(3):
        plain = _decoded_rows(distiller, random_real_indices(labels, 3, 2, seed=seed))
        assert torch.equal(distiller.sample_real_images(2, seed=seed), plain)


def test_sampled_real_images_replace_undecodable_ones_along_the_same_permutation(tmp_path, caplog):
    distiller = _distiller(tmp_path / "out", dataset=_corrupt_dataset())
    labels = torch.as_tensor(distiller.train_dataset["label"])
    replaced = []
    for seed in range(4):
        with caplog.at_level("WARNING", logger="hf_sfm.data.real_images"):
            caplog.clear()
            images = distiller.sample_real_images(3, seed=seed)
        expected = random_real_indices(labels, 3, 3, seed=seed, usable=lambda row: row in _GOOD_ROWS)
        assert torch.equal(images, _decoded_rows(distiller, expected))  # only decodable rows, seeded walk
        assert torch.equal(images, distiller.sample_real_images(3, seed=seed))
        unchecked = random_real_indices(labels, 3, 3, seed=seed)
        if any(int(row) not in _GOOD_ROWS for row in unchecked):
            replaced.append(seed)
            assert "could not be decoded" in caplog.text and "next random images" in caplog.text
    assert replaced  # the seeds above do meet a bad row


def test_sampling_more_real_images_than_a_class_can_decode_names_the_class(tmp_path):
    distiller = _distiller(tmp_path / "out", dataset=_corrupt_dataset())  # each class: 4 good rows + 1 bad
    with pytest.raises(
        ValueError,
        match=r"Class 'a' has 5 real training images, but 1 of them cannot be decoded.*"
        r"5 were requested\. Lower ipc, use init='noise', or repair",
    ):
        distiller.sample_real_images(5)


def test_sampled_real_images_refuse_undecodable_ones_when_asked(tmp_path):
    distiller = _distiller(tmp_path / "out", dataset=_corrupt_dataset(), skip_corrupt_images=False)
    with pytest.raises(ValueError, match=r"row 12 of column 'image' cannot be decoded.*skip_corrupt_images=True"):
        distiller.sample_real_images(5)  # every row of class 'a' is tried, row 12 among them


def test_in_memory_real_images_leave_out_undecodable_rows(caplog):
    dataset = _corrupt_dataset()
    with caplog.at_level("WARNING", logger="hf_sfm.data.real_images"):
        real = RealImages.from_dataset(dataset, _SQUARE, "image", "label", batch_size=4, progress=False)
    clean = RealImages.from_dataset(dataset.select(_GOOD_ROWS), _SQUARE, "image", "label", progress=False)
    assert real.skipped_rows == [12, 13, 14] and clean.skipped_rows == []
    assert torch.equal(real.pixels, clean.pixels) and torch.equal(real.labels, clean.labels)
    assert caplog.text.count("Skipped 3 real training image(s)") == 1 and "rows [12, 13, 14]" in caplog.text
    with pytest.raises(ValueError, match=r"row 12 of column 'image' cannot be decoded.*repair the dataset"):
        RealImages.from_dataset(dataset, _SQUARE, "image", "label", progress=False, skip_corrupt_images=False)


def _assert_from_good_rows(images, labels, clean: RealImages):
    """Every image is one of the decodable images, with its own label."""
    for image, label in zip(images, labels):
        match = (clean.images() - image).abs().flatten(1).amax(1) == 0
        assert bool(match.any()) and int(clean.labels[match][0]) == int(label)


@pytest.mark.parametrize("kind", ["cached", "uncached", "streaming"])
def test_real_batches_skip_undecodable_images_and_stay_full(kind, caplog):
    dataset = _corrupt_dataset()
    clean = RealImages.from_dataset(dataset.select(_GOOD_ROWS), _SQUARE, "image", "label", progress=False)
    source = dataset.to_iterable_dataset() if kind == "streaming" else dataset
    with caplog.at_level("WARNING", logger="hf_sfm.data.real_images"):
        stream = RealBatchStream(
            source, _SQUARE, 8, "image", "label", seed=3, max_cached_bytes=0 if kind == "uncached" else 2**31
        )
        batches = [next(stream) for _ in range(4)]  # 32 images: a stream of 12 good ones wraps around
    assert stream.cached == (kind == "cached")
    for images, labels in batches:
        assert images.shape == (8, 3, SIZE, SIZE) and labels.shape == (8,)
        _assert_from_good_rows(images, labels, clean)
    assert stream.skipped_images >= 3 if kind == "streaming" else stream.skipped_rows == {12, 13, 14}
    assert caplog.text.count("could not be decoded") == 1  # warned once, counted after


@pytest.mark.parametrize("kind", ["cached", "uncached", "streaming"])
def test_real_batches_refuse_undecodable_images_when_asked(kind):
    dataset = _corrupt_dataset()
    source = dataset.to_iterable_dataset() if kind == "streaming" else dataset
    where = r"shuffled-stream example \d+" if kind == "streaming" else r"row 1[234]"
    with pytest.raises(ValueError, match=where + r" of column 'image' cannot be decoded.*skip_corrupt_images=True"):
        cache = 0 if kind == "uncached" else 2**31
        next(RealBatchStream(source, _SQUARE, 15, "image", "label", max_cached_bytes=cache, skip_corrupt_images=False))


@pytest.mark.parametrize("kind", ["cached", "uncached", "streaming"])
def test_real_batches_of_a_set_with_no_decodable_image_fail_instead_of_looping(kind):
    dataset = _corrupt_dataset().select([12, 13, 14])
    source = dataset.to_iterable_dataset() if kind == "streaming" else dataset
    with pytest.raises(ValueError, match=r"No image in column 'image' of the real training set can be decoded"):
        next(RealBatchStream(source, _SQUARE, 2, "image", "label", max_cached_bytes=0 if kind == "uncached" else 2**31))


def test_lgm_real_batches_follow_the_skip_corrupt_images_flag(tmp_path):
    distiller = _distiller(tmp_path / "out", dataset=_corrupt_dataset(), method="lgm")
    assert distiller.create_method().real_batches.skipped_rows == {12, 13, 14}
    strict = _distiller(
        tmp_path / "strict" / "out", dataset=_corrupt_dataset(), method="lgm", skip_corrupt_images=False
    )
    with pytest.raises(ValueError, match=r"row 12 of column 'image' cannot be decoded"):
        strict.create_method()


# ---------------------------------------------------------------------------------------------- the model


class _NoPooler(torch.nn.Module):
    """A backbone of an unknown family whose output has no pooled feature."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"model_type": "mystery", "num_channels": 3})()
        self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)

    def forward(self, pixel_values):
        return BaseModelOutput(last_hidden_state=self.conv(pixel_values).flatten(2).transpose(1, 2))


def test_backbone_without_pooled_output_fails_at_construction_naming_the_override(tmp_path):
    with pytest.raises(ValueError, match=r"_NoPooler returns no pooled output.*feature_fn=.*register_feature_fn"):
        _distiller(tmp_path / "out", model=_NoPooler())
    pooled = _distiller(tmp_path / "out", model=_NoPooler(), feature_fn=lambda m, x: m(x).last_hidden_state.mean(1))
    assert pooled.feature_extractor.check_forward() == 4


def test_a_processor_of_another_input_size_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"ViTModel cannot embed 64x64 RGB images.*ViTImageProcessor.*crop_size"):
        _distiller(tmp_path / "out", processor=tiny_image_processor(size=64))


def test_a_processor_of_another_family_warns(tmp_path, caplog):
    processor = ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=1.0)
    with caplog.at_level("WARNING", logger="hf_sfm.backbone.features"):
        _distiller(tmp_path / "out", processor=processor)
    assert "not the kind transformers pairs with 'vit' models (ViTImageProcessor)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_sfm.backbone.features"):
        _distiller(tmp_path / "out")
    assert "pairs with" not in caplog.text


def test_a_backbone_that_wants_other_than_three_channels_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expects 1-channel input, but hf_sfm feeds RGB"):
        _distiller(tmp_path / "out", model=_vit(num_channels=1))


def test_nan_weights_fail_at_construction(tmp_path):
    model = _vit()
    with torch.no_grad():
        model.embeddings.cls_token.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN/Inf features for a plain grey image"):
        _distiller(tmp_path / "out", model=model)


def test_nan_features_in_the_statistics_pass_name_the_rows_and_fp16(tmp_path):
    def nan_on_real_images(model, pixel_values):
        features = model(pixel_values=pixel_values).last_hidden_state[:, 0]
        grey = bool((pixel_values == 0).all())  # the construction check's plain grey image, normalised
        return features if grey else features * float("inf") * 0

    distiller = _distiller(tmp_path / "out", feature_fn=nan_on_real_images)
    with pytest.raises(FloatingPointError, match=r"NaN/Inf features for 4 of 4 images in rows 0\.\.3.*fp16"):
        distiller.compute_statistics()


def test_a_loss_that_becomes_nan_names_the_step_and_the_cause(tmp_path):
    calls = []

    def nan_after_two_steps(model, pixel_values):
        features = model(pixel_values=pixel_values).last_hidden_state[:, 0]
        if torch.is_grad_enabled():  # a training step, not the statistics pass
            calls.append(1)
            if len(calls) > 2:
                return features * float("nan")
        return features

    distiller = _distiller(tmp_path / "out", feature_fn=nan_after_two_steps, num_steps=5)
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 2.*mixed_precision='no'"):
        distiller.train()


# ---------------------------------------------------------------------------------------------- files


def test_mismatched_statistics_name_the_flag_that_recomputes_them(tmp_path):
    _distiller(tmp_path / "out").compute_statistics()
    path = tmp_path / "out" / "statistics.safetensors"
    model = _vit(seed=0, hidden_size=48)
    model.config._name_or_path = "another-backbone"  # the backbone's identity is read when the Distiller is built
    other = _distiller(tmp_path / "out", model=model, processor=tiny_image_processor())
    with pytest.raises(
        ValueError, match=r"backbone: saved 'ViTModel' vs current 'another-backbone'.*recompute_statistics=True"
    ):
        other.compute_statistics()
    other.args.recompute_statistics = True
    recomputed = other.compute_statistics()
    assert recomputed.feature_dim == 48
    assert ClassStatistics.load(path).metadata["backbone"] == "another-backbone"  # overwritten in place


def test_output_dir_with_foreign_content_is_refused_unless_overwrite(tmp_path):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "thesis.tex").write_text("years of work")
    with pytest.raises(
        ValueError, match=r"holds content hf_sfm did not write: \['thesis.tex'\].*overwrite_output_dir=True"
    ):
        _distiller(tmp_path / "out")
    _distiller(tmp_path / "out", overwrite_output_dir=True)
    assert (output_dir / "thesis.tex").read_text() == "years of work"


def test_rerunning_into_its_own_output_dir_reuses_the_statistics(tmp_path, monkeypatch):
    first = _distiller(tmp_path / "out", num_steps=1, save_steps=1, save_grid=True)
    first.train()
    first.save_distilled()
    leftover = tmp_path / "out" / ".statistics.safetensors.x.tmp"  # what a kill during a save leaves behind:
    leftover.mkdir()
    (leftover / STAGING_MARKER).touch()  # a staging folder, marked as atomic_path's own
    second = _distiller(tmp_path / "out")  # no overwrite_output_dir needed: everything there is hf_sfm's own
    import hf_sfm.training.statistics_cache as statistics_cache

    monkeypatch.setattr(statistics_cache, "compute_class_statistics", lambda *a, **k: pytest.fail("recomputed"))
    assert torch.equal(second.compute_statistics().feature_sums, first.statistics.feature_sums)


_SLOW_SAVE_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    import hf_sfm.publishing.export as export
    import hf_sfm.data.statistics as statistics_module
    from hf_sfm.data.statistics import ClassStatistics

    target, marker, what = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def stall(*args, **kwargs):
        marker.write_text("writing")  # some new files are already written: now the kill comes
        time.sleep(120)

    statistics = ClassStatistics(torch.full((3, 4), 7.0, dtype=torch.float64), torch.tensor([9, 9, 9]), list("abc"))
    if what == "statistics":
        real_save_file = statistics_module.save_file

        def slow_save_file(tensors, path, metadata=None):
            real_save_file(tensors, path, metadata=metadata)
            stall()

        statistics_module.save_file = slow_save_file
        statistics.save(target)
    else:
        export.save_image_grid = stall  # runs after the parquet, arrow and safetensors files are written
        export.save_distilled(target, images=torch.zeros(6, 3, 8, 8), labels=torch.tensor([0, 0, 1, 1, 2, 2]),
                              class_names=list("abc"), statistics=statistics)
    """
)


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_the_previous_output_intact(tmp_path):
    """Two workers, killed in the middle of `ClassStatistics.save` and `save_distilled` (both run at once)."""
    from safetensors.torch import load_file

    from hf_sfm.publishing.export import save_distilled

    previous_images = torch.rand(6, 3, 8, 8)
    statistics = ClassStatistics(torch.randn(3, 4, dtype=torch.float64), torch.tensor([1, 2, 3]), list("abc"))
    targets = {
        "statistics": statistics.save(tmp_path / "statistics.safetensors"),
        "distilled": save_distilled(
            tmp_path / "distilled",
            images=previous_images,
            labels=torch.tensor([0, 0, 1, 1, 2, 2]),
            class_names=list("abc"),
            statistics=statistics,
        ),
    }
    before = {"statistics": targets["statistics"].read_bytes(), "distilled": _tree(targets["distilled"])}
    workers = {
        what: subprocess.Popen(
            [sys.executable, "-c", _SLOW_SAVE_WORKER, str(target), str(tmp_path / f"{what}.marker"), what],
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stderr=subprocess.PIPE,
            text=True,
        )
        for what, target in targets.items()
    }
    deadline = time.monotonic() + 180
    for what, worker in workers.items():
        while not (tmp_path / f"{what}.marker").exists():
            assert worker.poll() is None, worker.stderr.read()[-3000:]
            assert time.monotonic() < deadline, f"the {what} worker never reached the save"
            time.sleep(0.02)
    for worker in workers.values():
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=30)
        assert worker.returncode == -signal.SIGKILL

    assert targets["statistics"].read_bytes() == before["statistics"]
    assert torch.equal(ClassStatistics.load(targets["statistics"]).feature_sums, statistics.feature_sums)
    assert _tree(targets["distilled"]) == before["distilled"]
    assert datasets.load_from_disk(str(targets["distilled"]))["train"]["label"] == [0, 0, 1, 1, 2, 2]
    assert torch.equal(load_file(str(targets["distilled"] / "synthetic.safetensors"))["images"], previous_images)
    # The new outputs had been written, but only into their temporaries beside the targets.
    (staged_statistics,) = tmp_path.glob(".statistics.safetensors.*.tmp/statistics.safetensors")
    assert ClassStatistics.load(staged_statistics).feature_sums.eq(7.0).all()
    (staged_images,) = tmp_path.glob(".distilled.*.tmp/distilled/synthetic.safetensors")
    assert load_file(str(staged_images))["images"].eq(0).all()


# ---------------------------------------------------------------------------------------------- reproducibility


def _pipeline(output_dir):
    """Statistics → distillation → evaluation, as a user runs it, in one go."""
    distiller = _distiller(output_dir / "out", num_steps=3, ipc=2, eval_runs=2, probe_epochs=3)
    statistics = distiller.compute_statistics()
    distiller.train()
    results = distiller.evaluate(_dataset(seed=1), eval_model=_vit(seed=1), eval_image_processor=tiny_image_processor())
    return distiller, statistics, results


def test_same_seed_gives_bit_identical_statistics_images_and_evaluation(tmp_path):
    first, first_statistics, first_results = _pipeline(tmp_path / "a")
    second, second_statistics, second_results = _pipeline(tmp_path / "b")
    assert torch.equal(first_statistics.feature_sums, second_statistics.feature_sums)
    assert torch.equal(first.synthetic_images(), second.synthetic_images())
    timings = ("eval_runtime",)
    assert {k: v for k, v in first_results.items() if k not in timings} == {
        k: v for k, v in second_results.items() if k not in timings
    }  # every number, exactly
    assert first_results["eval_runs"] == 2


def test_every_output_records_the_seed_and_library_versions(tmp_path):
    distiller = _distiller(tmp_path / "out", seed=11, save_steps=2)
    distiller.train()
    path = distiller.save_distilled()
    statistics = ClassStatistics.load(tmp_path / "out" / "statistics.safetensors")
    assert json.loads(statistics.metadata["versions"])["datasets"] == datasets.__version__
    run = json.loads((path / "distillation_config.json").read_text())
    assert run["seed"] == 11 and run["config"]["seed"] == 11 and run["versions"]["datasets"] == datasets.__version__
    with safe_open(str(path / "synthetic.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["seed"] == "11" and json.loads(metadata["versions"])["hf_sfm"]
    from hf_sfm.training.checkpointing import RUN_STATE_FILE

    state = json.loads((tmp_path / "out" / "checkpoint-2" / RUN_STATE_FILE).read_text())
    assert state["config"]["seed"] == 11 and state["versions"]["torch"]
