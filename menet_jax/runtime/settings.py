"""The one place that reads the process environment: every variable menet-jax uses, validated on reading.

    MENET_COMPILE              auto | child | here: where the train step and predict programs compile
                               (`runtime.compilation`); auto is a child process on a one-device CPU under glibc
    MENET_MALLOC               reuse | default: whether the CLIs restart with glibc malloc settings that reuse freed
                               memory (`runtime.host_memory`); default leaves malloc as it is
    JAX_COMPILATION_CACHE_DIR  the persistent XLA cache (default ~/.cache/menet_jax/xla)
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
                               a multi-process run (`training.distributed`)
    JAX_CPU_COLLECTIVES_IMPLEMENTATION
                               left to JAX when set; gloo otherwise, for multi-process runs on CPU

None of these changes what a traced function computes: the convolution formulation, the compute dtype and every
other choice of that kind is a field of `core.config.Config` (and of the Flax modules), so jit caches see it.
Each function reads the variable when it is called (commands call them once, at start-up), and a value that is
not allowed is a one-line `SettingsError` that names the variable and lists the allowed values.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from menet_jax.errors import SettingsError


def _choice(name: str, allowed: tuple[str, ...], default: str) -> str:
    value = os.environ.get(name, "").strip().lower() or default
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def compile_place() -> str:
    """MENET_COMPILE: "auto", "child" or "here"."""
    return _choice("MENET_COMPILE", ("auto", "child", "here"), "auto")


def malloc() -> str:
    """MENET_MALLOC: "reuse" (the CLIs' default) or "default" (glibc as it comes)."""
    return _choice("MENET_MALLOC", ("reuse", "default"), "reuse")


def compilation_cache_dir() -> Path:
    """JAX_COMPILATION_CACHE_DIR, or ~/.cache/menet_jax/xla."""
    return Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or Path.home() / ".cache" / "menet_jax" / "xla")


def cpu_collectives_set() -> bool:
    """Whether JAX_CPU_COLLECTIVES_IMPLEMENTATION is set (then JAX's own choice stands)."""
    return bool(os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"))


def distributed(environ=None) -> dict:
    """{"coordinator", "num_processes", "process_id"} from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID (None where unset); `environ` replaces the process environment (tests)."""
    environ = os.environ if environ is None else environ

    def number(name):
        value = environ.get(name, "").strip()
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {value!r}") from None

    return {
        "coordinator": environ.get("JAX_COORDINATOR_ADDRESS") or None,
        "num_processes": number("JAX_NUM_PROCESSES"),
        "process_id": number("JAX_PROCESS_ID"),
    }


def environment() -> dict:
    """A copy of the process environment (what a restarted or child process is given)."""
    return dict(os.environ)


def restart_with(changes: dict) -> None:
    """Replace this process by the same command (interpreter and arguments) with `changes` added to its
    environment; glibc reads its malloc settings only when a process starts (`runtime.host_memory`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **changes})
