"""Keep freed CPU memory in the process for reuse, so CPU tensors stop page-faulting on every batch.

A backbone forward allocates and frees the same activation buffers batch after batch. glibc hands large freed blocks
back to the kernel (`munmap`, or trimming the top of the heap), so the next batch touches fresh pages and the kernel
zero-fills each of them again: a page fault per 4 KiB. Where page faults are expensive (virtual machines, containers)
that system time can equal the arithmetic, and it grows with the batch size, so the fastest batch on such a machine
is a small one.

`keep_freed_memory` sets glibc's malloc to serve large blocks from its heap (no per-block `mmap`) and to keep up to
`retain_bytes` of freed memory there before trimming: the same settings as the `MALLOC_MMAP_MAX_` and
`MALLOC_TRIM_THRESHOLD_` environment variables, applied at run time (PyTorch's CPU tuning guide reaches the same
end by preloading jemalloc or tcmalloc). Peak memory is unchanged; what changes is that up to `retain_bytes` of it
stays with the process after a batch instead of going back to the kernel.

hf_sfm applies it once per process, when a backbone first runs on the CPU, and says so in the log. It leaves malloc
alone when the user has configured it (any of those environment variables, `GLIBC_TUNABLES`, or a preloaded
allocator), off glibc, or with `HF_SFM_KEEP_FREED_MEMORY=0`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

__all__ = ["OPT_OUT_VARIABLE", "default_retain_bytes", "keep_freed_memory", "malloc_configured_by_user"]

logger = logging.getLogger(__name__)

OPT_OUT_VARIABLE = "HF_SFM_KEEP_FREED_MEMORY"
# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
USER_MALLOC_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")
PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
MAX_RETAIN_BYTES = 4 << 30

_applied: bool | None = None  # None: not tried yet in this process


def default_retain_bytes() -> int:
    """An eighth of physical memory, at most 4 GiB: room for a batch's activations at any resolution hf_sfm runs,
    small enough that a process which is done with its tensors does not sit on a large share of the machine."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 30
    return int(min(MAX_RETAIN_BYTES, physical // 8))


def malloc_configured_by_user() -> str | None:
    """What says the user chose the allocator's settings themselves (a variable or a preloaded library), else None."""
    for name in USER_MALLOC_VARIABLES:
        if name in os.environ:
            return name
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(allocator in preload for allocator in PRELOADED_ALLOCATORS):
        return f"LD_PRELOAD={preload}"
    return None


def keep_freed_memory(retain_bytes: int | None = None, *, force: bool = False) -> bool:
    """Configure glibc's malloc as the module docstring says; True when the settings are in effect.

    Idempotent: after the first call in a process it only reports the outcome (`force=True` applies `retain_bytes`
    again, for a caller that wants another amount). Never raises: a platform without glibc's `mallopt` keeps its
    allocator.
    """
    global _applied
    if _applied is not None and not force:
        return _applied
    _applied = _apply(default_retain_bytes() if retain_bytes is None else int(retain_bytes))
    return _applied


def _apply(retain_bytes: int) -> bool:
    if os.environ.get(OPT_OUT_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        logger.info(f"{OPT_OUT_VARIABLE}=0: hf_sfm leaves malloc's settings as they are.")
        return False
    chosen = malloc_configured_by_user()
    if chosen is not None:
        logger.info(f"malloc is configured by the user ({chosen}): hf_sfm leaves its settings as they are.")
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, retain_bytes) == 1
    except (OSError, AttributeError):
        return False
    if applied:
        logger.info(
            f"hf_sfm keeps up to {retain_bytes / 2**30:.1f} GiB of freed memory for reuse (glibc mallopt), so CPU "
            f"tensors do not page-fault on every batch; set {OPT_OUT_VARIABLE}=0 to leave malloc as it is."
        )
    return applied
