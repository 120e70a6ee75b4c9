"""The resumable training loop: `train(config, workdir, ...)` is what `python -m menet_jax.train` runs; a notebook
can call it, or use the pieces (`training.state`, `training.step`, `core.network`) directly.

Several processes (machines) train one run together (`training.distributed`). Process 0 alone takes the workdir
lock and writes config.json and metrics.jsonl; all processes save and restore the checkpoints together (Orbax
coordinates them) and agree each step on stopping (a signal or a data error met by any process).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import menet_datasets
from menet_datasets.tfds_source import TFDSSource, default_train_split, prepared_builder
from menet_jax.core.config import Config
from menet_jax.core.model import MEnet
from menet_jax.core.network import predict_function
from menet_jax.errors import TrainingDiverged, WorkdirError
from menet_jax.io import checkpoint as ckpt
from menet_jax.runtime.compilation import compile_programs
from menet_jax.training.distributed import (
    any_process,
    data_mesh,
    is_main_process,
    local_copy,
    process_rows,
    replicate,
    shard_batch,
)
from menet_jax.training.state import TrainState, create_state, make_optimizer
from menet_jax.training.step import TrainStep, train_batch_spec, train_step_jobs, validate


def make_sources(
    config: Config,
    data_dir: Optional[str] = None,
    *,
    dataset: Optional[str] = None,
    split: Optional[str] = None,
    manual_dir=None,
    tfds_dir=None,
):
    """(train, validation) sources: a folder or a prepared dataset (`menet_datasets.prepare`; built from `manual_dir`
    on first use), or the generated dataset.

    A dataset's `split` defaults to "train", or its only split (ECSSD); validation is its "validation" split
    when it has one, else a seeded hold-out of `config.val_size` examples, as for a folder.
    """
    if data_dir and dataset:
        raise menet_datasets.DataError("give either a data folder or a prepared dataset to train on, not both")
    if data_dir:
        folder = menet_datasets.FolderSource(data_dir)
        folder.verify()
        return menet_datasets.split(folder, config.val_size, seed=config.seed)
    if dataset:
        builder = prepared_builder(dataset, data_dir=tfds_dir, manual_dir=manual_dir)
        split = split or default_train_split(builder)
        train_source = TFDSSource(builder, split)
        if split != "train":
            print(f"note: training on split {split!r} of {dataset} ({len(train_source)} examples)", file=sys.stderr)
        if split != "validation" and "validation" in builder.info.splits:
            return train_source, TFDSSource(builder, "validation")
        return menet_datasets.split(train_source, config.val_size, seed=config.seed)
    return (
        menet_datasets.SyntheticSource(config.train_size, config.image_size, seed=config.seed),
        menet_datasets.SyntheticSource(config.val_size, config.image_size, seed=config.seed + 1_000_003),
    )


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    start_step: int
    final_step: int
    validation: dict  # empty when there was nothing to train
    checkpoint: Optional[Path]


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training; `step` is the step of the checkpoint saved on the way out (None: a
    second signal stopped it before that save, the latest checkpoint stands)."""

    def __init__(self, signum: int, step: Optional[int]):
        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


