"""The Distiller as orchestration: one `RealData` value carries the user's columns to every consumer, and the run's
parts (statistics cache, health checks, checkpoint state, callbacks) work on their own."""

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from accelerate import PartialState
from conftest import build_backbone, color_dataset

from hf_sfm import DistillationConfig, Distiller
from hf_sfm.data.real_data import RealData
from hf_sfm.evaluation.probe import ProbeConfig


def two_label_dataset(per_class: int = 6, seed: int = 0) -> datasets.Dataset:
    """`fine_label`: 3 colour classes a tiny random ViT separates; `label`: 2 classes drawn at random (no signal).

    A consumer that re-detects the label column picks `label` and scores chance; one that uses the user's
    `label_column="fine_label"` scores far above it."""
    rng = np.random.default_rng(seed)
    images, fine, coarse = [], [], []
    for c in range(3):
        for _ in range(per_class):
            array = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
            array[..., c] += 140
            images.append(PIL.Image.fromarray(array))
            fine.append(c)
            coarse.append(int(rng.integers(0, 2)))
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=["heads", "tails"]),
            "fine_label": datasets.ClassLabel(names=["red", "green", "blue"]),
        }
    )
    return datasets.Dataset.from_dict({"image": images, "label": coarse, "fine_label": fine}, features=features)


def _processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def test_the_full_dataset_baseline_uses_the_users_label_column(tmp_path):
    train, test = two_label_dataset(seed=0), two_label_dataset(per_class=4, seed=1)
    args = DistillationConfig(
        output_dir=str(tmp_path / "out"),
        label_column="fine_label",
        num_steps=2,
        image_size=32,
        save_grid=False,
        eval_runs=1,
        probe_epochs=50,
    )
    distiller = Distiller(build_backbone("vit"), args, train, image_processor=_processor(), eval_dataset=test)
    # A fixed rate, so a short probe can leave chance (see `ProbeConfig.too_short`).
    distiller.evaluator.probe = ProbeConfig(epochs=50, learning_rate=1e-2, scale_learning_rate=False)
    distiller.train()
    metrics = distiller.evaluate(baselines=["full_dataset"])
    # Chance on the 3 fine classes is 1/3; the colours are separable, so the full-data probe must be near perfect.
    assert metrics["eval_full_dataset_accuracy"] >= 0.9, metrics


def test_real_data_resolves_the_columns_once_and_keeps_the_users_choice():
    dataset = two_label_dataset()
    real = RealData.from_dataset(dataset, label_column="fine_label", num_proc=None, batch_size=7)
    assert (real.image_column, real.label_column) == ("image", "fine_label")
    assert real.class_names == ["red", "green", "blue"] and real.num_classes == 3
    assert RealData.from_dataset(dataset).label_column == "label"  # detection is only the default
    with pytest.raises(ValueError, match="nope"):
        RealData.from_dataset(dataset, label_column="nope")


def test_real_data_refuses_a_single_class_and_streaming_real_init():
    one_class = color_dataset(1, 4)
    with pytest.raises(ValueError, match="at least 2"):
        RealData.from_dataset(one_class).check_distillable(init="noise")
    streaming = color_dataset(3, 2).to_iterable_dataset()
    with pytest.raises(ValueError, match="streaming"):
        RealData.from_dataset(streaming).check_distillable(init="real")
    RealData.from_dataset(streaming).check_distillable(init="noise")


def test_the_run_health_checks_name_the_step_and_warn_once(caplog):
    from hf_sfm.training.health import RunHealth

    PartialState()  # the health warnings go through accelerate's logger (main process only), as in a run
    health = RunHealth(method="sfm", learning_rate=0.1, effective_learning_rate=0.1, ipc=1, backbone="TinyNet")
    losses = torch.tensor([1.0, 0.5, float("nan"), 0.2])
    with pytest.raises(FloatingPointError, match="step 2"):
        health.check_finite(losses)
    health.check_finite(losses[:2])

    class Flat(torch.nn.Module):
        def decode(self):
            return torch.full((1, 3, 4, 4), 0.5)

    health.start(Flat())
    with caplog.at_level("WARNING"):
        health.warn_if_degenerate(torch.ones(3), Flat())
        health.warn_if_degenerate(torch.ones(4), Flat())
    assert sum("exactly 1.0" in record.message for record in caplog.records) == 1


def test_num_steps_has_one_source_the_state(tmp_path):
    from transformers import TrainerCallback

    class Shorten(TrainerCallback):
        """A callback that changes `state.max_steps` before the loop starts is obeyed by the loop too."""

        def on_train_begin(self, args, state, control, **kwargs):
            state.max_steps = 3

    args = DistillationConfig(output_dir=str(tmp_path / "out"), num_steps=6, image_size=32, save_grid=False)
    distiller = Distiller(
        build_backbone("vit"), args, color_dataset(3, 4), image_processor=_processor(), callbacks=[Shorten]
    )
    output = distiller.train()
    assert output.global_step == 3 and len(distiller.losses) == 3


def test_every_consumer_reads_the_one_real_data_value(tmp_path):
    args = DistillationConfig(
        output_dir=str(tmp_path / "out"), label_column="fine_label", image_size=32, skip_corrupt_images=False
    )
    distiller = Distiller(build_backbone("vit"), args, two_label_dataset(), image_processor=_processor())
    real = distiller.real_data
    assert (real.label_column, real.skip_corrupt_images) == ("fine_label", False)
    assert distiller.evaluator.real_data is real and distiller.statistics_cache.real_data is real
    assert distiller.classifier_inheritance().real_data is real
    assert distiller.evaluator.baselines().label_column == "fine_label"
    assert distiller.statistics_cache.key["label_column"] == "fine_label"
