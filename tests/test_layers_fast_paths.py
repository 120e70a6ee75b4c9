"""The CPU fast convolution formulations compute the plain lax functions and their derivatives (both modes), the
whole network's loss gradient is unchanged by them, and bfloat16 compute stays close to float32."""

import dataclasses
import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.core.config import get_config
from menet_jax.core.layers import conv2d, conv_impl, conv_transpose2d
from menet_jax.core.loss import menet_loss
from menet_jax.core.model import MEnet, init_variables
from menet_jax.core.saliency import saliency_maps
from menet_jax.errors import ConfigError
from menet_jax.runtime.xla import compiler_options


def assert_close(got, want, rtol=2e-5):
    """Agreement relative to the largest magnitude of the reference (sums of many products differ in rounding)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(np.abs(want).max(), 1e-6)
    np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=rtol)


def check_same_function(op, x, w, seed):
    """Values, reverse-mode gradients (input and kernel) and a forward-mode derivative of both implementations
    (one compiled program per case: op-by-op dispatch of the many small ops is slower than compiling them)."""
    rng = np.random.default_rng(seed)
    y_shape = jax.eval_shape(functools.partial(op, impl="plain"), x, w).shape
    cotangent = rng.normal(size=y_shape).astype(np.float32)
    tangents = (rng.normal(size=x.shape).astype(np.float32), rng.normal(size=w.shape).astype(np.float32))

    @jax.jit
    def both(x, w, cotangent, tangents):
        results = []
        for impl in ("fast", "plain"):
            f = functools.partial(op, impl=impl)
            y, vjp = jax.vjp(f, x, w)
            results.append((y, *vjp(cotangent), jax.jvp(f, (x, w), tangents)[1]))
        return results

    fast, plain = both(x, w, cotangent, tangents)
    for got, want in zip(fast, plain):
        assert_close(got, want)


# (kernel, stride, padding, height, width, C_in, C_out, batch): the model's kinds (3x3 s1/s2, 1x1 s2, a kernel
# covering the input) plus odd sizes, non-square inputs, unused trailing rows, larger strides and batch 1; the
# last two are small maps with many channels (one patch-matrix product).
CONV_CASES = [
    (3, 1, 1, 7, 5, 3, 4, 2),
    (3, 2, 1, 9, 8, 2, 5, 1),
    (1, 2, 0, 7, 6, 3, 2, 1),
    (7, 1, 0, 7, 7, 2, 3, 2),
    (4, 1, 1, 4, 4, 2, 3, 1),
    (5, 3, 2, 11, 10, 3, 4, 2),
    (3, 2, 0, 8, 9, 1, 3, 3),
    (3, 1, 1, 5, 4, 256, 264, 2),
    (3, 2, 1, 7, 6, 300, 256, 1),
]


@pytest.mark.parametrize("k,stride,pad,h,w,cin,cout,n", CONV_CASES)
def test_fast_conv2d_equals_plain(k, stride, pad, h, w, cin, cout, n):
    rng = np.random.default_rng(k * 100 + stride * 10 + h)
    x = rng.normal(size=(n, h, w, cin)).astype(np.float32)
    kernel = rng.normal(size=(k, k, cin, cout)).astype(np.float32)
    check_same_function(lambda x, w, impl: conv2d(x, w, stride=stride, padding=pad, impl=impl), x, kernel, h)


# The model's k4 s2 p1, k2 s2 p0 and k x k from 1 x 1, plus stride 1, odd kernels, kernel < stride (phases no tap
# reaches), larger strides and paddings, non-square and batch 1; the last has phases as patch-matrix products.
TRANSPOSE_CASES = [
    (4, 2, 1, 5, 3, 3, 4, 2),
    (4, 2, 1, 1, 1, 2, 3, 1),
    (2, 2, 0, 4, 5, 3, 2, 1),
    (7, 1, 0, 1, 1, 4, 3, 2),
    (3, 1, 1, 5, 6, 2, 3, 1),
    (5, 3, 2, 4, 6, 2, 2, 1),
    (1, 2, 0, 4, 3, 2, 2, 2),
    (4, 2, 1, 3, 4, 272, 256, 2),
]


@pytest.mark.parametrize("k,stride,pad,h,w,cin,cout,n", TRANSPOSE_CASES)
def test_fast_conv_transpose2d_equals_plain(k, stride, pad, h, w, cin, cout, n):
    rng = np.random.default_rng(k * 100 + stride * 10 + h + 7)
    x = rng.normal(size=(n, h, w, cin)).astype(np.float32)
    kernel = rng.normal(size=(k, k, cin, cout)).astype(np.float32)
    check_same_function(lambda x, w, impl: conv_transpose2d(x, w, stride=stride, padding=pad, impl=impl), x, kernel, h)


def convolutions(jaxpr):
    """All conv_general_dilated equations of a jaxpr, nested ones included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found.extend(convolutions(sub))
    return found


