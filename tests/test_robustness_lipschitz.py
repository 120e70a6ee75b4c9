"""robustness.lipschitz: per-layer conv norms against exact SVDs, certified bounds on random networks, the
generic jaxpr bound against the hand-derived MEnet one, unbounded operations and the CLI."""

import dataclasses
import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from robustness import lipschitz as L
from robustness import norms

DIMS = ("NHWC", "HWIO", "NHWC")


def conv_fn(kernel, **kw):
    """The convolution as a model f(params, x) with the kernel built in (params None)."""
    kernel = jnp.asarray(kernel, jnp.float32)
    return lambda params, x: lax.conv_general_dilated(x, kernel, dimension_numbers=DIMS, **kw)


def exact_spectral(f, x, params=None):
    return norms.exact_norms(norms.jacobian_matrix(f, params, x))["spectral"]


def test_fft_bound_is_exact_for_circular_convolutions():
    k = np.random.default_rng(0).normal(size=(3, 3, 3, 4))
    circular = lambda params, x: conv_fn(k, window_strides=(1, 1), padding="VALID")(
        params, jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    )
    x = jnp.zeros((1, 7, 7, 3))
    bound = L.conv_fft_bound(k, (7, 7), padding=((0, 0), (0, 0)))
    assert bound == pytest.approx(exact_spectral(circular, x), rel=1e-5)


@pytest.mark.parametrize("case", ["same", "strided", "transposed", "dilated_kernel", "folded", "grouped"])
def test_conv_layer_norms_against_exact_svd(case):
    rng = np.random.default_rng(zlib.crc32(case.encode()))  # str hash() is salted per process: not reproducible
    cin, groups = (4, 2) if case == "grouped" else (3, 1)
    k = rng.normal(size=(3, 3, cin // groups, 4))
    kw = dict(
        window_strides=(1, 1),
        padding=((1, 1), (1, 1)),
        lhs_dilation=(1, 1),
        rhs_dilation=(1, 1),
        feature_group_count=groups,
    )
    if case == "strided":
        kw["window_strides"] = (2, 2)
    if case == "transposed":
        kw.update(lhs_dilation=(2, 2), padding=((1, 2), (1, 2)))
    if case == "dilated_kernel":
        kw.update(rhs_dilation=(2, 2), padding=((2, 2), (2, 2)))
    scale = rng.uniform(0.2, 3.0, cin) if case == "folded" else None
    x = jnp.zeros((1, 6, 6, cin))
    f = conv_fn(k, **kw)
    g = (lambda params, z: f(params, z * jnp.asarray(scale, jnp.float32))) if scale is not None else f
    exact = exact_spectral(g, x)
    bound = L.conv_fft_bound(
        k,
        (6, 6),
        padding=kw["padding"],
        lhs_dilation=kw["lhs_dilation"],
        rhs_dilation=kw["rhs_dilation"],
        groups=groups,
        in_scale=scale,
    )
    assert bound >= exact * (1 - 1e-6)
    assert bound <= 1.6 * exact  # a bound, but not a vacuous one
    params = dict(kw, dimension_numbers=DIMS)
    estimate = L.conv_power_norm(params, k, x.shape, key=jax.random.key(0), in_scale=scale, iters=2000, tol=1e-9)
    assert estimate.value == pytest.approx(exact, rel=2e-3)


def test_reshaped_kernel_spectral_norm_is_not_a_bound():
    """Field notes: flax's SpectralNorm (kernel reshaped to a matrix) under-estimates a conv's norm."""
    k = np.random.default_rng(0).normal(size=(3, 3, 8, 8))
    exact = exact_spectral(conv_fn(k, window_strides=(1, 1), padding=((1, 1), (1, 1))), jnp.zeros((1, 8, 8, 8)))
    assert np.linalg.norm(k.reshape(-1, 8), 2) < 0.8 * exact <= L.conv_fft_bound(k, (8, 8), padding=((1, 1),) * 2)


def random_network(seed):
    """Convs (plain, strided, transposed), per-channel scales, ReLU / tanh / sigmoid, a residual sum, nearest
    upsampling, a concatenation and a dense layer: 1 x 8 x 8 x 2 -> 10, as a model f(params, x) and its params."""
    rng = np.random.default_rng(seed)
    n = lambda *s: jnp.asarray(rng.normal(size=s) / np.sqrt(np.prod(s[:-1])), jnp.float32)
    params = {
        "k": [n(3, 3, 2, 4), n(3, 3, 4, 4), n(3, 3, 4, 4), n(4, 4, 4, 3), n(3, 3, 11, 2)],
        "w": n(128, 10),
        "s1": jnp.asarray(rng.uniform(0.3, 3, 4), jnp.float32),
        "s2": jnp.asarray(rng.uniform(-2, 2, 4), jnp.float32),
    }
    conv = lambda x, k, **kw: lax.conv_general_dilated(x, k, dimension_numbers=DIMS, **kw)
    same = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)))

    def f(params, x):
        (k1, k2, k3, k4, k5), w, s1, s2 = params["k"], params["w"], params["s1"], params["s2"]
        h = jax.nn.relu(conv(x, k1, **same) * s1 + 0.1)
        h = h + conv(jax.nn.relu(h * s2), k2, **same)  # residual, BN-like scale folded
        d = jnp.tanh(conv(h, k3, window_strides=(2, 2), padding=((1, 1), (1, 1))))  # 4 x 4
        up = jnp.repeat(jnp.repeat(d, 2, axis=1), 2, axis=2)  # nearest x2
        t = conv(d, k4, window_strides=(1, 1), padding=((2, 2), (2, 2)), lhs_dilation=(2, 2))  # 8 x 8 x 3
        z = jnp.concatenate([up, t, h], axis=-1)
        y = jax.nn.sigmoid(conv(z, k5, **same))
        return y.reshape(1, -1) @ w

    return f, params


