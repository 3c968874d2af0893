"""Never lose what the user has: hf_sfm replaces only what it wrote, refuses a busy or unusable output_dir, and
names the path and the flag that would allow it."""

import functools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import build_backbone, color_dataset, make_distiller, tiny_image_processor

from hf_sfm import DistillationConfig
from hf_sfm.training.outputs import OutputDirectoryError, check_output_dir
from hf_sfm.utils.io_utils import NotOwnedError, atomic_path, is_owned

REPO = Path(__file__).resolve().parents[1]


# Each test's Distiller: these settings unless the test says otherwise, on the tiny ViT and 6 colour images.
_distiller = functools.partial(
    make_distiller, dataset=lambda: color_dataset(3, 2), num_steps=2, image_size=32, save_grid=False, logging_steps=0
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    distiller = _distiller(tmp_path_factory.mktemp("run") / "out")
    distiller.train()
    return distiller


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("years of work")
    return path


def test_a_save_never_replaces_a_folder_it_did_not_write(trained, tmp_path):
    mine = _user_folder(tmp_path / "distilled")
    with pytest.raises(NotOwnedError, match=rf"{mine} already exists and is not an output hf_sfm wrote.*overwrite"):
        trained.save_distilled(mine)
    assert (mine / "notes.txt").read_text() == "years of work"
    ours = trained.save_distilled(tmp_path / "ours")
    assert is_owned(ours)
    trained.save_distilled(ours)  # its own output: replaced without asking
    (ours / "my_addition.txt").write_text("added by hand")
    with pytest.raises(NotOwnedError, match="changed since"):
        trained.save_distilled(ours)  # no longer as hf_sfm left it
    assert (ours / "my_addition.txt").exists()


def test_a_grid_path_that_is_a_folder_is_refused_not_deleted(trained, tmp_path):
    folder = _user_folder(tmp_path / "grids")
    with pytest.raises(NotOwnedError, match="folder"):
        trained.save_grid(folder)
    assert (folder / "notes.txt").exists()


def test_statistics_path_that_is_a_folder_is_refused_at_construction(tmp_path):
    folder = _user_folder(tmp_path / "stats")
    with pytest.raises(ValueError, match=r"statistics_path=.* is a folder"):
        _distiller(tmp_path / "out", statistics_path=str(folder), recompute_statistics=True)
    assert (folder / "notes.txt").exists()


def test_a_users_folder_in_output_dir_is_refused_without_overwrite_output_dir(tmp_path):
    output_dir = tmp_path / "out"
    _user_folder(output_dir / "distilled")
    with pytest.raises(OutputDirectoryError, match=r"\['distilled/'\].*overwrite_output_dir=True"):
        _distiller(output_dir)


def test_push_local_dir_holding_a_users_folder_is_refused_before_any_upload(trained, tmp_path):
    mine = _user_folder(tmp_path / "hub" / "set")
    with pytest.raises(NotOwnedError, match=str(mine)):
        trained.push_to_hub(dataset_repo_id="org/set", local_dir=tmp_path / "hub")
    assert (mine / "notes.txt").exists()


def test_an_unusable_output_dir_is_refused_at_construction(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputDirectoryError, match="is a file"):
        _distiller(tmp_path / "a_file")
    with pytest.raises(OutputDirectoryError, match="lies under the file"):
        _distiller(tmp_path / "a_file" / "out")


def test_a_read_only_output_dir_is_refused_at_construction(tmp_path):
    """Writability is tried, not read from mode bits (root ignores them): /proc refuses new files even to root, and
    so does a folder made immutable with chattr where the filesystem supports it."""
    with pytest.raises(OutputDirectoryError, match="read-only"):
        check_output_dir("/proc/hf_sfm_output", False, False)
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    if subprocess.run(["chattr", "+i", str(frozen)], capture_output=True).returncode == 0:
        try:
            with pytest.raises(OutputDirectoryError, match="read-only"):
                _distiller(frozen / "out")
        finally:
            subprocess.run(["chattr", "-i", str(frozen)], check=True)
    check_output_dir(tmp_path / "fine", False, False)  # a writable one passes


def test_atomic_path_replaces_its_own_file_and_refuses_a_foreign_one(tmp_path):
    with atomic_path(tmp_path / "a.json") as staged:
        staged.write_text("1")
    with atomic_path(tmp_path / "a.json") as staged:
        staged.write_text("2")
    assert (tmp_path / "a.json").read_text() == "2"
    (tmp_path / "b.json").write_text("user")
    with pytest.raises(NotOwnedError, match=r"b\.json.*overwrite=True"), atomic_path(tmp_path / "b.json") as staged:
        staged.write_text("3")
    with atomic_path(tmp_path / "b.json", overwrite=True) as staged:
        staged.write_text("3")
    assert (tmp_path / "b.json").read_text() == "3"


_LOCK_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    import conftest  # noqa: F401  (offline, temporary HF_HOME)
    from conftest import build_backbone, color_dataset, make_distiller, tiny_image_processor
    from transformers import ViTImageProcessor
    from hf_sfm import DistillationConfig, Distiller, TrainerCallback

    output_dir, steps, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[4])
    start, resume = Path(sys.argv[5]), Path(sys.argv[6])


    def wait_for(signal):  # the test's go-ahead: a file it creates; a worker left waiting fails, never hangs
        deadline = time.monotonic() + 240
        while not signal.exists():
            assert time.monotonic() < deadline, f"no {signal.name} within 240 s"
            time.sleep(0.02)


    class HoldAfterFirstStep(TrainerCallback):  # the run (and its lock) lives on until the second was refused
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                wait_for(resume)

    wait_for(start)  # started beside the other worker: its imports overlap the other's
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    args = DistillationConfig(output_dir=output_dir, num_steps=steps, save_steps=2, image_size=32, save_grid=False,
                              logging_steps=0, seed=seed)
    distiller = Distiller(build_backbone("vit"), args, color_dataset(3, 2), image_processor=processor,
                          callbacks=[HoldAfterFirstStep])
    distiller.train()
    distiller.save_distilled()
    print("FINISHED", flush=True)
    """
)


@pytest.mark.slow
def test_a_second_process_on_the_same_output_dir_is_refused_and_the_first_finishes(tmp_path):
    """The first run holds after its first step (statistics written, lock held) until the second was refused."""
    from hf_sfm.training.checkpointing import list_checkpoints, read_run_state, validate_checkpoint

    output_dir = tmp_path / "shared"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-c", _LOCK_WORKER, str(output_dir)]
    tests = str(Path(__file__).parent)
    go, refused = tmp_path / "second_may_start", tmp_path / "second_was_refused"
    pipes = {"env": env, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    first = subprocess.Popen([*command, "30", tests, "0", str(tests), str(refused)], **pipes)  # starts at once
    second = subprocess.Popen([*command, "4", tests, "1", str(go), str(go)], **pipes)
    try:
        deadline = time.monotonic() + 240
        while not (output_dir / ".hf_sfm.lock").exists() or not list(output_dir.glob("statistics.safetensors")):
            assert first.poll() is None, first.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        go.touch()  # the first run is writing into output_dir now
        second_stdout, second_stderr = (stream.decode() for stream in second.communicate(timeout=300))
        assert first.poll() is None, "the first run ended before the second was refused"
    finally:
        go.touch(), refused.touch()  # neither worker is left waiting
    assert second.returncode != 0 and "FINISHED" not in second_stdout
    assert "OutputDirectoryBusy" in second_stderr and "Another hf_sfm run is writing into" in second_stderr
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0 and b"FINISHED" in stdout, stderr.decode()[-3000:]
    checkpoints = list_checkpoints(output_dir)
    assert [path.name for path in checkpoints] == [f"checkpoint-{step}" for step in range(2, 31, 2)]
    for checkpoint in checkpoints:
        validate_checkpoint(checkpoint)
        assert read_run_state(checkpoint)["config"]["seed"] == 0  # nothing of the refused run (seed 1) got in
    assert (output_dir / "distilled" / "synthetic.safetensors").exists()


def test_the_lock_is_shared_inside_one_process_and_released(tmp_path):
    first, second = _distiller(tmp_path / "out"), _distiller(tmp_path / "out")
    first.compute_statistics()
    second.compute_statistics()  # one process: both Distillers may write there
    assert first.output_lock.held and second.output_lock.held
    first.output_lock.release()
    second.output_lock.release()
    import filelock

    probe = filelock.FileLock(str(tmp_path / "out" / ".hf_sfm.lock"), timeout=0)
    probe.acquire()  # free again
    probe.release()


# ---------------------------------------------------------------------------------------------- silent failures


@pytest.mark.parametrize(
    "ipc, rate", [(1, "(learning_rate=1000000.0)"), (2, "(learning_rate=1000000.0, 5e+05 at ipc 2)")]
)
def test_a_learning_rate_that_saturates_the_images_is_reported(tmp_path, caplog, ipc, rate):
    """The rate Adam used is named once, and the scaled one beside it only when scaling changed it."""
    distiller = _distiller(tmp_path / "out", learning_rate=1e6, num_steps=3, parameterization="pixels", ipc=ipc)
    with caplog.at_level("WARNING", logger="hf_sfm.distiller"):
        distiller.train()
    assert "of the synthetic pixels are saturated" in caplog.text and rate in caplog.text


def test_a_backbone_whose_features_ignore_the_image_is_refused_before_training(tmp_path):
    def zero_features(model, pixel_values):
        return model(pixel_values=pixel_values).last_hidden_state[:, 0] * 0

    distiller = make_distiller(
        tmp_path / "out", color_dataset(3, 2), num_steps=2, image_size=32, save_grid=False, feature_fn=zero_features
    )
    with pytest.raises(ValueError, match="the real statistical flow is zero"):
        distiller.train()


def test_a_loss_stuck_at_exactly_one_is_reported(tmp_path, caplog):
    def dead_in_training(model, pixel_values):  # real features for the statistics, none in the steps
        features = model(pixel_values=pixel_values).last_hidden_state[:, 0]
        return features * 0 if torch.is_grad_enabled() else features

    distiller = make_distiller(
        tmp_path / "out", color_dataset(3, 2), num_steps=3, image_size=32, save_grid=False, feature_fn=dead_in_training
    )
    with caplog.at_level("WARNING", logger="hf_sfm.distiller"):
        distiller.train()
    assert "exactly 1.0 for all 3 steps" in caplog.text


def test_the_backbone_stays_in_eval_mode_whatever_the_caller_did(tmp_path):
    from transformers import ViTConfig, ViTModel

    model = ViTModel(
        ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5),
        add_pooling_layer=False,
    )  # fmt: skip
    distiller = make_distiller(
        tmp_path / "out", color_dataset(3, 2), model=model, num_steps=1, image_size=32, save_grid=False
    )
    model.train()  # dropout would make every feature pass random
    images = torch.rand(4, 3, 32, 32)
    first, second = distiller.feature_extractor(images), distiller.feature_extractor(images)
    assert torch.equal(first, second) and not model.training
    model.train()
    statistics = distiller.compute_statistics()
    model.train()
    distiller.args.recompute_statistics = True
    assert torch.equal(distiller.compute_statistics().feature_sums, statistics.feature_sums)


def test_two_distillers_of_one_process_keep_their_own_precision(tmp_path):
    first = _distiller(tmp_path / "a", mixed_precision="no")
    second = _distiller(tmp_path / "b", mixed_precision="bf16")  # Accelerate alone would say "restart your runtime"
    with second.precision.autocast():
        assert second.feature_extractor(torch.rand(2, 3, 32, 32)).dtype == torch.float32  # features are cast back
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with first.precision.autocast():
        assert not torch.is_autocast_enabled("cpu")
    second.train()
    first.train()


# ---------------------------------------------------------------------------------------------- stale inputs


def _saved_backbone(folder: Path, seed: int) -> Path:
    build_backbone("vit", seed=seed).save_pretrained(folder)
    tiny_image_processor().save_pretrained(folder)
    return folder


def _from_folder(folder: Path, output_dir: Path, **overrides):
    from transformers import AutoModel

    return _distiller(output_dir, model=AutoModel.from_pretrained(folder), **overrides)


def test_statistics_of_other_weights_behind_the_same_name_are_not_reused(tmp_path):
    folder, output_dir = tmp_path / "backbone", tmp_path / "out"
    first = _from_folder(_saved_backbone(folder, seed=0), output_dir).compute_statistics()
    _saved_backbone(folder, seed=1)  # new weights saved over the same folder: same name, same config
    with pytest.raises(ValueError, match=r"backbone_weights: saved .* vs current .*recompute_statistics=True"):
        _from_folder(folder, output_dir).compute_statistics()
    recomputed = _from_folder(folder, output_dir, recompute_statistics=True).compute_statistics()
    assert not torch.equal(recomputed.feature_sums, first.feature_sums)


def test_recompute_statistics_recomputes_even_with_a_datasets_cache(tmp_path, caplog):
    import datasets

    color_dataset(3, 2).save_to_disk(str(tmp_path / "data"))
    on_disk = datasets.load_from_disk(str(tmp_path / "data"))  # file-backed: `datasets` caches the pass
    distiller = _distiller(tmp_path / "out", dataset=on_disk, statistics_batch_size=2)
    distiller.compute_statistics()
    (tmp_path / "out" / "statistics.safetensors").unlink()
    with caplog.at_level("INFO", logger="hf_sfm.data.statistics"):
        distiller.compute_statistics()
    assert "reused the `datasets` cache" in caplog.text  # said so
    caplog.clear()
    distiller.args.recompute_statistics = True
    with caplog.at_level("INFO", logger="hf_sfm.data.statistics"):
        distiller.compute_statistics()
    assert "reused the `datasets` cache" not in caplog.text  # computed again, not served from the cache


def test_statistics_of_another_label_column_are_not_reused(tmp_path):
    import datasets

    dataset = color_dataset(3, 2)
    dataset = dataset.add_column("other", [2 - label for label in dataset["label"]]).cast_column(
        "other", datasets.ClassLabel(names=["x", "y", "z"])
    )
    first = make_distiller(tmp_path / "out", dataset, image_size=32, label_column="label")
    first.compute_statistics()
    second = make_distiller(tmp_path / "out", dataset, image_size=32, label_column="other")
    with pytest.raises(ValueError, match="label_column: saved 'label' vs current 'other'"):
        second.compute_statistics()


def test_statistics_passed_in_are_checked_at_construction(tmp_path):
    from hf_sfm import ClassStatistics

    good = _distiller(tmp_path / "a").compute_statistics()

    def build(statistics):
        return make_distiller(tmp_path / "b", color_dataset(3, 2), image_size=32, statistics=statistics)

    renamed = ClassStatistics(good.feature_sums, good.counts, ["a", "b", "c"], dict(good.metadata))
    with pytest.raises(ValueError, match=r"describe 3 classes \['a', 'b', 'c'\].*first differences"):
        build(renamed)
    fewer = ClassStatistics(good.feature_sums[:2], good.counts[:2], good.class_names[:2], dict(good.metadata))
    with pytest.raises(ValueError, match="describe 2 classes"):
        build(fewer)
    narrow = ClassStatistics(good.feature_sums[:, :8], good.counts, good.class_names, dict(good.metadata))
    with pytest.raises(ValueError, match="8-dim features but the backbone gives 32"):
        build(narrow)
    build(good)  # the right ones pass


def test_resuming_with_another_backbones_weights_is_refused(tmp_path):
    folder, output_dir = tmp_path / "backbone", tmp_path / "out"
    _from_folder(_saved_backbone(folder, seed=0), output_dir, save_steps=2).train()
    _saved_backbone(folder, seed=1)
    other = _from_folder(folder, output_dir, resume_from_checkpoint="latest", recompute_statistics=True)
    with pytest.raises(ValueError, match=r"incompatible run.*backbone"):
        other.train()


@pytest.mark.parametrize("content", [b"", b"\x00\x01", None], ids=["empty", "garbage", "truncated"])
def test_an_unreadable_statistics_file_names_itself_and_the_fix(tmp_path, content):
    from hf_sfm.data.statistics import StatisticsFileError

    distiller = _distiller(tmp_path / "out")
    path = tmp_path / "out" / "statistics.safetensors"
    distiller.compute_statistics()
    path.write_bytes(path.read_bytes()[:60] if content is None else content)
    fresh = _distiller(tmp_path / "out", overwrite_output_dir=True)
    with pytest.raises(StatisticsFileError, match=rf"{path} is not a readable hf_sfm statistics file.*recompute"):
        fresh.compute_statistics()


def test_sparse_integer_labels_are_refused_with_a_short_message(tmp_path):
    import datasets

    images = color_dataset(2, 3)["image"]
    for top in (10**6, 10**8):
        dataset = datasets.Dataset.from_dict({"image": images, "label": [0, top] * 3}).cast_column(
            "image", datasets.Image()
        )
        with pytest.raises(ValueError, match=rf"{top + 1:,} classes, but the dataset has 6 images") as caught:
            _distiller(tmp_path / f"out{top}", dataset=dataset)
        assert len(str(caught.value)) < 600  # not one entry per missing class


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("learning_rate", float("nan"), "learning_rate must be a finite number"),
        ("learning_rate", float("inf"), "learning_rate must be a finite number"),
        ("learning_rate", 0.0, "learning_rate must be > 0"),
        ("learning_rate", -1e-3, "learning_rate must be > 0"),
        ("init_noise_std", float("nan"), "init_noise_std must be a finite number"),
        ("noise_std", -0.1, "noise_std must be >= 0"),
        ("ipc", 1.5, "ipc must be an integer"),
        ("ipc", "2", "ipc must be an integer"),
        ("ipc", True, "ipc must be an integer"),
        ("num_steps", 0, "num_steps must be >= 1"),
        ("method_kwargs", '{"rounds": ', "method_kwargs=.* is not JSON"),
        ("eval_baselines", ["randm_real"], "unknown baselines"),
        ("scale_learning_rate", "false", "scale_learning_rate must be True or False"),
        ("augment_noise", 1, "augment_noise must be True or False"),
    ],
)
def test_config_values_that_can_never_work_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        DistillationConfig(**{field: value})
