"""What a `transformers.Trainer` user expects of the `Distiller`: callbacks, state and control, `evaluate()`,
`compute_metrics`, `TrainOutput`, `log_metrics` / `save_metrics` / `save_state`, logging, trackers, hub fields."""

import functools
import json

import pytest
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from conftest import build_backbone, color_dataset, make_distiller, tiny_image_processor
from transformers import TrainerCallback, TrainerState
from transformers.trainer_utils import TrainOutput

from hf_sfm import DistillationConfig

# Each test's Distiller: these settings unless the test says otherwise, evaluated on 9 held-out colour images.
_distiller = functools.partial(
    make_distiller,
    dataset=lambda: color_dataset(3, 4),
    eval_dataset=color_dataset(3, 3, seed=1),
    num_steps=6,
    image_size=32,
    pyramid_level_every=2,
    save_grid=False,
    logging_steps=2,
    eval_runs=2,
    probe_epochs=3,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Distiller trained once at the settings above, for the tests that evaluate and save it."""
    distiller = _distiller(tmp_path_factory.mktemp("trained") / "out")
    return distiller, distiller.train()


class Recorder(TrainerCallback):
    """A plain `transformers.TrainerCallback`, as a Trainer user writes one."""

    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append(("train_begin", state.global_step, state.max_steps))
        assert kwargs["model"] is not None and kwargs["optimizer"] is not None and kwargs["synthetic"] is not None

    def on_step_end(self, args, state, control, **kwargs):
        self.events.append(("step_end", state.global_step))
        if state.global_step == self.stop_at:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append(("log", state.global_step, sorted(logs)))

    def on_save(self, args, state, control, **kwargs):
        self.events.append(("save", state.global_step, kwargs["checkpoint"].name))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.events.append(("evaluate", state.global_step, metrics["eval_runs"]))

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append(("train_end", state.global_step, len(state.log_history)))


def test_callbacks_see_every_event_with_state_and_can_stop_training(tmp_path):
    recorder = Recorder(stop_at=4)
    distiller = _distiller(tmp_path / "out", callbacks=[recorder], save_steps=2, eval_steps=2)
    output = distiller.train()
    names = [event[0] for event in recorder.events]
    assert recorder.events[0] == ("train_begin", 0, 6) and names[-1] == "train_end"
    assert [e[1] for e in recorder.events if e[0] == "step_end"] == [1, 2, 3, 4]  # stopped by the callback at 4
    assert [e[2] for e in recorder.events if e[0] == "save"] == ["checkpoint-2", "checkpoint-4"]
    assert [e[1:] for e in recorder.events if e[0] == "evaluate"] == [(2, 2), (4, 2)]
    logs = [e for e in recorder.events if e[0] == "log"]
    assert logs[0] == ("log", 2, ["learning_rate", "loss", "pyramid_levels", "seconds_per_step"])
    assert isinstance(output, TrainOutput) and output.global_step == 4 == distiller.state.global_step
    assert output.training_loss == pytest.approx(sum(distiller.losses) / 4)
    assert {"train_runtime", "train_loss", "train_steps_per_second"} <= set(output.metrics)


def test_callback_classes_are_instantiated_and_other_objects_refused(tmp_path):
    distiller = _distiller(tmp_path / "out", callbacks=[Recorder])
    assert any(isinstance(callback, Recorder) for callback in distiller.callback_handler.callbacks)
    assert isinstance(distiller.pop_callback(Recorder), Recorder)
    with pytest.raises(TypeError, match="TrainerCallback"):
        distiller.add_callback(object())


def test_evaluate_returns_flat_metrics_with_baselines_and_a_prefix(trained):
    distiller, _ = trained
    metrics = distiller.evaluate(metric_key_prefix="test", baselines=["random_real", "centroids"])
    for key in ("test_accuracy", "test_accuracy_std", "test_top5_accuracy", "test_runs", "test_backbone"):
        assert key in metrics
    assert metrics["test_runs"] == 2 and metrics["test_probe_epochs"] == 3 and metrics["test_probe_views"] == 0
    assert 0 <= metrics["test_random_real_accuracy"] <= 1 and 0 <= metrics["test_centroids_accuracy"] <= 1
    assert distiller.state.log_history[-1]["test_accuracy"] == metrics["test_accuracy"]
    cross = distiller.evaluate(eval_model=build_backbone("resnet"), eval_image_processor=tiny_image_processor())
    assert cross["eval_backbone"] == "ResNetModel" and "eval_random_real_accuracy" not in cross


def test_the_near_mean_baseline_probes_another_set_in_every_run(trained, monkeypatch):
    """Its ± is the spread over sets of real images near the means: run r trains on the (r + 2)-th nearest."""
    distiller, _ = trained
    baselines, seen = distiller.evaluator.baselines(), []
    original = baselines.near_mean

    def recorded(*args, **kwargs):
        images, labels = original(*args, **kwargs)
        seen.append(images)
        return images, labels

    monkeypatch.setattr(baselines, "near_mean", recorded)
    metrics = distiller.evaluate(baselines=["centroids", "near_mean"])
    assert 0 <= metrics["eval_near_mean_accuracy"] <= 1 and "eval_near_mean_accuracy_std" in metrics
    assert len(seen) == metrics["eval_runs"] == 2 and not torch.equal(seen[0], seen[1])
    centroids, _ = baselines.centroids(class_means=distiller.statistics.class_means)
    assert not any(torch.equal(images, centroids) for images in seen)


def test_evaluate_without_test_images_says_what_to_pass(tmp_path):
    distiller = make_distiller(tmp_path, color_dataset(3, 2), num_steps=1, image_size=32, save_grid=False)
    distiller.train()
    with pytest.raises(ValueError, match="eval_dataset="):
        distiller.evaluate()


def test_compute_metrics_as_in_trainer(tmp_path):
    seen = []

    def compute_metrics(prediction):
        seen.append(prediction.predictions.shape)
        return {"accuracy": float((prediction.predictions.argmax(1) == prediction.label_ids).mean()), "runs_seen": 1.0}

    distiller = _distiller(tmp_path / "out", compute_metrics=compute_metrics)
    distiller.train()
    metrics = distiller.evaluate()
    assert seen == [(9, 3), (9, 3)] and metrics["eval_runs_seen"] == 1.0 and "eval_top5_accuracy" not in metrics


def test_log_metrics_save_metrics_and_save_state_write_trainer_files(trained, caplog):
    distiller, output = trained
    metrics = distiller.evaluate()
    with caplog.at_level("INFO", logger="hf_sfm.distiller"):
        distiller.log_metrics("eval", metrics)
    assert "***** eval metrics *****" in caplog.text and "eval_accuracy" in caplog.text
    distiller.save_metrics("train", output.metrics)
    distiller.save_metrics("eval", metrics)
    out = distiller.output_dir
    assert json.loads((out / "eval_results.json").read_text()) == metrics
    assert json.loads((out / "all_results.json").read_text()) == {**output.metrics, **metrics}
    distiller.save_state()
    state = TrainerState.load_from_json(str(out / "trainer_state.json"))
    assert state.global_step == 6 and state.log_history[-1]["eval_accuracy"] == metrics["eval_accuracy"]


def test_logging_steps_are_visible_from_python(tmp_path, capsys):
    _distiller(tmp_path / "out", logging_steps=3).train()
    shown = capsys.readouterr().out  # as Trainer does: each log written above the progress bar
    assert shown.count("'loss'") == 2 and "'learning_rate'" in shown and "'seconds_per_step'" in shown


class NoSync(torch.Tensor):
    """Features (and every tensor computed from them: the loss) that refuse to be read on the host while `armed`."""

    armed = False


def _guarded(name):
    def read(self, *args, **kwargs):
        if NoSync.armed:
            raise AssertionError(f"the training step called {name} on a loss-side tensor (a host sync)")
        return getattr(torch.Tensor, name)(self.as_subclass(torch.Tensor), *args, **kwargs)

    return read


for _name in ("item", "tolist", "__float__", "__int__", "__bool__"):
    setattr(NoSync, _name, _guarded(_name))


class Arm(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        NoSync.armed = True

    def on_step_end(self, args, state, control, **kwargs):
        NoSync.armed = False


def test_the_loss_stays_on_the_device_between_logging_steps(tmp_path):
    def no_sync_features(model, pixel_values):
        return model(pixel_values=pixel_values).last_hidden_state[:, 0].as_subclass(NoSync)

    distiller = _distiller(tmp_path / "out", callbacks=[Arm], feature_fn=no_sync_features, logging_steps=3)
    try:
        distiller.train()  # reading the loss inside a step would raise
    finally:
        NoSync.armed = False
    assert len(distiller.losses) == 6 and [e["step"] for e in distiller.state.log_history[:2]] == [3, 6]


class ClosingTracker(GeneralTracker):
    name = "closing"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.logged, self.finished = [], False

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        pass

    def log(self, values, step=None, **kwargs):
        self.logged.append(step)

    def finish(self):
        self.finished = True


def test_trackers_get_a_run_name_and_are_closed_at_the_end(tmp_path, monkeypatch):
    tracker = ClosingTracker()
    accelerator = Accelerator(log_with=[tracker])
    seen = {}
    original = accelerator.init_trackers

    def spy(project_name, config=None, init_kwargs=None):
        seen.update(project=project_name, init_kwargs=init_kwargs)
        return original(project_name, config=config, init_kwargs=init_kwargs)

    monkeypatch.setattr(accelerator, "init_trackers", spy)
    distiller = _distiller(tmp_path / "out", accelerator=accelerator, run_name="my-run")
    distiller.train()
    assert seen["project"] == "hf_sfm" and seen["init_kwargs"]["wandb"] == {"name": "my-run"}
    assert tracker.logged == [2, 4, 6] and tracker.finished and accelerator.trackers == []


def test_hub_fields_are_checked_up_front_and_the_token_never_written(tmp_path):
    with pytest.raises(ValueError, match="hub_dataset_id"):
        DistillationConfig(push_to_hub=True)
    args = DistillationConfig(push_to_hub=True, hub_dataset_id="org/set", hub_token="hf_secret")
    assert args.to_dict()["hub_token"] == "<HUB_TOKEN>" and args.hub_token == "hf_secret"
    distiller = _distiller(tmp_path / "out", hub_token="hf_secret", hub_dataset_id="org/set")
    distiller.train()
    path = distiller.save_distilled()
    assert "hf_secret" not in (path / "distillation_config.json").read_text()
    assert "hf_secret" not in (path / "README.md").read_text()


def test_pushing_never_trains_a_classifier(tmp_path):
    distiller = _distiller(tmp_path / "out", hub_dataset_id="org/set", hub_model_id="org/classifier")
    distiller.train()
    with pytest.raises(ValueError, match="pushing never trains one"):
        distiller.push_to_hub(local_dir=tmp_path / "hub")
    assert not (tmp_path / "hub").exists()
