"""Best-step selection as in `Trainer` (`metric_for_best_model`, `greater_is_better`, `load_best_model_at_end`),
named `eval_models`, the validation split carved out of the training set, and the step curve."""

import functools
import json
import logging

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import build_backbone, color_dataset, load_recipe, make_distiller, run_recipe_main, tiny_image_processor
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_sfm import DistillationConfig, Distiller
from hf_sfm.data.validation_split import carve_validation_split
from hf_sfm.publishing.visualization import save_step_curve, step_curves

# num_steps 6, evaluated at steps 2, 4 and 6 (one probe run each, so compute_metrics runs once per evaluation).
_distiller = functools.partial(
    make_distiller,
    dataset=lambda: color_dataset(3, 10),
    num_steps=6,
    eval_steps=2,
    image_size=32,
    save_grid=False,
    logging_steps=2,
    eval_runs=1,
    probe_epochs=3,
)


class StepScores(TrainerCallback):
    """A `compute_metrics` whose score is scripted per step, and a record of the images at every evaluation."""

    def __init__(self, scores: dict[int, float]):
        self.scores, self.step, self.images, self.distiller = scores, None, {}, None

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step  # before the loop evaluates this step

    def on_evaluate(self, args, state, control, **kwargs):
        self.images[state.global_step] = self.distiller.synthetic_images().clone()

    def compute_metrics(self, prediction):
        return {"score": self.scores[self.step]}


def scripted(tmp_path, scores, **settings):
    recorder = StepScores(scores)
    distiller = _distiller(
        tmp_path, callbacks=[recorder], compute_metrics=recorder.compute_metrics, metric_for_best_model="score",
        **settings,
    )  # fmt: skip
    recorder.distiller = distiller
    return distiller, recorder


def test_load_best_model_at_end_hands_out_the_best_steps_images_not_the_last(tmp_path):
    distiller, recorder = scripted(tmp_path / "out", {2: 0.3, 4: 0.9, 6: 0.5}, load_best_model_at_end=True)
    distiller.train()
    assert sorted(recorder.images) == [2, 4, 6]
    assert not torch.equal(recorder.images[4], recorder.images[6])  # the test can tell the steps apart
    assert torch.equal(distiller.synthetic_images(), recorder.images[4])
    assert distiller.state.best_global_step == 4 and distiller.state.best_metric == 0.9
    path = distiller.save_distilled()
    assert torch.equal(load_file(str(path / "synthetic.safetensors"))["images"], recorder.images[4])
    card = (path / "README.md").read_text()
    assert "step 4 of 6" in card and "`eval_score` = 0.9" in card and "3 evaluated steps (2, 4, 6)" in card
    selection = json.loads((path / "distillation_config.json").read_text())["selection"]
    assert selection["step"] == 4 and selection["evaluated_steps"] == [2, 4, 6]


def test_without_load_best_the_last_step_is_handed_out_and_the_best_only_tracked(tmp_path):
    distiller, recorder = scripted(tmp_path / "out", {2: 0.3, 4: 0.9, 6: 0.5})
    distiller.train()
    assert torch.equal(distiller.synthetic_images(), recorder.images[6])
    assert distiller.state.best_global_step == 4


def test_the_last_step_competes_even_off_the_eval_grid(tmp_path):
    distiller, recorder = scripted(tmp_path / "out", {2: 0.3, 4: 0.5, 5: 0.8}, load_best_model_at_end=True, num_steps=5)
    distiller.train()
    assert sorted(recorder.images) == [2, 4, 5] and distiller.state.best_global_step == 5
    assert torch.equal(distiller.synthetic_images(), recorder.images[5])


def test_greater_is_better_false_keeps_the_minimum(tmp_path):
    distiller, recorder = scripted(
        tmp_path / "out", {2: 0.5, 4: 0.2, 6: 0.7}, load_best_model_at_end=True, greater_is_better=False
    )
    distiller.train()
    assert distiller.state.best_global_step == 4 and distiller.state.best_metric == 0.2
    assert torch.equal(distiller.synthetic_images(), recorder.images[4])
    assert not torch.equal(distiller.synthetic_images(), recorder.images[2])


