"""The project's convolution primitives (both formulations) against brute-force numpy references and finite
differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from menet_jax.core.layers import conv2d, conv_transpose2d


def reference_conv(x, w, b, stride, pad):
    n, h, wd, cin = x.shape
    k, _, _, cout = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, ho, wo, cout))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            out[:, i, j, :] = np.einsum("nabc,abco->no", patch, w)
    return out + b


def reference_conv_transpose(x, w, stride, pad):
    """Scatter definition (Caffe/PyTorch): x[h, w] * w[i, j] lands on (h*s + i - p, w*s + j - p)."""
    n, h, wd, cin = x.shape
    k, _, _, cout = w.shape
    full = np.zeros((n, (h - 1) * stride + k, (wd - 1) * stride + k, cout))
    for a in range(h):
        for c in range(wd):
            full[:, a * stride : a * stride + k, c * stride : c * stride + k, :] += np.einsum(
                "ni,abio->nabo", x[:, a, c], w
            )
    ho, wo = (h - 1) * stride - 2 * pad + k, (wd - 1) * stride - 2 * pad + k
    return full[:, pad : pad + ho, pad : pad + wo, :]


@pytest.mark.parametrize("impl", ["plain", "fast"])
@pytest.mark.parametrize("k,stride,pad,size", [(3, 1, 1, 6), (3, 2, 1, 8), (1, 2, 0, 8), (2, 1, 0, 2), (7, 1, 0, 7)])
def test_conv2d_matches_reference(k, stride, pad, size, impl):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    w = rng.normal(size=(k, k, 3, 4)).astype(np.float32)
    b = rng.normal(size=(4,)).astype(np.float32)
    got = jax.jit(lambda x, w, b: conv2d(x, w, b, stride=stride, padding=pad, impl=impl))(x, w, b)
    np.testing.assert_allclose(got, reference_conv(x, w, b, stride, pad), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", ["plain", "fast"])
@pytest.mark.parametrize(
    "k,stride,pad,size,out", [(4, 2, 1, 5, 10), (2, 2, 0, 5, 10), (7, 1, 0, 1, 7), (2, 1, 0, 1, 2), (3, 2, 1, 4, 7)]
)
def test_conv_transpose2d_matches_scatter_definition(k, stride, pad, size, out, impl):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    w = rng.normal(size=(k, k, 3, 4)).astype(np.float32)
    got = jax.jit(lambda x, w: conv_transpose2d(x, w, stride=stride, padding=pad, impl=impl))(x, w)
    assert got.shape == (2, out, out, 4)
    np.testing.assert_allclose(got, reference_conv_transpose(x, w, stride, pad), rtol=1e-5, atol=1e-4)


def test_conv_transpose_is_the_adjoint_of_the_strided_conv():
    """<conv(x), y> == <x, conv_transpose(y)> for the k4 s2 p1 pair (the defining property)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
    y = rng.normal(size=(1, 4, 4, 5)).astype(np.float32)
    w = rng.normal(size=(4, 4, 3, 5)).astype(np.float32)
    lhs = jnp.vdot(conv2d(x, w, stride=2, padding=1), y)
    rhs = jnp.vdot(x, conv_transpose2d(y, jnp.transpose(w, (0, 1, 3, 2)), stride=2, padding=1))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


@pytest.mark.parametrize("impl", ["plain", "fast"])
def test_gradients_match_finite_differences(impl):
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(1, 4, 4, 2)))
        w = jnp.asarray(rng.normal(size=(4, 4, 2, 3)))
        wc = jnp.asarray(rng.normal(size=(3, 3, 2, 3)))
        check_grads(lambda x, w: conv_transpose2d(x, w, stride=2, padding=1, impl=impl), (x, w), order=1, modes=["rev"])
        check_grads(lambda x, w: conv2d(x, w, stride=2, padding=1, impl=impl), (x, wc), order=1, modes=["rev"])


def _flax_batch_norm(train):
    import flax.linen as nn

    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=jnp.float64,
        param_dtype=jnp.float64,
        use_fast_variance=False,
    )


def _bn_variables(rng, c):
    return {
        "params": {"scale": jnp.asarray(rng.random(c) + 0.5), "bias": jnp.asarray(rng.normal(size=c))},
        "batch_stats": {"mean": jnp.asarray(rng.normal(size=c)), "var": jnp.asarray(rng.random(c) + 0.5)},
    }


def test_batch_norm_matches_flax_batch_norm_with_its_hand_written_derivative():
    """Values, running statistics, gradients (reverse mode) and tangents of both (forward mode, which
    robustness.jacobian uses with batch statistics) against flax.linen.BatchNorm differentiated by autodiff, in
    float64."""
    from menet_jax.core.layers import BatchNorm

    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(3, 5, 4, 6)) * 3 + 1)
        variables = _bn_variables(rng, 6)
        ours, flax_bn = BatchNorm(momentum=0.9, epsilon=1e-5, dtype=jnp.float64), _flax_batch_norm(True)
        shapes = lambda tree: jax.tree.map(jnp.shape, tree)
        assert shapes(ours.init(jax.random.key(0), x, True)) == shapes(flax_bn.init(jax.random.key(0), x))

        def loss(module, params, x, *args):
            y, updates = module.apply(
                {"params": params, "batch_stats": variables["batch_stats"]}, x, *args, mutable=["batch_stats"]
            )
            return jnp.sum(jnp.sin(y) * jnp.arange(6.0)), updates

        def check(module, *args):
            value_and_grad = jax.value_and_grad(lambda p, x: loss(module, p, x, *args), argnums=(0, 1), has_aux=True)
            (value, updates), grads = value_and_grad(variables["params"], x)
            tangent = jax.jvp(lambda x: loss(module, variables["params"], x, *args), (x,), (jnp.cos(x),))[1]
            return value, updates, grads, tangent

        for a, b in zip(jax.tree.leaves(check(ours, True)), jax.tree.leaves(check(flax_bn))):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        check_grads(
            lambda x: ours.apply(variables, x, True, mutable=["batch_stats"])[0], (x,), order=1, modes=["fwd", "rev"]
        )
        eval_ours = ours.apply(variables, x, False)
        np.testing.assert_allclose(eval_ours, _flax_batch_norm(False).apply(variables, x), rtol=1e-12)


def test_batch_norm_computes_in_float32_for_bfloat16_activations():
    from menet_jax.core.layers import BatchNorm

    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 4, 4, 3)) * 5 + 100, jnp.bfloat16)
    module = BatchNorm(dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(0), x, True)
    y, updates = module.apply(variables, x, True, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16 and updates["batch_stats"]["mean"].dtype == jnp.float32
    xf = np.asarray(x, np.float64)
    expected = (xf - xf.mean((0, 1, 2))) / np.sqrt(xf.var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, atol=0.05)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.001 * xf.mean((0, 1, 2)), rtol=1e-5)
