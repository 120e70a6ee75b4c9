"""What every command-line tool shares: one-line errors and exit codes, the --checkpoint option, the start-up.

    @cli.command
    def main(argv=None) -> int:
        ...                                  # raise any MenetError: it is printed as `error: <message>`, exit 2

    if __name__ == "__main__":
        cli.start(main, reuse_memory=True)

Every command builds its parser with `cli.ArgumentParser`, whose usage errors are one line too.
This module imports no JAX, so `predict --backend onnx` stays JAX-free.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
import threading
import traceback
from pathlib import Path

from menet_datasets.errors import ArgumentParser  # noqa: F401 (re-exported: every command's parser)
from menet_jax.errors import ConfigError, MenetError
from menet_jax.runtime.host_memory import reexec_with_reused_memory

CHECKPOINT_HELP = "training workdir (latest checkpoint) or exported weights .npz (default: the shipped weights)"
# The robustness commands' version: Jacobians, bounds and distortion scores are computed in float32.
CHECKPOINT_HELP_FLOAT32 = CHECKPOINT_HELP + "; run in float32 whatever dtype it was trained with"


def add_checkpoint_argument(parser: argparse.ArgumentParser, *, float32: bool = False, preset: bool = False):
    """--checkpoint (`inference.predictor.load_network` reads it); with `preset`, also --config PRESET and --seed,
    a network with freshly initialised weights instead (the analyses of an untrained network)."""
    help_text = CHECKPOINT_HELP_FLOAT32 if float32 else CHECKPOINT_HELP
    if not preset:
        parser.add_argument("--checkpoint", type=Path, help=help_text)
        return
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=Path, help=help_text)
    which.add_argument("--config", help="a preset (e.g. tiny) with freshly initialised weights")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed with --config (and noise seed)")


def check_minimums(args: argparse.Namespace, **minimums) -> None:
    """One-line ConfigErrors, before any work, for numeric flags below their smallest sensible value (a batch size of
    0 or -1, a negative iteration count): `check_minimums(args, batch_size=1, probes=0)`; unset (None) flags pass."""
    for name, minimum in minimums.items():
        value = getattr(args, name)
        if value is not None and not value >= minimum:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def command(main=None, *, compilation_cache: bool = True):
    """Decorate a command's `main(argv=None) -> int`: the persistent XLA compilation cache switched on first
    (`compilation_cache=False` leaves that to the command), and any `MenetError` turned into one line on stderr
    and exit code 2."""
    if main is None:
        return functools.partial(command, compilation_cache=compilation_cache)

    @functools.wraps(main)
    def run(argv=None) -> int:
        _drop_orbax_noise()
        try:
            if compilation_cache:
                # Imported here, not above: a command that never runs JAX (predict --backend onnx) never loads it.
                from menet_jax.runtime.xla import enable_compilation_cache

                enable_compilation_cache()
            return main(argv) or 0
        except MenetError as error:
            return _report(error)
        except OSError as error:
            # A write that the checks made before the work could not foresee: the disk filled up or the folder
            # went read-only meanwhile. One line naming the file, not a traceback.
            if error.errno not in _WRITE_ERRNOS or not error.filename:
                raise
            return _report(f"{error.filename}: {error.strerror}")

    return run


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def _report(error) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def _drop_orbax_noise() -> None:
    """Orbax's asyncio threads outlive their event loop after a failed checkpoint read or write and each reports
    "RuntimeError: Event loop is closed" as an unraisable exception: tens of thousands of lines that buried the one
    line saying what happened; a writer thread that dies of the failure reports it again. Those are dropped (the
    command reports the failure itself, in one line); every other exception is reported as before."""
    previous, previous_thread = sys.unraisablehook, threading.excepthook
    if getattr(previous, "drops_closed_loops", False):
        return

    def hook(unraisable):
        value = unraisable.exc_value
        closed_loop = isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
        if not (closed_loop or _in_orbax(unraisable.exc_traceback)):
            previous(unraisable)

    def thread_hook(args):
        if not _in_orbax(args.exc_traceback):
            previous_thread(args)

    hook.drops_closed_loops = True
    sys.unraisablehook, threading.excepthook = hook, thread_hook


def _in_orbax(tb) -> bool:
    return any(f"{os.sep}orbax{os.sep}" in frame.f_code.co_filename for frame, _ in traceback.walk_tb(tb))


def start(main, *, reuse_memory: bool = False) -> None:
    """Run `main` as the process's command and exit with its code; `reuse_memory` restarts the process first with
    malloc settings that reuse freed memory between steps (`runtime.host_memory`: the long-running commands)."""
    if reuse_memory:
        try:
            reexec_with_reused_memory()
        except MenetError as error:  # a bad MENET_MALLOC
            sys.exit(_report(error))
    sys.exit(main())
