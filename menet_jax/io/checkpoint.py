"""Orbax checkpoints of the train state, in WORKDIR/checkpoints/<step>.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run killed mid-save leaves
no checkpoint that a restart could pick up; such leftovers are removed when the next run starts. Each committed
checkpoint gets a list of the SHA-256 of its files (`MANIFEST`, in its folder), checked before it is restored: Orbax
keeps no checksums, and a changed file that still decodes would restore silently. A checkpoint whose files do not
match, that fails to restore or that holds non-finite values is skipped with a warning for the newest intact one.
Non-finite states are never saved. The run's config is kept in WORKDIR/config.json; resuming with a different
network shape is refused with a one-line error instead of a failed restore. WORKDIR/.lock keeps a second run off a
workdir in use.

In a run of several processes, all of them save and restore together (Orbax writes each replicated array once,
from process 0, and coordinates the commit); process 0 alone moves damaged checkpoints aside. A checkpoint is read
back by `load_variables` on any number of devices, whatever the run that wrote it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import sys
import traceback
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.experimental import multihost_utils

from menet_jax.core.config import Config
from menet_jax.errors import ConfigError, WorkdirError
from menet_jax.io.outputs import atomic_write
from menet_jax.io.weights import sha256

# Keys that change the shapes of the saved arrays: a checkpoint cannot be resumed under other values.
SHAPE_KEYS = ("image_size", "width")
TMP_MARKER = ".orbax-checkpoint-tmp"
MANIFEST = "menet-sha256.json"  # in each step folder: {relative path: SHA-256} of the files Orbax wrote


def step_dir(workdir, step: int) -> Path:
    return Path(workdir).resolve() / "checkpoints" / str(step)


def lock_workdir(workdir):
    """An exclusive lock on WORKDIR/.lock for a run's life: close the returned file to release it; the kernel
    releases it when the process dies, so a killed run never leaves a stale lock."""
    workdir = Path(workdir).resolve()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        f = open(workdir / ".lock", "a+")
    except OSError as error:  # a file in the way, a read-only folder
        raise WorkdirError(f"{workdir}: cannot be used as a workdir ({error.strerror or error})") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip()
        f.close()
        raise WorkdirError(
            f"{workdir} is in use by another training run{f' (pid {owner})' if owner else ''}: "
            "wait for it to end or use another --workdir"
        ) from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def check_config(workdir, config: Config) -> None:
    """Refuse a config whose array shapes differ from those of the workdir's checkpoints."""
    workdir = Path(workdir).resolve()
    config_file = workdir / "config.json"
    if config_file.exists() and (workdir / "checkpoints").exists():
        saved = Config.from_json(config_file)
        for key in SHAPE_KEYS:
            if getattr(saved, key) != getattr(config, key):
                raise ConfigError(
                    f"{workdir} holds checkpoints of a model with {key}={getattr(saved, key)}, not "
                    f"{getattr(config, key)}: use another --workdir"
                )


def write_config(workdir, config: Config) -> None:
    config.to_json(Path(workdir).resolve() / "config.json")


def workdir_config(workdir) -> Config:
    """The config a training workdir was trained with (its config.json)."""
    config_file = Path(workdir) / "config.json"
    if not config_file.exists():
        raise ConfigError(
            f"{workdir}: not a training workdir (no config.json); train one with "
            f"python -m menet_jax.train --workdir {workdir}"
        )
    return Config.from_json(config_file)


def remove_unfinished_writes(workdir) -> list:
    """Delete the temporary folders of checkpoint writes that a killed run left (call only under the lock)."""
    stale = sorted(p for p in (Path(workdir).resolve() / "checkpoints").glob(f"*{TMP_MARKER}*"))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        print(
            f"note: removed {len(stale)} unfinished checkpoint write(s) of an interrupted run: "
            + ", ".join(p.name for p in stale),
            file=sys.stderr,
        )
    return stale