def test_greater_is_better_is_inferred_as_trainer_does():
    assert DistillationConfig(eval_steps=1, metric_for_best_model="probe_loss").greater_is_better is False
    config = DistillationConfig(eval_steps=1, load_best_model_at_end=True)
    assert config.greater_is_better is True and config.best_metric_key == "eval_accuracy"
    assert DistillationConfig(eval_steps=1, metric_for_best_model="eval_top5_accuracy").best_metric_key == (
        "eval_top5_accuracy"
    )


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.stop_step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.stop_step:
            control.should_training_stop = True


def test_a_resumed_run_keeps_the_best_step_of_an_uninterrupted_one(tmp_path):
    scores = {2: 0.9, 4: 0.3, 6: 0.5}  # the best step comes before the interruption
    reference, recorder = scripted(tmp_path / "a", scores, load_best_model_at_end=True, save_steps=2)
    reference.train()
    assert reference.state.best_global_step == 2
    first, _ = scripted(tmp_path / "b", scores, load_best_model_at_end=True, save_steps=2)
    first.add_callback(StopAt(4))
    first.train()
    assert first.state.global_step == 4
    resumed, resumed_recorder = scripted(
        tmp_path / "b", scores, load_best_model_at_end=True, save_steps=2, resume_from_checkpoint="latest"
    )
    resumed.train()
    assert sorted(resumed_recorder.images) == [6]  # only the step after the resume was evaluated again
    assert resumed.state.best_global_step == 2 and resumed.state.best_metric == 0.9
    assert torch.equal(resumed.synthetic_images(), reference.synthetic_images())
    assert torch.equal(resumed.synthetic_images(), recorder.images[2])
    assert resumed.best_step.evaluated_steps == [2, 4, 6]


# ---------------------------------------------------------------------------------------------- the carved split


def numbered(num_classes=3, per_class=10):
    dataset = color_dataset(num_classes, per_class)
    return dataset.add_column("row", list(range(len(dataset))))


def test_the_carved_split_is_stratified_seeded_and_disjoint_from_what_the_statistics_read(tmp_path):
    full = numbered(3, 10)
    distiller = _distiller(tmp_path / "out", dataset=full, load_best_model_at_end=True, validation_split_size=0.3)
    train, validation = distiller.train_dataset, distiller.eval_dataset
    assert np.bincount(validation["label"]).tolist() == [3, 3, 3]  # stratified: 30 % of every class
    assert set(train["row"]).isdisjoint(validation["row"]) and len(train) + len(validation) == 30
    statistics = distiller.compute_statistics()
    assert statistics.counts.tolist() == np.bincount(train["label"]).tolist() == [7, 7, 7]
    origin = distiller.validation_split
    assert (origin.num_images, origin.num_train_images, origin.seed, origin.stratified) == (9, 21, 0, True)
    same = carve_validation_split(full, "label", 0.3, seed=0)[1]
    other = carve_validation_split(full, "label", 0.3, seed=1)[1]
    assert same["row"] == validation["row"] and other["row"] != validation["row"]
    distiller.train()
    path = distiller.save_distilled()
    card = (path / "README.md").read_text()
    assert "validation split of 9 images (30 %) carved out of the `train` split" in card
    assert "stratified by label, seed 0" in card
    carved = json.loads((path / "distillation_config.json").read_text())["selection"]["validation_split"]
    assert carved["num_images"] == 9 and carved["seed"] == 0 and carved["source"] == "train"


def test_the_validation_seed_and_plain_integer_labels(tmp_path):
    full = numbered(3, 10)
    plain = full.cast_column("label", datasets.Value("int64"))
    train, validation, origin = carve_validation_split(plain, "label", 6, seed=3)
    assert sorted(np.bincount(validation["label"]).tolist()) == [2, 2, 2] and origin.seed == 3
    assert train.features["label"] == datasets.Value("int64")  # the user's features stay as they are
    distiller = _distiller(
        tmp_path / "out", dataset=full, metric_for_best_model="accuracy", validation_split_seed=3,
        validation_split_size=6,
    )  # fmt: skip
    assert distiller.validation_split.seed == 3
    assert distiller.eval_dataset["row"] == carve_validation_split(full, "label", 6, seed=3)[1]["row"]


