"""Checkpoints of a distillation run, and resuming from them — without ever unpickling anything.

A checkpoint is one folder `<output_dir>/checkpoint-<step>`, staged under a hidden name and made visible in one
rename (a run killed mid-save leaves the previous checkpoints intact and no half folder):

    rng-<process>.safetensors         every process's RNG states: torch (CPU and each CUDA device) as tensors,
                                      Python's `random` and NumPy's as JSON metadata
    loop.safetensors                  the step and the loop's own `torch.Generator` states (augmentation, method)
    synthetic-<p>-of-<P>.safetensors  every process's rows of the image parameters and of the optimiser moments
    distillation_state.json           step, loss curve, log history, config, and the fingerprint a resume checks
    manifest.json                     the SHA-256 of every file above, written last

Everything is read back with `safetensors` and `json`: a checkpoint holds data, never code. Exactly the files the
manifest lists are read (an unlisted file in the folder is ignored, a listed one that changed is an error), and what
they hold is checked (step within range, finite images and optimiser moments, shard metadata that agree): a
malformed checkpoint is a `CorruptCheckpointError`, never a raw `KeyError` deep in the loop.

Every checkpoint records the id of the run that wrote it (`run_id`, kept across resumes): pruning only ever removes
checkpoints of the current run, a fresh run in an output_dir first removes (and names) the previous run's
checkpoints and results, and a resumed run sets aside a damaged newer checkpoint of its own instead of failing to
save over it.
`resume_from_checkpoint="latest"` takes the newest checkpoint whose manifest validates and warns about newer ones
that do not (a save cut short by a full disk, a truncated copy).

The shards are plain row ranges of `(N, ...)` tensors, so a checkpoint written by `P` processes can be resumed by
any number of processes (each reads only the rows it owns). With the same number of processes the resumed run is
bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..utils.io_utils import (
    atomic_path,
    file_sha256,
    forget_owned,
    is_owned,
    owned_names,
    read_regular_text,
    record_owned,
    remove_staging_leftovers,
)
from .outputs import previous_run_results

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
RUN_STATE_FILE = "distillation_state.json"
MANIFEST_FILE = "manifest.json"
LOOP_FILE = "loop.safetensors"
RNG_PATTERN = "rng-{index:05d}.safetensors"
SHARD_PATTERN = "synthetic-{index:05d}-of-{count:05d}.safetensors"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
_SHARD_RE = re.compile(r"^synthetic-(\d{5})-of-(\d{5})\.safetensors$")
_RNG_RE = re.compile(r"^rng-(\d{5})\.safetensors$")

# Fingerprint entries that must agree for a checkpoint to be resumed at all (its tensors would be meaningless).
REQUIRED_KEYS = (
    "method",
    "ipc",
    "class_names",
    "image_size",
    "parameterization",
    "decorrelate_color",
    "init",  # noise-initialised pyramids decode their active levels only, image-initialised ones every level
    "pyramid_max_resolution",
    "backbone",
    "backbone_weights",  # another backbone's weights behind the same name would continue silently otherwise
    "statistics",
)


class LoopState:
    """The loop's step counter and its own random generators (augmentation, and any the method draws from).

    Their states are what makes a resumed run draw the same augmentations as an uninterrupted one. Saved as plain
    tensors (`tensors` / `load_tensors`), never pickled.
    """

    def __init__(self, generators: dict[str, torch.Generator]):
        self.step = 0
        self.generators = generators
        self.kept: dict[str, torch.Tensor] = {}  # what the loop keeps besides (the best step's parameters)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "step": torch.tensor([self.step]),
            **{f"generator.{n}": g.get_state() for n, g in self.generators.items()},
            **{f"kept.{n}": tensor for n, tensor in self.kept.items()},
        }

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = sorted(name for name in self.generators if f"generator.{name}" not in tensors)
        if missing:
            raise ValueError(
                f"The checkpoint has no state for the generators {missing}; was it made by another method?"
            )
        step = tensors.get("step")
        if step is None or step.dtype.is_floating_point or step.numel() != 1 or int(step.reshape(-1)[0]) < 0:
            raise CorruptCheckpointError(f"The loop state holds no valid step ({step!r}).")
        self.step = int(step.reshape(-1)[0])
        self.kept = {name.removeprefix("kept."): t for name, t in tensors.items() if name.startswith("kept.")}
        for name, generator in self.generators.items():
            generator.set_state(tensors[f"generator.{name}"])


def _rng_tensors() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's global RNG states: torch's as tensors, Python's and NumPy's as JSON strings."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    version, state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    metadata = {
        "python": json.dumps([version, list(state), gauss]),
        "numpy": json.dumps([name, keys.tolist(), int(position), int(has_gauss), float(cached)]),
    }
    return tensors, metadata


def _restore_rng(path: Path) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path))
    torch.set_rng_state(tensors["torch"])
    devices = sorted((key for key in tensors if key.startswith("cuda.")), key=lambda key: int(key.split(".")[1]))
    cuda = [tensors[key] for key in devices]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, state, gauss = json.loads(metadata["python"])
    random.setstate((version, tuple(state), gauss))
    name, keys, position, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def statistics_digest(class_means: torch.Tensor | None) -> str | None:
    """A short hash of the real class means `(C, D)`: the target a run optimises towards."""
    if class_means is None:
        return None
    return hashlib.sha256(class_means.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any], checkpoint: Path) -> None:
    """Refuse a checkpoint whose tensors mean something else; warn when only the trajectory will differ.

    `saved` / `current` are fingerprints: `REQUIRED_KEYS` must be equal; any other difference (learning rate,
    augmentation, number of processes, …) is allowed but means the result will not equal an uninterrupted run.
    """
    mismatched = [key for key in REQUIRED_KEYS if saved.get(key) != current.get(key)]
    if mismatched:
        details = "; ".join(
            f"{key}: checkpoint {saved.get(key)!r} vs this run {current.get(key)!r}" for key in mismatched
        )
        raise ValueError(
            f"Cannot resume from {checkpoint}: it was made by an incompatible run ({details}). Resume with the "
            "checkpoint's settings, or start a fresh run (another output_dir, or resume_from_checkpoint=None)."
        )
    changed = sorted(
        key for key in set(saved) | set(current) if key not in REQUIRED_KEYS and saved.get(key) != current.get(key)
    )
    if changed:
        logger.warning(
            "Resuming from %s with changed settings (%s): the run continues, but will not reproduce an "
            "uninterrupted run.",
            checkpoint,
            ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in changed),
        )


# ---------------------------------------------------------------------------------------------- finding checkpoints


def checkpoint_step(path: str | Path) -> int | None:
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (staged, unfinished folders are hidden and skipped)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        path
        for path in output_dir.iterdir()
        if path.is_dir() and checkpoint_step(path) is not None and (path / RUN_STATE_FILE).is_file()
    ]
    return sorted(found, key=checkpoint_step)


class CorruptCheckpointError(ValueError):
    """A checkpoint folder whose files do not match its manifest (truncated, edited, or missing)."""


def validate_checkpoint(checkpoint: str | Path) -> None:
    """Raise `CorruptCheckpointError` naming the file unless every file of the manifest is there, unchanged."""
    checkpoint = Path(checkpoint)
    manifest_path = checkpoint / MANIFEST_FILE
    fix = "Resume from another checkpoint (an older `checkpoint-<step>`, or 'latest'), or start afresh."
    try:
        files = manifest_files(checkpoint)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CorruptCheckpointError(
            f"{manifest_path} is missing or unreadable ({type(error).__name__}: {error}): {checkpoint} is not a "
            f"complete hf_sfm checkpoint. {fix}"
        ) from error
    for name, expected in files.items():
        path = checkpoint / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise CorruptCheckpointError(f"{path} is missing: {checkpoint} is incomplete. {fix}")
        if file_sha256(path) != expected:
            raise CorruptCheckpointError(f"{path} does not match its checksum (truncated or edited). {fix}")


def manifest_files(checkpoint: str | Path) -> dict[str, str]:
    """The manifest's `{file name: sha256}`, checked to describe a whole checkpoint: the run state, the loop state
    and a complete set of shards `synthetic-<p>-of-<P>` (p = 0..P-1), flat names only. Raises `ValueError`."""
    manifest = json.loads(read_regular_text(Path(checkpoint) / MANIFEST_FILE, "checkpoint manifest"))
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ValueError("the manifest has no {file: sha256} table")
    missing = [name for name in (RUN_STATE_FILE, LOOP_FILE) if name not in files]
    shards = sorted(_SHARD_RE.match(name).groups() for name in files if _SHARD_RE.match(name))
    counts = {int(count) for _, count in shards}
    if len(counts) != 1 or sorted(int(index) for index, _ in shards) != list(range(counts.pop())):
        missing.append("a complete set of synthetic-<p>-of-<P>.safetensors shards")
    if missing:
        raise ValueError(f"the manifest does not list {missing}")
    return files


def listed_shards(checkpoint: str | Path) -> list[Path]:
    """The shard files the manifest lists, in order: the only shards a resume reads."""
    return [Path(checkpoint) / name for name in sorted(manifest_files(checkpoint)) if _SHARD_RE.match(name)]


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str | Path) -> Path | None:
    """`None`/`False` → no resume; `True`/`"latest"` → the newest checkpoint in `output_dir` that validates
    (newer ones that do not are skipped with a warning); else a checkpoint folder, which must validate."""
    if resume_from_checkpoint in (None, False, "", "false", "False", "none", "None"):
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() in ("true", "latest", "last"):
        checkpoints = list_checkpoints(output_dir)
        for checkpoint in reversed(checkpoints):
            try:
                validate_checkpoint(checkpoint)
            except CorruptCheckpointError as error:
                logger.warning("Skipping %s: %s", checkpoint, error)
                continue
            return checkpoint
        raise FileNotFoundError(
            f"resume_from_checkpoint asks for the latest checkpoint, but {output_dir} holds no complete "
            f"'{CHECKPOINT_PREFIX}<step>' folder"
            + (f" ({len(checkpoints)} found, none intact)" if checkpoints else "")
            + ". Set save_steps > 0 in the first run, or drop resume_from_checkpoint."
        )
    path = Path(resume_from_checkpoint)
    if not (path / RUN_STATE_FILE).is_file():
        raise FileNotFoundError(
            f"resume_from_checkpoint={str(path)!r} is not a checkpoint folder (no {RUN_STATE_FILE} in it). "
            f"Point it at an '{CHECKPOINT_PREFIX}<step>' folder, or pass 'latest'."
        )
    validate_checkpoint(path)
    return path


def read_run_state(checkpoint: str | Path) -> dict[str, Any]:
    path = Path(checkpoint) / RUN_STATE_FILE
    try:
        state = json.loads(read_regular_text(path, "run state"))
    except (OSError, ValueError) as error:
        raise CorruptCheckpointError(f"{path} cannot be read ({error}); resume from another checkpoint.") from error
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{path} holds a {type(state).__name__}, not a run state; resume from another.")
    return state


def check_run_state(state: dict[str, Any], checkpoint: str | Path, num_steps: int) -> None:
    """Refuse a run state whose values cannot be a run's: a step outside `[0, num_steps]`, a loss curve shorter than
    the step or not finite, a fingerprint or log history of the wrong type. A step beyond `num_steps` is a
    `ValueError` (raise num_steps), anything malformed a `CorruptCheckpointError`."""
    fix = "Resume from another checkpoint, or start afresh."
    step, losses = state.get("step"), state.get("losses", [])
    problems = []
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        problems.append(f"step {step!r} is not a step number")
    if not isinstance(state.get("fingerprint"), dict):
        problems.append("it has no fingerprint")
    if not isinstance(state.get("log_history", []), list):
        problems.append("its log history is not a list")
    if not isinstance(losses, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in losses
    ):
        problems.append("its loss curve is not a list of finite numbers")
    elif isinstance(step, int) and len(losses) < step:
        problems.append(f"its loss curve has {len(losses)} values for {step} steps")
    if problems:
        raise CorruptCheckpointError(f"{Path(checkpoint) / RUN_STATE_FILE} is malformed: {'; '.join(problems)}. {fix}")
    if step > num_steps:
        raise ValueError(
            f"{checkpoint} is at step {step}, beyond num_steps={num_steps}. Raise num_steps to continue it."
        )


def checkpoint_run_id(checkpoint: str | Path) -> str | None:
    """The id of the run that wrote `checkpoint` (`None` for checkpoints of versions that recorded none)."""
    try:
        state = json.loads(read_regular_text(Path(checkpoint) / RUN_STATE_FILE))
    except (OSError, ValueError):
        return None
    return state.get("run_id") if isinstance(state, dict) else None


def prune_checkpoints(output_dir: str | Path, keep: int | None, run_id: str | None = None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints of the run `run_id` that hf_sfm wrote (another run's checkpoints,
    a symlink, or a checkpoint-like folder it did not write are left alone), and leftovers of saves that were killed
    (staging folders `atomic_path` marked as its own). Main process only, under the output directory's lock."""
    output_dir = Path(output_dir)
    removed = []
    remove_staging_leftovers(output_dir, CHECKPOINT_PREFIX)
    if keep:
        ours = [
            path for path in list_checkpoints(output_dir) if not path.is_symlink() and checkpoint_run_id(path) == run_id
        ]
        for old in ours[:-keep]:
            if is_owned(old):
                shutil.rmtree(old)
                forget_owned(old)
                removed.append(old)
    return removed


