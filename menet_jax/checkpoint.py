"""Orbax checkpoints of the train state, in WORKDIR/checkpoints/<step>.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run killed mid-save leaves
no checkpoint that a restart could pick up. The run's config is kept in WORKDIR/config.json; resuming with a
different network shape is refused with a one-line error instead of a failed restore.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from menet_jax.config import Config, ConfigError

# Keys that change the shapes of the saved arrays: a checkpoint cannot be resumed under other values.
SHAPE_KEYS = ("image_size", "width")


def step_dir(workdir, step: int) -> Path:
    return Path(workdir).resolve() / "checkpoints" / str(step)


def open_manager(workdir, config: Config) -> ocp.CheckpointManager:
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "config.json"
    if config_file.exists() and (workdir / "checkpoints").exists():
        saved = json.loads(config_file.read_text())
        for key in SHAPE_KEYS:
            if key in saved and saved[key] != getattr(config, key):
                raise ConfigError(f"{workdir} holds checkpoints of a model with {key}={saved[key]}, not "
                                  f"{getattr(config, key)}: use another --workdir")
    config_file.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                           save_interval_steps=config.checkpoint_every, create=True)
    return ocp.CheckpointManager(workdir / "checkpoints", options=options)


def restore_latest(manager: ocp.CheckpointManager, state):
    """(state, step) from the latest complete checkpoint, or (state, 0) when there is none."""
    latest = manager.latest_step()
    if latest is None:
        return state, 0
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    return manager.restore(latest, args=ocp.args.StandardRestore(abstract)), int(latest)


def save(manager: ocp.CheckpointManager, step: int, state, force: bool = False) -> bool:
    """Save if `step` is on the save interval (or `force`); returns whether a save was started."""
    return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def latest_step(workdir) -> int:
    """The step of a workdir's latest complete checkpoint."""
    manager = ocp.CheckpointManager(Path(workdir).resolve() / "checkpoints")
    step = manager.latest_step()
    manager.close()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {Path(workdir).resolve() / 'checkpoints'}")
    return int(step)


def load_variables(workdir, step: int | None = None):
    """{"params", "batch_stats"} of a checkpoint (the latest by default), e.g. for evaluation in a notebook."""
    step = latest_step(workdir) if step is None else step
    manager = ocp.CheckpointManager(Path(workdir).resolve() / "checkpoints")
    kept = sorted(manager.all_steps())
    if step not in kept:   # orbax would fail with an unrelated message about composite arguments
        manager.close()
        raise FileNotFoundError(f"no checkpoint of step {step} in {Path(workdir).resolve() / 'checkpoints'} "
                                f"(kept: {', '.join(map(str, kept)) or 'none'}; keep_checkpoints sets how many)")
    restored = manager.restore(step, args=ocp.args.StandardRestore())
    manager.close()
    return {"params": restored["params"], "batch_stats": restored["batch_stats"]}


def trim_log(log_file: Path, step: int) -> None:
    """Drop log records past `step` (written by a run killed before its next checkpoint) so resumes stay clean."""
    if not log_file.exists():
        return
    kept = [line for line in log_file.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    log_file.write_text("".join(line + "\n" for line in kept))
