"""Training library: state, optimiser, the jitted sharded train step, validation, and the resumable loop.

`train(config, workdir, ...)` is what `python -m menet_jax.train` runs; a notebook can call it, or use the
pieces (`create_state`, `make_train_step`, `make_predict_fn`, `validate`) directly.

Several processes (machines) train one run together after `initialize_distributed`: the "data" mesh spans every
process's devices, each process builds only its rows of every global batch (`process_rows`), and the global batch,
hence every step, is the one a single process with as many devices computes. Process 0 alone takes the workdir
lock and writes config.json and metrics.jsonl; all processes save and restore the checkpoints together (Orbax
coordinates them) and agree each step on stopping (a signal or a data error met by any process).
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

import menet_datasets
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


# --------------------------------------------------------------------------------------------------- distributed
class DistributedError(RuntimeError):
    """A multi-process run that cannot start as asked (bad flags, no coordinator): one-line message."""


DISTRIBUTED_ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_distributed(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, *, environ=None, timeout: int = 300) -> bool:
    """Join a multi-process run (`jax.distributed.initialize`) when asked; call it before any other JAX use.

    Each argument left None is read from JAX_COORDINATOR_ADDRESS (HOST:PORT of process 0, which hosts the
    coordinator), JAX_NUM_PROCESSES and JAX_PROCESS_ID. Nothing is done (False) when none of the three is given or
    there is one process; with a coordinator but no process count or id, JAX's cluster detection (SLURM, Open
    MPI, ...) fills them in. On CPU the processes' collectives go over TCP with gloo (unless
    JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise). `timeout`: seconds to wait for every process to join.
    """
    environ = os.environ if environ is None else environ

    def number(value, name):
        if value is None or value == "":
            return None
        try:
            return int(value)
        except ValueError:
            raise DistributedError(f"{name} must be an integer, got {value!r}") from None

    coordinator = coordinator or environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = number(num_processes if num_processes is not None else environ.get("JAX_NUM_PROCESSES"),
                           "the number of processes")
    process_id = number(process_id if process_id is not None else environ.get("JAX_PROCESS_ID"), "the process id")
    if coordinator is None and num_processes is None and process_id is None:
        return False
    if num_processes == 1 and process_id in (None, 0):
        return False
    if coordinator is None:
        raise DistributedError("a multi-process run needs the coordinator's address: --coordinator HOST:PORT "
                               "(or JAX_COORDINATOR_ADDRESS), the same for every process")
    if num_processes is not None and (num_processes < 1 or process_id is not None
                                      and not 0 <= process_id < num_processes):
        raise DistributedError(f"the process id must be in 0..{num_processes - 1} and the number of processes "
                               f"positive, got process id {process_id} of {num_processes}")
    if not environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout)
    except Exception as error:   # a timeout, an unreachable coordinator, a port in use: one line
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DistributedError(f"could not join the run coordinated at {coordinator} as process {process_id} of "
                               f"{num_processes}: {first[:300]}") from None
    return True


def is_main_process() -> bool:
    """Whether this process writes the run's files and log lines (process 0; always, with one process)."""
    return jax.process_index() == 0


def _any_process(values) -> np.ndarray:
    """The element-wise maximum of each process's int `values` (a collective: every process must call it)."""
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int32))).max(axis=0)


# ------------------------------------------------------------------------------------------------------ sharding
def data_mesh(devices=None) -> jax.sharding.Mesh:
    """A one-axis mesh over all devices (every process's, in a multi-process run): the batch is split along it,
    the state replicated."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    return jax.sharding.Mesh(devices, ("data",))


def process_rows(batch_size: int, mesh) -> tuple[int, int]:
    """(start, stop): the rows of a global batch of `batch_size` that this process's devices hold, what it reads
    (all of them with one process)."""
    n = len(mesh.devices.flat)
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} is not divisible by the {n} devices")
    indices = NamedSharding(mesh, P("data")).addressable_devices_indices_map((batch_size,))
    starts = sorted(index[0].indices(batch_size)[:2] for index in indices.values())
    if any(a[1] != b[0] for a, b in zip(starts, starts[1:])):
        raise ValueError(f"this process's devices hold rows {starts} of the batch, not one contiguous block")
    return starts[0][0], starts[-1][1]


def shard_batch(batch, mesh, batch_size: Optional[int] = None):
    """The batch split along the mesh's "data" axis. With several processes `batch` is this process's rows
    (`process_rows`) of a global batch of `batch_size`, and the result is the global array."""
    if jax.process_count() > 1:
        sharding = NamedSharding(mesh, P("data"))
        return {key: jax.make_array_from_process_local_data(sharding, value, (batch_size, *value.shape[1:]))
                for key, value in batch.items()}
    n = len(mesh.devices.flat)
    first = next(iter(batch.values())).shape[0]
    if first % n:
        raise ValueError(f"batch size {first} is not divisible by the {n} devices")
    return jax.device_put(batch, NamedSharding(mesh, P("data")))


def replicate(tree, mesh):
    sharding = NamedSharding(mesh, P())
    if jax.process_count() > 1:   # from host values, the same on every process (a jax.Array on one device cannot
        return jax.tree_util.tree_map(   # be put on other processes' devices)
            lambda x: x if getattr(x, "sharding", None) == sharding else jax.device_put(np.asarray(x), sharding),
            tree)
    return jax.device_put(tree, sharding)


def local_copy(tree):
    """This process's copy of a replicated tree, on its first device (what a single-device program takes)."""
    if jax.device_count() == 1:
        return tree
    return jax.tree_util.tree_map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


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
    """Shapes and dtypes of a training batch (what `menet_datasets.BatchLoader` yields)."""
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
    for batch in menet_datasets.eval_batches(source, batch_size=batch_size, size=size):
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
        from menet_datasets.tfds_source import TFDSSource, default_train_split, prepared_builder
        builder = prepared_builder(dataset, data_dir=tfds_dir, manual_dir=manual_dir)
        split = split or default_train_split(builder)
        train_source = TFDSSource(builder, split)
        if split != "train":
            print(f"note: training on split {split!r} of {dataset} ({len(train_source)} examples)", file=sys.stderr)
        if split != "validation" and "validation" in builder.info.splits:
            return train_source, TFDSSource(builder, "validation")
        return menet_datasets.split(train_source, config.val_size, seed=config.seed)
    return (menet_datasets.SyntheticSource(config.train_size, config.image_size, seed=config.seed),
            menet_datasets.SyntheticSource(config.val_size, config.image_size, seed=config.seed + 1_000_003))


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
    lock = ckpt.lock_workdir(workdir) if jax.process_count() == 1 else _lock_on_process_zero(workdir)
    try:
        return _train_locked(config, workdir, data_dir=data_dir, dataset=dataset, split=split,
                             manual_dir=manual_dir, tfds_dir=tfds_dir, progress=progress)
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
        except ckpt.WorkdirError as error:
            refused = error
    if _any_process([refused is not None])[0]:
        if lock is not None:
            lock.close()
        raise refused or ckpt.WorkdirError(f"{workdir} is in use by another training run (process 0 could not "
                                           "lock it): wait for it to end or use another --workdir")
    return lock


