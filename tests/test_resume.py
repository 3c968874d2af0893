"""Checkpoints and resuming: a run killed with SIGKILL and resumed ends on the same images, bit for bit.

The kill test runs real processes (`tests/_resume_worker.py`); the others run in this process on a tiny ViT.
"""

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import color_dataset, make_distiller
from safetensors.torch import load_file

from hf_sfm.training import checkpointing as checkpointing_module
from hf_sfm.training.checkpointing import RUN_STATE_FILE, list_checkpoints, resolve_checkpoint

WORKER = Path(__file__).parent / "_resume_worker.py"
REPO = Path(__file__).resolve().parents[1]


def _worker(output_dir: Path, *arguments: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(output_dir), *arguments],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 120) -> None:
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]


def _reference_run(output_dir: Path) -> dict[str, torch.Tensor]:
    """The worker's run, uninterrupted, in this process (one thread, as in the worker: identical arithmetic)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        distiller = make_distiller(
            output_dir,
            color_dataset(num_classes=3, per_class=6),
            feature_fn=_cls_token,
            num_steps=8,
            ipc=2,
            pyramid_level_every=3,
            learning_rate=0.05,
            save_grid=False,
        )
        distiller.train()
        return {"images": distiller.synthetic_images(), "losses": torch.tensor(distiller.losses, dtype=torch.float64)}
    finally:
        torch.set_num_threads(threads)


def _cls_token(model, pixel_values):
    return model(pixel_values=pixel_values).last_hidden_state[:, 0]


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_is_bit_exact(tmp_path):
    killed_dir = tmp_path / "killed"
    victim = _worker(killed_dir, "--save_steps", "2", "--seconds_per_step", "0.3")
    killed = tmp_path / "killed.marker"  # the resuming process starts now and waits, imports done, for the kill
    resuming = _worker(killed_dir, "--save_steps", "2", "--resume", "latest", "--start_after", str(killed))
    try:
        uninterrupted = _reference_run(tmp_path / "reference")  # while the workers start up
        deadline = time.monotonic() + 120
        while not (killed_dir / "checkpoint-4" / RUN_STATE_FILE).exists():
            assert victim.poll() is None, f"the run ended before it could be killed: {victim.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint-4 within 120 s"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        assert not (killed_dir / "result.safetensors").exists(), "the run finished before the kill"
        steps_saved = [int(path.name.split("-")[1]) for path in list_checkpoints(killed_dir)]
        assert steps_saved[:2] == [2, 4] and max(steps_saved) < 8
    except BaseException:
        resuming.kill()
        raise
    killed.touch()
    _finish(resuming)
    resumed = load_file(str(killed_dir / "result.safetensors"))
    assert torch.equal(resumed["images"], uninterrupted["images"])
    assert torch.equal(
        resumed["losses"], uninterrupted["losses"]
    )  # the curve before the kill comes from the checkpoint


# ---------------------------------------------------------------------------------------------- in-process


# Each in-process test's Distiller: these settings unless the test says otherwise, on the tiny ViT.
_distiller = functools.partial(
    make_distiller,
    dataset=lambda: color_dataset(3, 4),
    num_steps=4,
    ipc=2,
    pyramid_level_every=2,
    learning_rate=0.05,
    save_grid=False,
)


def test_resume_in_process_matches_uninterrupted_and_writes_the_documented_layout(tmp_path):
    reference = _distiller(tmp_path / "a", num_steps=5)
    reference.train()
    first = _distiller(tmp_path / "b", num_steps=3, save_steps=3)
    first.train()
    checkpoint = tmp_path / "b" / "checkpoint-3"
    names = sorted(path.name for path in checkpoint.iterdir())
    assert names == [
        RUN_STATE_FILE,
        "loop.safetensors",
        "manifest.json",
        "rng-00000.safetensors",
        "synthetic-00000-of-00001.safetensors",
    ]
    state = json.loads((checkpoint / RUN_STATE_FILE).read_text())
    assert state["step"] == 3 and len(state["losses"]) == 3 and state["fingerprint"]["ipc"] == 2
    resumed = _distiller(tmp_path / "b", num_steps=5, resume_from_checkpoint=str(checkpoint))
    output = resumed.train()
    assert torch.equal(resumed.synthetic_images(), reference.synthetic_images())
    assert resumed.losses == reference.losses and output.global_step == 5


def test_resume_refuses_an_incompatible_run_with_a_clear_error(tmp_path):
    _distiller(tmp_path, num_steps=2, save_steps=2).train()
    with pytest.raises(ValueError, match=r"incompatible run \(ipc: checkpoint 2 vs this run 3\)"):
        _distiller(tmp_path, ipc=3, resume_from_checkpoint="latest").train()
    with pytest.raises(ValueError, match="parameterization"):
        _distiller(tmp_path, parameterization="pyramid", resume_from_checkpoint="latest").train()


def test_resume_with_a_changed_learning_rate_continues_with_a_warning(tmp_path, caplog):
    _distiller(tmp_path, num_steps=2, save_steps=2).train()
    with caplog.at_level("WARNING", logger="hf_sfm.training.checkpointing"):
        resumed = _distiller(tmp_path, learning_rate=0.01, resume_from_checkpoint="latest")
        resumed.train()
    assert len(resumed.losses) == 4
    assert "learning_rate: 0.05 -> 0.01" in caplog.text


def test_resolve_checkpoint_errors_name_the_fix(tmp_path):
    assert resolve_checkpoint(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="save_steps > 0"):
        resolve_checkpoint("latest", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "nowhere"), tmp_path)


def test_a_crafted_pickle_in_a_checkpoint_is_never_executed(tmp_path):
    """Resuming reads safetensors and JSON only: a pickle dropped into (or replacing a file of) a checkpoint is not
    unpickled; where it replaces a real file, the manifest's checksum refuses the checkpoint."""
    import pickle

    _distiller(tmp_path, num_steps=2, save_steps=2).train()
    checkpoint = tmp_path / "checkpoint-2"
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps(Exploit())
    for name in ("random_states_0.pkl", "custom_checkpoint_0.pkl", "pytorch_model.bin", "optimizer.bin"):
        (checkpoint / name).write_bytes(payload)  # the names accelerate's own checkpoints would load
    resumed = _distiller(tmp_path, num_steps=3, resume_from_checkpoint="latest")
    resumed.train()
    assert not marker.exists() and resumed.state.global_step == 3
    (checkpoint / "rng-00000.safetensors").write_bytes(payload)
    with pytest.raises(checkpointing_module.CorruptCheckpointError, match=r"rng-00000.safetensors does not match"):
        _distiller(tmp_path, num_steps=3, resume_from_checkpoint=str(checkpoint)).train()
    assert not marker.exists()