def open_manager(workdir, config: Config, *, write: bool = True) -> ocp.CheckpointManager:
    """The workdir's checkpoint manager after the shape check; `write` also writes config.json."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    check_config(workdir, config)
    if write:
        write_config(workdir, config)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, save_interval_steps=config.checkpoint_every, create=True
    )
    return ocp.CheckpointManager(workdir / "checkpoints", options=options)


@jax.jit
def _all_finite(tree):
    flags = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(flags).all() if flags else jnp.bool_(True)


def all_finite(tree) -> bool:
    """Whether every float array of `tree` is finite (one jitted reduction, one device sync)."""
    return bool(_all_finite(tree))


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0].split(" See full TensorStore")[0]
    return text if len(text) <= limit else text[:limit] + "..."


def _file_digests(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and MANIFEST not in p.name  # nor the temporary file of a write killed midway
    }


def _write_manifest(folder: Path) -> None:
    digests = _file_digests(folder)  # before atomic_write puts its temporary file in the folder
    with atomic_write(folder / MANIFEST) as f:
        json.dump(digests, f, indent=0, sort_keys=True)


def _manifest_mismatch(folder: Path) -> str | None:
    """Why the files of checkpoint `folder` differ from its manifest (one changed, missing or added file), or None
    when they match or it has none (written before manifests existed: restored as before)."""
    try:
        recorded = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return f"its {MANIFEST} is unreadable ({_one_line(error)})"
    actual = _file_digests(folder)
    for name in sorted(set(recorded) | set(actual)):
        if name not in actual:
            return f"{name} is missing"
        if name not in recorded:
            return f"{name} was added after the save"
        if actual[name] != recorded[name]:
            return f"{name} does not match its SHA-256 (changed after the save)"
    return None


def _restore_intact(manager: ocp.CheckpointManager, steps, restore, on_damaged):
    """(restored, step) of the newest of `steps` whose files match their manifest and that restores with finite
    values, calling `on_damaged(step, reason)` for each newer one that does not; (None, None) when none does."""
    _mute_orbax_errors()  # a damaged checkpoint is one warning line, not Orbax's logs of the failed read
    for step in sorted(steps, reverse=True):
        try:
            reason = _manifest_mismatch(Path(manager.directory) / str(step))
            if reason is None:
                restored = restore(step)
                reason = None if all_finite(restored) else "non-finite values"
        except Exception as error:  # TensorStore, JSON, missing files: all mean a damaged checkpoint here
            reason = _one_line(error)
        if reason is None:
            return restored, int(step)
        on_damaged(step, reason)
    return None, None


def _other_shapes(manager: ocp.CheckpointManager, step: int, params) -> str | None:
    """The first parameter whose shape in checkpoint `step` differs from `params`' (its name and both shapes), or
    None when they agree or the checkpoint's metadata cannot be read (damage, which the restore tells apart)."""
    try:
        metadata = manager.item_metadata(step)
        saved = traverse_util.flatten_dict(dict(getattr(metadata, "tree", metadata)["params"]), sep="/")
        saved = {name: tuple(m.shape) for name, m in saved.items()}
    except Exception:  # unreadable metadata: a damaged checkpoint, handled by the restore
        return None
    expected = {name: tuple(np.shape(p)) for name, p in traverse_util.flatten_dict(dict(params), sep="/").items()}
    for name in sorted(set(saved) | set(expected)):
        if saved.get(name) != expected.get(name):
            return f"params/{name}: {saved.get(name, 'absent')} there, {expected.get(name, 'absent')} here"
    return None


