"""robustness.norms: the matrix-free estimators against exact Jacobians (chunked jacrev + SVD), Eq. 12's limit,
and the authors' Table III objective (a constant, so a zero gradient)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from robustness import norms

DIMS = ("NHWC", "HWIO", "NHWC")


def small_net(seed, activation=jax.nn.relu):
    """A tiny conv net (conv -> scale -> ReLU -> strided conv -> tanh -> dense): 1 x 6 x 6 x 2 -> 7, as a model
    f(params, x) and its params."""
    rng = np.random.default_rng(seed)
    params = {
        "k1": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
        "k2": jnp.asarray(rng.normal(size=(3, 3, 4, 3)) * 0.5, jnp.float32),
        "w": jnp.asarray(rng.normal(size=(27, 7)) * 0.3, jnp.float32),
        "scale": jnp.asarray(rng.uniform(0.5, 2, 4), jnp.float32),
    }

    def f(p, x):
        h = lax.conv_general_dilated(x, p["k1"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=DIMS) * p["scale"]
        h = jnp.tanh(lax.conv_general_dilated(activation(h), p["k2"], (2, 2), ((1, 1), (1, 1)), dimension_numbers=DIMS))
        return h.reshape(1, -1) @ p["w"]

    return f, params


@pytest.mark.parametrize("seed", [0, 1])
def test_power_iteration_and_hutchinson_match_the_exact_jacobian(seed):
    f, params = small_net(seed)
    x = jnp.asarray(np.random.default_rng(10 + seed).normal(size=(1, 6, 6, 2)), jnp.float32)
    jac = norms.jacobian_matrix(f, params, x, chunk=3)
    reference = jax.jacrev(lambda z: f(params, z).ravel())(x).reshape(7, -1)
    np.testing.assert_allclose(jac, reference, rtol=1e-5, atol=1e-6)
    exact = norms.exact_norms(jac)
    spectral = norms.spectral_norm(f, params, x, iters=500, tol=1e-7)
    assert spectral.converged and spectral.iterations > 3
    assert spectral.value <= exact["spectral"] * (1 + 1e-5)  # Rayleigh quotients: from below
    assert spectral.value == pytest.approx(exact["spectral"], rel=1e-3)
    frob = norms.frobenius_hutchinson(f, params, x, probes=400, chunk=100, key=jax.random.key(seed))
    assert frob.ci_low <= exact["frobenius"] <= frob.ci_high
    assert frob.value == pytest.approx(exact["frobenius"], rel=0.1)
    assert frob.ci_high - frob.ci_low < 0.2 * exact["frobenius"]


def test_power_iteration_of_a_plain_matrix_is_its_largest_singular_value():
    a = jnp.asarray(np.random.default_rng(0).normal(size=(9, 5)), jnp.float32)
    est = norms.power_iteration(
        jax.jit(lambda v: a @ v), jax.jit(lambda u: a.T @ u), (5,), key=jax.random.key(1), tol=1e-9, iters=1000
    )
    assert est.value == pytest.approx(np.linalg.norm(np.asarray(a, np.float64), 2), rel=1e-4)


def test_eq12_finite_differences_converge_to_the_exact_jvp_limit():
    f, params = small_net(3, activation=jnp.tanh)  # smooth: the difference quotients' error is O(t)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 6, 6, 2)), jnp.float32)
    directions = np.random.default_rng(2).normal(size=(300, 1, 6, 6, 2)).astype(np.float32)
    est = norms.directional_estimates(f, params, x, directions, ts=(1.0, 0.1, 0.01), normalize=False)
    limit = est.limit.mean
    errors = [abs(fd.mean - limit) for fd in est.finite_differences.values()]
    assert errors[0] > 3 * errors[1] > 9 * errors[2] and errors[2] < 1e-2 * limit
    # Un-normalised Gaussian directions with p = 2: E ||J n||^2 = ||J||_F^2.
    exact = norms.exact_norms(norms.jacobian_matrix(f, params, x))["frobenius"] ** 2
    assert abs(limit - exact) < 4 * est.limit.stderr
    unit = norms.directional_estimates(f, params, x, directions, ts=(0.01,))
    assert unit.limit.mean == pytest.approx(limit / directions[0].size, rel=0.2)  # E||Jn||^2 / d on spheres
    # The JSON form: the keys robustness.jacobian writes, the t schedule in order.
    record = est.to_json()
    assert [fd["t"] for fd in record["finite_differences"]] == [1.0, 0.1, 0.01] and record["directions"] == 300
    assert record["limit"] == {"mean": limit, "stderr": est.limit.stderr} and len(record["per_direction_limit"]) == 300
    assert "per_direction_limit" not in est.to_json(per_direction=False)


def test_the_authors_objective_has_a_zero_gradient_and_the_salient_probability_does_not():
    from menet_jax.core.config import get_config
    from menet_jax.core.model import MEnet, init_variables
    from robustness.jacobian import gradient_stats, output_function

    config = get_config("tiny", ["conv=plain"])  # the same network, quicker to compile than the CPU fast forms
    variables = init_variables(MEnet.from_config(config), 0)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)), jnp.float32)
    authors = output_function(config, "salient_prob", authors_objective=True)
    salient = output_function(config, "salient_prob")
    both = jax.jit(
        lambda z: (
            jnp.sum(authors(variables, z)),
            jax.grad(lambda u: jnp.sum(authors(variables, u)))(z),
            jax.grad(lambda u: jnp.sum(salient(variables, u)))(z),
        )
    )  # one compilation
    total, g_authors, g_salient = both(x)
    g_authors, g_salient = gradient_stats(g_authors), gradient_stats(g_salient)
    # sum over both channels is the constant 32 * 32 = 1024; in float32 its ulp is 1.2e-4 and the gradient's
    # entries are round-off far below the salient-probability ones.
    assert float(total) == pytest.approx(1024.0, abs=1e-3)
    assert g_salient["max"] > 1e-4
    assert g_authors["max"] < 1e-4 * g_salient["max"]
