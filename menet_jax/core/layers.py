"""Convolution primitives and the small Flax modules built on them.

Every convolution of the network goes through `conv2d` or `conv_transpose2d`, so their implementation can be
swapped for a faster formulation (XLA's CPU backward convolutions are slow, see the field notes) in one place
without touching the model. Layout is NHWC activations and HWIO kernels throughout.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

_DIMS = ("NHWC", "HWIO", "NHWC")


def conv_impl(impl: str = "auto") -> str:
    """The formulation to use: "plain" (the lax convolutions as written), "fast" (every convolution in the CPU fast
    forms below) or "mixed" (the fast forms only where they pay off once XLA runs convolutions on its own CPU kernels
    (`runtime.xla.compiler_options`): transposed convolutions, 1 x 1 convolutions, kernels covering their whole input
    and deep maps of at most 7 x 7 outputs; see `_fast_pays_off`).

    "auto" is mixed on CPU and plain on accelerators. "fast" also rewrites the k x k convolutions (a per-tap weight
    gradient, patch-matrix products): a longer compile, and slower with `compiler_options`; it paid off when XLA
    lowered every convolution to one-threaded YNNPACK calls. All formulations compute the same functions; their
    drift after two SGD steps of the tiny config is that setting's noise floor (benchmarks/sensitivity.py). The
    choice is a field of the modules (`Config.conv`), so a jitted function keys its cache on it; export and the
    Lipschitz analysis build their networks with "plain", one conv_general_dilated per layer.
    """
    if impl == "auto":
        return "mixed" if jax.default_backend() == "cpu" else "plain"
    if impl not in ("fast", "mixed", "plain"):
        raise ValueError(f"convolution implementation must be auto, mixed, fast or plain, got {impl!r}")
    return impl


def conv2d(x, kernel, bias=None, *, stride: int = 1, padding: int = 0, impl: str = "auto"):
    """Cross-correlation with symmetric (Caffe-style) zero padding on both spatial axes."""
    pads = ((padding, padding), (padding, padding))
    mode = conv_impl(impl)
    y = (_conv_fast if mode == "fast" else _conv_mixed if mode == "mixed" else _conv_plain)(x, kernel, stride, pads)
    return y if bias is None else y + bias


def _fast_pays_off(x_shape, kernel_shape, pads, stride) -> bool:
    """Where "mixed" uses the fast form of a convolution: where it is one matrix product (1 x 1 kernels, a kernel
    covering its padded input, deep maps of at most 7 x 7 outputs). With `compiler_options`, XLA's own k x k
    convolutions and their gradients are faster than the per-tap and patch-matrix forms on larger maps. On the deep
    maps XLA's input gradient first copies the kernel flipped and transposed (37 MB for 3 x 3 x 1024 x 1024), and the
    patch product needs no such copy (`python benchmarks/conv_layers.py`; timings in BENCHMARKS.md)."""
    kh, kw, cin, cout = kernel_shape
    _, h, w, _ = x_shape
    ho, wo = _out_size(h, *pads[0], kh, stride), _out_size(w, *pads[1], kw, stride)
    deep = ho * wo <= _PATCHES_MAX_OUT_PIXELS_MIXED and _patches_pay_off(h * w, cin, cout)
    return kh == kw == 1 or ho == wo == 1 or deep


def _conv_mixed(x, kernel, stride, pads):
    fast = _fast_pays_off(x.shape, kernel.shape, pads, stride)
    return (_conv_fast if fast else _conv_plain)(x, kernel, stride, pads)


def conv_transpose2d(x, kernel, *, stride: int = 1, padding: int = 0, impl: str = "auto"):
    """Transposed convolution with Caffe/PyTorch semantics: out = (in - 1) * stride - 2 * padding + k.

    Each input pixel scatters `x[h, w] * kernel[i, j]` to output `(h * stride + i - padding,
    w * stride + j - padding)`. The plain form is the equivalent input-dilated convolution with the flipped
    kernel; the fast one computes each output phase with a stride-1 convolution (see `_conv_transpose_fast`).
    """
    k = kernel.shape[0]
    edge = k - 1 - padding
    if edge < 0:
        raise ValueError(f"transposed conv padding {padding} exceeds kernel size {k} - 1")
    mode = conv_impl(impl)
    if mode in ("fast", "mixed"):
        return _conv_transpose_fast(x, kernel, stride, padding, _conv_fast if mode == "fast" else _conv_mixed)
    return lax.conv_general_dilated(
        x,
        kernel[::-1, ::-1],
        window_strides=(1, 1),
        padding=((edge, edge), (edge, edge)),
        lhs_dilation=(stride, stride),
        dimension_numbers=_DIMS,
    )


# ---------------------------------------------------------------------------------------------- fast formulations
# XLA's CPU backend computes anything with lhs_dilation (transposed convs, input gradients of strided convs) far
# slower than PyTorch, and with its default YNNPACK convolutions also the weight gradients. The fast forms below
# compute the same functions, arranged so that every derivative is one of the fast ops.


def _conv_plain(x, kernel, stride, pads):
    return lax.conv_general_dilated(x, kernel, window_strides=(stride, stride), padding=pads, dimension_numbers=_DIMS)


def _out_size(size, lo, hi, k, stride):
    return (size + lo + hi - k) // stride + 1


def _pad(x, pads):
    """Spatial zero padding; negative amounts crop."""
    (lo_h, hi_h), (lo_w, hi_w) = pads
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))


def _tap(xp, i, j, stride, ho, wo):
    """The (ho, wo) pixels of the padded input that kernel tap (i, j) meets."""
    n, _, _, c = xp.shape
    return lax.slice(
        xp, (0, i, j, 0), (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c), (1, stride, stride, 1)
    )


def _conv_fast(x, kernel, stride, pads):
    """conv2d with (possibly asymmetric) padding: pointwise and fully-covering kernels as matrix products,
    the rest through `_conv_taps` (lax forward, per-tap matrix-product weight gradient)."""
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    ho, wo = _out_size(h, *pads[0], kh, stride), _out_size(w, *pads[1], kw, stride)
    if kh == kw == 1:
        return jnp.einsum("nhwc,co->nhwo", _tap(_pad(x, pads), 0, 0, stride, ho, wo), kernel[0, 0])
    if ho == wo == 1:  # the kernel covers the padded input: a dense layer (MEnet's bottleneck conv)
        # One product per input pixel, batched over pixels, then summed: as one (N x kh kw C_in) product, XLA fused
        # it in evaluation mode with the bottleneck deconv's product into one much slower YNNPACK fusion
        # (BENCHMARKS.md, "Where the timings of code comments went"); the gradients cost the same.
        pixels = _tap(_pad(x, pads), 0, 0, 1, kh, kw).reshape(n, kh * kw, cin).transpose(1, 0, 2)
        y = lax.dot_general(pixels, kernel.reshape(kh * kw, cin, cout), (((2,), (1,)), ((0,), (0,))))
        return y.sum(0).reshape(n, 1, 1, cout)
    if _patches_pay_off(h * w, cin, cout):
        return _conv_patches(x, kernel, stride, pads, (ho, wo))
    crop = tuple((min(lo, 0), min(hi, 0)) for lo, hi in pads)
    if any(v for pair in crop for v in pair):
        x = _pad(x, crop)
        pads = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)
    return _conv_taps(x, kernel, stride, pads)


# Without `compiler_options`, on maps of at most 14 x 14 with 512-1024 channels, one patch-matrix product is faster
# than XLA's gradient, whose input gradient first copies a flipped, transposed kernel (`python
# benchmarks/conv_layers.py`; BENCHMARKS.md).
_PATCHES_MAX_PIXELS = 14 * 14
_PATCHES_MIN_CHANNELS = 256
_PATCHES_MAX_OUT_PIXELS_MIXED = 7 * 7  # "mixed" (with `compiler_options`) only where the output is this small


def _patches_pay_off(pixels, cin, cout) -> bool:
    return pixels <= _PATCHES_MAX_PIXELS and min(cin, cout) >= _PATCHES_MIN_CHANNELS


def _conv_patches(x, kernel, stride, pads, out_hw):
    """conv2d as one matrix product of the patch matrix (N Ho Wo x kh kw C_in) with the kernel: on small maps with
    many channels the patch matrix is small, and both gradients are matrix products plus a sum of shifted pads."""
    kh, kw, cin, cout = kernel.shape
    xp = _pad(x, pads)
    patches = jnp.concatenate([_tap(xp, i, j, stride, *out_hw) for i in range(kh) for j in range(kw)], axis=-1)
    y = jnp.dot(patches.reshape(-1, kh * kw * cin), kernel.reshape(kh * kw * cin, cout))
    return y.reshape(x.shape[0], *out_hw, cout)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_taps(x, kernel, stride, pads):
    """A lax convolution whose tangent is written so that its transpose (the backward pass) is fast:
    the input part as a stride-1 convolution, the kernel part as one matrix product per tap."""
    return _conv_plain(x, kernel, stride, pads)


def _conv_taps_jvp(stride, pads, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    y = _conv_plain(x, kernel, stride, pads)
    parts = []
    if not isinstance(dx, SymbolicZero):
        parts.append(
            _conv_plain(dx, kernel, 1, pads) if stride == 1 else _conv_space_to_depth(dx, kernel, stride, pads)
        )
    if not isinstance(dkernel, SymbolicZero):
        parts.append(_conv_per_tap(x, dkernel, stride, pads, y.shape[1:3]))
    dy = functools.reduce(jnp.add, parts) if parts else jnp.zeros_like(y)
    return y, dy


_conv_taps.defjvp(_conv_taps_jvp, symbolic_zeros=True)


def _conv_per_tap(x, kernel, stride, pads, out_hw):
    """sum over taps of (shifted, strided input) @ kernel[tap]; transposed, one (rows x C_in)^T (rows x C_out)
    product per tap in NHWC order (the fastest weight gradient measured on CPU)."""
    xp = _pad(x, pads)
    kh, kw = kernel.shape[:2]
    n, cin, cout = x.shape[0], kernel.shape[2], kernel.shape[3]
    # Flattened to rows first: the transposed product is then one plain (rows x C)^T (rows x C_out) dot, twice
    # as fast on CPU as the same contraction over (n, h, w) kept as three dimensions.
    terms = [
        jnp.dot(_tap(xp, i, j, stride, *out_hw).reshape(-1, cin), kernel[i, j]) for i in range(kh) for j in range(kw)
    ]
    return functools.reduce(jnp.add, terms).reshape(n, *out_hw, cout)


def _conv_space_to_depth(x, kernel, stride, pads):
    """A strided conv as a stride-1 conv on the space-to-depth input with the kernel regrouped the same way;
    its input gradient is then a stride-1 conv plus depth-to-space instead of XLA's slow input-dilated conv."""
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    s = stride
    ho, wo = _out_size(h, *pads[0], kh, s), _out_size(w, *pads[1], kw, s)
    qh, qw = -(-kh // s), -(-kw // s)
    hp, wp = s * (ho + qh - 1), s * (wo + qw - 1)
    xp = _pad(x, ((pads[0][0], hp - h - pads[0][0]), (pads[1][0], wp - w - pads[1][0])))
    xs = (
        xp.reshape(n, hp // s, s, wp // s, s, cin).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp // s, wp // s, s * s * cin)
    )
    kp = jnp.pad(kernel, ((0, qh * s - kh), (0, qw * s - kw), (0, 0), (0, 0)))
    ks = kp.reshape(qh, s, qw, s, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(qh, qw, s * s * cin, cout)
    return _conv_plain(xs, ks, 1, ((0, 0), (0, 0)))


def _conv_transpose_fast(x, kernel, stride, padding, conv):
    """Transposed conv without input dilation, its stride-1 convolutions computed by `conv`.

    A 1 x 1 input is a dense layer; kernel == stride (no overlap) one matrix product plus depth-to-space; stride 1
    an ordinary conv with the flipped kernel. Otherwise each of the stride^2 output phases (rows r mod stride,
    columns q mod stride) is a stride-1 conv of the input with the kernel taps of that phase (every stride-th,
    flipped) and a one-sided padding, and the phases are interleaved (depth-to-space).
    """
    k, _, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    s, p = stride, padding
    out_h, out_w = (h - 1) * s - 2 * p + k, (w - 1) * s - 2 * p + k
    if h == w == 1:  # a dense layer to an out_h x out_w map (MEnet's bottleneck deconv)
        taps = kernel[p : p + out_h, p : p + out_w].reshape(out_h * out_w, cin, cout)
        # One product per output pixel, batched over pixels: unlike "nc,ijco->nijo", neither direction copies
        # the (large) kernel into another layout (a faster gradient; BENCHMARKS.md).
        y = lax.dot_general(jnp.broadcast_to(x[:, 0, 0], (out_h * out_w, n, cin)), taps, (((2,), (1,)), ((0,), (0,))))
        return y.transpose(1, 0, 2).reshape(n, out_h, out_w, cout)
    if s == 1:
        edge = k - 1 - p
        return conv(x, kernel[::-1, ::-1], 1, ((edge, edge), (edge, edge)))
    if k == s and p == 0:
        y = jnp.einsum("nhwc,ijco->nhiwjo", x, kernel)
        return y.reshape(n, h * s, w * s, cout)

    def phase(r, size, out):
        """First tap, padding (low, high) of the stride-1 conv giving output rows r, r + s, ... (ceil(out/s))."""
        first = (r + p) % s
        taps = len(range(first, k, s))
        shift = (r + p - first) // s
        rows = -(-out // s)
        return first, taps, (taps - 1 - shift, rows - 1 + shift - (size - 1))

    rows = []
    for r in range(s):
        fh, th, pad_h = phase(r, h, out_h)
        cols = []
        for q in range(s):
            fw, tw, pad_w = phase(q, w, out_w)
            if th == 0 or tw == 0:  # kernel smaller than the stride: no tap lands on this phase
                cols.append(jnp.zeros((n, -(-out_h // s), -(-out_w // s), cout), x.dtype))
                continue
            sub = kernel[fh::s, fw::s][::-1, ::-1]
            cols.append(conv(x, sub, 1, (pad_h, pad_w)))
        rows.append(jnp.stack(cols, axis=3))
    y = jnp.stack(rows, axis=2)  # (N, rows, s, cols, s, C_out)
    y = y.reshape(n, y.shape[1] * s, y.shape[3] * s, cout)
    return y[:, :out_h, :out_w]


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
    conv: str = "auto"  # the formulation (`conv_impl`)

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", xavier_uniform(), (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return conv2d(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            bias.astype(self.dtype),
            stride=self.stride,
            padding=self.padding,
            impl=self.conv,
        )


class ConvTranspose(nn.Module):
    """Bias-free transposed convolution (Caffe `Deconvolution` as configured by the authors)."""

    features: int
    kernel_size: int = 4
    stride: int = 2
    padding: int = 1
    dtype: Any = jnp.float32
    conv: str = "auto"  # the formulation (`conv_impl`)

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", xavier_uniform(transpose=True), (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        )
        return conv_transpose2d(
            x.astype(self.dtype), kernel.astype(self.dtype), stride=self.stride, padding=self.padding, impl=self.conv
        )


def batch_norm(x, train: bool, momentum: float, epsilon: float, dtype, name=None):
    """Caffe BatchNorm + Scale (learned gamma and beta): batch statistics in training, running ones in evaluation."""
    return BatchNorm(momentum=momentum, epsilon=epsilon, dtype=dtype, name=name)(x, train)


class BatchNorm(nn.Module):
    """flax.linen.BatchNorm over N, H, W (two-pass variance), with the same variables (params scale and bias,
    batch_stats mean and var, all float32; the running variance averages the biased batch variance), so checkpoints
    are interchangeable. Statistics and normalisation are computed in float32 whatever the compute dtype.

    Training mode goes through `normalize_batch`, whose derivative is written by hand: autodiff of the formula
    makes XLA read the activations more often, a slower gradient (BENCHMARKS.md).
    """

    momentum: float = 0.999
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if not train:
            inv_std = lax.rsqrt(running_var.value + self.epsilon)
            return ((x.astype(_stat_dtype(x)) - running_mean.value) * (inv_std * scale) + bias).astype(self.dtype)
        y, mean, var = normalize_batch(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
            running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        return y.astype(self.dtype)


_STAT_AXES = (0, 1, 2)


def _stat_dtype(x):
    return jnp.promote_types(x.dtype, jnp.float32)  # float32, or float64 where x is (tests under jax_enable_x64)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def normalize_batch(x, scale, bias, epsilon):
    """(x - mean) / sqrt(var + epsilon) * scale + bias with the batch's per-channel statistics (float32 or wider),
    and the statistics (mean, biased variance)."""
    xf = x.astype(_stat_dtype(x))
    mean = xf.mean(_STAT_AXES)
    var = jnp.square(xf - mean).mean(_STAT_AXES)
    return (xf - mean) * (lax.rsqrt(var + epsilon) * scale) + bias, mean, var


@normalize_batch.defjvp
def _normalize_batch_jvp(epsilon, primals, tangents):
    """With xhat = (x - mean) / std and c = scale / std: d mean = mean(dx), d var = 2 std mean(xhat dx) and
    dy = c dx + xhat (d scale - c mean(xhat dx)) + (d bias - c d mean). Written this way, its transpose (the
    backward pass) needs only two reductions, sum(g) and sum(g xhat), and one elementwise pass."""
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    y, mean, var = normalize_batch(x, scale, bias, epsilon)
    rstd = lax.rsqrt(var + epsilon)
    xhat = (x.astype(_stat_dtype(x)) - mean) * rstd
    dx = dx.astype(xhat.dtype)
    dmean = dx.mean(_STAT_AXES)
    xhat_dx = (xhat * dx).mean(_STAT_AXES)
    c = rstd * scale
    dy = c * dx + xhat * (dscale - c * xhat_dx) + (dbias - c * dmean)
    return (y, mean, var), (dy, dmean, 2 * xhat_dx / rstd)


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
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        x = batch_norm(x, train, self.bn_momentum, self.bn_epsilon, self.dtype)
        x = jax.nn.relu(x)
        layer = ConvTranspose if self.transpose else Conv
        return layer(self.features, self.kernel_size, self.stride, self.padding, self.dtype, self.conv)(x)
