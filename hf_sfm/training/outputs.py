"""The output directory: what hf_sfm may write there, checked before any work, and one run at a time.

Ownership is per entry (`io_utils`: every output is recorded in its folder's `.hf_sfm_owned.json`): re-running a
job into its own folder reuses and replaces its outputs, while anything else found there is refused unless
`overwrite_output_dir=True`. A lock file keeps a second run (another process) out while one is working there:
two runs sharing a folder would remove each other's staged checkpoints and mix their outputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from ..utils.io_utils import foreign_entries

STATISTICS_FILE = "statistics.safetensors"
GRID_FILE = "synthetic_grid.png"
STATE_FILE = "trainer_state.json"
LOCK_FILE = ".hf_sfm.lock"


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