@pytest.mark.parametrize("seed", range(6))
def test_certified_bounds_hold_on_random_networks(seed):
    f, params = random_network(seed)
    rng = np.random.default_rng(100 + seed)
    x0 = jnp.zeros((1, 8, 8, 2))
    layer = L.layerwise_bound(f, params, x0)
    element = L.elementwise_bound(f, params, x0)
    assert len(layer.layers) == 6 and layer.certified > 0
    assert element.estimate <= element.certified * (1 + 1e-9)
    assert layer.to_json()["method"] == "layerwise" and element.to_json()["iterations"] == element.iterations
    worst_local, worst_pair = 0.0, 0.0
    for _ in range(3):
        x = jnp.asarray(rng.normal(0, 2, (1, 8, 8, 2)), jnp.float32)
        jac = norms.jacobian_matrix(f, params, x)
        worst_local = max(worst_local, norms.exact_norms(jac)["spectral"])
        # Eq. 13's G dominates |J| entrywise, so its norm dominates that of |J|, which dominates ||J||.
        assert np.linalg.norm(np.abs(jac), 2) <= element.certified * (1 + 1e-5)
        y = jnp.asarray(rng.normal(0, 2, (1, 8, 8, 2)), jnp.float32)
        ratio = float(jnp.linalg.norm(f(params, x) - f(params, y)) / jnp.linalg.norm(x - y))
        worst_pair = max(worst_pair, ratio)
    assert worst_local <= layer.certified * (1 + 1e-5)
    assert worst_pair <= layer.certified * (1 + 1e-5)


def test_operations_without_a_bound_are_named():
    f = lambda params, x: x / jnp.sqrt(jnp.sum(x**2, axis=-1, keepdims=True) + 1e-12)  # L2 normalisation
    with pytest.raises(L.LipschitzError, match="integer_pow|sqrt|div|mul"):
        L.layerwise_bound(f, None, jnp.ones((1, 4, 4, 3)))
    with pytest.raises(L.LipschitzError, match="exp"):
        L.elementwise_bound(lambda params, x: jnp.exp(x) * 2.0, None, jnp.ones((3,)))
    # An unbounded branch that does not reach the output does not matter.
    branches = lambda params, x: (jnp.exp(x), params * x)[1]
    assert L.layerwise_bound(branches, jnp.float32(3.0), jnp.ones((3,))).certified == pytest.approx(3.0)


@pytest.fixture(scope="module")
def menet_tiny():
    from menet_jax.core.config import get_config
    from menet_jax.core.model import MEnet, init_variables

    config = get_config("tiny")
    model = MEnet.from_config(config)
    rng = np.random.default_rng(0)

    def perturb(path, a):  # BatchNorm statistics and affine parameters away from the identity
        key = path[-1].key
        if key in ("scale", "var"):
            return jnp.asarray(rng.uniform(0.5, 2.0, a.shape), jnp.float32)
        if key in ("mean", "bias"):
            return jnp.asarray(rng.normal(0, 0.3, a.shape), jnp.float32)
        return a

    variables = jax.tree_util.tree_map_with_path(perturb, init_variables(model, 1))
    return config, model, variables


@pytest.mark.parametrize("output", ["logits", "salient_prob", "features"])
def test_generic_bound_equals_the_hand_derived_menet_bound(menet_tiny, output):
    config, model, variables = menet_tiny
    f = L.menet_outputs(config, output)
    generic = L.layerwise_bound(f, variables, jnp.zeros((1, 32, 32, 3)))
    assert len(generic.layers) == 72
    # Equal up to the float32 rounding of the BatchNorm scales (the jaxpr computes them in float32).
    assert generic.certified == pytest.approx(L.menet_layerwise_bound(variables, config, output), rel=1e-5)


def test_menet_salient_probability_form_and_unbounded_metric_map(menet_tiny):
    from menet_jax.api import network_function

    config, model, variables = menet_tiny
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)), jnp.float32)
    # The same (plain) convolutions on both sides: only the softmax form differs.
    softmax = network_function(dataclasses.replace(config, conv="plain"), output="salient_prob")
    p, reference = jax.jit(lambda z: (L.menet_outputs(config, "salient_prob")(variables, z), softmax(variables, z)))(x)
    np.testing.assert_allclose(p, reference, atol=1e-6)
    with pytest.raises(L.LipschitzError, match="not bounded"):
        L.layerwise_bound(L.menet_outputs(config, "metric_map"), variables, x)


def test_cli_prints_both_bounds_and_writes_json(tmp_path, capsys):
    out = tmp_path / "lip.json"
    assert L.main(["--config", "tiny", "--output", "logits", "--power-iterations", "0", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FFT bound" in printed and "stem_conv" in printed and "logits" in printed
    r = json.loads(out.read_text())["outputs"]["logits"]
    assert r["bounded"] and r["hand_derived"] == pytest.approx(r["layerwise_certified"], rel=1e-5)
    assert r["elementwise_certified"] >= r["elementwise_estimate"] > 0 and len(r["layers"]) == 72
    assert L.main(["--config", "tiny", "--output", "metric_map", "--json", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: metric_map")
    assert L.main(["--checkpoint", str(tmp_path / "nothing")]) == 2
