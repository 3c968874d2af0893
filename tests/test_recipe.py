"""`recipes/distill.py`: the script users launch, end to end on a tiny local model and dataset, and its configs."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from conftest import build_backbone, color_dataset, load_recipe, make_distiller, run_recipe_main, tiny_image_processor
from safetensors.torch import load_file
from transformers import ConvNextImageProcessor

from hf_sfm import DistillationConfig
from hf_sfm.utils.io_utils import NotOwnedError

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "distill.py"
CONFIGS = sorted((REPO / "recipes" / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def recipe():
    return load_recipe()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny random ViT saved with `save_pretrained`, and a train/test dataset saved with `save_to_disk`."""
    root = tmp_path_factory.mktemp("assets")
    build_backbone("vit").save_pretrained(root / "vit")
    tiny_image_processor().save_pretrained(root / "vit")
    splits = {"train": color_dataset(3, 6), "test": color_dataset(3, 4, seed=1)}
    datasets.DatasetDict(splits).save_to_disk(str(root / "data"))
    return root


def recipe_command(assets: Path, dataset: Path, output_dir: Path) -> list[str]:
    """One launch exercising every stage: statistics, distillation with checkpoints and grids, evaluation with a
    baseline, the inherited classifier for another backbone (a ResNet), and the saved outputs."""
    return [
        sys.executable, str(RECIPE),
        "--model_name_or_path", str(assets / "vit"), "--dataset_name", str(dataset), "--eval_split_size", "0.4",
        "--output_dir", str(output_dir), "--num_steps", "2", "--ipc", "2", "--save_steps", "1", "--grid_steps", "1",
        "--probe_epochs", "2", "--eval_runs", "2", "--eval_baselines", "random_real",
        "--inherited_classifier", "true",
        "--inherit_eval_model", str(assets / "resnet"), "--inherit_projector_epochs", "3", "--inherit_head_epochs", "5",
    ]  # fmt: skip


