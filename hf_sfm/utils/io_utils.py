"""Atomic writes that replace only what hf_sfm can prove it wrote.

A kill mid-save leaves the previous output intact, never half of a new one (`atomic_path` writes beside the target
and renames). And an existing target is replaced only when hf_sfm wrote it and nobody changed it since: every
write is recorded in its folder's `.hf_sfm_owned.json` with its shape (a file's size and SHA-256; a folder's files
and sizes), and a target that is not recorded, or no longer matches its record, is refused with an error naming the
path and the flag that allows replacing it. A user's own `distilled/` folder is therefore never deleted by a save.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OWNERSHIP_FILE = ".hf_sfm_owned.json"
# A folder hf_sfm created to hold its own outputs (grids/, hub/): its content is governed by its own record.
CONTAINER = {"type": "dir", "container": True}


class NotOwnedError(FileExistsError):
    """The target exists and hf_sfm cannot prove it wrote it: it is left alone."""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (records and checkpoint manifests both pin files by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shape(path: Path) -> dict[str, Any]:
    """What a record remembers of an output: a file's size and digest; a folder's files (relative path → size)."""
    if path.is_dir() and not path.is_symlink():
        tree = {
            entry.relative_to(path).as_posix(): entry.stat().st_size
            for entry in sorted(path.rglob("*"))
            if entry.is_file() and entry.name != OWNERSHIP_FILE
        }
        return {"type": "dir", "tree": tree}
    return {"type": "file", "size": path.stat().st_size, "sha256": file_sha256(path)}


def _read_record(folder: Path) -> dict[str, Any]:
    try:
        record = json.loads((folder / OWNERSHIP_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    temporary = folder / f".{OWNERSHIP_FILE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(temporary, folder / OWNERSHIP_FILE)


def is_owned(path: str | os.PathLike) -> bool:
    """Whether hf_sfm wrote `path` and it is as hf_sfm left it (a container folder only needs to be recorded)."""
    path = Path(path)
    entry = _read_record(path.parent).get(path.name)
    if entry is None or not path.exists():
        return False
    if entry.get("container"):
        return path.is_dir()
    return entry == _shape(path)


def record_owned(path: str | os.PathLike, container: bool = False) -> None:
    """Record `path` as written by hf_sfm in its folder's ownership record."""
    path = Path(path)
    record = _read_record(path.parent)
    record[path.name] = dict(CONTAINER) if container else _shape(path)
    _write_record(path.parent, record)


def forget_owned(path: str | os.PathLike) -> None:
    """Drop `path` from its folder's record (after hf_sfm itself deleted it)."""
    path = Path(path)
    record = _read_record(path.parent)
    if record.pop(path.name, None) is not None:
        _write_record(path.parent, record)


def owned_names(folder: str | os.PathLike) -> set[str]:
    """Names in `folder` that its record lists as hf_sfm's."""
    return set(_read_record(Path(folder)))


def make_owned_dirs(folder: str | os.PathLike, root: str | os.PathLike) -> Path:
    """`mkdir -p folder`, recording every folder it creates below `root` (e.g. `output_dir/grids`) as hf_sfm's.

    Nothing is recorded at or above `root`, so no record is ever written into a folder hf_sfm was only given.
    """
    folder, root = Path(folder), Path(root)
    missing = []
    for ancestor in [folder, *folder.parents]:
        if ancestor.exists() or ancestor == root or root not in ancestor.parents:
            break
        missing.append(ancestor)
    folder.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        record_owned(created, container=True)
    return folder


def check_replaceable(path: str | os.PathLike, overwrite: bool = False, flag: str = "overwrite=True") -> None:
    """Refuse to replace an existing `path` that hf_sfm cannot prove it wrote, naming the path and `flag`."""
    path = Path(path)
    if overwrite or not (path.exists() or path.is_symlink()) or is_owned(path):
        return
    what = "folder" if path.is_dir() else "file"
    raise NotOwnedError(
        f"{path} already exists and is not an output hf_sfm wrote (or it changed since): refusing to replace this "
        f"{what}. Move it away, write somewhere else, or pass {flag} to replace it."
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False, flag: str = "overwrite=True") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one `os.replace`.

    Works for files and folders. An existing `path` must be one hf_sfm wrote (see the module docstring) unless
    `overwrite`; `flag` names the argument that allows it, for the error. The temporary lives in the same folder, so
    the rename never crosses a filesystem. On error the temporary is removed and `path` is untouched.
    """
    target = Path(path)
    check_replaceable(target, overwrite, flag)
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
        record_owned(target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """Names in `folder` that hf_sfm did not write (its record does not list them), sorted.

    The record itself, the lock file and the temporaries `atomic_path` leaves when killed always count as ours.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    own = owned_names(folder)
    return sorted(
        entry.name + ("/" if entry.is_dir() else "")
        for entry in folder.iterdir()
        if entry.name not in own
        and entry.name not in (OWNERSHIP_FILE, ".hf_sfm.lock")
        and not (entry.name.startswith(".") and entry.name.endswith(".tmp"))
    )
