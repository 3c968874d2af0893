"""What a run prints, leaves behind and publishes: one run record behind the cards and metrics files, portable
cards, strict-JSON metrics across resumes, the recipe's start-of-run warnings, TrainingArguments spellings."""

import json
import logging
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
from conftest import build_backbone, color_dataset, load_recipe, recipe_settings_restored, run_recipe_main
from transformers import PretrainedConfig, ViTImageProcessor

from hf_sfm import DistillationConfig, Distiller
from hf_sfm.publishing.cards import dataset_card, model_card, validate_card_metadata
from hf_sfm.publishing.run_record import EvalSplit, RunRecord, WarningRecorder, portable_name, without_local_paths
from hf_sfm.training.tracking import write_metrics

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "distill.py"
PROBE_WARNING = "The linear probe on 3 images can barely move its head"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("distill_recipe_record")


def strict_json(path: Path):
    """The file parsed as JSON proper: `NaN`/`Infinity` (which Python's json accepts) fail."""

    def refuse(constant):
        raise AssertionError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def record(**overrides) -> RunRecord:
    config = DistillationConfig(output_dir="/home/someone/runs/shapes", probe_learning_rate=0.05, license="mit")
    values = dict(
        probe=config.probe_config(),
        backbone="/tmp/models/efficientnet-lite0",
        image_size=73,
        crop_size=64,
        source_dataset="/home/someone/data/shapes",
        eval_split=EvalSplit.carved("train", 0.25, 0),
        warnings=[f"{PROBE_WARNING}: 2 epochs (see /home/someone/runs/shapes/log.txt)."],
    )
    values.update(overrides)
    return RunRecord.build(config, **values)


# ---------------------------------------------------------------------------------------------- the record


def test_local_paths_become_folder_names_and_hub_ids_stay():
    assert portable_name("facebook/dinov2-base") == "facebook/dinov2-base"
    assert portable_name("imagefolder", "dataset") == "imagefolder"
    assert portable_name("/tmp/x/efficientnet-lite0") == "efficientnet-lite0 (a local checkpoint)"
    assert portable_name("./shapes", "dataset") == "shapes (a local dataset)"
    assert without_local_paths("not in /tmp/a/vit and ~/b/c.") == "not in vit and c."


def test_the_probe_rate_is_a_config_field_that_reaches_the_probe_and_the_record():
    config = DistillationConfig(output_dir="unused", probe_epochs=50, probe_learning_rate=1e-2)
    probe = config.probe_config()
    assert (probe.epochs, probe.learning_rate, probe.scale_learning_rate) == (50, 1e-2, False)
    assert DistillationConfig(output_dir="unused").probe_config().scale_learning_rate  # the papers' protocol
    assert config.to_dict()["probe_learning_rate"] == 1e-2
    with pytest.raises(ValueError, match="probe_learning_rate"):
        DistillationConfig(output_dir="unused", probe_learning_rate=0.0)
    with pytest.raises(ValueError, match="licence id"):
        DistillationConfig(output_dir="unused", license="Apache 2")


def test_the_warning_recorder_keeps_each_warning_of_the_run_once():

    with WarningRecorder() as recorder:
        for _ in range(3):
            logging.getLogger("hf_sfm.evaluation.probe").warning(PROBE_WARNING)
        logging.getLogger("hf_sfm.distiller").info("not a warning")
    logging.getLogger("hf_sfm.evaluation.probe").warning("after the run")
    assert recorder.messages == [PROBE_WARNING]


def test_which_probe_protocol_ran_is_said_but_kept_out_of_the_cards_warnings(caplog):
    from hf_sfm.evaluation.probe import say_protocol

    with WarningRecorder() as recorder, caplog.at_level("WARNING", logger="hf_sfm"):
        say_protocol("Linear probes of distilled on vit: the fast probe protocol (...)")
    assert "the fast probe protocol" in caplog.text  # the user still reads it
    assert recorder.messages == []  # the card states the protocol in its own section


# ---------------------------------------------------------------------------------------------- the cards