def restore_latest(manager: ocp.CheckpointManager, state):
    """(state, step) from the newest intact checkpoint, or (state, 0) when there is none.

    Damaged checkpoints are moved to WORKDIR/damaged/<step> (one warning line each), so that the run can save
    that step again; a workdir whose checkpoints are all damaged is refused.
    """
    directory = Path(manager.directory)
    damaged = []

    def quarantine(step, reason):
        if jax.process_index() != 0:  # the same verdict on every process: process 0 moves it and tells
            return
        target = directory.parent / "damaged" / str(step)
        suffix = 0
        while target.exists():
            suffix += 1
            target = directory.parent / "damaged" / f"{step}.{suffix}"
        target.parent.mkdir(exist_ok=True)
        os.replace(directory / str(step), target)
        damaged.append(step)
        print(f"warning: checkpoint {directory / str(step)} is damaged ({reason}); moved to {target}", file=sys.stderr)

    steps = manager.all_steps()
    if not steps:
        return state, 0
    # Another network's checkpoints are not damaged: refused, and kept where they are. (The training manager has
    # no item handler to read metadata with; a reader like `load_variables`' has.)
    reader = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
    try:
        difference = next(
            filter(None, (_other_shapes(reader, s, state.params) for s in sorted(steps, reverse=True))), None
        )
    finally:
        reader.close()
    if difference is not None:
        raise WorkdirError(
            f"{directory} holds checkpoints of a network of other shapes than this config's ({difference}): "
            "train with the config they were trained with, or use another --workdir"
        )
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    restored, step = _restore_intact(
        manager, steps, lambda s: manager.restore(s, args=ocp.args.StandardRestore(abstract)), quarantine
    )
    if jax.process_count() > 1:  # every damaged step moved before any process lists the steps again
        multihost_utils.sync_global_devices("menet_jax.checkpoint.restore_latest")
    manager.reload()
    if restored is None:
        raise WorkdirError(
            f"no intact checkpoint in {directory} (damaged steps {', '.join(map(str, damaged))} "
            f"moved to {directory.parent / 'damaged'}): use another --workdir to start afresh"
        )
    return restored, step


