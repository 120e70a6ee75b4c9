"""Compiling in a child process: the same program as compiled here, donation kept, a failing child falls back."""

import multiprocessing

import jax
import numpy as np
import pytest

from menet_jax.core.config import get_config
from menet_jax.core.model import MEnet
from menet_jax.runtime.compilation import argument_specs, compile_place, compile_programs
from menet_jax.training.distributed import data_mesh, replicate, shard_batch
from menet_jax.training.state import create_state, make_optimizer
from menet_jax.training.step import TrainStep, gradients_program_for, train_step_jobs


def fails_in_a_child(config):
    """A factory that only works in the parent: the child's failure must not stop the compilation."""
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("no compiling in a child")
    return gradients_program_for(config)


def _state_and_batch(config):
    model, tx, mesh = MEnet.from_config(config), make_optimizer(config), data_mesh()
    rng = np.random.default_rng(0)
    b, s = config.batch_size, config.image_size
    batch = {
        "image": rng.integers(0, 256, (b, s, s, 3)).astype(np.uint8),
        "mask": (rng.random((b, s, s)) > 0.7).astype(np.uint8),
    }
    return replicate(create_state(model, tx, 0), mesh), shard_batch(batch, mesh)


def test_a_step_compiled_in_a_child_equals_the_one_compiled_here():
    config = get_config("tiny", [])
    results = {}
    for place in ("here", "child"):
        state, batch = _state_and_batch(config)
        compiled = compile_programs(train_step_jobs(config, state, batch), place=place)
        assert compiled.where == place and compiled.seconds > 0
        step = TrainStep(*compiled.programs)
        first = jax.tree.leaves(state.params)[0]
        for _ in range(2):
            state, metrics = step(state, batch)
        assert first.is_deleted()  # the state is still donated
        results[place] = (jax.tree.map(np.asarray, state), float(metrics["loss"]))
    (here, loss_here), (child, loss_child) = results["here"], results["child"]
    assert int(child.step) == 2
    assert loss_child == pytest.approx(loss_here, rel=1e-6)
    for a, b in zip(jax.tree.leaves(here), jax.tree.leaves(child)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_a_failing_child_is_one_warning_and_the_program_is_compiled_here():
    config = get_config("tiny", [])
    state, batch = _state_and_batch(config)
    with pytest.warns(RuntimeWarning, match="fails_in_a_child in a child process failed"):
        compiled = compile_programs([(fails_in_a_child, (config,), (state, batch))], place="child")
    assert compiled.where == "here"
    grads, _, metrics = compiled.programs[0](state, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0


def test_place_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MENET_COMPILE", "here")
    assert compile_place() == "here"
    assert compile_place("child") == "child"
    monkeypatch.setenv("MENET_COMPILE", "elsewhere")
    with pytest.raises(ValueError, match="MENET_COMPILE must be one of auto, child, here, got 'elsewhere'"):
        compile_place()


def test_specs_keep_shape_dtype_and_weak_type():
    specs = argument_specs({"a": np.zeros((2, 3), np.uint8), "b": jax.numpy.asarray(1.0)})
    assert (specs["a"].shape, specs["a"].dtype) == ((2, 3), np.uint8)
    assert specs["b"].shape == () and specs["b"].weak_type