def checkpoint_like(output_dir: str | Path) -> list[Path]:
    """Every `checkpoint-<step>` entry of `output_dir` (complete or not, folder, file or link), oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted((p for p in output_dir.iterdir() if checkpoint_step(p) is not None), key=checkpoint_step)


def _remove(path: Path) -> None:
    """Delete an output entry: a link itself (never what it points to), a folder, or a file."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)
    forget_owned(path)


def _resumable(path: Path) -> bool:
    """Whether `latest` could take `path` for a checkpoint (a folder, or a link to one, holding a run state)."""
    return path.is_dir() and (path / RUN_STATE_FILE).is_file()


def replace_previous_run(output_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """Before a fresh (not resumed) run: remove the previous run's checkpoints and results files, naming them.

    Otherwise the new run would overwrite some checkpoints and keep the old run's later ones (which `latest` would
    then resume), and `all_results.json` would pair the old evaluation with the new training. Only what hf_sfm
    wrote and is unchanged is removed, and with `overwrite` (overwrite_output_dir) also any other checkpoint folder
    `latest` could pick up (a link is unlinked, never followed); the statistics, a cache keyed on their inputs, stay.
    """
    output_dir = Path(output_dir)
    checkpoints = [p for p in checkpoint_like(output_dir) if is_owned(p) or (overwrite and _resumable(p))]
    previous = checkpoints + [p for p in previous_run_results(output_dir) if is_owned(p)]
    if previous:
        logger.warning(
            "Starting a new run in %s (not resuming): removing the previous run's %s, so that checkpoints and "
            "results never mix two runs. To continue that run instead, pass resume_from_checkpoint='latest'.",
            output_dir,
            ", ".join(p.name for p in previous),
        )
    for path in previous:
        _remove(path)
    return previous


def set_aside_damaged(output_dir: str | Path, after_step: int) -> list[Path]:
    """A resumed run's damaged own checkpoints newer than `after_step` (a save cut short, a truncated copy: recorded
    as hf_sfm's, no longer matching the manifest) are renamed `<name>.damaged` and warned about, not deleted, so
    the run can write its own `checkpoint-<step>` there again instead of dying at that save."""
    output_dir = Path(output_dir)
    recorded = owned_names(output_dir)
    moved = []
    for path in checkpoint_like(output_dir):
        if checkpoint_step(path) <= after_step or path.is_symlink() or path.name not in recorded or is_owned(path):
            continue
        try:
            validate_checkpoint(path)
            continue
        except CorruptCheckpointError:
            pass
        aside = path.with_name(f"{path.name}.damaged")
        suffix = 1
        while aside.exists() or aside.is_symlink():
            aside, suffix = path.with_name(f"{path.name}.damaged-{suffix}"), suffix + 1
        path.rename(aside)
        forget_owned(path)
        record_owned(aside)
        moved.append(aside)
        logger.warning(
            "%s is damaged (it no longer matches its manifest) and would stop this run at its next save there: "
            "moved it to %s. Delete that folder when you no longer need it.",
            path,
            aside,
        )
    return moved


# ---------------------------------------------------------------------------------------------- saving and loading


@contextlib.contextmanager
def _staged_folder(accelerator: Accelerator, target: Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder all processes write into; renamed to `target` when every process is done."""
    if accelerator.is_main_process:
        with atomic_path(target, overwrite, "overwrite_output_dir=True") as staged:
            staged.mkdir()
            broadcast_object_list([str(staged)], from_process=0)
            yield staged
            accelerator.wait_for_everyone()
    else:
        shared = [None]
        broadcast_object_list(shared, from_process=0)
        yield Path(shared[0])
        accelerator.wait_for_everyone()
    accelerator.wait_for_everyone()  # nobody reads `target` before the main process has renamed it


def _shard_tensors(levels: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Image parameters `level.<i>` `(n, 3, s, s)` and the optimiser state of every active level."""
    tensors = {f"level.{i}": level.detach().cpu().contiguous() for i, level in enumerate(levels)}
    for j, parameter in enumerate(optimizer.param_groups[0]["params"]):
        for key, value in optimizer.state.get(parameter, {}).items():
            if torch.is_tensor(value):
                # Row-sharded like the parameter, or a scalar such as Adam's step (the same on every shard).
                tensors[f"optimizer.{j}.{key}"] = value.detach().cpu().reshape(value.shape or (1,)).contiguous()
    return tensors


def save_checkpoint(
    accelerator: Accelerator,
    target: Path,
    *,
    levels: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loop_state: LoopState,
    shard: tuple[int, int],
    num_images: int,
    num_active_levels: int,
    run_state: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write checkpoint folder `target` (see the module docstring). A collective: every process calls it."""
    with _staged_folder(accelerator, target, overwrite) as staged:
        index, count = accelerator.process_index, accelerator.num_processes
        rng, rng_metadata = _rng_tensors()
        save_file(rng, str(staged / RNG_PATTERN.format(index=index)), metadata=rng_metadata)
        metadata = {
            "start": str(shard[0]),
            "stop": str(shard[1]),
            "num_images": str(num_images),
            "num_active_levels": str(num_active_levels),
        }
        save_file(
            _shard_tensors(levels, optimizer), str(staged / SHARD_PATTERN.format(index=index, count=count)), metadata
        )
        accelerator.wait_for_everyone()  # every process's files are in before the manifest is written
        if accelerator.is_main_process:
            save_file(loop_state.tensors(), str(staged / LOOP_FILE))
            (staged / RUN_STATE_FILE).write_text(json.dumps(run_state, indent=2, sort_keys=True))
            files = {path.name: file_sha256(path) for path in sorted(staged.iterdir()) if path.is_file()}
            (staged / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=2, sort_keys=True))
    return target


def _shard_metadata(file: Path, handle: Any) -> dict[str, int]:
    """A shard's row range and set sizes, as integers, or `CorruptCheckpointError`."""
    raw = handle.metadata() or {}
    try:
        values = {key: int(raw[key]) for key in ("start", "stop", "num_images", "num_active_levels")}
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptCheckpointError(f"{file} has malformed shard metadata {raw!r}; resume from another.") from error
    if not 0 <= values["start"] <= values["stop"] <= values["num_images"] or values["num_active_levels"] < 1:
        raise CorruptCheckpointError(f"{file} has an impossible shard range {values}; resume from another.")
    return values


def _read_rows(checkpoint: Path, start: int, stop: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Rows `[start, stop)` of every row-sharded tensor, assembled from the shard files the manifest lists."""
    pieces: dict[str, list[torch.Tensor]] = {}
    scalars: dict[str, torch.Tensor] = {}
    metadata: dict[str, int] = {}
    for file in listed_shards(checkpoint):
        with safe_open(str(file), framework="pt") as handle:
            shard = _shard_metadata(file, handle)
            if metadata and any(shard[key] != metadata[key] for key in ("num_images", "num_active_levels")):
                raise CorruptCheckpointError(f"The shards of {checkpoint} disagree on the synthetic set's size.")
            metadata = shard
            first, last = shard["start"], shard["stop"]
            low, high = max(start, first), min(stop, last)
            for name in handle.keys():  # noqa: SIM118 — safe_open handles are not iterable
                view = handle.get_slice(name)
                if name.startswith("optimizer.") and view.get_shape() == [1]:
                    scalars.setdefault(name, handle.get_tensor(name))
                elif low < high:
                    pieces.setdefault(name, []).append(view[low - first : high - first])
    rows = {name: torch.cat(parts) for name, parts in pieces.items()}
    covered = rows["level.0"].shape[0] if "level.0" in rows else 0
    if covered != stop - start:
        raise CorruptCheckpointError(
            f"The shards in {checkpoint} cover {covered} of the rows [{start}, {stop}) this process needs."
        )
    tensors = {**rows, **scalars}
    bad = sorted(name for name, tensor in tensors.items() if tensor.is_floating_point() and not tensor.isfinite().all())
    if bad:
        raise CorruptCheckpointError(
            f"{checkpoint} holds NaN/Inf in {bad[:5]}: the images or optimiser moments are damaged. Resume from "
            "another checkpoint."
        )
    return tensors, metadata


def load_checkpoint(
    accelerator: Accelerator,
    checkpoint: Path,
    *,
    synthetic: torch.nn.Module,
    make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    loop_state: LoopState,
    shard: tuple[int, int],
    num_images: int,
) -> torch.optim.Optimizer:
    """Restore this process's RNG states, the loop state, its image rows and the optimiser (safetensors + JSON
    only); returns the optimiser, rebuilt over the active levels as the loop would have it."""
    try:
        listed = manifest_files(checkpoint)
        rng_name = RNG_PATTERN.format(index=accelerator.process_index)
        rng_name = rng_name if rng_name in listed else RNG_PATTERN.format(index=0)
        if rng_name not in listed:
            raise KeyError(f"the manifest lists no {rng_name}")
        _restore_rng(checkpoint / rng_name)
        loop_state.load_tensors(load_file(str(checkpoint / LOOP_FILE)))
        tensors, metadata = _read_rows(checkpoint, *shard)
    except (OSError, SafetensorError, KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
        if isinstance(error, CorruptCheckpointError):
            raise
        raise CorruptCheckpointError(
            f"{checkpoint} cannot be read ({type(error).__name__}: {error}). Resume from another checkpoint."
        ) from error
    if metadata["num_images"] != num_images:
        raise ValueError(f"{checkpoint} holds {metadata['num_images']} synthetic images; this run has {num_images}.")
    if metadata["num_active_levels"] > len(synthetic.levels):
        raise CorruptCheckpointError(
            f"{checkpoint} has {metadata['num_active_levels']} active pyramid levels of {len(synthetic.levels)}."
        )
    with torch.no_grad():
        for i, level in enumerate(synthetic.levels):
            saved = tensors.get(f"level.{i}")
            if saved is None or saved.shape != level.shape:
                raise ValueError(
                    f"Pyramid level {i} in {checkpoint} has shape {None if saved is None else tuple(saved.shape)}, "
                    f"this run expects {tuple(level.shape)}."
                )
            level.copy_(saved)
        synthetic.num_active_levels = metadata["num_active_levels"]
    optimizer = make_optimizer(synthetic.active_parameters())
    state = optimizer.state_dict()
    for j, parameter in enumerate(synthetic.active_parameters()):
        prefix = f"optimizer.{j}."
        entry = {
            name[len(prefix) :]: value.reshape(()) if value.shape == (1,) and parameter.shape != (1,) else value
            for name, value in tensors.items()
            if name.startswith(prefix)
        }
        if entry:
            state["state"][j] = entry
    try:
        optimizer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CorruptCheckpointError(
            f"The optimiser state in {checkpoint} does not fit this run ({type(error).__name__}: {error}). Resume "
            "from another checkpoint."
        ) from error
    return optimizer


# ---------------------------------------------------------------------------------------------- one run's checkpoints


class Checkpointer:
    """The checkpoints of one run in `output_dir`: save, prune and resume, with the loop's state.

    The loop hands it what a checkpoint holds (images, optimiser, generators, run state); it never reaches into
    the loop. `fingerprint` (see `REQUIRED_KEYS`) is what a resume is checked against.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        output_dir: str | Path,
        save_total_limit: int | None = None,
        overwrite: bool = False,
    ):
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.save_total_limit = save_total_limit
        self.overwrite = overwrite
        self.loop_state: LoopState | None = None
        self.run_id: str | None = uuid.uuid4().hex  # a resume adopts the checkpoint's (see `begin`)

    def begin(self, checkpoint: Path | None) -> None:
        """Start this run: a fresh one replaces the previous run's checkpoints and results (`replace_previous_run`);
        a resumed one continues that checkpoint's run and sets aside its damaged newer checkpoints
        (`set_aside_damaged`). A collective: every process calls it; the main process does the file work."""
        if checkpoint is None:
            self.run_id = uuid.uuid4().hex
            if self.accelerator.is_main_process:
                replace_previous_run(self.output_dir, self.overwrite)
        else:
            self.run_id = read_run_state(checkpoint).get("run_id")
            if self.accelerator.is_main_process and checkpoint.parent.resolve() == self.output_dir.resolve():
                set_aside_damaged(self.output_dir, checkpoint_step(checkpoint) or 0)
        self.accelerator.wait_for_everyone()

    def track(self, generators: dict[str, torch.Generator]) -> LoopState:
        """The loop's step counter and `generators` (by name), as a fresh `LoopState` for this run."""
        self.loop_state = LoopState(generators)
        return self.loop_state

    def save(
        self,
        step: int,
        synthetic: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        shard: tuple[int, int],
        run_state: dict[str, Any],
    ) -> Path:
        """Write `checkpoint-<step>` (a collective) and prune old ones beyond `save_total_limit`."""
        target = self.output_dir / f"{CHECKPOINT_PREFIX}{step}"
        run_state = {**run_state, "run_id": self.run_id}
        save_checkpoint(
            self.accelerator,
            target,
            levels=list(synthetic.levels),
            optimizer=optimizer,
            loop_state=self.loop_state,
            shard=shard,
            num_images=run_state["num_images"],
            num_active_levels=int(synthetic.num_active_levels),
            run_state=run_state,
            overwrite=self.overwrite,
        )
        if self.accelerator.is_main_process:
            prune_checkpoints(self.output_dir, self.save_total_limit, self.run_id)
        self.accelerator.wait_for_everyone()
        logger.info("Saved checkpoint %s", target)
        return target

    def resume(
        self,
        checkpoint: Path,
        fingerprint: dict[str, Any],
        num_steps: int,
        *,
        synthetic: torch.nn.Module,
        make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
        shard: tuple[int, int],
        num_images: int,
    ) -> tuple[torch.optim.Optimizer, dict[str, Any]]:
        """Restore images, optimiser, generators and step from `checkpoint`; returns the optimiser and its run
        state (`step`, `losses`, `log_history`, …). Refuses a checkpoint of an incompatible run."""
        saved = read_run_state(checkpoint)
        check_run_state(saved, checkpoint, num_steps)
        check_resume_compatible(saved["fingerprint"], fingerprint, checkpoint)
        self.run_id = saved.get("run_id")
        optimizer = load_checkpoint(
            self.accelerator,
            checkpoint,
            synthetic=synthetic,
            make_optimizer=make_optimizer,
            loop_state=self.loop_state,
            shard=shard,
            num_images=num_images,
        )
        if self.loop_state.step != saved["step"]:
            raise CorruptCheckpointError(
                f"{checkpoint} is inconsistent: step {saved['step']} vs {self.loop_state.step}."
            )
        logger.info("Resumed from %s at step %d", checkpoint, saved["step"])
        return optimizer, saved