@pytest.mark.parametrize(
    "transpose,k,stride,pad", [(True, 4, 2, 1), (True, 2, 2, 0), (False, 3, 2, 1), (False, 3, 1, 1), (False, 1, 2, 0)]
)
def test_fast_gradients_avoid_the_slow_convolutions(transpose, k, stride, pad):
    """No input dilation (XLA CPU's slow transposed-conv lowering) and no convolution computing a kernel gradient
    (the slow weight gradient) in the fast backward pass; the plain one has them."""
    x = jnp.ones((2, 8, 8, 3))
    w = jnp.ones((k, k, 3, 4))

    def loss(x, w, impl):
        op = conv_transpose2d if transpose else conv2d
        return jnp.sum(op(x, w, stride=stride, padding=pad, impl=impl) ** 2)

    def slow(impl):
        eqns = convolutions(jax.make_jaxpr(jax.grad(functools.partial(loss, impl=impl), argnums=(0, 1)))(x, w).jaxpr)
        dilated = [e for e in eqns if tuple(e.params["lhs_dilation"]) != (1, 1)]
        # A kernel gradient is a convolution whose output has the kernel's shape.
        kernel_grads = [e for e in eqns if tuple(e.outvars[0].aval.shape) == w.shape]
        return dilated + kernel_grads

    assert slow("fast") == []
    assert slow("plain") or k == 1
    # mixed (CPU's auto): fast for transposed and 1 x 1 convolutions (no input dilation), plain lax for k x k ones
    assert len(slow("mixed")) == (0 if transpose or k == 1 else len(slow("plain")))


def test_mixed_uses_the_fast_forms_where_they_pay_off():
    """mixed: a matrix product for 1 x 1 and input-covering kernels and for deep maps of at most 7 x 7 outputs; XLA's
    own k x k convolutions otherwise (with `compiler_options` their gradients are the fastest), also inside the phases
    of a transposed convolution."""

    def kernel_grad_convs(h, cin, cout, k=3, pad=1, op=conv2d, stride=1):
        x, w = jnp.ones((1, h, h, cin)), jnp.ones((k, k, cin, cout))
        grad = jax.grad(lambda w: jnp.sum(op(x, w, stride=stride, padding=pad, impl="mixed") ** 2))
        # kernel gradients: convolutions whose output is (a part of) a kernel, (k', k', C_in, C_out)
        shapes = [e.outvars[0].aval.shape for e in convolutions(jax.make_jaxpr(grad)(w).jaxpr)]
        return [shape for shape in shapes if shape[2:] == (cin, cout) and shape[0] <= k]

    assert kernel_grad_convs(5, 3, 4, k=7, pad=1) == []  # a kernel covering its input: a dense layer
    assert kernel_grad_convs(6, 3, 4, k=1, pad=0) == []  # 1 x 1
    assert len(kernel_grad_convs(6, 3, 4, k=5, pad=1)) == 1
    assert len(kernel_grad_convs(224, 32, 32)) == 1  # the paper's largest maps too
    assert kernel_grad_convs(7, 256, 256) == []  # deep maps of at most 7 x 7 outputs: the patch product
    assert kernel_grad_convs(14, 256, 512, stride=2) == []
    assert len(kernel_grad_convs(14, 256, 256)) == 1  # 14 x 14 outputs: XLA's convolution
    assert len(kernel_grad_convs(7, 128, 128)) == 1  # too few channels
    # k4 s2 transposed: four 2 x 2 phase convolutions, plain lax each, so four weight-gradient convolutions
    assert kernel_grad_convs(6, 3, 4, k=4, pad=1, op=conv_transpose2d, stride=2) == [(2, 2, 3, 4)] * 4


