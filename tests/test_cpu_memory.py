"""Freed CPU memory stays in the process (`hf_sfm.utils.cpu_memory`), unless the user configured malloc or opted out."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from hf_sfm.utils import cpu_memory

MODULE = Path(cpu_memory.__file__)

# A fresh process loads the module by path (only the standard library: no torch, no hf_sfm import), then frees and
# reallocates a 64 MiB block five times, as a backbone does with its activations batch after batch.
CHILD = f"""
import importlib.util, resource, sys
spec = importlib.util.spec_from_file_location("cpu_memory", {str(MODULE)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
applied = module.keep_freed_memory()
block = bytearray(64 << 20)  # zero-filled: every page touched
del block
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    block = bytearray(64 << 20)
    del block
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 5)
"""

PAGES_PER_BLOCK = (64 << 20) // 4096


def _child(**env_changes) -> tuple[bool, float]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env.pop("LD_PRELOAD", None)
    env.pop(cpu_memory.OPT_OUT_VARIABLE, None)
    env.update(env_changes)
    completed = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    applied, faults = completed.stdout.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's (Linux)"
)
def test_a_freed_block_is_reused_without_page_faults_and_the_opt_out_leaves_malloc_alone():
    applied, faults = _child()
    assert applied
    assert faults < PAGES_PER_BLOCK / 50  # the block comes back from the heap: no fresh pages

    untouched, untouched_faults = _child(**{cpu_memory.OPT_OUT_VARIABLE: "0"})
    assert not untouched
    assert untouched_faults > PAGES_PER_BLOCK / 2  # glibc unmaps a freed 64 MiB block: every page faults again


@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
        {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
    ],
)
def test_malloc_the_user_configured_is_left_alone(monkeypatch, env):
    monkeypatch.setattr(cpu_memory, "_applied", cpu_memory._applied)  # this process's outcome, restored afterwards
    for name in (*cpu_memory.USER_MALLOC_VARIABLES, "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    calls = []
    monkeypatch.setattr(cpu_memory.ctypes, "CDLL", lambda *args, **kwargs: calls.append(args))
    assert cpu_memory.malloc_configured_by_user() is not None
    assert cpu_memory.keep_freed_memory(force=True) is False
    assert calls == []  # libc was not even opened


def test_the_retained_amount_is_bounded():
    retain = cpu_memory.default_retain_bytes()
    assert 0 < retain <= cpu_memory.MAX_RETAIN_BYTES
