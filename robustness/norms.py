"""Norms of the Jacobian of any JAX function x -> y at a point, exact on small inputs and matrix-free at full size.

All functions take `f` (an array -> array or pytree function; outputs are flattened and concatenated) and a
point `x`; nothing here knows about MEnet.

* `spectral_norm`: ||J(x)||_2 by power iteration on J^T J, one jvp and one vjp per step (`jax.linearize` and
  its transpose). The iterates are Rayleigh quotients, so every value is a lower bound that rises to the largest
  singular value; it stops when the relative change is below `tol` and reports the iterations used.
* `frobenius_hutchinson`: ||J(x)||_F from E ||J v||^2 = ||J||_F^2 (v ~ N(0, I)), one jvp per probe, probes
  vmapped; the standard error of the mean gives a normal-approximation confidence interval.
* `jacobian_matrix`: the exact Jacobian, rows by chunked vmapped vjps (what `jax.jacrev` does, in chunks so
  the memory stays bounded); `exact_norms` its singular values. Only for small inputs: the reference the two
  estimators are tested against.
* `directional_estimates`: the Monte Carlo directional derivative of the paper's Eq. 12,
  E_n ||f(x + t n) - f(x)||^p / t^p over a t-schedule (finite differences) and its t -> 0 limit
  E_n ||J n||^p (one jvp per direction), with standard errors.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def flat_output(f):
    """f with its output flattened to one float32 vector (pytrees concatenated in leaf order)."""

    def g(x):
        flat, _ = ravel_pytree(f(x))
        return flat.astype(jnp.float32)

    return g


# Jitted with `f` static: a CLI that passes the same function for every image compiles each of these once.
@partial(jax.jit, static_argnums=0)
def jvp(f, x, v):
    """J(x) v, flattened."""
    return jax.jvp(flat_output(f), (x,), (v,))[1]


@partial(jax.jit, static_argnums=0)
def vjp(f, x, u):
    """J(x)^T u, with x's shape."""
    return jax.vjp(flat_output(f), x)[1](u)[0]


@partial(jax.jit, static_argnums=0)
def _squared_jvp_norms(f, x, vs):
    return jax.vmap(lambda v: jnp.sum(jvp.__wrapped__(f, x, v) ** 2))(vs)


@partial(jax.jit, static_argnums=0)
def _difference_quotients(f, x, ns, t, p):
    g = flat_output(f)
    y0 = g(x)
    return jax.vmap(lambda n: jnp.linalg.norm(g(x + t * n) - y0) ** p / t**p)(ns)


@partial(jax.jit, static_argnums=0)
def _jvp_norms(f, x, ns, p):
    return jax.vmap(lambda n: jnp.linalg.norm(jvp.__wrapped__(f, x, n)) ** p)(ns)


@dataclasses.dataclass
class NormEstimate:
    value: float
    iterations: int = 0
    converged: bool = True
    rel_change: float = 0.0
    stderr: float = 0.0
    ci_low: float = 0.0
    ci_high: float = 0.0
    probes: int = 0

    def as_dict(self):
        return dataclasses.asdict(self)


def power_iteration(
    apply, transpose, shape, *, key, iters: int = 200, tol: float = 1e-4, min_iters: int = 3
) -> NormEstimate:
    """Largest singular value of the linear map `apply` (with adjoint `transpose`) on inputs of `shape`.

    Works for any linear operator, e.g. a convolution with fixed kernel. Each estimate ||A v|| (||v|| = 1) is a
    lower bound of ||A||_2; it stops when two successive estimates differ by less than `tol` relatively.
    `apply` and `transpose` should be jitted (this loop calls them once per iteration)."""

    def step(v):
        u = apply(v)
        w = transpose(u)
        return jnp.sqrt(jnp.vdot(u, u).real), w / jnp.maximum(jnp.linalg.norm(w.ravel()), 1e-30)

    v = jax.random.normal(key, shape, jnp.float32)
    v = v / jnp.linalg.norm(v.ravel())
    previous, sigma, change = None, 0.0, float("inf")
    for i in range(1, iters + 1):
        sigma_j, v = step(v)
        sigma = float(sigma_j)
        if previous is not None:
            change = abs(sigma - previous) / max(sigma, 1e-30)
            if change < tol and i >= min_iters:
                return NormEstimate(sigma, i, True, change)
        previous = sigma
    return NormEstimate(sigma, iters, False, change)


