"""The train state and the optimiser: Caffe SGD as the authors configured it."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from menet_jax.core.config import Config
from menet_jax.core.model import MEnet, init_variables


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def learning_rate_schedule(config: Config):
    """Caffe 'multistep': the base rate multiplied by `lr_decay` at each boundary."""
    return optax.piecewise_constant_schedule(
        config.learning_rate, {int(b): config.lr_decay for b in config.lr_boundaries}
    )


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
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=jax.jit(tx.init)(variables["params"]),
    )