def test_the_dataset_card_states_the_probe_rate_sizes_split_origin_and_warnings_without_local_paths():
    card = str(dataset_card(class_names=["a", "b"], num_images=2, record=record(), metrics=_metrics()))
    metadata = validate_card_metadata(card, "dataset")
    assert "/home/someone" not in card and "/tmp/" not in card
    assert "efficientnet-lite0 (a local checkpoint)" in card and "shapes (a local dataset)" in card
    assert "learning_rate: 0.05" in card and "probe_learning_rate: 0.05" in card  # reproducible from the card
    assert "image_size: 73" in card and "crop_size: 64" in card and "image_size: null" not in card
    assert "25 % of the real `train` split, held out before distilling" in card and "test split" in card
    assert "## Warnings the run raised" in card and PROBE_WARNING in card and "log.txt" in card
    assert metadata["license"] == "unknown" and "`--dataset_license`" in card  # not given: said so
    assert "MNIST" not in card and "10 of 12" not in card  # no results of hf_sfm's own benchmarks


def test_two_probe_rates_give_two_different_cards():
    first = str(dataset_card(class_names=["a", "b"], num_images=2, record=record()))
    config = DistillationConfig(output_dir="out", probe_epochs=2)
    second = str(
        dataset_card(class_names=["a", "b"], num_images=2, record=RunRecord.build(config, probe=config.probe_config()))
    )
    assert "learning_rate: 0.05" in first and "learning_rate: 0.05" not in second
    assert "scale_learning_rate: true" in second


def test_a_card_says_why_the_run_was_not_evaluated():
    reason = "the dataset has no 'test' or 'validation' split; carve one out with --eval_split_size 0.2"
    card = str(dataset_card(class_names=["a", "b"], num_images=2, record=record(eval_split=None, not_evaluated=reason)))
    assert f"Not evaluated: {reason}" in card