def spectral_norm(f, x, *, key=None, iters: int = 200, tol: float = 1e-4) -> NormEstimate:
    """||J(x)||_2 of f at x by power iteration with jvp / vjp (a lower bound converging to the true value)."""
    key = jax.random.key(0) if key is None else key
    x = jnp.asarray(x, jnp.float32)
    return power_iteration(lambda v: jvp(f, x, v), lambda u: vjp(f, x, u), x.shape, key=key, iters=iters, tol=tol)


def frobenius_hutchinson(f, x, *, key=None, probes: int = 64, chunk: int = 8, z: float = 1.96) -> NormEstimate:
    """||J(x)||_F by Hutchinson probes (Gaussian v, E ||J v||^2 = ||J||_F^2), with a `z`-sigma interval.

    The interval is for the squared norm's mean (normal approximation, stderr = sample std / sqrt(probes)),
    mapped through the square root."""
    key = jax.random.key(0) if key is None else key
    x = jnp.asarray(x, jnp.float32)
    samples = []
    for start in range(0, probes, chunk):
        v = jax.random.normal(jax.random.fold_in(key, start), (chunk, *x.shape), jnp.float32)
        samples.append(np.asarray(_squared_jvp_norms(f, x, v), np.float64)[: probes - start])
    s = np.concatenate(samples)
    mean = float(s.mean())
    se = float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else float("inf")
    return NormEstimate(
        math.sqrt(max(mean, 0.0)),
        probes=len(s),
        stderr=se,
        ci_low=math.sqrt(max(mean - z * se, 0.0)),
        ci_high=math.sqrt(max(mean + z * se, 0.0)),
    )


def jacobian_matrix(f, x, *, chunk: int = 256) -> np.ndarray:
    """The exact Jacobian (outputs x inputs, float64 numpy) by chunked vmapped vjps: small inputs only."""
    x = jnp.asarray(x, jnp.float32)
    m = jax.eval_shape(flat_output(f), x).shape[0]
    rows = jax.jit(jax.vmap(lambda u: vjp(f, x, u).ravel()))
    blocks = []
    for start in range(0, m, chunk):
        idx = np.arange(start, min(start + chunk, m))
        basis = jnp.zeros((len(idx), m), jnp.float32).at[np.arange(len(idx)), idx].set(1.0)
        blocks.append(np.asarray(rows(basis), np.float64))
    return np.concatenate(blocks, axis=0)


def exact_norms(jacobian: np.ndarray) -> dict:
    """Spectral and Frobenius norms of an explicit Jacobian (the references of the estimators)."""
    singular = np.linalg.svd(jacobian, compute_uv=False)
    return {"spectral": float(singular[0]), "frobenius": float(np.sqrt(np.sum(singular**2)))}


def directional_estimates(
    f, x, directions, ts=(1.0, 0.1, 0.01, 0.001), *, p: float = 2.0, normalize: bool = True, chunk: int = 8
) -> dict:
    """Eq. 12: E_n ||f(x + t n) - f(x)||^p / t^p for each t, and its limit E_n ||J(x) n||^p (exact, by jvp).

    `directions`: array (K, *x.shape), e.g. Gaussian draws or distortion residuals (distorted - clean). With
    `normalize` each is scaled to unit l2 norm (the paper's directions); without, Gaussian draws with p = 2
    estimate ||J||_F^2. Returns means and standard errors over the K directions."""
    x = jnp.asarray(x, jnp.float32)
    n = jnp.asarray(directions, jnp.float32)
    if normalize:
        norms = jnp.sqrt(jnp.sum(n.reshape(n.shape[0], -1) ** 2, axis=1))
        n = n / jnp.maximum(norms, 1e-30).reshape((-1,) + (1,) * (n.ndim - 1))
    p = float(p)

    def summary(values):
        values = np.asarray(values, np.float64)
        se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
        return {"mean": float(values.mean()), "stderr": se}

    count = n.shape[0]

    def chunked(fn, *extra):
        """fn over the directions in blocks of `chunk` (the last one zero-padded): one compilation for any K."""
        out = []
        for start in range(0, count, chunk):
            block = n[start : start + chunk]
            if block.shape[0] < chunk:
                block = jnp.concatenate([block, jnp.zeros((chunk - block.shape[0], *block.shape[1:]), block.dtype)])
            out.append(np.asarray(fn(f, x, block, *extra), np.float64)[: count - start])
        return np.concatenate(out)

    limit = chunked(_jvp_norms, p)
    return {
        "p": p,
        "directions": int(count),
        "limit": summary(limit),
        "finite_differences": [
            {"t": float(t), **summary(chunked(_difference_quotients, jnp.float32(t), p))} for t in ts
        ],
        "per_direction_limit": limit.tolist(),
    }
