"""The output directory: what hf_sfm may write there, checked before any work, and one run at a time.

Ownership is per entry (`io_utils`: every output is recorded in its folder's `.hf_sfm_owned.json`): re-running a
job into its own folder reuses and replaces its outputs, while anything else found there is refused unless
`overwrite_output_dir=True`. A lock file keeps a second run (another process) out while one is working there:
two runs sharing a folder would remove each other's staged checkpoints and mix their outputs.

`overwrite_output_dir` governs the output directory only: a path the user hands to `save_distilled(path)` or
`save_grid(path)` outside it is replaced (when hf_sfm cannot prove it wrote it) only with that call's own
`overwrite=True` (`scoped_overwrite`).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from ..utils.io_utils import foreign_entries, record_owned

GRID_FILE = "synthetic_grid.png"
STATE_FILE = "trainer_state.json"
LOCK_FILE = ".hf_sfm.lock"
ALL_RESULTS_FILE = "all_results.json"

logger = logging.getLogger(__name__)


class OutputDirectoryError(ValueError):
    """An `output_dir` that cannot be used (a file, under a file, read-only) or holds what hf_sfm did not write."""


class OutputDirectoryBusy(RuntimeError):
    """Another hf_sfm run (another process) is writing into the same `output_dir`."""


def check_output_dir(output_dir: str | Path, overwrite_output_dir: bool, resuming: bool) -> None:
    """Refuse, before any work, an `output_dir` that cannot be written, or that holds content hf_sfm did not write
    (unless `overwrite_output_dir`, or resuming a run there)."""
    output_dir = Path(output_dir)
    existing = next((p for p in [output_dir, *output_dir.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == output_dir else f"lies under the file {existing}"
        raise OutputDirectoryError(f"output_dir={str(output_dir)!r} {where}; choose a folder for output_dir.")
    if existing is not None and not _writable(existing):
        raise OutputDirectoryError(
            f"output_dir={str(output_dir)!r} cannot be written ({existing} is read-only for this user); choose "
            "a writable output_dir."
        )
    if overwrite_output_dir or resuming:
        return
    foreign = foreign_entries(output_dir)
    if foreign:
        raise OutputDirectoryError(
            f"output_dir={str(output_dir)!r} already holds content hf_sfm did not write: {foreign[:5]}"
            + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            + ". Choose a new or empty output_dir, or set `overwrite_output_dir=True` to write there anyway "
            "(hf_sfm's outputs then replace same-named entries)."
        )


def scoped_overwrite(
    path: str | Path, output_dir: str | Path, overwrite_output_dir: bool, overwrite: bool = False
) -> tuple[bool, str]:
    """`(overwrite, flag)` for writing `path`: inside `output_dir` `overwrite_output_dir` (or `overwrite`) allows
    replacing what hf_sfm did not write; outside it only `overwrite` does, and the refusal names that flag."""
    inside = _is_within(Path(path), Path(output_dir))
    if inside:
        return overwrite_output_dir or overwrite, "overwrite_output_dir=True"
    return overwrite, f"overwrite=True (overwrite_output_dir covers only output_dir={str(output_dir)!r})"


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = path.absolute().resolve(), folder.absolute().resolve()
    return path == folder or folder in path.parents


def previous_run_results(output_dir: str | Path) -> list[Path]:
    """The files a finished run leaves beside its checkpoints that describe that run only: `*_results.json`
    (including `all_results.json`) and `trainer_state.json`. A fresh run must not merge into them."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.name.endswith("_results.json") or p.name == STATE_FILE)


def warn_if_beside_training_images(output_dir: str | Path, image_files: Iterable[str | Path]) -> bool:
    """Warn when `output_dir` holds the training images themselves (a loader reading that folder again would pick
    up hf_sfm's outputs, and `overwrite_output_dir` would reach the data); returns whether it warned."""
    output_dir = Path(output_dir)
    inside = [str(file) for file in image_files if _is_within(Path(file), output_dir)]
    if inside:
        logger.warning(
            f"output_dir={str(output_dir)!r} holds the training images themselves (e.g. {inside[0]}): outputs would be "
            "written among the data (and read back as data by a loader of that folder). Choose an output_dir "
            "outside the dataset's folder."
        )
    return bool(inside)


def _writable(folder: Path) -> bool:
    """Whether files can be created in `folder` (tried, not guessed from mode bits: root, ACLs, read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


class OutputLock:
    """An inter-process lock on `output_dir`, taken before a run writes there and held until the process ends or
    `release()`. Several `Distiller`s of one process share it (re-entrant); another process is refused at once."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE
        self._lock: FileLock | None = None

    def acquire(self) -> None:
        if self._lock is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path), timeout=0, is_singleton=True, thread_local=False)
        try:
            lock.acquire()
        except Timeout as error:
            raise OutputDirectoryBusy(
                f"Another hf_sfm run is writing into {self.path.parent} (it holds {self.path}); two runs in one "
                "output_dir would mix and delete each other's files. Wait for it to finish, or choose another "
                "output_dir."
            ) from error
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None


@contextlib.contextmanager
def statistics_lock(path: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold an inter-process lock on the statistics file `path` (`.<name>.lock` beside it) while a run reads,
    computes and writes it: `statistics_path` may be shared by runs of other output_dirs, whose output locks do not
    see each other, and two of them with other backbones would otherwise replace each other's file. A second run
    is refused at once, naming the path. `enabled=False` (the other processes of one run) holds nothing."""
    if not enabled:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.name}.lock")
    lock = FileLock(str(lock_path), timeout=0, is_singleton=False, thread_local=False)
    try:
        lock.acquire()
    except Timeout as error:
        raise OutputDirectoryBusy(
            f"Another hf_sfm run is computing or writing the statistics {path} (it holds {lock_path}): two runs "
            "writing one statistics_path would replace each other's statistics. Wait for it to finish (this run "
            "then reuses its file if it matches), or give this run its own statistics_path."
        ) from error
    try:
        record_owned(lock_path)  # ours, so it never counts as foreign content of the folder it lies in
        yield
    finally:
        lock.release()
