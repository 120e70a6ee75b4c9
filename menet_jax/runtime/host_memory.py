"""Host memory reuse between steps on CPU: glibc malloc settings that the command-line tools start with.

XLA's CPU runtime allocates the temporaries of a program as one block (several GB for the paper's train step) and
frees it when the program ends. glibc hands blocks that large back to the kernel, so every step faults the memory
in again (BENCHMARKS.md, "Memory", has the page faults and seconds measured). With one malloc arena, no separately
mapped chunks and no trimming, freed memory stays in the process and the next step reuses it (no faults). The
process keeps its peak memory until it exits.

glibc reads these settings only when a process starts, so `reexec_with_reused_memory` starts the command again
with them, once, before any work. `MENET_MALLOC=default` (or a non-glibc system) leaves the process as it is.
"""

from __future__ import annotations

import platform
import sys

from menet_jax.runtime import settings

# trim_threshold is 64 GiB: freed memory at the top of the heap is never returned while the process runs.
TUNABLES = ("glibc.malloc.mmap_max=0", "glibc.malloc.trim_threshold=68719476736")
ENVIRONMENT = {"MALLOC_ARENA_MAX": "1"}


def reused_memory_environment(environ) -> dict | None:
    """The variables to add to `environ` for the settings, or None when it already has them (or opts out)."""
    if environ.get("MENET_MALLOC", "").strip().lower() == "default":
        return None
    tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
    missing = [t for t in TUNABLES if t not in tunables]
    changes = {k: v for k, v in ENVIRONMENT.items() if environ.get(k) != v}
    if missing:
        changes["GLIBC_TUNABLES"] = ":".join(tunables + missing)
    return changes or None


def reexec_with_reused_memory() -> None:
    """Restart this command (same interpreter and arguments) with the malloc settings, unless it has them, glibc
    is not the C library, or MENET_MALLOC=default. Call it first thing under `if __name__ == "__main__"`."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or settings.malloc() == "default":
        return
    changes = reused_memory_environment(settings.environment())
    if changes is not None:
        settings.restart_with(changes)