def test_latest_skips_a_truncated_checkpoint_and_says_so(tmp_path, caplog):
    _distiller(tmp_path, num_steps=4, save_steps=2).train()
    shard = tmp_path / "checkpoint-4" / "synthetic-00000-of-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])  # a copy cut short
    with caplog.at_level("WARNING", logger="hf_sfm.training.checkpointing"):
        assert resolve_checkpoint("latest", tmp_path) == tmp_path / "checkpoint-2"
    assert "Skipping" in caplog.text and "checkpoint-4" in caplog.text and "checksum" in caplog.text
    with pytest.raises(ValueError, match=r"checkpoint-4.*synthetic-00000-of-00001\.safetensors does not match"):
        resolve_checkpoint(str(tmp_path / "checkpoint-4"), tmp_path)
    (tmp_path / "checkpoint-2" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 found, none intact"):
        resolve_checkpoint("latest", tmp_path)


def test_a_save_that_crashes_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    _distiller(tmp_path, num_steps=2, save_steps=2).train()
    good = tmp_path / "checkpoint-2"
    before = {path.name: path.read_bytes() for path in good.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpointing_module, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        _distiller(tmp_path, num_steps=4, save_steps=2, resume_from_checkpoint="latest").train()
    assert [path.name for path in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert not (tmp_path / "checkpoint-4").exists()
    assert {path.name: path.read_bytes() for path in good.iterdir()} == before
    assert not list(tmp_path.glob(".checkpoint-*"))  # the staged folder was removed


def test_save_total_limit_keeps_the_newest_checkpoints(tmp_path):
    _distiller(tmp_path, num_steps=5, save_steps=1, save_total_limit=2).train()
    assert [path.name for path in list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-5"]
