"""Training library: state, optimiser, the jitted sharded train step, validation, and the resumable loop.

`train(config, workdir, ...)` is what `python -m menet_jax.train` runs; a notebook can call it, or use the
pieces (`create_state`, `make_train_step`, `make_predict_fn`, `validate`) directly.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

import datasets
from menet_jax import checkpoint as ckpt
from menet_jax.compilation import compile_programs
from menet_jax.config import Config
from menet_jax.layers import compiler_options
from menet_jax.loss import menet_loss
from menet_jax.metrics import adaptive_fbeta, mae
from menet_jax.model import MEnet, init_variables
from menet_jax.saliency import saliency_maps


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def enable_compilation_cache() -> None:
    """Persistent XLA cache (JAX_COMPILATION_CACHE_DIR, default ~/.cache/menet_jax/xla): a repeated run skips
    compiling its programs (tens of seconds on a CPU), except a train step compiled in a child (`compilation`)."""
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", str(Path.home() / ".cache" / "menet_jax" / "xla"))


# ----------------------------------------------------------------------------------------------------- optimiser
def learning_rate_schedule(config: Config):
    """Caffe 'multistep': the base rate multiplied by `lr_decay` at each boundary."""
    return optax.piecewise_constant_schedule(
        config.learning_rate, {int(b): config.lr_decay for b in config.lr_boundaries})


def conv_bias_mask(params):
    """True on convolution biases (Caffe lr_mult 2, decay_mult 0); BatchNorm shifts are ordinary weights."""
    def is_conv_bias(path, _):
        names = [getattr(k, "key", str(k)) for k in path]
        return names[-1] == "bias" and "conv" in names[-2].lower()
    return jax.tree_util.tree_map_with_path(is_conv_bias, params)


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """Caffe SGD: v = momentum v + lr (g + wd w); conv biases get lr x `bias_lr_mult` and no weight decay.

    optax applies the learning rate after the momentum trace, Caffe before; the two agree except for the few
    steps right after a learning-rate drop.
    """
    def not_conv_bias(params):
        return jax.tree_util.tree_map(lambda b: not b, conv_bias_mask(params))

    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=not_conv_bias),
        optax.masked(optax.scale(config.bias_lr_mult), conv_bias_mask),
        optax.sgd(learning_rate_schedule(config), momentum=config.momentum),
    )


def create_state(model: MEnet, tx: optax.GradientTransformation, seed: int = 0) -> TrainState:
    variables = init_variables(model, seed)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                      batch_stats=variables["batch_stats"], opt_state=jax.jit(tx.init)(variables["params"]))


# ------------------------------------------------------------------------------------------------------ sharding
def data_mesh(devices=None) -> jax.sharding.Mesh:
    """A one-axis mesh over all local devices: the batch is split along it, the state replicated."""
    devices = np.asarray(devices if devices is not None else jax.local_devices())
    return jax.sharding.Mesh(devices, ("data",))


def shard_batch(batch, mesh):
    n = len(mesh.devices.flat)
    first = next(iter(batch.values())).shape[0]
    if first % n:
        raise ValueError(f"batch size {first} is not divisible by the {n} devices")
    return jax.device_put(batch, NamedSharding(mesh, P("data")))


def replicate(tree, mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


# ---------------------------------------------------------------------------------------------------- train step
@dataclasses.dataclass(frozen=True)
class TrainStep:
    """One SGD step, called like a function: `state, metrics = step(state, batch)` (the state is donated).

    It runs as two programs, the gradient of the loss (the network's forward and backward pass) and the optimizer
    update, because on CPU each is fastest with different XLA options (`layers.compiler_options`): the paper step
    took 5.06 s against 5.20 s as one program (`python benchmarks/train_step.py`, BENCHMARKS.md).
    """
    gradients: Any   # (state, batch) -> (gradients, new batch statistics, metrics)
    update: Any      # (state, gradients, batch statistics) -> new state; the state is donated

    def __call__(self, state, batch):
        grads, batch_stats, metrics = self.gradients(state, batch)
        return self.update(state, grads, batch_stats), metrics

    def compile(self, state, batch) -> "TrainStep":
        """Both programs compiled here for these arguments (arrays or ShapeDtypeStructs)."""
        grads, batch_stats, _ = self.gradients.eval_shape(state, batch)
        return TrainStep(self.gradients.lower(state, batch).compile(),
                         self.update.lower(state, grads, batch_stats).compile())


def make_train_step(model: MEnet, tx: optax.GradientTransformation, config: Config, mesh) -> TrainStep:
    """One jitted SGD step on a batch {"image": uint8 (B,S,S,3), "mask": (B,S,S) in {0,1}}, state donated.

    The batch is sharded over the mesh and the state replicated, so BatchNorm statistics and the loss are
    computed over the whole batch exactly as on one device.
    """
    return TrainStep(_gradients_program(model, config, mesh), _update_program(tx, mesh))


def _gradients_program(model: MEnet, config: Config, mesh):
    schedule = learning_rate_schedule(config)

    def gradients(state: TrainState, batch):
        def loss_fn(params):
            outputs, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                           train=True, mutable=["batch_stats"])
            loss, terms = menet_loss(outputs["features"], outputs["logits"], batch["mask"],
                                     variant=config.loss, ce_weight=config.ce_weight)
            return loss, (terms, updates["batch_stats"])

        (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = {"loss": loss, **terms, "lr": schedule(state.step), "grad_norm": optax.tree.norm(grads)}
        return grads, batch_stats, metrics

    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(gradients, in_shardings=(replicated, sharded), out_shardings=replicated,
                   compiler_options=compiler_options(training=True))


def _update_program(tx: optax.GradientTransformation, mesh):
    def update(state: TrainState, grads, batch_stats):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state)

    replicated = NamedSharding(mesh, P())
    return jax.jit(update, donate_argnums=0, in_shardings=replicated, out_shardings=replicated,
                   compiler_options=compiler_options())


def gradients_program_for(config: Config):
    """The train step's gradient program from the config alone (a factory for `compilation.compile_programs`)."""
    return _gradients_program(MEnet.from_config(config), config, data_mesh())


def update_program_for(config: Config):
    """The train step's update program from the config alone (a factory for `compilation.compile_programs`)."""
    return _update_program(make_optimizer(config), data_mesh())


def train_step_jobs(config: Config, state: TrainState, batch) -> list:
    """`compilation.compile_programs` jobs for the two programs of a `TrainStep`: `TrainStep(*programs[:2])`."""
    return [(gradients_program_for, (config,), (state, batch)),
            (update_program_for, (config,), (state, state.params, state.batch_stats))]


def train_batch_spec(config: Config) -> dict:
    """Shapes and dtypes of a training batch (what `datasets.BatchLoader` yields)."""
    size, n = config.image_size, config.batch_size
    return {"image": jax.ShapeDtypeStruct((n, size, size, 3), np.uint8),
            "mask": jax.ShapeDtypeStruct((n, size, size), np.uint8)}


# ---------------------------------------------------------------------------------------------------- evaluation
def make_predict_fn(model: MEnet, background: str = "eq5", normalize: bool = True):
    """Jitted images -> {"metric", "ce"} saliency maps in [0, 1] at the network's resolution (eval-mode BN),
    normalised or raw (`saliency.saliency_maps`)."""
    def predict(variables, images, key=None):
        outputs = model.apply(variables, images, train=False)
        return saliency_maps(outputs, background=background, key=key, normalize=normalize)
    return jax.jit(predict, compiler_options=compiler_options())


def predict_fn_for(config: Config):
    """`make_predict_fn` from the config alone (a factory for `compilation.compile_programs`)."""
    return make_predict_fn(MEnet.from_config(config))


@jax.jit
def _score(maps, gt):
    return {name: {"mae": mae(m, gt), "adp_f": adaptive_fbeta(m, gt)} for name, m in maps.items()}


def validate(predict, variables, source, *, batch_size: int, size: int, baseline: bool = False):
    """MAE and adaptive F-beta of both maps, averaged over `source` (at the network's resolution).

    With `baseline`, also scores the trivial all-background predictor (a map of zeros) as "all_background".
    """
    per_image = {}
    for batch in datasets.eval_batches(source, batch_size=batch_size, size=size):
        maps = predict(variables, batch["image"])
        if baseline:
            maps = {**maps, "all_background": jnp.zeros(batch["mask"].shape, jnp.float32)}
        for name, per_metric in jax.device_get(_score(maps, batch["mask"])).items():
            for metric, values in per_metric.items():
                per_image.setdefault(f"{name}/{metric}", []).append(values[batch["valid"]])
    return {key: float(np.concatenate(values).mean()) for key, values in per_image.items()}


# ---------------------------------------------------------------------------------------------------------- loop
def make_sources(config: Config, data_dir: Optional[str] = None, *, dataset: Optional[str] = None,
                 split: Optional[str] = None, manual_dir=None, tfds_dir=None):
    """(train, validation) sources: a folder or a prepared dataset (`datasets.prepare`; built from `manual_dir`
    on first use), or the generated dataset.

    A dataset's `split` defaults to "train", or its only split (ECSSD); validation is its "validation" split
    when it has one, else a seeded hold-out of `config.val_size` examples, as for a folder.
    """
    if data_dir and dataset:
        raise datasets.DataError("give either a data folder or a prepared dataset to train on, not both")
    if data_dir:
        folder = datasets.FolderSource(data_dir)
        folder.verify()
        return datasets.split(folder, config.val_size, seed=config.seed)
    if dataset:
        from datasets.tfds_source import TFDSSource, default_train_split, prepared_builder
        builder = prepared_builder(dataset, data_dir=tfds_dir, manual_dir=manual_dir)
        split = split or default_train_split(builder)
        train_source = TFDSSource(builder, split)
        if split != "train":
            print(f"note: training on split {split!r} of {dataset} ({len(train_source)} examples)", file=sys.stderr)
        if split != "validation" and "validation" in builder.info.splits:
            return train_source, TFDSSource(builder, "validation")
        return datasets.split(train_source, config.val_size, seed=config.seed)
    return (datasets.SyntheticSource(config.train_size, config.image_size, seed=config.seed),
            datasets.SyntheticSource(config.val_size, config.image_size, seed=config.seed + 1_000_003))


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    start_step: int
    final_step: int
    validation: dict          # empty when there was nothing to train
    checkpoint: Optional[Path]


class TrainingDiverged(FloatingPointError):
    """The loss or the train state became non-finite; nothing past the last good checkpoint was saved."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training; `step` is the step of the checkpoint saved on the way out (None: a
    second signal stopped it before that save, the latest checkpoint stands)."""

    def __init__(self, signum: int, step: Optional[int]):
        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


class _StopOnSignals:
    """SIGINT / SIGTERM while inside: set `signum` so that the loop stops between steps with a consistent state
    to save (the state is donated to each update); a second signal raises `Interrupted` at once."""

    def __init__(self):
        self.signum, self._previous = None, {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum, None)
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():   # handlers can only be set there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@jax.jit
def _and_finite(ok, loss):
    return ok & jnp.isfinite(loss)


def train(config: Config, workdir, *, data_dir: Optional[str] = None, dataset: Optional[str] = None,
          split: Optional[str] = None, manual_dir=None, tfds_dir=None, progress: bool = True) -> TrainResult:
    """Train `config.steps` steps in `workdir`, resuming from its newest intact checkpoint if there is one; the
    data: see `make_sources`.

    Every way out waits for the checkpoint writes in flight. A data error, SIGINT or SIGTERM first saves the
    current step (then raises DataError or `Interrupted`); a non-finite loss or state raises `TrainingDiverged`
    without saving. A second run on the same workdir is refused (`checkpoint.WorkdirError`).
    """
    workdir = Path(workdir).resolve()
    lock = ckpt.lock_workdir(workdir)
    try:
        return _train_locked(config, workdir, data_dir=data_dir, dataset=dataset, split=split,
                             manual_dir=manual_dir, tfds_dir=tfds_dir, progress=progress)
    finally:
        lock.close()


def _train_locked(config: Config, workdir: Path, *, data_dir, dataset, split, manual_dir, tfds_dir, progress):
    train_source, val_source = make_sources(config, data_dir, dataset=dataset, split=split, manual_dir=manual_dir,
                                            tfds_dir=tfds_dir)
    mesh = data_mesh()
    model = MEnet.from_config(config)
    tx = make_optimizer(config)
    state = create_state(model, tx, config.seed)

    manager = ckpt.open_manager(workdir, config, write=False)
    try:
        ckpt.remove_unfinished_writes(workdir)
        state, start_step = ckpt.restore_latest(manager, state)
        if start_step and config.steps <= start_step:
            print(f"note: {workdir} is at step {start_step}, past steps={config.steps}: nothing trained, its "
                  f"config.json kept (give --steps {start_step + 1} or more to go on)" if config.steps < start_step
                  else f"note: {workdir} is already trained to step {start_step}: nothing to do", file=sys.stderr)
            return TrainResult(state=state, start_step=start_step, final_step=start_step, validation={},
                               checkpoint=ckpt.step_dir(workdir, start_step))
        ckpt.write_config(workdir, config)
        ckpt.trim_log(workdir / "metrics.jsonl", start_step)
        state = replicate(state, mesh)
        with _StopOnSignals() as stop:
            # Compiled before the first step, in a child process on CPU (see `compilation`): the heap stays
            # unfragmented.
            eval_images = jax.ShapeDtypeStruct((config.batch_size, config.image_size, config.image_size, 3),
                                               np.uint8)
            gradients, update, predict = compile_programs(
                train_step_jobs(config, state, train_batch_spec(config)) + [
                    (predict_fn_for, (config,),
                     ({"params": state.params, "batch_stats": state.batch_stats}, eval_images))]).programs
            state = _loop(config, workdir, manager, state, start_step, TrainStep(gradients, update), predict,
                          mesh, train_source, val_source, stop, progress)
        latest = manager.latest_step()
    finally:
        manager.close()   # waits for the writes in flight, whatever stopped the run
    final_step = int(jax.device_get(state.step))
    scores = _validation(config, workdir, predict, state, val_source, final_step, baseline=True)
    return TrainResult(state=state, start_step=start_step, final_step=final_step, validation=scores,
                       checkpoint=ckpt.step_dir(workdir, latest) if latest is not None else None)


def _validation(config, workdir, predict, state, source, step, baseline=False):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    scores = validate(predict, variables, source, batch_size=config.batch_size, size=config.image_size,
                      baseline=baseline)
    _append_log(workdir, {"step": step, "split": "validation", **scores})
    return scores


def _loop(config, workdir, manager, state, start_step, train_step, predict, mesh, train_source, val_source, stop,
          progress):
    """Steps start_step..config.steps; returns the final state. The loss is checked on the device each step
    (no sync); the check and the state's finiteness are read only where a checkpoint is saved or a log written."""
    saved = start_step if start_step else None      # the newest checkpoint known to be good
    done, finite = start_step, jnp.asarray(True)

    def save(step):
        nonlocal saved
        try:
            if not bool(finite):
                raise FloatingPointError
            ckpt.save(manager, step, state, force=True)
        except FloatingPointError:
            last = f"step {saved}" if saved else "none"
            raise TrainingDiverged(f"training diverged: the loss or the parameters are not finite at step {step}; "
                                   f"last good checkpoint: {last} (lower learning_rate to go on from it)") from None
        saved = step

    bar = tqdm(total=config.steps, initial=start_step, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True)
    loader = datasets.BatchLoader(train_source, start_step, config.steps - start_step, batch_size=config.batch_size,
                                  size=config.image_size, seed=config.seed, shuffle=config.shuffle,
                                  augment=config.augment, crop_min=config.crop_min)
    tick, tick_step = time.perf_counter(), start_step
    try:
        for step, batch in loader:
            if stop.signum:
                break
            state, metrics = train_step(state, shard_batch(batch, mesh))
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
                    raise TrainingDiverged(f"training diverged: the loss is {metrics['loss']} at step {done}; last "
                                           f"good checkpoint: {last} (lower learning_rate to go on from it)")
                _append_log(workdir, {"step": done, "split": "train", **metrics})
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", metric=f"{metrics['metric']:.4f}",
                                ce=f"{metrics['ce']:.4f}", lr=f"{metrics['lr']:.3g}",
                                img_s=f"{metrics['images_per_s']:.1f}")
            if done % config.eval_every == 0 and done != config.steps:
                bar.write(f"step {done}: " + _format_scores(
                    _validation(config, workdir, predict, state, val_source, done)))
            if done % config.checkpoint_every == 0 or done == config.steps:
                save(done)
            if stop.signum:
                break
        if stop.signum:
            if saved != done:
                save(done)
            raise Interrupted(stop.signum, done)
    except datasets.DataError as error:   # met between steps: the state is consistent, keep it
        if saved != done:
            save(done)
        raise datasets.DataError(f"{error}; stopped at step {done} with a checkpoint of it: fix the data and "
                                 "rerun to resume") from error
    finally:
        loader.close()
        bar.close()
    return state


def _format_scores(scores) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in scores.items())


def _append_log(workdir: Path, record: dict) -> None:
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), **record}) + "\n")