def launch(command: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def recipe_run(assets, image_folders, tmp_path_factory):
    """The recipe launched once, as users launch it, on a local image folder; the tests below read its outputs."""
    build_backbone("resnet").save_pretrained(assets / "resnet")
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(assets / "resnet")
    output_dir = tmp_path_factory.mktemp("recipe_run") / "run"
    command = recipe_command(assets, image_folders["flat"], output_dir)
    result = launch(command)
    assert result.returncode == 0, result.stderr[-4000:]
    return {"command": command, "output_dir": output_dir}


def test_the_recipe_runs_statistics_distillation_evaluation_and_save(recipe_run, image_folders):
    output_dir = recipe_run["output_dir"]
    assert (output_dir / "statistics.safetensors").exists()
    assert [p.name for p in sorted(output_dir.glob("checkpoint-*"))] == ["checkpoint-1", "checkpoint-2"]
    grids = sorted(p.name for p in (output_dir / "grids").iterdir() if not p.name.startswith("."))
    assert grids == ["step-0000001.png", "step-0000002.png"]
    train_results = json.loads((output_dir / "train_results.json").read_text())
    assert train_results["num_processes"] == 1 and train_results["train_runtime"] > 0
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"][-1]["eval_runs"] == 2
    evaluation = json.loads((output_dir / "eval_results.json").read_text())
    assert evaluation["eval_runs"] == 2 and 0 <= evaluation["eval_accuracy"] <= 1
    assert 0 <= evaluation["eval_random_real_accuracy"] <= 1 and evaluation["eval_num_test_images"] == 6
    all_results = json.loads((output_dir / "all_results.json").read_text())
    assert all_results["eval_accuracy"] == evaluation["eval_accuracy"] and "train_runtime" in all_results
    card = (output_dir / "distilled" / "README.md").read_text()
    assert "Random real images" in card  # the card reads the metrics the recipe saved
    assert "huggingface.co/datasets/" not in card and "`flat (a local dataset)`" in card
    assert str(image_folders["flat"]) not in card  # a published card names no local path
    assert "source_datasets" not in card.split("---")[1]  # a local folder is no Hub dataset
    distilled = datasets.load_from_disk(str(output_dir / "distilled"))["train"]
    assert distilled.num_rows == 6 and distilled.features["label"].names == ["class_0", "class_1", "class_2"]
    assert load_file(str(output_dir / "distilled" / "synthetic.safetensors"))["images"].shape == (6, 3, 37, 37)


def test_the_recipe_saves_and_scores_an_inherited_classifier_for_another_backbone(recipe, recipe_run, assets):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import hf_sfm  # noqa: F401  (registers the Auto classes)
    from hf_sfm.evaluation.probe import classifier_accuracy

    output_dir = recipe_run["output_dir"]
    evaluation = json.loads((output_dir / "eval_results.json").read_text())
    assert 0 <= evaluation["eval_inherited_accuracy"] <= 1
    assert evaluation["eval_inherited_backbone"] == str(assets / "resnet")
    model = AutoModelForImageClassification.from_pretrained(output_dir / "classifier")
    assert type(model.backbone).__name__ == "ResNetModel"
    assert model.config.id2label == {0: "class_0", 1: "class_1", 2: "class_2"}
    card = (output_dir / "classifier" / "README.md").read_text()
    assert "model-index" in card  # the measured accuracy went into the card's metadata
    _, data_args, _, config = recipe.parse_args(recipe_run["command"][2:])
    test = recipe.load_data(data_args, config.seed)[1]  # the eval split the run carved out of the folder
    processor = AutoImageProcessor.from_pretrained(output_dir / "classifier")
    assert classifier_accuracy(model, test, processor) == pytest.approx(evaluation["eval_inherited_accuracy"])


def test_yaml_config_sets_arguments_and_the_command_line_wins(recipe, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model_name_or_path: some/backbone\nipc: 10\nnum_steps: 7\nmixed_precision: bf16\ndo_eval: false\n"
    )
    model_args, data_args, run_args, args = recipe.parse_args(["--config", str(config), "--ipc", "3"])
    assert model_args.model_name_or_path == "some/backbone"
    assert (args.ipc, args.num_steps, args.mixed_precision) == (3, 7, "bf16")
    assert run_args.do_eval is False and data_args.train_split == "train"
    assert isinstance(args, DistillationConfig)


def test_a_yaml_key_that_is_no_argument_is_refused(recipe, tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("ipcs: 10\n")
    with pytest.raises(SystemExit):
        recipe.parse_args(["--config", str(config)])
    assert "unknown arguments ['ipcs']" in capsys.readouterr().err


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_every_shipped_config_is_valid(recipe, config):
    model_args, data_args, _, args = recipe.parse_args(["--config", str(config)])
    assert args.output_dir == f"outputs/{config.stem}"
    if config.stem != "default":
        assert model_args.model_name_or_path and data_args.dataset_name
        assert args.image_size == 256 and args.crop_size == 224 and args.mixed_precision == "bf16"
        assert args.save_steps > 0 and args.report_to == []


def test_the_paper_regime_configs_keep_their_rate_at_every_ipc(recipe):
    checked = []
    for config in CONFIGS:
        args = recipe.parse_args(["--config", str(config)])[-1]
        if args.init == "noise":  # the papers' regime: their learning rate, not the small-data rule lr / ipc
            assert args.effective_learning_rate == args.learning_rate, config.name
            checked.append(args.ipc)
    assert 10 in checked and 1 in checked  # an ipc-10 config is where the rule would change the rate


def test_the_default_config_distils_like_the_demo():
    import yaml

    from hf_sfm.demo import DEMO_DEFAULTS

    config = yaml.safe_load((REPO / "recipes" / "configs" / "default.yaml").read_text())
    differing = {
        key: (value, config.get(key))
        for key, value in DEMO_DEFAULTS.items()
        if key not in ("output_dir", "overwrite_output_dir") and config.get(key) != value
    }
    assert not differing, f"recipes/configs/default.yaml drifted from hf_sfm.demo.DEMO_DEFAULTS: {differing}"


def test_the_shipped_configs_cover_the_issue_matrix():
    names = {path.stem for path in CONFIGS}
    for dataset in ("imagenet1k", "imagenet100"):
        for backbone in ("dinov2_base", "clip_vit_b16", "eva02_base"):
            assert {f"{dataset}_{backbone}_ipc1", f"{dataset}_{backbone}_ipc10"} <= names
    assert "default" in names and any(name.startswith("flowers102") for name in names)


def test_push_to_hub_without_a_repo_fails_before_any_work(recipe):
    with pytest.raises(ValueError, match="hub_dataset_id"):
        recipe.main(["--push_to_hub", "true", "--dataset_name", "/nonexistent"])


def test_local_dataset_folders_and_missing_splits(recipe, assets):
    arguments = recipe.parse_args(["--dataset_name", str(assets / "data")])[1]
    train, evaluation = recipe.load_data(arguments)
    assert train.num_rows == 18 and evaluation.num_rows == 12
    arguments = recipe.parse_args(["--dataset_name", str(assets / "data"), "--streaming", "true"])[1]
    train, _ = recipe.load_data(arguments)
    assert isinstance(train, datasets.IterableDataset) and train.num_shards == 16
    arguments = recipe.parse_args(["--dataset_name", str(assets / "data"), "--train_split", "training"])[1]
    with pytest.raises(ValueError, match="Split 'training' not in the dataset"):
        recipe.load_data(arguments)


class RecordingTracker(GeneralTracker):
    """An Accelerate tracker that keeps what it is given (trackers are optional: none is installed in CI)."""

    name = "recorder"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.config, self.scalars, self.images = None, [], []

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None, **kwargs):
        self.scalars.append((step, values))

    def log_images(self, values, step=None, **kwargs):
        self.images.append((step, values))


def test_trackers_get_the_loss_and_the_image_grid_when_asked(tmp_path):
    tracker = RecordingTracker()
    distiller = make_distiller(
        tmp_path, color_dataset(3, 2), accelerator=Accelerator(log_with=[tracker]),
        num_steps=4, logging_steps=2, grid_steps=2, save_grid=False,
    )  # fmt: skip
    distiller.train()
    assert tracker.config["num_steps"] == 4
    assert [step for step, _ in tracker.scalars] == [2, 4]
    assert set(tracker.scalars[0][1]) == {"loss", "learning_rate", "seconds_per_step", "pyramid_levels"}
    assert [step for step, _ in tracker.images] == [2, 4]
    (grid,) = tracker.images[0][1]["synthetic_grid"]
    assert grid.size[0] > 32 and (tmp_path / "grids" / "step-0000002.png").exists()


def test_no_tracker_is_needed_by_default_and_a_missing_one_is_refused():
    assert DistillationConfig().report_to == [] and DistillationConfig(report_to="none").report_to == []
    with pytest.raises(ValueError, match="'tensorboard', but it is not installed"):
        DistillationConfig(report_to="tensorboard, none")
    with pytest.raises(ValueError, match="not an Accelerate tracker"):
        DistillationConfig(report_to=["no-such-tracker"])


def write_image_folder(root: Path, splits: dict[str, int], num_classes: int = 3) -> Path:
    """`root/<split>/<class>/<i>.png` (or `root/<class>/<i>.png` for the split `""`): small PNGs, one colour a class."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(0)
    for split, per_class in splits.items():
        for label in range(num_classes):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            for index in range(per_class):
                array = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
                array[..., label] += 140
                PIL.Image.fromarray(array).save(folder / f"image_{index}.png")
    return root


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return {
        "split": write_image_folder(root / "split", {"train": 4, "validation": 2}),
        "flat": write_image_folder(root / "flat", {"": 5}),
    }


def test_load_data_accepts_what_load_dataset_accepts(recipe, image_folders, assets):
    split, flat = str(image_folders["split"]), str(image_folders["flat"])
    cases = {
        "a local image folder": ["--dataset_name", split],
        "imagefolder + data_dir": ["--dataset_name", "imagefolder", "--data_dir", split],
        "imagefolder + data_files": [
            "--dataset_name", "imagefolder", "--data_files", f"{split}/train/*/*.png", "--eval_split", "none",
        ],
    }  # fmt: skip
    for name, argv in cases.items():
        train, evaluation = recipe.load_data(recipe.parse_args(argv)[1])
        assert train.num_rows == 12, name
        assert train.features["label"].names == ["class_0", "class_1", "class_2"], name
        assert (evaluation.num_rows if evaluation is not None else None) == (None if "files" in name else 6), name
    # A folder with one split: the eval split is carved out of it when asked, stratified by label.
    arguments = recipe.parse_args(["--dataset_name", flat, "--eval_split_size", "0.4"])[1]
    train, evaluation = recipe.load_data(arguments, seed=0)
    assert (train.num_rows, evaluation.num_rows) == (9, 6)
    assert sorted(evaluation["label"]) == [0, 0, 1, 1, 2, 2]
    assert recipe.load_data(recipe.parse_args(["--dataset_name", flat])[1])[1] is None
    # Streaming a local image folder; the eval split is read into memory.
    train, evaluation = recipe.load_data(recipe.parse_args(["--dataset_name", split, "--streaming", "true"])[1])
    assert isinstance(train, datasets.IterableDataset) and isinstance(evaluation, datasets.Dataset)
    assert len(list(train)) == 12 and evaluation.num_rows == 6
    # A save_to_disk folder, and named splits.
    arguments = recipe.parse_args(["--dataset_name", str(assets / "data"), "--eval_split", "train"])[1]
    assert recipe.load_data(arguments)[1].num_rows == 18
    with pytest.raises(ValueError, match="already exists"):
        recipe.load_data(recipe.parse_args(["--dataset_name", split, "--eval_split", "validation",
                                            "--eval_split_size", "2"])[1])  # fmt: skip


def test_the_recipe_distils_a_local_image_folder_and_reruns_into_its_output_dir(
    recipe, recipe_run, tmp_path, monkeypatch
):
    """Run again into the first run's output dir with an inherited classifier (the second run replaces its own
    outputs), then again after the user edited the classifier, then the distilled set: refused before any
    statistics pass, unless overwrite_output_dir."""
    output_dir = tmp_path / "run"
    # Its own first run: a copy of the module's run would not do, since ownership records are tied to the folders
    # hf_sfm created (a copied record adopts nothing), so the copy would hold foreign content.
    command = [str(output_dir) if part == str(recipe_run["output_dir"]) else part for part in recipe_run["command"]]
    # Every run here in this process (`recipe_run` proved the launch itself): the same `main` the script calls.
    for _ in range(2):  # the second run replaces its own outputs
        run_recipe_main(recipe, command[2:])
    evaluation = json.loads((output_dir / "eval_results.json").read_text())
    assert evaluation["eval_num_test_images"] == 6 and 0 <= evaluation["eval_inherited_accuracy"] <= 1
    for edited in ("classifier", "distilled"):
        (output_dir / edited / "README.md").write_text("my notes")
        with monkeypatch.context() as patch, pytest.raises(NotOwnedError, match=f"{edited}.*overwrite_output_dir=True"):
            patch.setattr(recipe.Distiller, "compute_statistics", lambda self: pytest.fail("refused after work began"))
            run_recipe_main(recipe, command[2:])
        assert (output_dir / edited / "README.md").read_text() == "my notes"
        run_recipe_main(recipe, [*command[2:], "--overwrite_output_dir", "true"])
        assert "my notes" not in (output_dir / edited / "README.md").read_text()


def test_cards_link_only_hub_ids_and_name_local_sources_as_given():
    from hf_sfm.publishing.cards import dataset_card

    for source, named in (("imagefolder", "imagefolder"), ("/data/my_images", "my_images (a local dataset)")):
        card = str(dataset_card(class_names=["a", "b"], num_images=2, source_dataset=source))
        assert f"`{named}`" in card and "huggingface.co/datasets" not in card
        assert "source_datasets" not in card.split("---")[1]
    card = str(dataset_card(class_names=["a", "b"], num_images=2, source_dataset="org/toy"))
    assert "(https://huggingface.co/datasets/org/toy)" in card and "source_datasets:\n- org/toy" in card


def test_the_dataset_card_describes_the_images_the_run_made_and_warns_about_other_backbones():
    """A pixel run from centroids must not be carded as a colour-decorrelated pyramid that "transfers"."""
    from hf_sfm import DistillationConfig
    from hf_sfm.publishing.cards import dataset_card

    def card(**overrides) -> str:
        config = DistillationConfig(output_dir="unused", **overrides)
        return str(dataset_card(class_names=["a", "b"], num_images=2, config=config, backbone="org/net"))

    default = card()
    assert "pixel by pixel, starting from the real image nearest each class mean" in default
    assert "pyramid" not in default.split("## How to load")[0]
    pyramid = card(parameterization="pyramid", init="noise", decorrelate_color=True)
    assert "multi-scale pyramid with colour decorrelation, grown coarse to fine from noise" in pyramid
    for text in (default, pyramid):
        assert "optimised for `org/net` only" in text and 'baselines=["centroids", "near_mean"]' in text


def test_a_probe_too_short_to_move_its_head_is_reported_and_a_fixed_rate_makes_it_meaningful(recipe, caplog):
    """The issue's case: 3 images, 50 epochs at the protocol's 1e-3·3/256 scores chance; 1e-2 fixed does not."""
    import numpy as np
    import torch

    from hf_sfm.backbone.features import FeatureExtractor
    from hf_sfm.data.preprocessing import ImagePreprocessing
    from hf_sfm.evaluation.probe import ProbeConfig, fit_probe_on_features

    extractor = FeatureExtractor(build_backbone("vit"), ImagePreprocessing(32, 32, (0.5,) * 3, (0.5,) * 3))
    dataset = color_dataset(3, 10)
    pixels = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) / 255 for image in dataset["image"]])
    with torch.no_grad():
        features = extractor(pixels)
    train = torch.tensor([0, 10, 20])  # one real image per class
    test = torch.tensor([i for i in range(30) if i not in (0, 10, 20)])
    train_features, labels = features[train], torch.arange(3)
    test_features, test_labels = features[test], torch.tensor(dataset["label"])[test]
    short = ProbeConfig(epochs=50, augment=False)
    assert ProbeConfig().too_short(10) is None  # the papers' protocol (CIFAR-10, ipc 1) is left alone
    assert "probe_learning_rate" in short.too_short(3)
    with caplog.at_level("WARNING", logger="hf_sfm.evaluation.probe"):
        head = fit_probe_on_features(train_features, labels, 3, short)
    assert "can barely move its head" in caplog.text
    arguments = recipe.parse_args(["--probe_epochs", "50", "--probe_learning_rate", "1e-2"])
    fixed = recipe.probe_config(dataclasses.replace(short), arguments[3])
    assert (fixed.learning_rate, fixed.scale_learning_rate, fixed.epochs) == (1e-2, False, 50)
    assert fixed.too_short(3) is None
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_sfm.evaluation.probe"):
        tuned = fit_probe_on_features(train_features, labels, 3, fixed)
    assert "can barely move" not in caplog.text
    with torch.no_grad():
        short_accuracy = (head(test_features).argmax(1) == test_labels).float().mean()
        tuned_accuracy = (tuned(test_features).argmax(1) == test_labels).float().mean()
    assert short_accuracy == pytest.approx(1 / 3) and tuned_accuracy == 1.0  # chance, then the task solved


def test_a_launch_that_runs_fewer_processes_than_asked_is_reported(tmp_path):
    from hf_sfm.utils.distributed import num_processes_warning, requested_num_processes

    command = ["/usr/bin/python", "/usr/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "distill.py"]
    assert requested_num_processes(command) == 2
    assert requested_num_processes(["python", "accelerate", "launch", "--num_processes=4", "x.py"]) == 4
    assert requested_num_processes(["bash", "run.sh", "--num_processes", "2"]) is None  # not a launcher
    assert "--multi_gpu" in num_processes_warning(1, requested=2)
    assert num_processes_warning(2, requested=2) is None
    # The real thing: `accelerate launch --cpu --num_processes 2` runs one process, and it says so.
    script = tmp_path / "check.py"
    # The module is loaded from its file: importing the hf_sfm package would spend seconds on transformers' imports.
    script.write_text(
        "import importlib.util, sys\nfrom accelerate import PartialState\n"
        f"spec = importlib.util.spec_from_file_location('distributed', {str(REPO / 'hf_sfm/utils/distributed.py')!r})\n"
        "distributed = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(distributed)\n"
        "assert 'hf_sfm' not in sys.modules and 'transformers' not in sys.modules\n"
        "state = PartialState(cpu=True)\n"
        "print('PROCESSES', state.num_processes, distributed.num_processes_warning(state.num_processes))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", str(script)]
    result = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "PROCESSES 1 2 processes were requested but this run has 1" in result.stdout
