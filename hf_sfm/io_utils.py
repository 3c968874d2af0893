"""Atomic file and folder writes: a kill mid-save leaves the previous output intact, never half of a new one."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one `os.replace`.

    Works for files and folders. The temporary lives in the same directory, so the rename never crosses a
    filesystem. On error the temporary is removed and `path` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staged = temporary / target.name
    try:
        yield staged
        if target.is_dir() and not target.is_symlink():
            # A folder cannot be replaced by rename while it exists: move it aside first, then drop it.
            retired = temporary / (target.name + ".old")
            os.replace(target, retired)
        os.replace(staged, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def foreign_entries(folder: str | os.PathLike, own_patterns: tuple[str, ...]) -> list[str]:
    """Names in `folder` that match none of the `fnmatch` patterns of what we write ourselves, sorted.

    The temporaries `atomic_path` leaves when killed (`.<name>.*.tmp`) always count as ours.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = (*own_patterns, ".*.tmp")
    return sorted(
        entry.name + ("/" if entry.is_dir() else "")
        for entry in folder.iterdir()
        if not any(fnmatch.fnmatch(entry.name, pattern) for pattern in patterns)
    )
