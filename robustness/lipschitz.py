"""Certified Lipschitz upper bounds of any model x -> f(params, x) of an image, read off its evaluation-mode jaxpr.

    python -m robustness.lipschitz --checkpoint runs/demo            # per-layer table, totals, JSON
    python -m robustness.lipschitz --config tiny --output salient_prob

Two bounds on ||f(x) - f(y)|| / ||x - y|| (l2 norms, inputs on the network's 0..255 scale):

(a) The paper's Eq. 13, element-wise: |J(x)| <= G entrywise for every x, where G is the network with every linear
    layer replaced by its absolute value (|W|, |kernel|, |scale|) and every nonlinearity by its largest slope
    (ReLU, tanh: 1; sigmoid: 1/4). Then ||J(x)||_2 <= ||G||_2. G is non-negative, so power iteration from a
    positive vector gives ||G||_2 from below and the Collatz-Wielandt ratio max_i (G^T G v)_i / v_i a certified
    upper bound.
(b) The layerwise l2 bound: the product of per-layer operator norms along the graph with the rules of the field
    notes: convolutions (also strided and transposed) by the sup over frequencies of sigma_max of the kernel's
    DFT (`conv_fft_bound`, certified) and by power iteration on the operator (an estimate from below);
    diagonal scalings (evaluation-mode BatchNorm) are carried forward through monotone activations and folded
    into the input channels of the next convolution (diagonal matrices commute with the activations' diagonal
    Jacobians), else taken as max |scale|; sums L1 + L2 (residual: 1 + L(f)), concatenation and selections
    sqrt(L1^2 + L2^2), broadcasting by m copies sqrt(m) (nearest upsampling by s: s), reductions by sums of m
    terms sqrt(m), max-reductions 1, reshapes / slices / pads 1.

Both take the model as `(f, params, x)` (robustness.model) and interpret the jaxpr of x -> f(params, x) at one
input: the parameters are closed over as constants, and every equation whose inputs are all constants is evaluated.
An operation that is not Lipschitz in its input (a product of two inputs-dependent values, exp, rsqrt, division by
an input-dependent value, ...) makes every output computed through it unbounded; asking for such an output raises
`LipschitzError` naming the operation. Results are `LipschitzBound` dataclasses (`to_json()`). For MEnet
(`menet_outputs(config, output)`, built on `api.network_function`) the logits, the tanh features and the salient
probability are bounded; the metric map is not (it L2-normalises the features, and x / ||x|| is not Lipschitz
near 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
from jax import lax
from threadpoolctl import threadpool_limits

from menet_jax import api
from robustness.norms import power_iteration


class LipschitzError(api.MenetError, ValueError):
    """An output depends on the input through an operation with no global Lipschitz bound (one line)."""


# ----------------------------------------------------------------------------------------------- convolutions
def _kernel_spatial_io(kernel, dimension_numbers):
    """The kernel as (spatial..., in features, out features), whatever its layout in the jaxpr."""
    rhs_spec = dimension_numbers.rhs_spec  # (out feature dim, in feature dim, spatial dims...)
    return np.transpose(np.asarray(kernel, np.float64), (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))


def conv_fft_bound(
    kernel,
    in_spatial,
    *,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    groups: int = 1,
    in_scale=None,
    chunk_elems: int = 2**24,
) -> float:
    """Certified upper bound of the operator norm of x -> conv(x, kernel) on inputs of spatial size `in_spatial`.

    `kernel`: (spatial..., in features per group, out features). The zero-padded (and input-dilated,
    output-strided) convolution is a sub-block of the circular convolution on the padded grid: zero-insertion and
    zero-padding are isometries, cropping and striding restrictions. The circular convolution's norm is exactly
    max over the grid's DFT frequencies of sigma_max(K_hat(w)), computed here in float64. `in_scale` (per input
    channel) is a diagonal scaling folded in before the convolution."""
    k = np.asarray(kernel, np.float64)
    nsp = k.ndim - 2
    lhs_dilation = tuple(lhs_dilation or (1,) * nsp)
    rhs_dilation = tuple(rhs_dilation or (1,) * nsp)
    if any(r > 1 for r in rhs_dilation):
        dilated = np.zeros(tuple((s - 1) * r + 1 for s, r in zip(k.shape[:nsp], rhs_dilation)) + k.shape[nsp:])
        dilated[tuple(slice(None, None, r) for r in rhs_dilation)] = k
        k = dilated
    grid = []
    for d in range(nsp):
        size = (in_spatial[d] - 1) * lhs_dilation[d] + 1 + padding[d][0] + padding[d][1]
        grid.append(max(size, k.shape[d]))
    in_per_group, out = k.shape[-2], k.shape[-1]
    out_per_group = out // groups
    best = 0.0
    for g in range(groups):
        kg = k[..., g * out_per_group : (g + 1) * out_per_group]
        if in_scale is not None:
            kg = kg * np.asarray(in_scale, np.float64)[g * in_per_group : (g + 1) * in_per_group][:, None]
        best = max(best, _circular_norm(kg, grid, chunk_elems))
    return best


def _single_threaded_blas():
    """Batched tiny eigenproblems are many times slower with OpenBLAS threads fighting XLA's (BENCHMARKS.md);
    threadpoolctl (a dependency) limits them to one."""
    return threadpool_limits(1, user_api="blas")


def _circular_norm(k, grid, chunk_elems):
    """max over DFT frequencies of sigma_max(K_hat(w)); the first axis's DFT is done in chunks (memory), and
    only half of it (a real kernel's spectrum is conjugate-symmetric)."""
    with _single_threaded_blas():
        return _circular_norm_impl(k, grid, chunk_elems)


def _circular_norm_impl(k, grid, chunk_elems):
    nsp = k.ndim - 2
    rest = np.fft.fftn(k, s=grid[1:], axes=tuple(range(1, nsp))) if nsp > 1 else k
    k0, n0 = k.shape[0], grid[0]
    freqs = np.arange(n0 // 2 + 1)
    per_freq = max(1, int(np.prod(rest.shape[1:])))
    step = max(1, chunk_elems // per_freq)
    best = 0.0
    for start in range(0, len(freqs), step):
        w = freqs[start : start + step]
        phase = np.exp(-2j * np.pi * np.outer(w, np.arange(k0)) / n0)  # (chunk, k0)
        spectrum = np.tensordot(phase, rest, axes=(1, 0))  # (chunk, n1.., I, O)
        m = spectrum.reshape(-1, *spectrum.shape[-2:])
        gram = m.conj().transpose(0, 2, 1) @ m if m.shape[-1] <= m.shape[-2] else m @ m.conj().transpose(0, 2, 1)
        best = max(best, float(np.sqrt(max(np.linalg.eigvalsh(gram)[:, -1].max(), 0.0))))
    return best


def conv_power_norm(
    params, kernel, lhs_shape, *, key, in_scale=None, feature_axis=-1, iters: int = 100, tol: float = 1e-5
):
    """Power-iteration estimate (from below) of the same convolution's operator norm on the actual input shape,
    with an optional per-input-channel scaling applied first (a folded BatchNorm)."""
    kernel = jnp.asarray(kernel, jnp.float32)
    scale = 1.0
    if in_scale is not None:
        shape = [1] * len(lhs_shape)
        shape[feature_axis] = -1
        scale = jnp.asarray(in_scale, jnp.float32).reshape(shape)
    apply = lambda v: lax.conv_general_dilated(v * scale, kernel, **params)
    transpose = jax.linear_transpose(apply, jax.ShapeDtypeStruct(lhs_shape, jnp.float32))
    return power_iteration(jax.jit(apply), jax.jit(lambda u: transpose(u)[0]), lhs_shape, key=key, iters=iters, tol=tol)


def _conv_params(eqn_params):
    keep = (
        "window_strides",
        "padding",
        "lhs_dilation",
        "rhs_dilation",
        "dimension_numbers",
        "feature_group_count",
        "batch_group_count",
        "precision",
        "preferred_element_type",
    )
    return {k: eqn_params[k] for k in keep if k in eqn_params}


# ------------------------------------------------------------------------------------- the jaxpr interpreter
@dataclasses.dataclass
class Dep:
    """An input-dependent value: Jacobian = diag(scale) M with ||M||_2 <= cert (certified) and ~ est."""

    cert: float
    est: float
    scale: object = None  # None or an array broadcastable to the value's shape

    def flushed(self):
        if self.scale is None:
            return self
        m = float(np.max(np.abs(self.scale))) if np.size(self.scale) else 0.0
        return Dep(self.cert * m, self.est * m)


@dataclasses.dataclass
class Unbounded:
    reason: str


@dataclasses.dataclass
class Const:
    value: object


STRUCTURAL = {
    "reshape",
    "squeeze",
    "expand_dims",
    "transpose",
    "rev",
    "slice",
    "convert_element_type",
    "copy",
    "copy_p",
    "reduce_precision",
    "dynamic_slice",
}
IDENTITY = {"stop_gradient", "optimization_barrier"}
SLOPE = {
    "tanh": 1.0,
    "logistic": 0.25,
    "abs": 1.0,
    "neg": 1.0,
    "sin": 1.0,
    "cos": 1.0,
    "atan": 1.0,
    "round": None,
    "floor": None,
    "ceil": None,
    "sign": None,
    "exp": None,
    "log": None,
    "sqrt": None,
    "rsqrt": None,
    "integer_pow": None,
    "pow": None,
    "log1p": None,
    "expm1": None,
    "erf_inv": None,
}
CALLS = (
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
    "remat",
    "checkpoint",
)


def _sub_jaxpr(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if isinstance(sub, jcore.ClosedJaxpr):
            return sub.jaxpr, list(sub.consts)
        if isinstance(sub, jcore.Jaxpr):
            return sub, []
    raise LipschitzError(f"{eqn.primitive.name}: cannot find its inner jaxpr")


def _where(eqn, prefix):
    stack = str(eqn.source_info.name_stack)
    return "/".join(p for p in (prefix, stack) if p) or "<top>"


def _evaluate(eqn, values):
    out = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


class _Interpreter:
    """Walks a jaxpr once; `mode` "l2" carries `Dep` bounds, mode "abs" builds the element-wise network G."""

    def __init__(self, mode, *, power_iters=0, key=None, cache=None):
        self.mode, self.power_iters = mode, power_iters
        self.cache = {} if cache is None else cache
        self.key = jax.random.key(0) if key is None else key
        self.layers = []

    def run(self, jaxpr, consts, args, prefix=""):
        env = {}

        def read(v):
            if isinstance(v, jcore.Literal):
                return Const(v.val)
            return env[v]

        for var, value in zip(jaxpr.constvars, consts):
            env[var] = Const(value)
        for var, value in zip(jaxpr.invars, args):
            env[var] = value
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            if all(isinstance(i, Const) for i in ins):
                outs = [Const(o) for o in _evaluate(eqn, [i.value for i in ins])]
            elif any(isinstance(i, Unbounded) for i in ins):
                outs = [next(i for i in ins if isinstance(i, Unbounded))] * len(eqn.outvars)
            elif eqn.primitive.name in CALLS:
                sub, sub_consts = _sub_jaxpr(eqn)
                outs = self.run(sub, sub_consts, ins, _where(eqn, prefix))
            else:
                outs = self.step(eqn, ins, _where(eqn, prefix))
                outs = outs if isinstance(outs, list) else [outs]
            for var, value in zip(eqn.outvars, outs):
                env[var] = value
        return [read(v) for v in jaxpr.outvars]

    def step(self, eqn, ins, where):
        name = eqn.primitive.name
        dep = [i for i in ins if not isinstance(i, Const)]
        shape = eqn.outvars[0].aval.shape
        if self.mode == "l2":
            return self.step_l2(eqn, name, ins, dep, shape, where)
        return self.step_abs(eqn, name, ins, dep, where)

    # ---------------------------------------------------------------------------------------- l2 bounds
    def step_l2(self, eqn, name, ins, dep, shape, where):
        p = eqn.params
        unbounded = lambda why: Unbounded(f"{name} at {where}: {why}")
        if name in IDENTITY:
            return ins[0]
        if name in ("add", "sub", "add_any"):
            if len(dep) == 1:
                return dep[0]
            a, b = (d.flushed() for d in dep)
            return Dep(a.cert + b.cert, a.est + b.est)
        if name == "mul":
            if len(dep) == 2:
                return unbounded("product of two input-dependent values (not Lipschitz)")
            d, c = (ins[0], ins[1]) if isinstance(ins[1], Const) else (ins[1], ins[0])
            c = np.asarray(c.value, np.float64)
            return Dep(d.cert, d.est, c if d.scale is None else d.scale * c)
        if name == "div":
            if isinstance(ins[1], Const):
                c = 1.0 / np.asarray(ins[1].value, np.float64)
                d = ins[0]
                return Dep(d.cert, d.est, c if d.scale is None else d.scale * c)
            return unbounded("division by an input-dependent value (not Lipschitz near 0)")
        if name in ("max", "min"):
            if len(dep) == 1:  # ReLU-like: slope 0 or 1, a diagonal commuting with scales
                return dep[0]
            a, b = (d.flushed() for d in dep)
            return Dep(math.hypot(a.cert, b.cert), math.hypot(a.est, b.est))
        if name in SLOPE:
            if SLOPE[name] is None:
                return unbounded("no global bound on its slope")
            d = ins[0]
            return Dep(d.cert * SLOPE[name], d.est * SLOPE[name], d.scale)
        if name == "select_n":
            if not isinstance(ins[0], Const):
                return unbounded("the selector depends on the input (a step function)")
            cases = [c.flushed() for c in ins[1:] if not isinstance(c, Const)]
            return Dep(math.sqrt(sum(c.cert**2 for c in cases)), math.sqrt(sum(c.est**2 for c in cases)))
        if name in STRUCTURAL or name == "pad":
            d = ins[0]
            if name == "dynamic_slice" and not all(isinstance(i, Const) for i in ins[1:]):
                return unbounded("slice position depends on the input")
            if d.scale is None:
                return Dep(d.cert, d.est)
            full = jnp.broadcast_to(jnp.asarray(d.scale, jnp.float32), eqn.invars[0].aval.shape)
            others = [jnp.ones((), jnp.float32)] if name == "pad" else [i.value for i in ins[1:]]
            return Dep(d.cert, d.est, np.asarray(_evaluate(eqn, [full, *others])[0]))
        if name == "broadcast_in_dim":
            d = ins[0]
            copies = math.sqrt(np.prod(shape) / max(np.prod(eqn.invars[0].aval.shape), 1))
            scale = (
                None
                if d.scale is None
                else np.asarray(
                    _evaluate(eqn, [jnp.broadcast_to(jnp.asarray(d.scale, jnp.float32), eqn.invars[0].aval.shape)])[0]
                )
            )
            return Dep(d.cert * copies, d.est * copies, scale)
        if name in ("concatenate", "stack"):
            parts = [i if isinstance(i, Dep) else Dep(0.0, 0.0) for i in ins]
            scale = None
            if any(part.scale is not None for part in parts):
                full = [
                    np.broadcast_to(np.ones(()) if part.scale is None else part.scale, var.aval.shape)
                    for var, part in zip(eqn.invars, parts)
                ]
                scale = (
                    np.concatenate(full, axis=p["dimension"])
                    if name == "concatenate"
                    else np.stack(full, axis=p["axis"])
                )
            return Dep(math.sqrt(sum(x.cert**2 for x in parts)), math.sqrt(sum(x.est**2 for x in parts)), scale)
        if name in ("reduce_sum", "reduce_max", "reduce_min", "argmax"):
            if name == "argmax":
                return unbounded("argmax is a step function")
            d = ins[0].flushed()
            m = math.prod(eqn.invars[0].aval.shape[a] for a in p["axes"])
            factor = math.sqrt(m) if name == "reduce_sum" else 1.0
            return Dep(d.cert * factor, d.est * factor)
        if name in ("reduce_window_max", "reduce_window_sum", "reduce_window_min"):
            if any(x != 1 for x in (*p["base_dilation"], *p["window_dilation"])):
                return unbounded("dilated windows are not supported")
            d = ins[0].flushed()
            overlap = math.prod(-(-w // s) for w, s in zip(p["window_dimensions"], p["window_strides"]))
            factor = math.sqrt(overlap) * (
                math.sqrt(math.prod(p["window_dimensions"])) if name == "reduce_window_sum" else 1.0
            )
            return Dep(d.cert * factor, d.est * factor)
        if name == "conv_general_dilated":
            return self.conv_l2(eqn, ins, where)
        if name == "dot_general":
            return self.dot_l2(eqn, ins, where)
        return unbounded("no Lipschitz rule for this operation")

    def conv_l2(self, eqn, ins, where):
        p = eqn.params
        if not isinstance(ins[1], Const) or isinstance(ins[0], Const):
            return Unbounded(f"conv_general_dilated at {where}: the kernel depends on the input")
        if p.get("batch_group_count", 1) != 1:
            return Unbounded(f"conv_general_dilated at {where}: batch_group_count > 1 is not supported")
        d, kernel = ins[0], np.asarray(ins[1].value)
        dn = p["dimension_numbers"]
        lhs_shape = eqn.invars[0].aval.shape
        feature_axis = dn.lhs_spec[1]
        in_scale, folded = None, False
        if d.scale is not None:
            full = np.broadcast_to(np.asarray(d.scale, np.float64), lhs_shape)
            per_channel = np.moveaxis(full, feature_axis, -1).reshape(-1, lhs_shape[feature_axis])
            if np.all(per_channel == per_channel[:1]):
                in_scale, folded = per_channel[0], True
            else:
                d = d.flushed()
        k_sio = _kernel_spatial_io(kernel, dn)
        in_spatial = [lhs_shape[a] for a in dn.lhs_spec[2:]]
        groups = p.get("feature_group_count", 1)
        cert = conv_fft_bound(
            k_sio,
            in_spatial,
            padding=p["padding"],
            lhs_dilation=p["lhs_dilation"],
            rhs_dilation=p["rhs_dilation"],
            groups=groups,
            in_scale=in_scale,
        )
        est = cert
        record = {
            "name": where,
            "op": _conv_kind(p),
            "in_shape": list(lhs_shape),
            "out_shape": list(eqn.outvars[0].aval.shape),
            "kernel": list(kernel.shape),
            "folded_scale": folded,
            "fft_bound": cert,
        }
        if self.power_iters:
            signature = (
                kernel.tobytes(),
                None if in_scale is None else np.asarray(in_scale).tobytes(),
                tuple(lhs_shape),
                repr(sorted(_conv_params(p).items())),
                self.power_iters,
            )
            if signature not in self.cache:
                self.cache[signature] = conv_power_norm(
                    _conv_params(p),
                    kernel,
                    lhs_shape,
                    in_scale=in_scale,
                    feature_axis=feature_axis,
                    key=jax.random.fold_in(self.key, len(self.layers)),
                    iters=self.power_iters,
                )
            estimate = self.cache[signature]
            est = estimate.value
            record.update(
                power_estimate=estimate.value, power_iterations=estimate.iterations, power_converged=estimate.converged
            )
        self.layers.append(record)
        return Dep(d.cert * cert, d.est * est)

    def dot_l2(self, eqn, ins, where):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        if sum(isinstance(i, Const) for i in ins) != 1:
            return Unbounded(f"dot_general at {where}: product of two input-dependent values (not Lipschitz)")
        if lb or rb:
            return Unbounded(f"dot_general at {where}: batched products are not supported")
        const_side = 0 if isinstance(ins[0], Const) else 1
        w = np.asarray(ins[const_side].value, np.float64)
        contract = lc if const_side == 0 else rc
        free = [a for a in range(w.ndim) if a not in contract]
        matrix = np.transpose(w, (*contract, *free)).reshape(math.prod(w.shape[a] for a in contract), -1)
        norm = float(np.linalg.norm(matrix, 2)) if matrix.size else 0.0
        d = ins[1 - const_side].flushed()
        self.layers.append(
            {
                "name": where,
                "op": "dense",
                "in_shape": list(eqn.invars[1 - const_side].aval.shape),
                "out_shape": list(eqn.outvars[0].aval.shape),
                "kernel": list(w.shape),
                "folded_scale": False,
                "fft_bound": norm,
                "power_estimate": norm,
            }
        )
        return Dep(d.cert * norm, d.est * norm)

    # ------------------------------------------------------------------------------- element-wise network G
    def step_abs(self, eqn, name, ins, dep, where):
        p = eqn.params
        val = lambda i: i.value if isinstance(i, Const) else i
        unbounded = lambda why: Unbounded(f"{name} at {where}: {why}")
        if name in IDENTITY or name in ("max", "min") and len(dep) == 1:
            return dep[0]
        if name in ("add", "sub", "add_any"):
            return dep[0] if len(dep) == 1 else dep[0] + dep[1]
        if name in ("max", "min"):
            return dep[0] + dep[1]
        if name == "mul":
            if len(dep) == 2:
                return unbounded("product of two input-dependent values (not Lipschitz)")
            c = ins[1] if isinstance(ins[1], Const) else ins[0]
            return dep[0] * jnp.abs(jnp.asarray(c.value, dep[0].dtype))
        if name == "div":
            if not isinstance(ins[1], Const):
                return unbounded("division by an input-dependent value (not Lipschitz near 0)")
            return ins[0] / jnp.abs(jnp.asarray(ins[1].value, ins[0].dtype))
        if name in SLOPE:
            return unbounded("no global bound on its slope") if SLOPE[name] is None else ins[0] * SLOPE[name]
        if name == "select_n":
            if not isinstance(ins[0], Const):
                return unbounded("the selector depends on the input (a step function)")
            dtype = dep[0].dtype
            cases = [
                jnp.zeros(eqn.outvars[0].aval.shape, dtype) if isinstance(c, Const) else c.astype(dtype)
                for c in ins[1:]
            ]
            return lax.select_n(ins[0].value, *cases)
        if name == "pad":
            return lax.pad(ins[0], jnp.zeros((), ins[0].dtype), p["padding_config"])
        if name in ("concatenate", "stack"):
            dtype = dep[0].dtype
            parts = [
                jnp.zeros(v.aval.shape, dtype) if isinstance(i, Const) else i.astype(dtype)
                for v, i in zip(eqn.invars, ins)
            ]
            return _evaluate(eqn, parts)[0]
        if name in ("convert_element_type", "reduce_precision"):
            if not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):
                return unbounded("conversion to a non-float type (a step function)")
            return ins[0]
        if name in STRUCTURAL or name in ("broadcast_in_dim", "reduce_sum"):
            if name == "dynamic_slice" and not all(isinstance(i, Const) for i in ins[1:]):
                return unbounded("slice position depends on the input")
            return _evaluate(eqn, [val(i) for i in ins])[0]
        if name in ("reduce_max", "reduce_min"):
            return jnp.sum(ins[0], axis=p["axes"])
        if name in ("reduce_window_max", "reduce_window_min", "reduce_window_sum"):
            if any(x != 1 for x in (*p["base_dilation"], *p["window_dilation"])):
                return unbounded("dilated windows are not supported")
            return lax.reduce_window(ins[0], 0.0, lax.add, p["window_dimensions"], p["window_strides"], p["padding"])
        if name == "conv_general_dilated":
            if not isinstance(ins[1], Const) or isinstance(ins[0], Const):
                return unbounded("the kernel depends on the input")
            params = {k: v for k, v in _conv_params(p).items() if k != "preferred_element_type"}
            return lax.conv_general_dilated(ins[0], jnp.abs(jnp.asarray(ins[1].value, ins[0].dtype)), **params)
        if name == "dot_general":
            if sum(isinstance(i, Const) for i in ins) != 1:
                return unbounded("product of two input-dependent values (not Lipschitz)")
            dtype = dep[0].dtype
            args = [jnp.abs(jnp.asarray(i.value, dtype)) if isinstance(i, Const) else i for i in ins]
            return lax.dot_general(*args, eqn.params["dimension_numbers"])
        return unbounded("no element-wise rule for this operation")


def _conv_kind(p):
    if any(a > 1 for a in p["lhs_dilation"]):
        return "transposed conv"
    if any(s > 1 for s in p["window_strides"]):
        return "strided conv"
    return "conv"


# ----------------------------------------------------------------------------------------------- public API
@dataclasses.dataclass(frozen=True)
class LipschitzBound:
    """A Lipschitz upper bound of ||f(params, x) - f(params, y)|| / ||x - y|| (l2).

    `method` "layerwise" (bound (b)) or "elementwise" (bound (a), Eq. 13). `certified`: the certified upper bound.
    `estimate`: layerwise, the same product with power-iteration norms (from below per layer, not certified; None
    without power iterations); elementwise, ||G||_2 from below. `layers`: the layerwise bound's per-layer records
    (name, op, shapes, FFT bound, power estimate); `iterations`: the elementwise power iterations."""

    method: str
    certified: float
    estimate: float | None
    layers: list = dataclasses.field(default_factory=list)
    iterations: int | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _single_output(f, params, x):
    """The jaxpr of x -> f(params, x), the parameters closed over (constants: what the rules read)."""
    closed = jax.make_jaxpr(lambda z: f(params, z))(x)
    if len(closed.jaxpr.outvars) != 1:
        raise LipschitzError(
            f"the function has {len(closed.jaxpr.outvars)} outputs: bound one at a time "
            "(e.g. lambda params, x: model(params, x)['logits'])"
        )
    if len(closed.jaxpr.invars) != 1:
        raise LipschitzError("the function must take one array (the image) after its parameters")
    return closed


def layerwise_bound(f, params, x, *, power_iters: int = 0, key=None, cache=None) -> LipschitzBound:
    """The layerwise l2 Lipschitz bound (b) of x -> f(params, x) (array -> array) around the graph it traces at `x`.

    `certified`: the product bound with the FFT norms; `estimate`: the same with power-iteration norms (only with
    `power_iters`); `layers`: per-layer records. Raises LipschitzError if the output goes through an operation with
    no bound. `cache` (a dict) keeps the per-layer power iterations between calls on the same network (e.g. one call
    per output)."""
    closed = _single_output(f, params, x)
    interp = _Interpreter("l2", power_iters=power_iters, key=key, cache=cache)
    (out,) = interp.run(closed.jaxpr, closed.consts, [Dep(1.0, 1.0)])
    if isinstance(out, Unbounded):
        raise LipschitzError(f"output not bounded: {out.reason}")
    if isinstance(out, Const):
        return LipschitzBound("layerwise", 0.0, 0.0, [])
    out = out.flushed()
    return LipschitzBound("layerwise", out.cert, out.est if power_iters else None, interp.layers)


def elementwise_network(f, params, x):
    """G of bound (a) as a linear function u -> G u (u, G u >= 0 entrywise, u with x's shape), and its transpose.

    Call them inside `jax.enable_x64(True)` with float64 u: products of ~100 layer norms overflow float32."""
    closed = _single_output(f, params, x)
    out_shape = closed.jaxpr.outvars[0].aval.shape

    def g(u):
        (out,) = _Interpreter("abs").run(closed.jaxpr, closed.consts, [u])
        if isinstance(out, Unbounded):
            raise LipschitzError(f"output not bounded: {out.reason}")
        if isinstance(out, Const):
            return jnp.zeros(out_shape, u.dtype) * jnp.sum(u)
        return out

    def transpose(y, dtype):
        return jax.linear_transpose(g, jax.ShapeDtypeStruct(jnp.shape(x), dtype))(y)[0]

    return g, transpose


def elementwise_bound(f, params, x, *, iters: int = 200, tol: float = 1e-6) -> LipschitzBound:
    """Bound (a), the paper's Eq. 13, of x -> f(params, x): ||G||_2 with |J(x)| <= G for all x, in float64.

    Power iteration on G^T G from the all-ones vector (stays positive: G >= 0) gives the estimate from below;
    the Collatz-Wielandt ratio max_i (G^T G v)_i / v_i bounds its largest eigenvalue from above."""
    g, gt = elementwise_network(f, params, x)
    with jax.enable_x64(True):
        gtg = jax.jit(lambda v: gt(g(v), jnp.float64))
        v = jnp.ones(jnp.shape(x), jnp.float64)
        v = v / jnp.linalg.norm(v.ravel())
        estimate, upper, iterations, previous = 0.0, float("inf"), 0, None
        for iterations in range(1, iters + 1):
            w = gtg(v)
            wv, vv = np.asarray(w).ravel(), np.asarray(v).ravel()
            estimate = math.sqrt(max(float(wv @ vv), 0.0))
            if (vv > 0).all():
                upper = min(upper, math.sqrt(float(np.max(wv / vv))))
            norm = float(np.linalg.norm(wv))
            if norm == 0:
                return LipschitzBound("elementwise", 0.0, 0.0, iterations=iterations)
            v = w / norm
            if previous is not None and abs(estimate - previous) <= tol * estimate and upper <= estimate * (1 + 1e-3):
                break
            previous = estimate
    return LipschitzBound("elementwise", upper, estimate, iterations=iterations)


# ------------------------------------------------------------------------------------ MEnet, derived by hand
def menet_layerwise_bound(variables, config, output: str = "logits") -> float:
    """Bound (b) of MEnet written out from its architecture (model.py), with the same per-layer rules as the
    generic interpreter; the tests check the two agree, which checks the interpreter on a real graph."""
    if output not in ("logits", "features", "salient_prob"):
        raise LipschitzError(f"{output}: only logits, features and salient_prob are bounded")
    params, stats = variables["params"], variables["batch_stats"]
    eps, size = config.bn_epsilon, config.image_size

    def bn_scale(p, s):
        return np.asarray(p["scale"], np.float64) / np.sqrt(np.asarray(s["var"], np.float64) + eps)

    def conv(kernel, spatial, stride=1, pad=1, transpose=False, in_scale=None):
        k = np.asarray(kernel, np.float64)
        if transpose:
            edge = k.shape[0] - 1 - pad
            return conv_fft_bound(
                k[::-1, ::-1],
                (spatial, spatial),
                padding=((edge, edge),) * 2,
                lhs_dilation=(stride, stride),
                in_scale=in_scale,
            )
        return conv_fft_bound(k, (spatial, spatial), padding=((pad, pad),) * 2, in_scale=in_scale)

    def brc(p, s, L, D, spatial, **kw):
        """BN (scale folded into the conv's input channels, with any pending scale D) -> ReLU -> conv."""
        scale = bn_scale(p["BatchNorm_0"], s["BatchNorm_0"]) * (1.0 if D is None else D)
        key = "ConvTranspose_0" if kw.get("transpose") else "Conv_0"
        return L * conv(p[key]["kernel"], spatial, in_scale=scale, **kw)

    def flush(L, D):
        return L if D is None else L * float(np.max(np.abs(D)))

    def identity(name, L, D, spatial):
        p, s = params[name], stats[name]
        # Flax names the outer unit of brc()(brc()(x)) first: BRC_1 is applied to x, then BRC_0.
        f = brc(p["BRC_0"], s["BRC_0"], brc(p["BRC_1"], s["BRC_1"], L, D, spatial), None, spatial)
        return flush(L, D) + f

    # Stem: conv, then BN (pending scale) and ReLU.
    D_in = None if config.input_scale == "raw" else np.full(3, 1 / 127.5)
    L = conv(params["stem_conv"]["kernel"], size, in_scale=D_in)
    D = bn_scale(params["stem_bn"], stats["stem_bn"])
    L = identity("E0_block0", L, D, size)
    L = identity("E0_block1", L, None, size)
    encoder, spatial = [L], size
    for s in range(1, 6):
        p, st = params[f"E{s}_down"], stats[f"E{s}_down"]
        main = brc(
            p["BRC_1"], st["BRC_1"], brc(p["BRC_0"], st["BRC_0"], L, None, spatial, stride=2), None, spatial // 2
        )
        L = main + brc(p["BRC_2"], st["BRC_2"], L, None, spatial, stride=2, pad=0)
        spatial //= 2
        L = identity(f"E{s}_block", L, None, spatial)
        encoder.append(L)
    k = size // 32
    b = brc(params["bottleneck_conv"], stats["bottleneck_conv"], encoder[5], None, spatial, pad=0)
    bottleneck = brc(params["bottleneck_deconv"], stats["bottleneck_deconv"], b, None, 1, pad=0, transpose=True)
    L, decoder = bottleneck, {}
    for s in range(4, -1, -1):
        L = math.sqrt(L**2 + encoder[s + 1] ** 2)
        p, st = params[f"D{s}_up"], stats[f"D{s}_up"]
        main = brc(p["BRC_0"], st["BRC_0"], L, None, spatial, stride=2, pad=1, transpose=True)
        main = brc(p["BRC_1"], st["BRC_1"], main, None, spatial * 2)
        L = main + brc(p["BRC_2"], st["BRC_2"], L, None, spatial, stride=2, pad=0, transpose=True)
        spatial *= 2
        L = identity(f"D{s}_block", L, None, spatial)
        decoder[s] = L
    del k
    sources = [(1.0, D_in, size)] + [(e, None, size >> i) for i, e in enumerate(encoder)]
    sources += [(decoder[s], None, size >> s) for s in range(5)] + [(bottleneck, None, size // 32)]
    sides = []
    for name, (Ls, Ds, sp) in zip(api.SIDE_MAP_ORDER, sources):
        Lside = brc(params[f"side_{name}"], stats[f"side_{name}"], Ls, Ds, sp)
        factor = size // sp
        sides.append(Lside * (math.sqrt(factor) * math.sqrt(factor) if factor > 1 else 1.0))
    Lz = math.sqrt(sum(x**2 for x in sides))
    head = "metric" if output == "features" else "logit"
    Lh = Lz * conv(params[f"{head}_conv"]["kernel"], size)
    scale = bn_scale(params[f"{head}_bn"], stats[f"{head}_bn"])
    if output == "salient_prob":  # sigmoid(z1 - z0): the two channels' sum, slope 1/4
        return (Lh * abs(scale[1]) + Lh * abs(scale[0])) * 0.25
    return flush(Lh, scale)


MENET_OUTPUTS = ("logits", "features", "salient_prob", "metric_map")


def menet_outputs(config, output: str):
    """MEnet in evaluation mode as `f(variables, x)` for one image x (1, S, S, 3) -> the chosen output, built on
    `api.network_function` with the plain convolutions (one conv_general_dilated per layer, what the per-layer rules
    read) in float32.

    salient_prob is written as sigmoid(z1 - z0), equal to softmax(z)[..., 1] (the interpreter has no rule for
    a softmax, whose pieces exp and division are not Lipschitz on their own)."""
    if output not in MENET_OUTPUTS:
        raise LipschitzError(f"output must be one of {', '.join(MENET_OUTPUTS)}, got {output!r}")
    config = dataclasses.replace(config, conv="plain", dtype="float32")
    if output in ("logits", "features"):
        return api.network_function(config, output=output)
    heads = api.network_function(config, output="heads")

    def f(variables, x):
        out = heads(variables, x)
        logits = out["logits"]
        p = jax.nn.sigmoid(logits[..., 1] - logits[..., 0])
        if output == "salient_prob":
            return p
        return api.metric_distance(out["features"], p)

    return f


def _print_table(layers):
    print(f"{'#':>3s} {'layer':44s} {'op':16s} {'in shape':>18s} {'fold':>4s} {'FFT bound':>11s} {'power it.':>11s}")
    for i, r in enumerate(layers):
        shape = "x".join(str(s) for s in r["in_shape"])
        est = r.get("power_estimate")
        print(
            f"{i:3d} {r['name'][-44:]:44s} {r['op']:16s} {shape:>18s} {'yes' if r['folded_scale'] else '':>4s} "
            f"{r['fft_bound']:11.4g} {('%11.4g' % est) if est is not None else '-':>11s}"
        )


def parse_args(argv=None):
    parser = api.ArgumentParser(
        prog="python -m robustness.lipschitz",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    api.add_checkpoint_argument(parser, float32=True, preset=True)
    parser.add_argument("--output", choices=[*MENET_OUTPUTS, "all"], default="all")
    parser.add_argument("--power-iterations", type=int, default=50, help="per layer, 0 to skip the estimates")
    parser.add_argument(
        "--json",
        type=Path,
        help="where to write the results (default: lipschitz.json in the checkpoint folder, or ./lipschitz.json)",
    )
    return parser.parse_args(argv)


@api.command
def main(argv=None) -> int:
    args = parse_args(argv)
    api.check_minimums(args, power_iterations=0)
    in_workdir = args.checkpoint is not None and args.checkpoint.is_dir()
    target = args.json or (args.checkpoint / "lipschitz.json" if in_workdir else Path("lipschitz.json"))
    api.check_output_file(target, reads=[args.checkpoint])  # before the work, not after it
    # Bounds need float32.
    variables, config = api.load_network(args.checkpoint, preset=args.config, seed=args.seed, dtype="float32")
    variables = jax.device_get(variables)
    x = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    outputs = MENET_OUTPUTS if args.output == "all" else (args.output,)
    results, printed_layers, cache = {}, False, {}
    for output in outputs:
        f = menet_outputs(config, output)
        try:
            layer = layerwise_bound(f, variables, x, power_iters=args.power_iterations, cache=cache)
            element = elementwise_bound(f, variables, x)
        except LipschitzError as error:
            if args.output != "all":
                raise LipschitzError(f"{output}: {error}") from None
            results[output] = {"bounded": False, "reason": str(error)}
            continue
        if not printed_layers:
            _print_table(layer.layers)
            printed_layers = True
        hand = menet_layerwise_bound(variables, config, output) if output != "metric_map" else None
        results[output] = {
            "bounded": True,
            "layerwise_certified": layer.certified,
            "layerwise_power_estimate": layer.estimate,
            "hand_derived": hand,
            "elementwise_certified": element.certified,
            "elementwise_estimate": element.estimate,
            "elementwise_iterations": element.iterations,
            "layers": layer.layers,
        }
    print()
    print(
        f"{'output':14s} {'layerwise (FFT, certified)':>27s} {'layerwise (power)':>18s} "
        f"{'Eq.13 ||G|| cert.':>18s} {'Eq.13 ||G|| est.':>17s}"
    )
    for output, r in results.items():
        if not r["bounded"]:
            print(f"{output:14s} not bounded: {r['reason']}")
            continue
        est = r["layerwise_power_estimate"]
        print(
            f"{output:14s} {r['layerwise_certified']:27.6g} {('%18.6g' % est) if est else '-':>18s} "
            f"{r['elementwise_certified']:18.6g} {r['elementwise_estimate']:17.6g}"
        )
    api.write_text(
        target,
        json.dumps(
            {"config": dataclasses.asdict(config), "input_scale": "0..255 per channel", "outputs": results}, indent=2
        )
        + "\n",
    )
    print(f"results: {target}")
    return 0


if __name__ == "__main__":
    api.start(main)