def test_cpu_compiler_options_keep_convolutions_on_xla_kernels():
    """On CPU the train and predict programs are compiled with `compiler_options`: a k x k convolution that is not
    fused with other work stays an XLA convolution instead of a YNNPACK fusion (which is what it is without).
    Evaluation programs also keep an evaluation-mode BN -> ReLU -> conv chain out of YNNPACK's elementwise fusions
    (slower there); a train step's options allow those fusions."""
    if jax.default_backend() != "cpu":
        pytest.skip("the options are for XLA's CPU backend; other backends get none")
    assert compiler_options() and compiler_options(training=True)
    x, w = jnp.ones((2, 64, 64, 32)), jnp.ones((3, 3, 32, 32))  # (XLA keeps smaller ones out of YNNPACK)
    conv = lambda x, w: conv2d(x, w, padding=1, impl="plain")
    chain = lambda x, w: conv2d(jax.nn.relu(x * 0.5 - 1.0), w, jnp.ones(32), padding=1, impl="plain")

    def entry_ops(f, **jit_kwargs):
        text = jax.jit(f, **jit_kwargs).lower(x, w).compile().as_text()
        return text[text.index("ENTRY") :]

    assert " convolution(" in entry_ops(conv, compiler_options=compiler_options(training=True))
    assert " convolution(" in entry_ops(conv, compiler_options=compiler_options())
    assert " convolution(" not in entry_ops(conv)
    assert " convolution(" in entry_ops(chain, compiler_options=compiler_options())
    assert " convolution(" not in entry_ops(chain, compiler_options=compiler_options(training=True))


def test_implementation_choice(monkeypatch):
    assert conv_impl() == ("mixed" if jax.default_backend() == "cpu" else "plain")  # auto
    for impl in ("mixed", "plain", "fast"):
        assert conv_impl(impl) == impl
    monkeypatch.setenv("MENET_CONV", "fast")  # no environment variable changes a traced function
    assert conv_impl() == conv_impl("auto") != "fast"
    with pytest.raises(ValueError, match="auto, mixed, fast or plain"):
        conv_impl("cudnn")
    with pytest.raises(ConfigError, match="conv must be one of auto, mixed, fast, plain, got 'cudnn'"):
        get_config("tiny", ["conv=cudnn"])


def test_the_formulation_is_a_module_field_that_jit_caches_see():
    """Two networks that differ only in `conv` are two programs: the plain one computes its transposed convolutions
    as input-dilated convolutions, the mixed one without input dilation (`_conv_transpose_fast`). Before the
    field, the choice was read from the environment at trace time and a cached function kept whichever it saw
    first."""
    config = get_config("tiny")
    x = jnp.zeros((1, config.image_size, config.image_size, 3))
    variables = init_variables(MEnet.from_config(config), 0)
    apply = jax.jit(lambda v, x, model: model.apply(v, x), static_argnums=2)
    texts = {
        impl: apply.lower(variables, x, MEnet.from_config(dataclasses.replace(config, conv=impl))).as_text()
        for impl in ("plain", "mixed")
    }
    assert "lhs_dilate = [2, 2]" in texts["plain"] and "lhs_dilate = [2, 2]" not in texts["mixed"]


def _loss_and_outputs(model, variables, images, masks):
    outputs, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    loss, _ = menet_loss(outputs["features"], outputs["logits"], masks, variant="paper")
    return loss, outputs


def _batch(size, n=2):
    rng = np.random.default_rng(5)
    images = jnp.asarray(rng.integers(0, 256, (n, size, size, 3)), jnp.uint8)
    yy, xx = np.mgrid[:size, :size]
    masks = jnp.asarray(
        np.stack([(yy - size / 2) ** 2 + (xx - size / 2 - 4 * i) ** 2 < (size / 4) ** 2 for i in range(n)]).astype(
            np.uint8
        )
    )
    return images, masks


