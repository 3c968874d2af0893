"""Trust, round 2 (issue 26): hostile inputs and faults that used to run code, give silently wrong results, lose
user data or fail late. Each test is the repro of one row, written to fail on the code before the fix."""

import functools
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import build_backbone, color_dataset, make_distiller, tiny_image_processor
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification

import hf_sfm.training.statistics_cache as statistics_cache
from hf_sfm import DistillationConfig, Distiller, SFMInheritedConfig
from hf_sfm.backbone.features import FeatureExtractor
from hf_sfm.data.preprocessing import ImagePreprocessing
from hf_sfm.data.statistics import ClassStatistics, StatisticsFileError
from hf_sfm.inheritance import build_inherited_classifier
from hf_sfm.training.checkpointing import (
    CorruptCheckpointError,
    list_checkpoints,
    prune_checkpoints,
    resolve_checkpoint,
)
from hf_sfm.training.outputs import OutputDirectoryBusy, OutputDirectoryError, check_output_dir
from hf_sfm.utils.io_utils import NotOwnedError, file_sha256, is_owned, make_owned_dirs, record_owned

SIZE = 32


# Two steps on 3 classes x 2 images: each test here is about what a run refuses or keeps, not what it learns.
_distiller = functools.partial(
    make_distiller,
    dataset=lambda: color_dataset(3, 2),
    num_steps=2,
    image_size=SIZE,
    save_grid=False,
    logging_steps=0,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    distiller = _distiller(tmp_path_factory.mktemp("run") / "out", overwrite_output_dir=True)
    distiller.train()
    return distiller


@pytest.fixture
def no_hang():
    """A read that blocks (a FIFO) fails the test instead of hanging the suite."""

    def timeout(*args):
        raise TimeoutError("blocked: a special file was opened")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("years of work")
    return path


# ---------------------------------------------------------------------------------------------- 1: code from a config


def _light_classifier(folder: Path, backbone_folder: Path) -> Path:
    """A projector+head classifier whose config references `backbone_folder` (saved like `save_pretrained` does)."""
    preprocessing = ImagePreprocessing(SIZE, SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    extractor = FeatureExtractor(build_backbone("vit"), preprocessing)
    dim = extractor(torch.zeros(1, 3, SIZE, SIZE)).shape[1]
    classifier = build_inherited_classifier(
        extractor, preprocessing, torch.nn.Linear(dim, 4), torch.nn.Linear(4, 3), ["red", "green", "blue"]
    )
    classifier.backbone.save_pretrained(backbone_folder)
    classifier.config.backbone_name_or_path = str(backbone_folder)
    classifier.save_pretrained(folder, embed_backbone=False)
    return folder


def _with_remote_code(backbone_folder: Path, marker: Path) -> None:
    """Make `backbone_folder` a repo with its own Python, which leaves `marker` behind when it is ever imported."""
    (backbone_folder / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import ViTModel\n\nclass EvilModel(ViTModel):\n    pass\n"
    )
    config = json.loads((backbone_folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (backbone_folder / "config.json").write_text(json.dumps(config))


def _edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_classifier_config_cannot_turn_on_remote_code_for_its_backbone(tmp_path):
    marker = tmp_path / "code_ran"
    light = _light_classifier(tmp_path / "light", tmp_path / "backbone")
    _with_remote_code(tmp_path / "backbone", marker)
    for kwargs in ({"trust_remote_code": True}, {"code_revision": "main"}, {"add_pooling_layer": "yes"}):
        _edit_config(light, backbone_class=None, backbone_init_kwargs=kwargs)
        with pytest.raises(ValueError, match=r"backbone_init_kwargs .* are not allowed"):
            AutoModelForImageClassification.from_pretrained(light)
        assert not marker.exists()
    # Safe kwargs: the referenced backbone's own code still does not run unless the caller asks for it.
    _edit_config(light, backbone_init_kwargs={"add_pooling_layer": False})
    AutoModelForImageClassification.from_pretrained(light)  # transformers' own ViTModel
    assert not marker.exists()
    AutoModelForImageClassification.from_pretrained(light, trust_remote_code=True)  # the caller's choice, honoured
    assert marker.exists()


def test_a_classifier_config_may_name_only_a_transformers_vision_model_class(tmp_path):
    for name in ("TrainingArguments", "BertModel", "AutoModel", "pipeline"):
        with pytest.raises(ValueError, match="not a transformers vision model class"):
            SFMInheritedConfig(backbone_class=name)
    light = _light_classifier(tmp_path / "light", tmp_path / "backbone")
    _edit_config(light, backbone_class="TrainingArguments")
    with pytest.raises(ValueError, match=r"'TrainingArguments' is not a transformers vision model class"):
        AutoModelForImageClassification.from_pretrained(light)
    _edit_config(light, backbone_class="ViTModel")  # a vision model class is fine
    AutoModelForImageClassification.from_pretrained(light)


# ---------------------------------------------------------------------------------------------- 2-3: statistics


def test_two_streamed_datasets_with_the_same_classes_never_share_statistics(tmp_path, monkeypatch):
    first, second = color_dataset(3, 2, seed=0), color_dataset(3, 2, seed=1)
    output_dir = tmp_path / "out"
    computed = _distiller(output_dir, dataset=first.to_iterable_dataset(), init="noise").compute_statistics()
    other = _distiller(output_dir, dataset=second.to_iterable_dataset(), init="noise")
    with pytest.raises(ValueError, match=r"other conditions \(data_digest"):
        other.compute_statistics()  # was: the first folder's class means, silently
    shared = tmp_path / "shared.safetensors"  # the same through a statistics_path
    _distiller(
        tmp_path / "a", dataset=first.to_iterable_dataset(), init="noise", statistics_path=str(shared)
    ).compute_statistics()
    with pytest.raises(ValueError, match="data_digest"):
        _distiller(
            tmp_path / "b", dataset=second.to_iterable_dataset(), init="noise", statistics_path=str(shared)
        ).compute_statistics()
    # The same stream again reuses its statistics (the digest matches), without a statistics pass.
    monkeypatch.setattr(statistics_cache, "compute_class_statistics", lambda *a, **k: pytest.fail("recomputed"))
    again = _distiller(output_dir, dataset=first.to_iterable_dataset(), init="noise").compute_statistics()
    assert torch.equal(again.feature_sums, computed.feature_sums)
    assert again.metadata["data_digest"] == computed.metadata["data_digest"]


@pytest.mark.parametrize(
    "sums, counts, message",
    [
        (torch.tensor([[float("nan"), 1.0], [1.0, 1.0]], dtype=torch.float64), torch.tensor([1, 1]), "NaN"),
        (torch.tensor([[float("inf"), 1.0], [1.0, 1.0]], dtype=torch.float64), torch.tensor([1, 1]), "NaN/Inf"),
        (torch.ones(2, 2, dtype=torch.float64), torch.tensor([-3, 1]), "non-negative integers"),
        (torch.ones(2, 2, dtype=torch.float64), torch.tensor([1.5, 1.0]), "non-negative integers"),
        (torch.ones(2, 2, dtype=torch.float64), torch.tensor([1, 1, 1]), "disagree"),
        (torch.ones(2, dtype=torch.float64), torch.tensor([1, 1]), "shape"),
    ],
)
def test_a_statistics_file_with_impossible_values_is_refused_on_load(tmp_path, sums, counts, message):
    path = tmp_path / "statistics.safetensors"
    save_file({"feature_sums": sums, "counts": counts}, str(path), metadata={"class_names": json.dumps(["a", "b"])})
    with pytest.raises(StatisticsFileError, match=message):
        ClassStatistics.load(path)


# ---------------------------------------------------------------------------------------------- 4: checkpoints


def _rehash(checkpoint: Path) -> None:
    """Rewrite the manifest for the folder's current listed files: a tamperer who updates the checksums too."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"] = {name: file_sha256(checkpoint / name) for name in manifest["files"]}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def _shard(checkpoint: Path) -> Path:
    return checkpoint / "synthetic-00000-of-00001.safetensors"


def test_a_checkpoint_reads_only_the_shards_its_manifest_lists(tmp_path):
    _distiller(tmp_path / "clean", num_steps=4, save_steps=2, init="noise").train()
    shutil.copytree(tmp_path / "clean", tmp_path / "tampered")
    checkpoint = tmp_path / "tampered" / "checkpoint-2"
    with safe_open(str(_shard(checkpoint)), framework="pt") as handle:
        metadata = handle.metadata()
    # An unlisted file that sorts first: it holds the optimiser's step counter, which used to be read from it.
    save_file(
        {"optimizer.0.step": torch.tensor([1000.0])},
        str(checkpoint / "synthetic-00000-of-00000.safetensors"),
        metadata={**metadata, "start": "0", "stop": "0"},
    )
    resolve_checkpoint(str(checkpoint), checkpoint.parent)  # still valid: the manifest's files are unchanged
    resumed = _distiller(tmp_path / "tampered", num_steps=4, save_steps=2, init="noise")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    reference = _distiller(tmp_path / "clean", num_steps=4, save_steps=2, init="noise")
    reference.train(resume_from_checkpoint=str(tmp_path / "clean" / "checkpoint-2"))
    assert torch.equal(resumed.synthetic_images(), reference.synthetic_images())


def test_a_manifest_that_lists_no_files_does_not_validate(tmp_path):
    _distiller(tmp_path, num_steps=2, save_steps=2, init="noise").train()
    checkpoint = tmp_path / "checkpoint-2"
    (checkpoint / "manifest.json").write_text(json.dumps({"files": {}}))
    _shard(checkpoint).write_bytes(_shard(checkpoint).read_bytes()[:-8] + b"tampered")
    with pytest.raises(CorruptCheckpointError, match="does not list"):
        resolve_checkpoint(str(checkpoint), tmp_path)


@pytest.fixture
def checkpoint_run(tmp_path):
    _distiller(tmp_path, num_steps=2, save_steps=2, init="noise").train()
    return tmp_path / "checkpoint-2"


def _resume(checkpoint: Path):
    return _distiller(checkpoint.parent, num_steps=4, init="noise").train(resume_from_checkpoint=str(checkpoint))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda state: state.update(step=-1), "step -1 is not a step number"),
        (lambda state: state.update(step="2"), "is not a step number"),
        (lambda state: state.update(fingerprint=[]), "no fingerprint"),
        (lambda state: state.pop("fingerprint"), "no fingerprint"),
        (lambda state: state.update(losses="abc"), "loss curve"),
        (lambda state: state.update(losses=[0.5]), "1 values for 2 steps"),
        (lambda state: state.update(log_history={}), "log history"),
    ],
)
def test_a_malformed_run_state_is_a_corrupt_checkpoint(checkpoint_run, edit, message):
    path = checkpoint_run / "distillation_state.json"
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))
    _rehash(checkpoint_run)
    with pytest.raises(CorruptCheckpointError, match=message):
        _resume(checkpoint_run)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_image_parameters_in_a_checkpoint_are_refused(checkpoint_run, value):
    shard = _shard(checkpoint_run)
    with safe_open(str(shard), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(shard))
    tensors["level.0"][0, 0, 0, 0] = value
    save_file(tensors, str(shard), metadata=metadata)
    _rehash(checkpoint_run)
    with pytest.raises(CorruptCheckpointError, match=r"NaN/Inf in \['level.0'\]"):
        _resume(checkpoint_run)


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"start": "0", "stop": "x"}, "malformed shard metadata"),
        ({"num_active_levels": "0"}, "impossible shard range"),
        ({"start": "5", "stop": "2"}, "impossible shard range"),
    ],
)
def test_malformed_shard_metadata_is_a_corrupt_checkpoint(checkpoint_run, metadata, message):
    shard = _shard(checkpoint_run)
    with safe_open(str(shard), framework="pt") as handle:
        saved = handle.metadata()
    save_file(load_file(str(shard)), str(shard), metadata={**saved, **metadata})
    _rehash(checkpoint_run)
    with pytest.raises(CorruptCheckpointError, match=message):
        _resume(checkpoint_run)


def test_a_loop_state_with_a_negative_step_is_a_corrupt_checkpoint(checkpoint_run):
    loop = checkpoint_run / "loop.safetensors"
    tensors = load_file(str(loop))
    tensors["step"] = torch.tensor([-1])
    save_file(tensors, str(loop))
    _rehash(checkpoint_run)
    with pytest.raises(CorruptCheckpointError, match="no valid step"):
        _resume(checkpoint_run)


# ------------------------------------------------------------------------------------------- 5-6: what may be replaced


def test_overwrite_output_dir_does_not_reach_paths_outside_the_output_dir(trained, tmp_path):
    assert trained.args.overwrite_output_dir
    mine = _user_folder(tmp_path / "elsewhere" / "distilled")
    with pytest.raises(NotOwnedError, match=rf"{mine}.*overwrite=True \(overwrite_output_dir covers only output_dir"):
        trained.save_distilled(mine)
    assert (mine / "notes.txt").read_text() == "years of work"
    picture = tmp_path / "elsewhere" / "holiday.png"
    picture.write_bytes(b"my photo")
    with pytest.raises(NotOwnedError, match=rf"{picture}.*overwrite=True"):
        trained.save_grid(picture)
    assert picture.read_bytes() == b"my photo"
    # The explicit, per-call flag replaces them; inside output_dir, overwrite_output_dir still does.
    trained.save_distilled(mine, overwrite=True)
    assert not (mine / "notes.txt").exists() and (mine / "README.md").exists()
    trained.save_grid(picture, overwrite=True)
    assert picture.read_bytes() != b"my photo"
    inside = _user_folder(trained.output_dir / "mine")
    trained.save_distilled(inside)
    assert not (inside / "notes.txt").exists()


def test_a_same_size_edit_of_a_saved_folder_is_not_replaced(trained, tmp_path):
    ours = trained.save_distilled(tmp_path / "ours")
    readme = ours / "README.md"
    text = readme.read_text()
    edited = text.replace("e", "E", 1)
    assert len(edited.encode()) == len(text.encode()) and edited != text
    readme.write_text(edited)
    assert not is_owned(ours)
    with pytest.raises(NotOwnedError, match="changed since"):
        trained.save_distilled(ours)
    assert readme.read_text() == edited


# ------------------------------------------------------------------------------------------- 7-9: runs and checkpoints


def _fake_checkpoint(folder: Path, run_id: str | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "distillation_state.json").write_text(json.dumps({"run_id": run_id, "step": 1}))
    record_owned(folder)
    return folder


def test_pruning_removes_only_the_current_runs_checkpoints(tmp_path):
    other = _fake_checkpoint(tmp_path / "checkpoint-4", "other-run")
    mine = [_fake_checkpoint(tmp_path / f"checkpoint-{step}", "this-run") for step in (1, 2, 3)]
    removed = prune_checkpoints(tmp_path, keep=1, run_id="this-run")
    assert removed == mine[:2]
    assert other.exists() and mine[2].exists()


def test_a_fresh_run_replaces_the_previous_runs_checkpoints_and_results_and_says_so(tmp_path, caplog):
    old = _distiller(tmp_path, num_steps=4, save_steps=2, init="noise")
    old.train()
    old.save_metrics("eval", {"eval_accuracy": 0.99})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    new = _distiller(tmp_path, num_steps=2, save_steps=2, save_total_limit=1, init="noise")
    with caplog.at_level(logging.WARNING, logger="hf_sfm.training.checkpointing"):
        new.train()
    assert "previous run's" in caplog.text and "checkpoint-4" in caplog.text and "all_results.json" in caplog.text
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]  # its own, not pruned for the old 4
    state = json.loads((tmp_path / "checkpoint-2" / "distillation_state.json").read_text())
    assert state["num_steps"] == 2
    assert resolve_checkpoint("latest", tmp_path) == tmp_path / "checkpoint-2"
    new.save_metrics("train", {"train_loss": 1.0})
    assert "eval_accuracy" not in json.loads((tmp_path / "all_results.json").read_text())


def test_resuming_past_a_truncated_checkpoint_saves_over_it(tmp_path, caplog):
    _distiller(tmp_path, num_steps=4, save_steps=2, init="noise").train()
    _shard(tmp_path / "checkpoint-4").write_bytes(_shard(tmp_path / "checkpoint-4").read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="hf_sfm.training.checkpointing"):
        output = _distiller(tmp_path, num_steps=4, save_steps=2, init="noise", resume_from_checkpoint="latest").train()
    assert output.global_step == 4
    resolve_checkpoint(str(tmp_path / "checkpoint-4"), tmp_path)  # the new one, intact
    assert (tmp_path / "checkpoint-4.damaged").is_dir()  # the damaged copy is set aside, not deleted
    assert "moved it to" in caplog.text
    check_output_dir(tmp_path, False, False)  # and it counts as hf_sfm's own


# ---------------------------------------------------------------------------------------------- 10-11: odd entries


def test_a_symlinked_checkpoint_neither_crashes_pruning_nor_is_deleted(tmp_path):
    output_dir = tmp_path / "out"
    for step in (1, 2, 3):
        _fake_checkpoint(output_dir / f"checkpoint-{step}", None)
    # The user moves hf_sfm's oldest checkpoint to another disk and links it back; its record entry stays.
    elsewhere = tmp_path / "other_disk" / "checkpoint-1"
    elsewhere.parent.mkdir()
    shutil.move(output_dir / "checkpoint-1", elsewhere)
    (output_dir / "checkpoint-1").symlink_to(elsewhere, target_is_directory=True)
    removed = prune_checkpoints(output_dir, keep=1)  # was: IsADirectoryError
    assert [p.name for p in removed] == ["checkpoint-2"]
    assert (output_dir / "checkpoint-1").is_symlink() and (elsewhere / "distillation_state.json").exists()


def test_a_users_hidden_tmp_folder_is_neither_deleted_nor_taken_for_a_leftover(tmp_path):
    output_dir = tmp_path / "out"
    mine = _user_folder(output_dir / ".checkpoint-notes.tmp")
    with pytest.raises(OutputDirectoryError, match=r"\.checkpoint-notes\.tmp"):
        _distiller(output_dir, num_steps=2, save_steps=1)
    _distiller(output_dir, num_steps=2, save_steps=1, overwrite_output_dir=True, init="noise").train()
    assert (mine / "notes.txt").read_text() == "years of work"


def test_a_copied_ownership_record_does_not_adopt_another_folder(tmp_path):
    ours = tmp_path / "run"
    make_owned_dirs(ours / "grids", root=ours)
    assert is_owned(ours / "grids")
    other = tmp_path / "copy"
    _user_folder(other / "grids")
    shutil.copy(ours / ".hf_sfm_owned.json", other / ".hf_sfm_owned.json")
    assert not is_owned(other / "grids")
    with pytest.raises(OutputDirectoryError, match=r"\['grids/'\]"):
        check_output_dir(other, False, False)


def test_a_fifo_is_never_opened(tmp_path, no_hang):
    fifo = tmp_path / "statistics.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"statistics_path=.* not a regular file"):
        DistillationConfig(output_dir=str(tmp_path / "out"), statistics_path=str(fifo))
    with pytest.raises(StatisticsFileError, match="not a regular file"):
        ClassStatistics.load(fifo)
    assert not is_owned(fifo)
    with pytest.raises(NotOwnedError):
        ClassStatistics(torch.ones(2, 2, dtype=torch.float64), torch.ones(2, dtype=torch.long), ["a", "b"]).save(fifo)


# ---------------------------------------------------------------------------------------------- 12-13: messages


def test_resume_latest_without_a_checkpoint_is_refused_before_the_statistics_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(statistics_cache, "compute_class_statistics", lambda *a, **k: pytest.fail("statistics ran"))
    with pytest.raises(FileNotFoundError, match="holds no complete 'checkpoint-<step>' folder"):
        _distiller(tmp_path, resume_from_checkpoint="latest")


def test_a_statistics_path_in_use_by_another_run_is_refused(tmp_path):
    shared = tmp_path / "shared" / "stats.safetensors"
    shared.parent.mkdir()
    held = FileLock(str(shared.with_name(".stats.safetensors.lock")), is_singleton=False, thread_local=False)
    held.acquire()  # another run computing into it
    try:
        with pytest.raises(OutputDirectoryBusy, match=rf"{shared}.*its own statistics_path"):
            _distiller(tmp_path / "out", statistics_path=str(shared)).compute_statistics()
    finally:
        held.release()
    assert not shared.exists()
    _distiller(tmp_path / "out", statistics_path=str(shared)).compute_statistics()
    check_output_dir(shared.parent, False, False)  # the lock file beside it is recorded as hf_sfm's


@pytest.mark.parametrize("value", [2024, 3.5, None, ""])
def test_an_output_dir_that_is_not_text_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match=r"DistillationConfig\.output_dir=.* not a path"):
        DistillationConfig(output_dir=value)


def test_a_damaged_all_results_file_is_named_not_a_raw_json_error(trained):
    trained.save_metrics("eval", {"eval_accuracy": 0.5})
    combined = trained.output_dir / "all_results.json"
    combined.write_text(combined.read_text()[:10])
    trained.args.overwrite_output_dir = False
    try:
        with pytest.raises(ValueError, match=r"all_results\.json is damaged .*overwrite_output_dir=True"):
            trained.save_metrics("eval", {"eval_accuracy": 0.6})
    finally:
        trained.args.overwrite_output_dir = True
    trained.save_metrics("eval", {"eval_accuracy": 0.6})
    assert json.loads(combined.read_text()) == {"eval_accuracy": 0.6}


def test_an_output_dir_holding_the_training_images_is_warned_about(tmp_path, caplog):
    data = tmp_path / "data"
    for name, channel in (("red", 0), ("green", 1)):
        (data / name).mkdir(parents=True)
        for i in range(2):
            array = np.full((SIZE, SIZE, 3), 20, dtype=np.uint8)
            array[..., channel] = 200 + i
            PIL.Image.fromarray(array).save(data / name / f"{i}.png")
    dataset = datasets.load_dataset("imagefolder", data_dir=str(data), split="train")
    with caplog.at_level(logging.WARNING, logger="hf_sfm.training.outputs"):
        _distiller(data, dataset=dataset, overwrite_output_dir=True)
    assert "holds the training images themselves" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_sfm.training.outputs"):
        _distiller(tmp_path / "out", dataset=dataset)
    assert "training images" not in caplog.text


def test_non_finite_features_blame_what_made_them(tmp_path):
    def divide_by_zero(model, pixels):
        features = model(pixel_values=pixels).last_hidden_state[:, 0]
        return features / (features - features).norm(dim=1, keepdim=True)

    with pytest.raises(FloatingPointError, match="weights are finite but feature_fn") as error:
        Distiller(
            build_backbone("vit"),
            DistillationConfig(output_dir=str(tmp_path / "a"), image_size=SIZE),
            color_dataset(3, 2),
            image_processor=tiny_image_processor(SIZE),
            feature_fn=divide_by_zero,
        )
    assert "broken" not in str(error.value)
    model = build_backbone("vit")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="weights hold NaN/Inf"):
        _distiller(tmp_path / "b", model=model)


def test_a_class_whose_images_are_all_undecodable_names_the_images_as_the_fix(tmp_path):
    good = color_dataset(3, 2)
    images = [good[i]["image"] for i in range(len(good))]
    labels = list(good["label"])
    images = [{"bytes": b"not an image", "path": None} if label == 1 else image for image, label in zip(images, labels)]
    features = datasets.Features({"image": datasets.Image(), "label": good.features["label"]})
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    distiller = _distiller(tmp_path, dataset=dataset, init="noise", skip_corrupt_images=True)
    with pytest.raises(ValueError, match=r"could not be decoded.*Repair or replace those image files") as error:
        distiller.compute_statistics()
    assert "Remove them from the label set" not in str(error.value)
