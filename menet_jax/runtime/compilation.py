"""Compiling a program in a child process, so that the compiler's heap debris stays out of the process that runs it.

On CPU, XLA's convolutions run on Eigen with oneDNN's sgemm, which allocates a 74 KB page-aligned workspace with
`posix_memalign` on every call: about 60,000 calls per paper train step. Compiling that step in the process that
then runs it leaves glibc's heap with about 85,000 free fragments (`malloc_info`); each workspace allocation then
walks a bin of hundreds of chunks too small for it, and `_int_malloc` takes a visible share of the step's CPU
time. The same program compiled in a child process and loaded here (`jax.experimental.serialize_executable`) runs
in an unfragmented heap; loading it and the child's start-up cost seconds (BENCHMARKS.md has the numbers).

`compile_programs([(factory, factory_args, args), ...])` compiles each `factory(*factory_args)`, a jitted function,
for arguments shaped like `args`: in one child on a single-device CPU backend under glibc, here otherwise, or
wherever MENET_COMPILE (auto, child or here) says. Factories must be importable by name (module-level functions)
and their arguments picklable: the child rebuilds each program from them (the same program, traced elsewhere).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
import platform
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from jax.experimental.serialize_executable import deserialize_and_load, serialize

from menet_jax.errors import SettingsError
from menet_jax.runtime import settings

PLACES = ("auto", "child", "here")


Job = tuple  # (factory, factory_args, args): compile factory(*factory_args), a jitted function, for args


@dataclasses.dataclass
class CompiledPrograms:
    programs: list  # jax.stages.Compiled, one per job: call each like its jitted function
    seconds: float  # wall time until they were ready to run here (child start-up and compile, and the load)
    where: str  # "child" or "here"


def compile_place(place: str | None = None) -> str:
    """Where `compile_programs` compiles: "child" or "here". `place` None reads MENET_COMPILE (default auto).
    Auto is a child where the heap matters and the executable can be handed over: one CPU device, glibc."""
    if place is None:
        place = settings.compile_place()
    elif place not in PLACES:
        raise SettingsError(f"place must be one of {', '.join(PLACES)}, got {place!r}")
    if place != "auto":
        return place
    on_glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    return "child" if on_glibc and jax.default_backend() == "cpu" and jax.device_count() == 1 else "here"


def argument_specs(tree):
    """Shape, dtype and weak type of every array leaf (what a program is compiled for), without the values."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, weak_type=getattr(x, "weak_type", False)), tree
    )


def compile_programs(jobs: Sequence[Job], *, place: str | None = None) -> CompiledPrograms:
    """Compile each job's jitted `factory(*factory_args)` for its `args` (arrays or ShapeDtypeStructs), all in
    one child process or here (`compile_place`). A child that fails is reported in one warning, and the programs
    are compiled here."""
    started = time.perf_counter()
    jobs = [(factory, tuple(factory_args), argument_specs(tuple(args))) for factory, factory_args, args in jobs]
    if compile_place(place) == "child":
        try:
            programs = _compile_in_child(jobs)
            return CompiledPrograms(programs, time.perf_counter() - started, "child")
        except Exception as error:  # any failure of the child: the programs are still needed
            names = ", ".join(factory.__name__ for factory, _, _ in jobs)
            warnings.warn(
                f"compiling {names} in a child process failed ({error}); compiling here", RuntimeWarning, stacklevel=2
            )
    programs = [_compile(*job) for job in jobs]
    return CompiledPrograms(programs, time.perf_counter() - started, "here")


def _compile(factory, factory_args, specs):
    return factory(*factory_args).lower(*specs).compile()


def _compile_in_child(jobs):
    with tempfile.TemporaryDirectory(prefix="menet-compile-") as tmp:
        path = Path(tmp) / "programs.pickle"
        child = multiprocessing.get_context("spawn").Process(
            target=_child_main, args=(jobs, str(path)), name="menet compile", daemon=True
        )
        child.start()
        try:
            child.join()
        finally:  # interrupted (Ctrl-C): the compile is not needed any more
            if child.is_alive():
                child.terminate()
        if child.exitcode != 0 or not path.is_file():
            raise RuntimeError(f"the child process exited with code {child.exitcode}")
        serialized = pickle.loads(path.read_bytes())
    return [deserialize_and_load(*payload) for payload in serialized]


def _child_main(jobs, path):
    # An executable that went into (or came from) the persistent cache serializes without its kernels here
    # ("Function ... not found" when called), so the child always compiles.
    jax.config.update("jax_enable_compilation_cache", False)
    # The jobs compile side by side: XLA compiles without the GIL, so a small program (the train step's optimizer
    # update, 2 s) overlaps a large one.
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        compiled = list(pool.map(lambda job: _compile(*job), jobs))
    Path(path).write_bytes(pickle.dumps([serialize(program) for program in compiled]))