class _StopOnSignals:
    """SIGINT / SIGTERM while inside: set `signum` so that the loop stops between steps with a consistent state
    to save (the state is donated to each update); a second signal raises `Interrupted` at once.

    With `agree` (several processes) a signal only sets `received`; `signum` is set where all processes agree
    to stop (`_agreed_batches`), so that they all stop after the same step."""

    def __init__(self, agree: bool = False):
        self.signum, self.received, self._agree, self._previous = None, None, agree, {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise Interrupted(signum, None)
        self.received = signum
        if not self._agree:
            self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@jax.jit
def _and_finite(ok, loss):
    return ok & jnp.isfinite(loss)


def train(
    config: Config,
    workdir,
    *,
    data_dir: Optional[str] = None,
    dataset: Optional[str] = None,
    split: Optional[str] = None,
    manual_dir=None,
    tfds_dir=None,
    progress: bool = True,
) -> TrainResult:
    """Train `config.steps` steps in `workdir`, resuming from its newest intact checkpoint if there is one; the
    data: see `make_sources`.

    Every way out waits for the checkpoint writes in flight. A data error, SIGINT or SIGTERM first saves the
    current step (then raises DataError or `Interrupted`); a non-finite loss or state raises `TrainingDiverged`
    without saving. A second run on the same workdir is refused (`checkpoint.WorkdirError`).
    """
    workdir = Path(workdir).resolve()
    lock = ckpt.lock_workdir(workdir) if jax.process_count() == 1 else _lock_on_process_zero(workdir)
    try:
        return _train_locked(
            config,
            workdir,
            data_dir=data_dir,
            dataset=dataset,
            split=split,
            manual_dir=manual_dir,
            tfds_dir=tfds_dir,
            progress=progress,
        )
    finally:
        if lock is not None:
            lock.close()


def _lock_on_process_zero(workdir: Path):
    """Several processes: process 0 takes the lock (the others share its workdir, often on another machine's
    view of the same folder) and tells the others whether it could; all raise WorkdirError if not."""
    lock, refused = None, None
    if is_main_process():
        try:
            lock = ckpt.lock_workdir(workdir)
        except WorkdirError as error:
            refused = error
    if any_process([refused is not None])[0]:
        if lock is not None:
            lock.close()
        raise refused or WorkdirError(
            f"{workdir} is in use by another training run (process 0 could not "
            "lock it): wait for it to end or use another --workdir"
        )
    return lock


def _train_locked(config: Config, workdir: Path, *, data_dir, dataset, split, manual_dir, tfds_dir, progress):
    train_source, val_source = make_sources(
        config, data_dir, dataset=dataset, split=split, manual_dir=manual_dir, tfds_dir=tfds_dir
    )
    if config.batch_size > len(train_source):  # each batch would repeat images (and building it took minutes)
        raise menet_datasets.DataError(
            f"batch_size={config.batch_size} is larger than the training set ({len(train_source)} images after "
            f"the validation hold-out): set batch_size to {len(train_source)} or less"
        )
    mesh = data_mesh()
    multi, main = jax.process_count() > 1, is_main_process()
    state = create_state(MEnet.from_config(config), make_optimizer(config), config.seed)
    if multi:
        process_rows(config.batch_size, mesh)  # a batch that the devices cannot share: refused before any work
        state = replicate(state, mesh)  # restored onto the global mesh

    manager = ckpt.open_manager(workdir, config, write=False)
    try:
        if main:
            ckpt.remove_unfinished_writes(workdir)
        state, start_step = ckpt.restore_latest(manager, state)
        if start_step and config.steps <= start_step:
            if main:
                print(
                    f"note: {workdir} is at step {start_step}, past steps={config.steps}: nothing trained, its "
                    f"config.json kept (give --steps {start_step + 1} or more to go on)"
                    if config.steps < start_step
                    else f"note: {workdir} is already trained to step {start_step}: nothing to do",
                    file=sys.stderr,
                )
            return TrainResult(
                state=state,
                start_step=start_step,
                final_step=start_step,
                validation={},
                checkpoint=ckpt.step_dir(workdir, start_step),
            )
        if main:
            ckpt.write_config(workdir, config)
            ckpt.trim_log(workdir / "metrics.jsonl", start_step)
        state = replicate(state, mesh)
        with _StopOnSignals(agree=multi) as stop:
            # Compiled before the first step, in a child process on CPU (see `compilation`): the heap stays
            # unfragmented. Several processes compile here: the child would see only one device.
            eval_images = jax.ShapeDtypeStruct((config.batch_size, config.image_size, config.image_size, 3), np.uint8)
            gradients, update, predict = compile_programs(
                train_step_jobs(config, state, train_batch_spec(config))
                + [
                    (
                        predict_function,
                        (config,),
                        ({"params": state.params, "batch_stats": state.batch_stats}, eval_images),
                    )
                ],
                place="here" if multi else None,
            ).programs
            state = _loop(
                config,
                workdir,
                manager,
                state,
                start_step,
                TrainStep(gradients, update),
                predict,
                mesh,
                train_source,
                val_source,
                stop,
                progress,
            )
        latest = manager.latest_step()
    finally:
        manager.close()  # waits for the writes in flight, whatever stopped the run
    final_step = int(jax.device_get(state.step))
    scores = _validation(config, workdir, predict, state, val_source, final_step, baseline=True)
    return TrainResult(
        state=state,
        start_step=start_step,
        final_step=final_step,
        validation=scores,
        checkpoint=ckpt.step_dir(workdir, latest) if latest is not None else None,
    )


def _validation(config, workdir, predict, state, source, step, baseline=False):
    """Every process scores the whole source with its copy of the state (the same numbers); process 0 logs."""
    variables = local_copy({"params": state.params, "batch_stats": state.batch_stats})
    scores = validate(
        predict, variables, source, batch_size=config.batch_size, size=config.image_size, baseline=baseline
    )
    if is_main_process():
        _append_log(workdir, {"step": step, "split": "validation", **scores})
    return scores


def _agreed_batches(loader, stop):
    """`loader`'s (step, batch) pairs, for several processes: before each step (and once after the last) they
    exchange whether any has received a signal or met a data error, so that all stop after the same step: a
    signal anywhere sets `stop.signum` everywhere, a data error anywhere raises DataError everywhere."""
    batches = iter(loader)
    while True:
        item, error = None, None
        try:
            item = next(batches)
        except StopIteration:
            pass
        except menet_datasets.DataError as raised:
            error = raised
        signum, failed = any_process([stop.received or 0, error is not None])
        if failed:
            raise error or menet_datasets.DataError("another process of this run met a data error (see its output)")
        if signum and stop.signum is None:
            stop.signum = int(signum)
        if item is None:
            return
        yield item


def _loop(
    config, workdir, manager, state, start_step, train_step, predict, mesh, train_source, val_source, stop, progress
):
    """Steps start_step..config.steps; returns the final state. The loss is checked on the device each step
    (no sync); the check and the state's finiteness are read only where a checkpoint is saved or a log written."""
    saved = start_step if start_step else None  # the newest checkpoint known to be good
    done, finite = start_step, jnp.asarray(True)

    def save(step):
        nonlocal saved
        try:
            if not bool(finite):
                raise FloatingPointError
            ckpt.save(manager, step, state, force=True)
        except FloatingPointError:
            last = f"step {saved}" if saved else "none"
            raise TrainingDiverged(
                f"training diverged: the loss or the parameters are not finite at step {step}; "
                f"last good checkpoint: {last} (lower learning_rate to go on from it)"
            ) from None
        saved = step

    multi, main = jax.process_count() > 1, is_main_process()
    bar = tqdm(
        total=config.steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=not progress or not main,
        dynamic_ncols=True,
    )
    loader = menet_datasets.BatchLoader(
        train_source,
        start_step,
        config.steps - start_step,
        batch_size=config.batch_size,
        size=config.image_size,
        seed=config.seed,
        shuffle=config.shuffle,
        augment=config.augment,
        crop_min=config.crop_min,
        rows=process_rows(config.batch_size, mesh) if multi else None,
    )
    tick, tick_step = time.perf_counter(), start_step
    try:
        for step, batch in _agreed_batches(loader, stop) if multi else loader:
            if stop.signum:
                break
            state, metrics = train_step(state, shard_batch(batch, mesh, config.batch_size))
            done = step + 1
            finite = _and_finite(finite, metrics["loss"])
            bar.update(1)
            if done % config.log_every == 0 or done == config.steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                metrics["images_per_s"] = (done - tick_step) * config.batch_size / max(now - tick, 1e-9)
                tick, tick_step = now, done
                if not bool(finite):
                    last = f"step {saved}" if saved else "none"
                    raise TrainingDiverged(
                        f"training diverged: the loss is {metrics['loss']} at step {done}; last "
                        f"good checkpoint: {last} (lower learning_rate to go on from it)"
                    )
                if main:
                    _append_log(workdir, {"step": done, "split": "train", **metrics})
                bar.set_postfix(
                    loss=f"{metrics['loss']:.4f}",
                    metric=f"{metrics['metric']:.4f}",
                    ce=f"{metrics['ce']:.4f}",
                    lr=f"{metrics['lr']:.3g}",
                    img_s=f"{metrics['images_per_s']:.1f}",
                )
            if done % config.eval_every == 0 and done != config.steps:
                scores = _validation(config, workdir, predict, state, val_source, done)
                if main:
                    bar.write(f"step {done}: " + _format_scores(scores))
            if done % config.checkpoint_every == 0 or done == config.steps:
                save(done)
            if stop.signum:
                break
        if stop.signum:
            if saved != done:
                save(done)
            raise Interrupted(stop.signum, done)
    except menet_datasets.DataError as error:  # met between steps: the state is consistent, keep it
        if saved != done:
            save(done)
        raise menet_datasets.DataError(
            f"{error}; stopped at step {done} with a checkpoint of it: fix the data and rerun to resume"
        ) from error
    finally:
        loader.close()
        bar.close()
    return state


def _format_scores(scores) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in scores.items())


def _append_log(workdir: Path, record: dict) -> None:
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), **record}) + "\n")
