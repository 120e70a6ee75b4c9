"""One SGD step as two jitted, sharded programs (gradient and update), and the validation scores.

The programs are built from the config alone (`gradients_program_for`, `update_program_for`), so that
`runtime.compilation` can rebuild and compile them in a child process.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import menet_datasets
from menet_jax.core.config import Config
from menet_jax.core.loss import menet_loss
from menet_jax.core.metrics import adaptive_fbeta, mae
from menet_jax.core.model import MEnet
from menet_jax.runtime.xla import compiler_options
from menet_jax.training.distributed import data_mesh
from menet_jax.training.state import TrainState, learning_rate_schedule, make_optimizer


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """One SGD step, called like a function: `state, metrics = step(state, batch)` (the state is donated).

    It runs as two programs, the gradient of the loss (the network's forward and backward pass) and the optimizer
    update, because on CPU each is fastest with different XLA options (`runtime.xla.compiler_options`); the paper
    step is faster so than as one program (`python benchmarks/train_step.py`, BENCHMARKS.md).
    """

    gradients: Any  # (state, batch) -> (gradients, new batch statistics, metrics)
    update: Any  # (state, gradients, batch statistics) -> new state; the state is donated

    def __call__(self, state, batch):
        grads, batch_stats, metrics = self.gradients(state, batch)
        return self.update(state, grads, batch_stats), metrics

    def compile(self, state, batch) -> "TrainStep":
        """Both programs compiled here for these arguments (arrays or ShapeDtypeStructs)."""
        grads, batch_stats, _ = self.gradients.eval_shape(state, batch)
        return TrainStep(
            self.gradients.lower(state, batch).compile(), self.update.lower(state, grads, batch_stats).compile()
        )


def make_train_step(model: MEnet, tx: optax.GradientTransformation, config: Config, mesh) -> TrainStep:
    """One jitted SGD step on a batch {"image": uint8 (B,S,S,3), "mask": (B,S,S) in {0,1}}, state donated.

    The batch is sharded over the mesh and the state replicated, so BatchNorm statistics and the loss are
    computed over the whole batch exactly as on one device.
    """
    return TrainStep(_gradients_program(model, config, mesh), _update_program(tx, mesh))


_NOISE_STREAM = 0x6E6F6973  # "nois": the input noise's key stream, apart from any other use of the seed


def _gradients_program(model: MEnet, config: Config, mesh):
    schedule = learning_rate_schedule(config)

    def gradients(state: TrainState, batch):
        images = batch["image"]
        if config.input_noise > 0:
            # Keyed by (seed, step), so a resumed run draws the same noise.
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), _NOISE_STREAM), state.step)
            noise = jax.random.normal(key, images.shape, jnp.float32)
            images = images.astype(jnp.float32) + config.input_noise * noise

        def loss_fn(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
            )
            loss, terms = menet_loss(
                outputs["features"], outputs["logits"], batch["mask"], variant=config.loss, ce_weight=config.ce_weight
            )
            return loss, (terms, updates["batch_stats"])

        (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = {"loss": loss, **terms, "lr": schedule(state.step), "grad_norm": optax.tree.norm(grads)}
        return grads, batch_stats, metrics

    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(
        gradients,
        in_shardings=(replicated, sharded),
        out_shardings=replicated,
        compiler_options=compiler_options(training=True),
    )


def _update_program(tx: optax.GradientTransformation, mesh):
    def update(state: TrainState, grads, batch_stats):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TrainState(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )

    replicated = NamedSharding(mesh, P())
    return jax.jit(
        update, donate_argnums=0, in_shardings=replicated, out_shardings=replicated, compiler_options=compiler_options()
    )


def gradients_program_for(config: Config):
    """The train step's gradient program from the config alone (a factory for `compilation.compile_programs`)."""
    return _gradients_program(MEnet.from_config(config), config, data_mesh())


def update_program_for(config: Config):
    """The train step's update program from the config alone (a factory for `compilation.compile_programs`)."""
    return _update_program(make_optimizer(config), data_mesh())


def train_step_jobs(config: Config, state: TrainState, batch) -> list:
    """`compilation.compile_programs` jobs for the two programs of a `TrainStep`: `TrainStep(*programs[:2])`."""
    return [
        (gradients_program_for, (config,), (state, batch)),
        (update_program_for, (config,), (state, state.params, state.batch_stats)),
    ]


def train_batch_spec(config: Config) -> dict:
    """Shapes and dtypes of a training batch (what `menet_datasets.BatchLoader` yields)."""
    size, n = config.image_size, config.batch_size
    return {
        "image": jax.ShapeDtypeStruct((n, size, size, 3), np.uint8),
        "mask": jax.ShapeDtypeStruct((n, size, size), np.uint8),
    }


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
