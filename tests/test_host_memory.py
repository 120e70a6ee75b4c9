"""The command-line tools restart once with glibc settings under which freed memory is reused without page faults."""

import os
import platform
import subprocess
import sys

import pytest

from menet_jax.runtime.host_memory import TUNABLES, reused_memory_environment

glibc_only = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="the settings are glibc malloc's"
)

# Allocates, fills and frees a 256 MB block twice; prints the page faults of the second round and MALLOC_ARENA_MAX.
PROBE = """
import ctypes, os, resource, sys
from menet_jax.runtime.host_memory import reexec_with_reused_memory
print("start", flush=True)
reexec_with_reused_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
size = 256 << 20
for round in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(ctypes.c_void_p(block))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, os.environ.get("MALLOC_ARENA_MAX"))
"""


def run_probe(**env):
    environ = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES", "MENET_MALLOC")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**environ, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out


def test_environment_adds_only_what_is_missing():
    assert reused_memory_environment({}) == {"MALLOC_ARENA_MAX": "1", "GLIBC_TUNABLES": ":".join(TUNABLES)}
    kept = reused_memory_environment({"GLIBC_TUNABLES": "glibc.cpu.x86_avx=0"})
    assert kept["GLIBC_TUNABLES"] == "glibc.cpu.x86_avx=0:" + ":".join(TUNABLES)
    assert reused_memory_environment({"MALLOC_ARENA_MAX": "1", "GLIBC_TUNABLES": ":".join(TUNABLES)}) is None
    assert reused_memory_environment({"MENET_MALLOC": "default"}) is None


@glibc_only
def test_restarted_process_reuses_freed_memory():
    start, *_, default_faults, default_arenas = run_probe(MENET_MALLOC="default")
    assert default_arenas == "None" and int(default_faults) > 30_000  # 256 MB of 4 KiB pages, mapped again
    output = run_probe()
    assert output.count("start") == 2  # restarted exactly once
    faults, arenas = output[-2:]
    assert arenas == "1" and int(faults) < 1_000  # the freed block was reused