def test_a_given_eval_dataset_is_used_and_nothing_is_carved(tmp_path):
    validation = color_dataset(3, 2, seed=5)
    distiller = _distiller(tmp_path / "out", eval_dataset=validation, load_best_model_at_end=True)
    assert distiller.validation_split is None and distiller.eval_dataset is validation
    assert len(distiller.train_dataset) == 30


# ---------------------------------------------------------------------------------------------- eval models


def with_eval_models(tmp_path, eval_models, **settings):
    return Distiller(
        model=build_backbone("vit"),
        args=DistillationConfig(
            output_dir=str(tmp_path), num_steps=2, image_size=32, save_grid=False, eval_runs=2, probe_epochs=3,
            **settings,
        ),
        train_dataset=color_dataset(3, 6),
        image_processor=tiny_image_processor(),
        eval_dataset=color_dataset(3, 3, seed=1),
        eval_models=eval_models,
    )  # fmt: skip


def test_eval_models_add_named_accuracies_and_their_mean(tmp_path):
    resnet, processor = build_backbone("resnet"), tiny_image_processor()
    distiller = with_eval_models(tmp_path / "out", {"resnet": (resnet, processor), "vit_b": build_backbone("vit", 1)})
    distiller.train()
    metrics = distiller.evaluate()
    for key in ("eval_accuracy", "eval_resnet_accuracy", "eval_vit_b_accuracy", "eval_resnet_backbone"):
        assert key in metrics
    mean = np.mean([metrics["eval_accuracy"], metrics["eval_resnet_accuracy"], metrics["eval_vit_b_accuracy"]])
    assert metrics["eval_mean_accuracy"] == pytest.approx(mean)
    cross = distiller.evaluate(eval_model=resnet, eval_image_processor=processor)  # the cross-model path itself
    assert cross["eval_accuracy"] == metrics["eval_resnet_accuracy"] and "eval_mean_accuracy" not in cross


def test_eval_models_can_drive_the_selection(tmp_path):
    distiller = with_eval_models(
        tmp_path / "out", {"resnet": (build_backbone("resnet"), tiny_image_processor())},
        eval_steps=1, metric_for_best_model="mean_accuracy", load_best_model_at_end=True,
    )  # fmt: skip
    distiller.train()
    history = [entry for entry in distiller.state.log_history if "eval_mean_accuracy" in entry]
    assert [entry["step"] for entry in history] == [1, 2]
    best = max(history, key=lambda entry: entry["eval_mean_accuracy"])  # ties keep the earlier step
    assert distiller.state.best_global_step == best["step"]
    assert "eval_random_real_accuracy" not in history[0]  # in training: no baselines


@pytest.mark.parametrize(
    "eval_models, match",
    [
        ({"Lite1": None}, "lowercase slug"),
        ({"lite-1": None}, "lowercase slug"),
        ({"mean": None}, "clashes"),
        ({"centroids": None}, "clashes"),
        ({"random_real_x": None}, "clashes"),
        ({"lite1": "a model"}, "must be a model"),
    ],
)
def test_bad_eval_model_names_are_refused_before_any_work(tmp_path, eval_models, match):
    eval_models = {name: build_backbone("vit") if value is None else value for name, value in eval_models.items()}
    with pytest.raises(ValueError, match=match):
        with_eval_models(tmp_path / "out", eval_models)


# ---------------------------------------------------------------------------------------------- refused up front


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"load_best_model_at_end": True, "eval_steps": 0}, "load_best_model_at_end=True .* eval_steps=0"),
        ({"metric_for_best_model": "accuracy", "eval_steps": 0}, "metric_for_best_model='accuracy' .* eval_steps"),
        ({"eval_steps": 1, "metric_for_best_model": ""}, "metric_for_best_model must be a metric name"),
        ({"eval_steps": 1, "metric_for_best_model": "accuracy", "greater_is_better": "yes"}, "greater_is_better"),
        ({"validation_split_size": 1.5}, "validation_split_size=1.5"),
        ({"validation_split_size": 0}, "validation_split_size=0"),
    ],
)
def test_bad_flag_combinations_are_refused_by_the_config(settings, match):
    with pytest.raises(ValueError, match=match):
        DistillationConfig(**settings)