def _train_locked(config: Config, workdir: Path, *, data_dir, dataset, split, manual_dir, tfds_dir, progress):
    train_source, val_source = make_sources(config, data_dir, dataset=dataset, split=split, manual_dir=manual_dir,
                                            tfds_dir=tfds_dir)
    mesh = data_mesh()
    multi, main = jax.process_count() > 1, is_main_process()
    model = MEnet.from_config(config)
    tx = make_optimizer(config)
    state = create_state(model, tx, config.seed)
    if multi:
        process_rows(config.batch_size, mesh)   # a batch that the devices cannot share: refused before any work
        state = replicate(state, mesh)          # restored onto the global mesh

    manager = ckpt.open_manager(workdir, config, write=False)
    try:
        if main:
            ckpt.remove_unfinished_writes(workdir)
        state, start_step = ckpt.restore_latest(manager, state)
        if start_step and config.steps <= start_step:
            if main:
                print(f"note: {workdir} is at step {start_step}, past steps={config.steps}: nothing trained, its "
                      f"config.json kept (give --steps {start_step + 1} or more to go on)"
                      if config.steps < start_step
                      else f"note: {workdir} is already trained to step {start_step}: nothing to do",
                      file=sys.stderr)
            return TrainResult(state=state, start_step=start_step, final_step=start_step, validation={},
                               checkpoint=ckpt.step_dir(workdir, start_step))
        if main:
            ckpt.write_config(workdir, config)
            ckpt.trim_log(workdir / "metrics.jsonl", start_step)
        state = replicate(state, mesh)
        with _StopOnSignals(agree=multi) as stop:
            # Compiled before the first step, in a child process on CPU (see `compilation`): the heap stays
            # unfragmented. Several processes compile here: the child would see only one device.
            eval_images = jax.ShapeDtypeStruct((config.batch_size, config.image_size, config.image_size, 3),
                                               np.uint8)
            gradients, update, predict = compile_programs(
                train_step_jobs(config, state, train_batch_spec(config)) + [
                    (predict_fn_for, (config,),
                     ({"params": state.params, "batch_stats": state.batch_stats}, eval_images))],
                place="here" if multi else None).programs
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
    """Every process scores the whole source with its copy of the state (the same numbers); process 0 logs."""
    variables = local_copy({"params": state.params, "batch_stats": state.batch_stats})
    scores = validate(predict, variables, source, batch_size=config.batch_size, size=config.image_size,
                      baseline=baseline)
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
        signum, failed = _any_process([stop.received or 0, error is not None])
        if failed:
            raise error or menet_datasets.DataError("another process of this run met a data error (see its output)")
        if signum and stop.signum is None:
            stop.signum = int(signum)
        if item is None:
            return
        yield item


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

    multi, main = jax.process_count() > 1, is_main_process()
    bar = tqdm(total=config.steps, initial=start_step, desc="train", unit="step", disable=not progress or not main,
               dynamic_ncols=True)
    loader = menet_datasets.BatchLoader(train_source, start_step, config.steps - start_step,
                                        batch_size=config.batch_size, size=config.image_size, seed=config.seed,
                                        shuffle=config.shuffle, augment=config.augment, crop_min=config.crop_min,
                                        rows=process_rows(config.batch_size, mesh) if multi else None)
    tick, tick_step = time.perf_counter(), start_step
    try:
        for step, batch in (_agreed_batches(loader, stop) if multi else loader):
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
                    raise TrainingDiverged(f"training diverged: the loss is {metrics['loss']} at step {done}; last "
                                           f"good checkpoint: {last} (lower learning_rate to go on from it)")
                if main:
                    _append_log(workdir, {"step": done, "split": "train", **metrics})
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", metric=f"{metrics['metric']:.4f}",
                                ce=f"{metrics['ce']:.4f}", lr=f"{metrics['lr']:.3g}",
                                img_s=f"{metrics['images_per_s']:.1f}")
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
    except menet_datasets.DataError as error:   # met between steps: the state is consistent, keep it
        if saved != done:
            save(done)
        raise menet_datasets.DataError(f"{error}; stopped at step {done} with a checkpoint of it: fix the data and "
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