def test_model_loss_gradient_is_the_same_with_fast_convolutions(monkeypatch):
    """64 px: 3x3 s1/s2, 1x1 s2, the 2x2 bottleneck conv (dense path), k4/k2 s2 and 1x1 -> 2x2 transposed convs.

    In float64: at this width the bottleneck's BatchNorm normalises two values per channel, so the float32 loss
    gradient depends on rounding to about 3e-4 relative whichever formulation computes it; in float64 the
    formulations must agree to rounding."""
    with jax.enable_x64(True):
        model = MEnet(image_size=64, width=2, input_scale="normalized", dtype=jnp.float64)
        variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), init_variables(model, 0))
        images, masks = _batch(64)

        def gradient(impl):
            model = MEnet(image_size=64, width=2, input_scale="normalized", dtype=jnp.float64, conv=impl)

            def loss(params):
                return _loss_and_outputs(model, {**variables, "params": params}, images, masks)[0]

            return jax.jit(jax.value_and_grad(loss))(variables["params"])

        loss_plain, grads_plain = gradient("plain")
        for impl in ("fast", "mixed"):
            loss_impl, grads_impl = gradient(impl)
            np.testing.assert_allclose(loss_impl, loss_plain, rtol=1e-12)
            flat_impl = jax.tree_util.tree_leaves_with_path(grads_impl)
            flat_plain = jax.tree_util.tree_leaves(grads_plain)
            assert flat_plain[0].dtype == np.float64
            largest = max(float(np.abs(g).max()) for g in flat_plain)
            for (path, g_impl), g_plain in zip(flat_impl, flat_plain):
                # Relative to the largest gradient: conv biases before training-mode BatchNorms have zero gradient
                # up to rounding.
                assert np.abs(np.asarray(g_impl) - np.asarray(g_plain)).max() < 1e-9 * largest, (impl, path)


def test_bfloat16_compute_stays_close_to_float32():
    """Parameters, BatchNorm statistics and the loss stay float32; only activations and convs are bfloat16."""
    images, masks = _batch(32, n=3)
    results = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = MEnet(image_size=32, width=4, dtype=dtype, input_scale="normalized")
        variables = init_variables(model, 0)
        loss, outputs = jax.jit(functools.partial(_loss_and_outputs, model))(variables, images, masks)
        results[dtype] = (float(loss), saliency_maps(outputs))
    (loss32, maps32), (loss16, maps16) = results[jnp.float32], results[jnp.bfloat16]
    # Seen: the loss 0.75 % apart, the maps 0.04-0.06 apart on average. The maps are stretched to [0, 1] per image,
    # which magnifies bfloat16's rounding (8-bit mantissa) at initialisation, where the outputs' spread is small.
    assert abs(loss16 - loss32) <= 0.02 * abs(loss32)
    for name in ("metric", "ce"):
        difference = np.abs(np.asarray(maps16[name]) - np.asarray(maps32[name]))
        assert difference.mean() < 0.1, name


def test_bfloat16_forward_and_loss_of_the_shipped_network_match_float32_on_real_images(shared_data):
    """The trained network, evaluation mode, 8 real DUTS-TR pairs: bfloat16 compute against float32.

    Seen with the 128 px shipped weights: loss 0.30 % apart, maps 2.5e-4 (metric) and 4.6e-4 (CE) apart on average,
    0.03 % of the pixels on the other side of 0.5."""
    import dataclasses

    from menet_datasets import FolderSource, resize_pair
    from menet_jax.io import weights as pretrained

    variables, config, _ = pretrained.load()
    source = FolderSource(shared_data / "DUTS-TR-subset")
    pairs = [resize_pair(source[i]["image"], source[i]["mask"], config.image_size) for i in range(0, 40, 5)]
    images = jnp.asarray(np.stack([p[0] for p in pairs]))
    masks = jnp.asarray(np.stack([p[1] for p in pairs]) > 0)
    results = {}
    for dtype in ("float32", "bfloat16"):
        model = MEnet.from_config(dataclasses.replace(config, dtype=dtype))
        outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
        # The outputs come back as float32; computed in bfloat16, every value is a bfloat16 number.
        logits = np.asarray(outputs["logits"])
        on_bf16_grid = np.array_equal(logits.astype(jnp.bfloat16).astype(np.float32), logits)
        assert on_bf16_grid == (dtype == "bfloat16")
        loss, _ = menet_loss(outputs["features"], outputs["logits"], masks)
        assert loss.dtype == jnp.float32
        results[dtype] = float(loss), {k: np.asarray(v) for k, v in saliency_maps(outputs).items()}
    (loss32, maps32), (loss16, maps16) = results["float32"], results["bfloat16"]
    assert abs(loss16 - loss32) <= 0.01 * abs(loss32)
    for name in ("metric", "ce"):
        assert np.abs(maps16[name] - maps32[name]).mean() < 5e-3, name
        assert np.mean((maps16[name] > 0.5) != (maps32[name] > 0.5)) < 5e-3, name
