"""The project's convolution primitives (both formulations) against brute-force numpy references and finite
differences."""
import jax

import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from menet_jax.layers import conv2d, conv_transpose2d


def reference_conv(x, w, b, stride, pad):
    n, h, wd, cin = x.shape
    k, _, _, cout = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, ho, wo, cout))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j, :] = np.einsum("nabc,abco->no", patch, w)
    return out + b


def reference_conv_transpose(x, w, stride, pad):
    """Scatter definition (Caffe/PyTorch): x[h, w] * w[i, j] lands on (h*s + i - p, w*s + j - p)."""
    n, h, wd, cin = x.shape
    k, _, _, cout = w.shape
    full = np.zeros((n, (h - 1) * stride + k, (wd - 1) * stride + k, cout))
    for a in range(h):
        for c in range(wd):
            full[:, a * stride:a * stride + k, c * stride:c * stride + k, :] += np.einsum("ni,abio->nabo", x[:, a, c], w)
    ho, wo = (h - 1) * stride - 2 * pad + k, (wd - 1) * stride - 2 * pad + k
    return full[:, pad:pad + ho, pad:pad + wo, :]


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
@pytest.mark.parametrize("k,stride,pad,size,out", [(4, 2, 1, 5, 10), (2, 2, 0, 5, 10), (7, 1, 0, 1, 7), (2, 1, 0, 1, 2),
                                                   (3, 2, 1, 4, 7)])
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
