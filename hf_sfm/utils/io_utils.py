"""Atomic writes that replace only what hf_sfm can prove it wrote.

A kill mid-save leaves the previous output intact, never half of a new one (`atomic_path` writes beside the target
and renames). And an existing target is replaced only when hf_sfm wrote it and nobody changed it since: every
write is recorded in its folder's `.hf_sfm_owned.json` with its shape (a file's size and SHA-256; a folder's files
with their sizes and SHA-256s, so a same-length edit is seen too; a container folder's identity on disk, so a copied
record does not adopt another folder of that name), and a target that is not recorded, or no longer matches its
record, is refused with an error naming the path and the flag that allows replacing it. A user's own `distilled/`
folder is therefore never deleted by a save.

Only regular files are opened (a FIFO or device where a file is expected would block a read forever), and a symlink
is never followed into: it is recorded, compared and replaced as a link.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OWNERSHIP_FILE = ".hf_sfm_owned.json"
# A staging folder `atomic_path` made holds this marker, so a killed save's leftover can be told from a user's folder
# that happens to be named `.<something>.tmp`.
STAGING_MARKER = ".hf_sfm_staging"


class NotOwnedError(FileExistsError):
    """The target exists and hf_sfm cannot prove it wrote it: it is left alone."""


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a regular file (after symlinks): the only kind hf_sfm opens. A FIFO would block forever."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def check_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path`, or an `OSError` naming it when it is not a regular file (missing, a folder, a FIFO, a device)."""
    path = Path(path)
    if not is_regular_file(path):
        kind = "missing" if not (path.exists() or path.is_symlink()) else "not a regular file"
        raise OSError(f"{path} is {kind}; hf_sfm reads a {what} only from a regular file.")
    return path


def read_regular_text(path: str | os.PathLike, what: str = "file") -> str:
    """The text of a regular file (`check_regular_file` first, so a FIFO raises instead of hanging)."""
    return check_regular_file(path, what).read_text()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a regular file, read in 1 MiB blocks (records and checkpoint manifests both pin files by it)."""
    check_regular_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry_shape(path: Path) -> Any:
    """One entry of a folder's tree: a regular file's `[size, sha256]`, a link's target, or the kind of a special."""
    if path.is_symlink():
        return {"symlink": os.readlink(path)}
    if is_regular_file(path):
        return [path.stat().st_size, file_sha256(path)]
    return {"special": stat.S_IFMT(path.lstat().st_mode)}


def _shape(path: Path) -> dict[str, Any]:
    """What a record remembers of an output: a file's size and digest; a folder's entries (relative path → size and
    digest of each file); a symlink's target; for anything else (a FIFO, a device) only its kind, so it is never
    opened and never matches a record of a file."""
    if path.is_symlink():
        return {"type": "symlink", "target": os.readlink(path)}
    if path.is_dir():
        tree = {
            entry.relative_to(path).as_posix(): _entry_shape(entry)
            for entry in sorted(path.rglob("*"))
            if entry.name != OWNERSHIP_FILE and (entry.is_symlink() or not entry.is_dir())
        }
        return {"type": "dir", "tree": tree}
    if is_regular_file(path):
        return {"type": "file", "size": path.stat().st_size, "sha256": file_sha256(path)}
    return {"type": "special", "mode": stat.S_IFMT(path.lstat().st_mode)}


def _container(path: Path) -> dict[str, Any]:
    """A folder hf_sfm created to hold its outputs (grids/, hub/): its content is governed by its own record, so it
    is recorded by its identity on disk (device, inode), which a copied record does not share with another folder."""
    info = path.lstat()
    return {"type": "dir", "container": True, "device": info.st_dev, "inode": info.st_ino}


def _read_record(folder: Path) -> dict[str, Any]:
    try:
        record = json.loads(read_regular_text(folder / OWNERSHIP_FILE))
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
    if not isinstance(entry, dict) or not (path.exists() or path.is_symlink()):
        return False
    if entry.get("container"):
        return path.is_dir() and not path.is_symlink() and entry == _container(path)
    return entry == _shape(path)


def record_owned(path: str | os.PathLike, container: bool = False) -> None:
    """Record `path` as written by hf_sfm in its folder's ownership record."""
    path = Path(path)
    record = _read_record(path.parent)
    record[path.name] = _container(path) if container else _shape(path)
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
    (temporary / STAGING_MARKER).touch()
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


def is_staging_leftover(path: str | os.PathLike) -> bool:
    """Whether `path` is what a killed `atomic_path` (or record write) left: a hidden `.tmp` folder holding the
    staging marker, or a record's temporary. A user's own `.something.tmp` folder is not."""
    path = Path(path)
    if not (path.name.startswith(".") and path.name.endswith(".tmp")) or path.is_symlink():
        return False
    if path.name.startswith(f".{OWNERSHIP_FILE}."):
        return is_regular_file(path)
    return path.is_dir() and is_regular_file(path / STAGING_MARKER)


def remove_staging_leftovers(folder: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Delete the leftovers of killed saves in `folder` whose name starts with `.<prefix>`; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [entry for entry in folder.glob(f".{prefix}*.tmp") if is_staging_leftover(entry)]
    for leftover in removed:
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    return removed


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """Names in `folder` that hf_sfm did not write (its record does not list them), sorted.

    The record itself, the lock file and the temporaries `atomic_path` leaves when killed (marked as its own) always
    count as ours.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    record = _read_record(folder)
    # A container is ours only where its identity matches (a copied record names other folders); other entries are
    # compared in full by `is_owned` when they are replaced, which this quick check does not pay for.
    own = {
        name
        for name, entry in record.items()
        if not (isinstance(entry, dict) and entry.get("container")) or is_owned(folder / name)
    }
    return sorted(
        entry.name + ("/" if entry.is_dir() else "")
        for entry in folder.iterdir()
        if entry.name not in own
        and entry.name not in (OWNERSHIP_FILE, ".hf_sfm.lock")
        and not is_staging_leftover(entry)
    )