def save(manager: ocp.CheckpointManager, step: int, state, force: bool = False) -> bool:
    """Save if `step` is on the save interval (or `force`) and wait until the checkpoint is committed; returns
    whether it saved. A state with a non-finite value is refused (FloatingPointError): it would push good
    checkpoints out of the kept ones. A write that fails (a full disk, a folder gone read-only) is a one-line
    WorkdirError; its unfinished folder is removed and the older checkpoints stay as they were.

    Waiting here, not at the next save, is what bounds a kill -9 to one lost interval: Orbax commits (renames) an
    asynchronous save only when it is waited for, so a checkpoint left in flight would be lost with the next one.
    """
    if not force and not manager.should_save(step):
        return False
    if not all_finite(state):
        raise FloatingPointError(f"the train state of step {step} is not finite; not saved")
    directory = Path(manager.directory)
    _mute_orbax_errors()
    try:
        manager.save(step, args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()
        if jax.process_index() == 0:  # every process's files are in place once the commit is waited for
            _write_manifest(directory / str(step))
        error = None
    except Exception as failure:  # TensorStore reports a full disk as ValueError("RESOURCE_EXHAUSTED: ...")
        error = failure
        with contextlib.suppress(Exception):  # its writer threads still running: stopped here, quietly
            manager.close()
        # Their abandoned coroutines are collected later (at exit at the latest), each with a RuntimeWarning that
        # would follow the one line reporting this failure; this process has no coroutines of its own.
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    if error is not None:
        for unfinished in directory.glob(f"{step}{TMP_MARKER}*"):
            shutil.rmtree(unfinished, ignore_errors=True)
        kept = [int(p.name) for p in directory.iterdir() if p.name.isdigit() and int(p.name) != step]
        raise WorkdirError(
            f"{directory / str(step)}: the checkpoint could not be written ({_write_failure(error)}); "
            + (f"the last good one, step {max(kept)}, is kept" if kept else "no earlier checkpoint exists")
            + ": free space (or fix the folder) and rerun to resume"
        ) from None
    return True


def _write_failure(error: BaseException) -> str:
    """The OS's reason for a failed write: TensorStore buries it in a long message as [os_error_code='28']."""
    code = getattr(error, "errno", None) or next(iter(re.findall(r"os_error_code='(\d+)'", str(error))), None)
    return os.strerror(int(code)) if code else _one_line(error)


def _mute_orbax_errors() -> None:
    """Orbax's threads log a failed write or read at ERROR, with tracebacks, before and after the error reaches
    `save` or the restore, which report it in one line; and asyncio logs each of their failed tasks ("Task exception
    was never retrieved") when it is collected. Those records are dropped (once installed, for the process)."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if _drop_orbax_errors not in logger.filters:
            logger.addFilter(_drop_orbax_errors)


def _drop_orbax_errors(record: logging.LogRecord) -> bool:
    """False (drop) for an ERROR logged by Orbax, carrying an exception raised inside Orbax, or about a write into
    one of its temporary folders or a read of its database (TensorStore's errors reach asyncio's futures without a
    Python traceback)."""
    if record.levelno < logging.ERROR:
        return True
    inside = f"{os.sep}orbax{os.sep}"
    frames = traceback.walk_tb(record.exc_info[2]) if record.exc_info else ()
    return not (
        inside in record.pathname
        or any(inside in frame.f_code.co_filename for frame, _ in frames)
        or TMP_MARKER in record.getMessage()
        or "OCDBT database" in record.getMessage()
    )


def latest_step(workdir) -> int:
    """The step of a workdir's latest complete checkpoint (not checked for damage: see `load_variables`)."""
    manager = ocp.CheckpointManager(Path(workdir).resolve() / "checkpoints")
    step = manager.latest_step()
    manager.close()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {Path(workdir).resolve() / 'checkpoints'}")
    return int(step)


def load_variables(workdir, step: int | None = None):
    """{"params", "batch_stats"} of a checkpoint, e.g. for evaluation in a notebook: the given step, or the newest
    intact one (a damaged newer one is skipped with a warning line on stderr)."""
    directory = Path(workdir).resolve() / "checkpoints"
    manager = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
    try:
        kept = sorted(manager.all_steps())
        if step is None and not kept:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        if step is not None and step not in kept:  # orbax would fail with an unrelated message
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {directory} "
                f"(kept: {', '.join(map(str, kept)) or 'none'}; keep_checkpoints sets how many)"
            )

        def restore(s):
            # Onto this process's first device: the saved shardings may name devices that are not here (a run
            # of several devices or processes).
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            metadata = manager.item_metadata(s)
            target = jax.tree_util.tree_map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), getattr(metadata, "tree", metadata)
            )
            restored = manager.restore(s, args=ocp.args.StandardRestore(target))
            return {"params": restored["params"], "batch_stats": restored["batch_stats"]}

        def warn(s, reason):
            print(f"warning: checkpoint {directory / str(s)} is damaged ({reason}); skipped", file=sys.stderr)

        variables, found = _restore_intact(manager, [step] if step is not None else kept, restore, warn)
        if variables is None:  # FileNotFoundError, as for a missing checkpoint: no usable one is there
            raise FileNotFoundError(
                f"no intact checkpoint in {directory}"
                if step is None
                else f"checkpoint {directory / str(step)} is damaged"
            )
        return variables
    finally:
        manager.close()


def trim_log(log_file: Path, step: int) -> None:
    """Drop log records past `step` (written by a run killed before its next checkpoint) so resumes stay clean,
    and a last line cut short by a kill."""
    if not log_file.exists():
        return

    def keep(line):
        try:
            return json.loads(line).get("step", 0) <= step
        except ValueError:
            return False

    kept = [line for line in log_file.read_text().splitlines() if line.strip() and keep(line)]
    with atomic_write(log_file) as f:  # a kill here leaves the old log, not half of it
        f.write("".join(line + "\n" for line in kept))