class NoTraining(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        raise AssertionError("training started")


@pytest.mark.parametrize(
    "metric, match",
    [("f1", "'eval_f1' is not a metric evaluation produces"), ("mean_accuracy", "needs eval_models")],
)
def test_a_metric_the_default_evaluation_never_produces_is_refused_before_training(tmp_path, metric, match):
    with pytest.raises(ValueError, match=match):
        _distiller(tmp_path / "out", metric_for_best_model=metric, callbacks=[NoTraining()])


def test_a_custom_metric_that_is_missing_fails_at_the_first_evaluation_naming_what_exists(tmp_path):
    distiller = _distiller(tmp_path / "out", metric_for_best_model="f1", compute_metrics=lambda p: {"score": 0.5})
    with pytest.raises(ValueError, match=r"'eval_f1'.*'eval_score'"):
        distiller.train()
    assert distiller.state.global_step == 2  # the first evaluation, not the end of the run


def test_a_streaming_train_set_cannot_be_carved(tmp_path):
    stream = color_dataset(3, 4).to_iterable_dataset()
    with pytest.raises(ValueError, match=r"streaming\. Pass eval_dataset="):
        _distiller(tmp_path / "out", dataset=stream, init="noise", load_best_model_at_end=True)


def test_too_small_a_split_to_stratify_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one image per class"):
        _distiller(tmp_path / "out", load_best_model_at_end=True, validation_split_size=2)


# ---------------------------------------------------------------------------------------------- the step curve


def test_the_step_curve_plots_every_accuracy_against_steps(tmp_path):
    history = [
        {"loss": 1.0, "step": 2},
        {
            "eval_accuracy": 0.4,
            "eval_lite1_accuracy": 0.3,
            "eval_accuracy_std": 0.1,
            "eval_top5_accuracy": 1,
            "step": 2,
        },
        {"eval_accuracy": 0.6, "eval_lite1_accuracy": 0.2, "step": 4},
        {"eval_accuracy": 0.9, "eval_lite1_accuracy": 0.9, "eval_centroids_accuracy": 0.5, "step": 4},  # final, test
    ]
    curves = step_curves(history, steps=[2, 4])
    assert curves == {"eval_accuracy": [(2, 0.4), (4, 0.6)], "eval_lite1_accuracy": [(2, 0.3), (4, 0.2)]}
    path = save_step_curve(history, tmp_path / "step_curve.png", steps=[2, 4], kept_step=4)
    with PIL.Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size[0] > 100
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no staging leftovers
    with pytest.raises(ValueError, match="no in-training evaluations"):
        save_step_curve([{"loss": 1.0, "step": 1}], tmp_path / "none.png")


def test_the_recipe_selects_on_validation_and_reports_on_test(tmp_path):
    build_backbone("vit").save_pretrained(tmp_path / "vit")
    tiny_image_processor().save_pretrained(tmp_path / "vit")
    splits = {
        "train": color_dataset(3, 6),
        "validation": color_dataset(3, 2, seed=2),
        "test": color_dataset(3, 4, seed=1),
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "data"))
    output_dir = tmp_path / "run"
    result = run_recipe_main(
        load_recipe(),
        [
            "--model_name_or_path", str(tmp_path / "vit"), "--dataset_name", str(tmp_path / "data"),
            "--output_dir", str(output_dir), "--num_steps", "3", "--eval_steps", "2", "--image_size", "32",
            "--load_best_model_at_end", "true", "--probe_epochs", "2", "--eval_runs", "1",
        ]
    )  # fmt: skip
    assert result["eval"]["eval_num_test_images"] == 12  # the final numbers: on the test split
    state = json.loads((output_dir / "trainer_state.json").read_text())
    in_training = [e for e in state["log_history"] if "eval_accuracy" in e]
    assert in_training[0]["eval_num_test_images"] == 6 and [e["step"] for e in in_training[:2]] == [2, 3]
    assert (output_dir / "step_curve.png").is_file()
    card = (output_dir / "distilled" / "README.md").read_text()
    assert "chosen on the dataset's real `validation` split" in card and "### Kept step" in card
    run = json.loads((output_dir / "distilled" / "distillation_config.json").read_text())
    assert run["selection"]["selection_split"] == "the dataset's real `validation` split"
    assert run["run"]["data"].get("validation_split") is None  # nothing carved: the dataset had one