def test_the_classifier_card_names_the_carved_split_and_its_licence():
    config = PretrainedConfig(id2label={0: "a", 1: "b"})
    config.backbone_name_or_path = "/tmp/models/efficientnet-lite0"
    model = SimpleNamespace(config=config)
    metrics = {**_metrics(), "eval_inherited_accuracy": 0.75, "eval_inherited_backbone": "/tmp/models/vit"}
    card = str(model_card(model=model, metrics=metrics, record=record()))
    metadata = validate_card_metadata(card, "model")
    assert metadata["license"] == "mit" and "/tmp/" not in card
    result = metadata["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "train" and result["metrics"][0]["value"] == 0.75
    assert "held out before distilling" in card and PROBE_WARNING in card


def _metrics():
    return {"eval_accuracy": 0.5, "eval_accuracy_std": 0.0, "eval_runs": 1, "eval_backbone": "/tmp/models/vit"}


# ---------------------------------------------------------------------------------------------- metrics files


def test_metrics_files_are_strict_json_and_a_missing_number_never_replaces_a_recorded_one(tmp_path):
    write_metrics(tmp_path, "train", {"train_loss": 0.25, "train_runtime": 3.0})
    write_metrics(tmp_path, "train", {"train_loss": math.nan, "train_runtime": math.inf}, overwrite=True)
    assert strict_json(tmp_path / "train_results.json") == {"train_loss": None, "train_runtime": None}
    assert strict_json(tmp_path / "all_results.json") == {"train_loss": 0.25, "train_runtime": 3.0}


def test_train_loss_after_a_resume_is_the_mean_over_every_step(tmp_path):
    def distiller(output_dir, **overrides):
        processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        args = DistillationConfig(output_dir=str(output_dir), num_steps=4, save_steps=2, logging_steps=1, **overrides)
        return Distiller(build_backbone("vit"), args, color_dataset(3, 4), image_processor=processor)

    whole = distiller(tmp_path / "whole").train()
    first = distiller(tmp_path / "resumed")
    first.train()
    resumed = distiller(tmp_path / "resumed", resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    output = resumed.train()
    assert output.global_step == 4 and len(resumed.losses) == 4
    assert output.training_loss == pytest.approx(whole.training_loss, rel=1e-5)
    finished = distiller(tmp_path / "resumed", resume_from_checkpoint="latest").train()  # nothing left to run
    assert math.isfinite(finished.training_loss) and finished.training_loss == pytest.approx(whole.training_loss)


# ---------------------------------------------------------------------------------------------- the recipe


def test_trainer_spellings_map_onto_the_config_or_are_refused(recipe):
    config = recipe.parse_args(["--max_steps", "7", "--bf16", "true"])[3]
    assert (config.num_steps, config.mixed_precision) == (7, "bf16")
    with pytest.raises(ValueError, match="max_steps 7 and --num_steps 9 disagree"):
        recipe.parse_args(["--max_steps", "7", "--num_steps", "9"])
    with pytest.raises(ValueError, match="bf16 and --fp16"):
        recipe.parse_args(["--bf16", "true", "--fp16", "true"])
    spellings = recipe.parse_all_args(["--disable_tqdm", "true", "--log_level", "warning"])[4]
    assert spellings.disable_tqdm and spellings.log_level == "warning"


def test_help_prints_each_default_once(recipe):
    text = " ".join(recipe.build_parser().format_help().split())
    assert "(default: the embedded EfficientNet-Lite0)." in text
    assert "EfficientNet-Lite0). (default: None)" not in text
    assert "--max_steps" in text and "--probe_learning_rate" in text and "--dataset_license" in text


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("record_assets")
    build_backbone("vit").save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        root / "vit"
    )
    datasets.DatasetDict({"train": color_dataset(3, 8)}).save_to_disk(str(root / "train_only"))
    return root


def test_a_recipe_error_is_one_line_without_a_traceback(recipe, assets, tmp_path, monkeypatch, capsys):
    """`cli()`, what `python recipes/distill.py` runs, in this process (a fresh interpreter would spend the test
    importing; test_recipe launches the script itself): a user error is one line, exit status 2."""
    argv = ["--model_name_or_path", str(assets / "vit"), "--dataset_name", str(assets / "nowhere"),
            "--output_dir", str(tmp_path / "run"), "--max_steps", "1", "--disable_tqdm", "true"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", [str(RECIPE), *argv])
    with recipe_settings_restored():
        assert recipe.cli() == 2  # an exception that is not a user error would propagate here, with its traceback
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and stderr.count("error:") == 1
    assert stderr.strip().splitlines()[-1].startswith("recipes/distill.py: error:") and "nowhere" in stderr


def test_a_run_that_cannot_evaluate_says_so_at_the_start_and_in_its_card(recipe, assets, tmp_path, caplog):
    output_dir = tmp_path / "run"
    argv = ["--model_name_or_path", str(assets / "vit"), "--dataset_name", str(assets / "train_only"),
            "--output_dir", str(output_dir), "--max_steps", "1", "--grid_steps", "0",
            "--disable_tqdm", "true"]  # fmt: skip
    with caplog.at_level(logging.INFO):
        run_recipe_main(recipe, argv)
    log = caplog.text
    assert "will not be evaluated" in log and log.index("will not be evaluated") < log.index("train metrics")
    card = (output_dir / "distilled" / "README.md").read_text()
    assert "Not evaluated: the dataset has no 'test' or 'validation' split" in card and "--eval_split_size" in card
    assert str(assets) not in card and "vit (a local checkpoint)" in card
    assert f"Outputs in {output_dir}" in log


def test_a_recipe_run_records_its_probe_split_and_warnings_and_a_finished_resume_keeps_its_metrics(
    recipe, assets, tmp_path, caplog
):
    output_dir = tmp_path / "run"
    common = ["--model_name_or_path", str(assets / "vit"), "--dataset_name", str(assets / "train_only"),
              "--output_dir", str(output_dir), "--max_steps", "2", "--save_steps", "1", "--eval_split_size", "3",
              "--probe_epochs", "2", "--eval_runs", "1", "--grid_steps", "0",
              "--dataset_license", "cc-by-4.0"]  # fmt: skip
    run_recipe_main(recipe, ["--disable_tqdm", "true", *common])
    card = (output_dir / "distilled" / "README.md").read_text()
    assert "license: cc-by-4.0" in card and str(assets) not in card
    assert "3 images of the real `train` split, held out before distilling" in card
    assert "can barely move its head" in card.split("## Warnings the run raised")[1]  # the run's own warning
    run = json.loads((output_dir / "distilled" / "distillation_config.json").read_text())
    assert run["run"]["probe"]["epochs"] == 2 and run["run"]["eval_split"]["name"] == "train"
    assert str(assets) not in json.dumps(run)
    files = ("train_results.json", "eval_results.json", "all_results.json")
    before = {name: strict_json(output_dir / name) for name in files}

    caplog.clear()
    run_recipe_main(
        recipe, ["--disable_tqdm", "true", *common, "--resume_from_checkpoint", "true", "--do_eval", "false"]
    )
    assert "already finished at step 2" in caplog.text
    after = {name: strict_json(output_dir / name) for name in files}
    assert after == before and math.isfinite(after["train_results.json"]["train_loss"])


# ---------------------------------------------------------------------------------------------- reopening a run


def test_a_finished_run_reopens_from_its_output_dir_and_builds_its_classifier_without_training(tmp_path):
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    model, train = build_backbone("vit"), color_dataset(3, 4)
    args = DistillationConfig(output_dir=str(tmp_path / "run"), num_steps=2, ipc=2, learning_rate=0.5)
    original = Distiller(model, args, train, image_processor=processor)
    original.train()
    original.save_distilled()
    images = original.synthetic_images()
    original.output_lock.release()

    reopened = Distiller.from_run(tmp_path / "run", model, train, image_processor=processor)
    assert reopened.args.ipc == 2 and reopened.args.learning_rate == 0.5 and reopened.state.global_step == 0
    assert (
        reopened.synthetic_images().sub(images).abs().max() <= 1e-4
    )  # the float images (to the clamp at 1e-4), not 8-bit
    assert reopened.statistics.class_means.sub(original.statistics.class_means).abs().max() == 0
    inheritance = reopened.classifier_inheritance()
    inheritance.train_head(epochs=1)
    inheritance.fit_projector(reopened.synthetic_images(), epochs=1)
    assert inheritance.classifier().config.id2label == {0: "class_0", 1: "class_1", 2: "class_2"}
    with pytest.raises(FileNotFoundError, match="not the distilled folder of a finished run"):
        Distiller.from_run(tmp_path / "nothing", model, train, image_processor=processor)


def test_a_fit_that_converges_early_ends_its_progress_bar_at_100_percent(monkeypatch):
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from hf_sfm.evaluation import linear_fit

    bars = []

    class RecordedBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(linear_fit, "tqdm", RecordedBar)
    features, labels = torch.randn(8, 4), torch.arange(8) % 2
    config = linear_fit.LinearFitConfig(epochs=400, tolerance=1.0, patience=2, cooldown=0)
    losses = linear_fit.fit_linear(
        torch.nn.Linear(4, 2),
        lambda index, epoch: (features[index], labels[index]),
        F.cross_entropy,
        8,
        config,
        torch.Generator().manual_seed(0),
        progress_desc="head",
    )
    assert len(losses) < 400  # it did stop early
    assert bars[-1].n == bars[-1].total == len(losses)


def test_data_far_smaller_than_the_backbone_input_is_reported_with_the_flags_that_fix_it():
    from hf_sfm.data.real_data import RealData  # the check moved into the library (tests/test_run_record2.py)

    small = RealData.from_dataset(color_dataset(2, 2))  # 32 px images
    side = min(small.dataset[0]["image"].size)
    warning = small.upsampling_warning(224, 256)
    assert f"--crop_size {side} --image_size {side}" in warning and "224 px" in warning
    assert small.upsampling_warning(side, side) is None


def test_loading_a_backbone_from_a_classifier_checkpoint_prints_no_load_report(recipe, tmp_path, capfd, caplog):
    """The head of a `*ForImageClassification` checkpoint (the embedded Lite0's, most Hub classifiers') is dropped on
    purpose; transformers' LOAD REPORT of it is noise. Weights the backbone lacks are still reported."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)  # fmt: skip
    ViTForImageClassification(config).save_pretrained(tmp_path / "classifier")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "classifier")
    capfd.readouterr()
    with caplog.at_level("INFO", logger="recipes"):
        model, _ = recipe.load_backbone(recipe.ModelArguments(model_name_or_path=str(tmp_path / "classifier")))
    assert type(model).__name__ == "ViTModel"
    printed = capfd.readouterr()
    assert "LOAD REPORT" not in printed.err + printed.out
    assert "pooler" in caplog.text  # the one part the checkpoint lacks: said once, by the recipe


def test_each_recorded_run_keeps_its_probe_warning_though_an_earlier_run_in_the_process_gave_it():
    """The probe warns once, not once per probe run; a second run in the same process (a notebook, the tests) must
    still get the warning into its own card."""
    import torch

    from hf_sfm.evaluation.probe import ProbeConfig, fit_probe_on_features
    from hf_sfm.publishing.run_record import WarningRecorder

    features, labels = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    recorded = []
    for _ in range(2):
        with WarningRecorder() as recorder:
            fit_probe_on_features(features, labels, 2, ProbeConfig(epochs=2))
            fit_probe_on_features(features, labels, 2, ProbeConfig(epochs=2))
        recorded.append([message for message in recorder.messages if "can barely move its head" in message])
    assert [len(messages) for messages in recorded] == [1, 1]
