"""The Distiller end to end on tiny random backbones: determinism, gradients, beating random real images, export."""

import functools

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import color_dataset, make_distiller

from hf_sfm import DistillationConfig
from hf_sfm.evaluation.probe import ProbeConfig, ProbeEvaluator

# Each test's Distiller: these settings unless the test says otherwise, on the tiny ViT and the colour dataset.
_distiller = functools.partial(
    make_distiller,
    ipc=1,
    num_steps=6,
    learning_rate=0.01,
    seed=0,
    image_size=32,
    pyramid_level_every=2,
    save_grid=False,
    logging_steps=0,
)


def test_statistics_match_a_direct_feature_pass(tmp_path):
    distiller = _distiller(tmp_path / "out", statistics_batch_size=5)
    statistics = distiller.compute_statistics()
    dataset = distiller.train_dataset
    with torch.no_grad():
        features = distiller.feature_extractor(distiller.preprocessing(dataset["image"]))
    labels = torch.tensor(dataset["label"])
    direct = torch.stack([features[labels == c].mean(0) for c in range(3)])
    torch.testing.assert_close(statistics.class_means, direct, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "out" / "statistics.safetensors").exists()


def test_same_seed_gives_identical_images(tmp_path):
    first = _distiller(tmp_path / "a" / "out")
    first.train()
    second = _distiller(tmp_path / "b" / "out")
    second.train()
    assert torch.equal(first.synthetic_images(), second.synthetic_images())
    third = _distiller(tmp_path / "c" / "out", seed=1)
    third.train()
    assert not torch.equal(first.synthetic_images(), third.synthetic_images())


@pytest.mark.parametrize("method", ["sfm", "sfm_decouple"])
@pytest.mark.parametrize("parameterization", ["pyramid", "pixels"])
def test_training_moves_the_pixels_and_lowers_the_loss(tmp_path, method, parameterization):
    distiller = _distiller(
        tmp_path / "out",
        method=method,
        parameterization=parameterization,
        num_steps=40,
        augment_crop=False,
        augment_noise=False,
        augment_flip=False,
        pyramid_level_every=40,
    )
    distiller.init_synthetic()
    initial = distiller.synthetic_images()
    output = distiller.train()
    assert not torch.equal(distiller.synthetic_images(), initial)
    assert output.metrics["final_loss"] < distiller.losses[0] and output.training_loss < distiller.losses[0]


def _noisy_colour_dataset(num_classes, per_class, seed, noise=120.0, size=32):
    """Classes differ by a mean colour drowned in strong per-pixel noise: one real image is a poor prototype."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(123).integers(60, 196, (num_classes, 3))
    images, labels = [], []
    for c in range(num_classes):
        for _ in range(per_class):
            array = base[c][None, None, :] + rng.normal(0, noise, (size, size, 3))
            images.append(PIL.Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)))
            labels.append(c)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(c) for c in range(num_classes)])}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.mark.parametrize("scale", [True, False])
def test_images_are_edited_at_the_rate_over_ipc_unless_told_otherwise(tmp_path, scale):
    distiller = _distiller(
        tmp_path / "out", ipc=4, num_steps=2, logging_steps=1, learning_rate=0.04, scale_learning_rate=scale
    )
    distiller.train()
    rates = {entry["learning_rate"] for entry in distiller.state.log_history if "learning_rate" in entry}
    assert rates == ({0.01} if scale else {0.04})
    assert DistillationConfig(ipc=10).effective_learning_rate == pytest.approx(0.003)  # the default at ipc 10


def test_distilled_set_beats_random_real_images(tmp_path, tiny_processor):
    """SFM from real init improves on the very images it started from, and on other random draws."""
    train, test = _noisy_colour_dataset(6, 30, seed=0), _noisy_colour_dataset(6, 30, seed=1)
    distiller = _distiller(
        tmp_path / "out",
        dataset=train,
        init="real",
        parameterization="pixels",
        num_steps=150,
        learning_rate=0.01,
        augment_crop=False,
        augment_noise=False,
        augment_flip=False,
    )
    distiller.train()
    evaluator = ProbeEvaluator(None, tiny_processor, test, feature_extractor=distiller.feature_extractor)
    probe = ProbeConfig(epochs=300, learning_rate=0.1, augment=False)

    def accuracy(images):
        return evaluator.probe("set", lambda run: (images, distiller.labels), runs=1, config=probe).mean()

    distilled = accuracy(distiller.synthetic_images())
    random_real = [accuracy(distiller.sample_real_images(1, seed=seed)) for seed in range(4)]
    assert distilled > max(random_real) + 0.05, (distilled, random_real)


def test_save_distilled_round_trips_through_load_dataset_and_load_from_disk(tmp_path):
    names = ["cat", "dog", "bird"]
    distiller = _distiller(tmp_path / "out", dataset=color_dataset(names=names), ipc=2)
    distiller.train()
    path = distiller.save_distilled(tmp_path / "distilled")
    expected = distiller.distilled_dataset()
    for loaded in (datasets.load_dataset(str(path))["train"], datasets.load_from_disk(str(path))["train"]):
        assert loaded.features["label"] == datasets.ClassLabel(names=names)
        assert isinstance(loaded.features["image"], datasets.Image)
        assert loaded["label"] == expected["label"] == [0, 0, 1, 1, 2, 2]
        for ours, theirs in zip(expected["image"], loaded["image"]):
            assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    from safetensors.torch import load_file

    floats = load_file(str(path / "synthetic.safetensors"))
    torch.testing.assert_close(floats["images"], distiller.synthetic_images(), atol=0, rtol=0)
    assert (path / "grid.png").exists() and (path / "README.md").exists()


def test_statistics_are_reused_and_a_mismatch_is_refused(tmp_path):
    first = _distiller(tmp_path / "out")
    computed = first.compute_statistics()
    again = _distiller(tmp_path / "out").compute_statistics()
    assert torch.equal(again.feature_sums, computed.feature_sums)
    other_backbone = _distiller(tmp_path / "out", family="resnet")
    with pytest.raises(ValueError, match="computed under other conditions"):
        other_backbone.compute_statistics()


def test_results_before_training_raise(tmp_path):
    with pytest.raises(RuntimeError, match="train"):
        _distiller(tmp_path / "out").distilled_dataset()


def test_missing_label_column_names_the_columns_and_argument(tmp_path):
    dataset = color_dataset().rename_column("label", "something")
    dataset = dataset.cast_column("something", datasets.Value("string"))
    with pytest.raises(ValueError, match="label_column"):
        _distiller(tmp_path / "out", dataset=dataset)


def test_single_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        _distiller(tmp_path / "out", dataset=color_dataset(num_classes=1, names=["only"]))


def test_ipc_larger_than_a_class_with_real_init_is_refused(tmp_path):
    distiller = _distiller(tmp_path / "out", dataset=color_dataset(per_class=3), ipc=4, init="real")
    with pytest.raises(ValueError, match="ipc=4"):
        distiller.train()