def test_the_recipe_keeps_the_best_step_by_the_mean_over_its_eval_models(tmp_path):
    for family in ("vit", "resnet"):
        build_backbone(family).save_pretrained(tmp_path / family)
        tiny_image_processor().save_pretrained(tmp_path / family)
    splits = {"train": color_dataset(3, 10), "test": color_dataset(3, 4, seed=1)}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "data"))
    output_dir = tmp_path / "run"
    result = run_recipe_main(
        load_recipe(),
        [
            "--model_name_or_path", str(tmp_path / "vit"), "--dataset_name", str(tmp_path / "data"),
            "--eval_model_name_or_path", f"other={tmp_path / 'resnet'}", str(tmp_path / "resnet"),
            "--output_dir", str(output_dir), "--num_steps", "3", "--eval_steps", "2", "--image_size", "32",
            "--metric_for_best_model", "mean_accuracy", "--load_best_model_at_end", "true",
            "--validation_split_size", "0.2", "--probe_epochs", "2", "--eval_runs", "1",
        ]
    )  # fmt: skip
    metrics = result["eval"]  # on the test split, every eval model: named, or by its short name
    mean = (metrics["eval_accuracy"] + metrics["eval_other_accuracy"] + metrics["eval_resnet_accuracy"]) / 3
    assert metrics["eval_mean_accuracy"] == pytest.approx(mean)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    in_training = [e for e in state["log_history"] if "eval_mean_accuracy" in e and e["eval_num_test_images"] == 6]
    assert [e["step"] for e in in_training] == [2, 3]  # chosen on the 6 carved validation images
    best = max(in_training, key=lambda e: e["eval_mean_accuracy"])  # ties keep the earlier step
    run = json.loads((output_dir / "distilled" / "distillation_config.json").read_text())
    assert run["selection"]["metric"] == "eval_mean_accuracy" and run["selection"]["step"] == best["step"]


@pytest.mark.slow
def test_two_processes_keep_the_best_step_of_one(tmp_path):
    """Sharded parameters: the copy gathers every process's rows. `num_test_images` is the same at every
    evaluation, so the first evaluated step (2) wins every tie: the kept set is the 2-step run's, made by one
    process, while the pyramid grows to more levels afterwards."""
    from test_distributed import RUN, launch_two_processes

    root = tmp_path / "assets"
    build_backbone("vit").save_pretrained(root / "vit")
    tiny_image_processor().save_pretrained(root / "vit")
    datasets.DatasetDict({"train": color_dataset(3, 7)}).save_to_disk(str(root / "data"))
    select = ["--eval_steps", "2", "--metric_for_best_model", "num_test_images", "--load_best_model_at_end", "true"]
    select += ["--eval_runs", "1", "--probe_epochs", "2"]
    launch_two_processes(root, tmp_path / "two", *select)
    argv = ["--model_name_or_path", str(root / "vit"), "--dataset_name", str(root / "data")]
    run_recipe_main(load_recipe(), [*argv, "--output_dir", str(tmp_path / "one"), *RUN, *select, "--num_steps", "2"])
    state = json.loads((tmp_path / "two" / "trainer_state.json").read_text())
    assert state["best_global_step"] == 2 and state["global_step"] == 6
    two, one = (load_file(str(tmp_path / d / "distilled" / "synthetic.safetensors"))["images"] for d in ("two", "one"))
    torch.testing.assert_close(two, one, rtol=0, atol=1e-5)


def test_a_resume_that_changes_the_metric_starts_the_selection_over(tmp_path, caplog):
    first, _ = scripted(tmp_path / "b", {2: 0.9, 4: 0.3, 6: 0.5}, save_steps=2)
    first.add_callback(StopAt(4))
    first.train()
    resumed, _ = scripted(
        tmp_path / "b", {6: 0.5}, greater_is_better=False, save_steps=2, resume_from_checkpoint="latest"
    )
    with caplog.at_level(logging.WARNING, logger="hf_sfm"):
        resumed.train()
    assert "starts over" in caplog.text
    assert resumed.state.best_global_step == 6 and resumed.best_step.evaluated_steps == [6]
