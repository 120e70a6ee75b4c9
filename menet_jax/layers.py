"""Convolution primitives and the small Flax modules built on them.

Every convolution of the network goes through `conv2d` or `conv_transpose2d`, so their implementation can be
swapped for a faster formulation (XLA's CPU backward convolutions are slow, see the field notes) in one place
without touching the model. Layout is NHWC activations and HWIO kernels throughout.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")


def conv2d(x, kernel, bias=None, *, stride: int = 1, padding: int = 0):
    """Cross-correlation with symmetric (Caffe-style) zero padding on both spatial axes."""
    y = lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=((padding, padding), (padding, padding)),
        dimension_numbers=_DIMS)
    return y if bias is None else y + bias


def conv_transpose2d(x, kernel, *, stride: int = 1, padding: int = 0):
    """Transposed convolution with Caffe/PyTorch semantics: out = (in - 1) * stride - 2 * padding + k.

    Each input pixel scatters `x[h, w] * kernel[i, j]` to output `(h * stride + i - padding,
    w * stride + j - padding)`. Written as the equivalent input-dilated convolution with the flipped kernel.
    """
    k = kernel.shape[0]
    edge = k - 1 - padding
    if edge < 0:
        raise ValueError(f"transposed conv padding {padding} exceeds kernel size {k} - 1")
    return lax.conv_general_dilated(
        x, kernel[::-1, ::-1], window_strides=(1, 1), padding=((edge, edge), (edge, edge)),
        lhs_dilation=(stride, stride), dimension_numbers=_DIMS)


def xavier_bound(kernel_shape, transpose: bool) -> float:
    """Caffe's "xavier" filler is uniform(+-sqrt(3 / fan)) with fan = C_in * k * k for a conv. For a Caffe
    deconvolution the fan comes from blob dim 0 (its C_in), which is C_out * k * k of our HWIO kernel."""
    kh, kw, cin, cout = kernel_shape
    return (3.0 / (kh * kw * (cout if transpose else cin))) ** 0.5


def xavier_uniform(transpose: bool = False):
    def init(key, shape, dtype=jnp.float32):
        bound = xavier_bound(shape, transpose)
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class Conv(nn.Module):
    """k x k convolution with bias (the authors' convs all have one)."""
    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", xavier_uniform(), (self.kernel_size, self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype),
                      stride=self.stride, padding=self.padding)


class ConvTranspose(nn.Module):
    """Bias-free transposed convolution (Caffe `Deconvolution` as configured by the authors)."""
    features: int
    kernel_size: int = 4
    stride: int = 2
    padding: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", xavier_uniform(transpose=True),
                            (self.kernel_size, self.kernel_size, x.shape[-1], self.features))
        return conv_transpose2d(x.astype(self.dtype), kernel.astype(self.dtype),
                                stride=self.stride, padding=self.padding)


def batch_norm(x, train: bool, momentum: float, epsilon: float, dtype, name=None):
    """Caffe BatchNorm + Scale (learned gamma and beta): batch statistics in training, running ones in evaluation.

    Flax reduces the statistics in float32 whatever the compute dtype; parameters stay float32.
    """
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon, dtype=dtype,
                        param_dtype=jnp.float32, use_fast_variance=False, name=name)(x)


class BRC(nn.Module):
    """Pre-activation unit: BatchNorm -> ReLU -> (transposed) convolution."""
    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    transpose: bool = False
    bn_momentum: float = 0.999
    bn_epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = batch_norm(x, train, self.bn_momentum, self.bn_epsilon, self.dtype)
        x = jax.nn.relu(x)
        layer = ConvTranspose if self.transpose else Conv
        return layer(self.features, self.kernel_size, self.stride, self.padding, self.dtype)(x)
