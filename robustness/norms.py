"""Norms of the Jacobian of a model x -> f(params, x) at a point, exact on small inputs and matrix-free at full size.

All functions take the model as `(f, params, x)` (robustness.model: `f(params, x)` with `x` the input; any array
or pytree output, flattened and concatenated) and differentiate with respect to `x` only; nothing here knows
about MEnet. The jitted pieces take `f` as a static argument and `params` as a traced one: one compilation per `f`
serves any weights.

* `spectral_norm`: ||J(x)||_2 by power iteration on J^T J, one jvp and one vjp per step. The iterates are
  Rayleigh quotients, so every value is a lower bound that rises to the largest singular value; it stops when the
  relative change is below `tol` and reports the iterations used.
* `frobenius_hutchinson`: ||J(x)||_F from E ||J v||^2 = ||J||_F^2 (v ~ N(0, I)), one jvp per probe, probes
  vmapped; the standard error of the mean gives a normal-approximation confidence interval.
* `jacobian_matrix`: the exact Jacobian, rows by chunked vmapped vjps (what `jax.jacrev` does, in chunks so
  the memory stays bounded); `exact_norms` its singular values. Only for small inputs: the reference the two
  estimators are tested against.
* `directional_estimates`: the Monte Carlo directional derivative of the paper's Eq. 12,
  E_n ||f(x + t n) - f(x)||^p / t^p over a t-schedule (finite differences) and its t -> 0 limit
  E_n ||J n||^p (one jvp per direction), with standard errors.

Results are `NormEstimate` and `DirectionalEstimate` (dataclasses, `to_json()`).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def _flat(f, params, x):
    """f(params, x) flattened to one float32 vector (pytrees concatenated in leaf order)."""
    flat, _ = ravel_pytree(f(params, x))
    return flat.astype(jnp.float32)


# Jitted with `f` static: a CLI that passes the same function for every image compiles each of these once.
@partial(jax.jit, static_argnums=0)
def jvp(f, params, x, v):
    """J(x) v, flattened (J the Jacobian of f(params, .) at x)."""
    return jax.jvp(lambda z: _flat(f, params, z), (x,), (v,))[1]


@partial(jax.jit, static_argnums=0)
def vjp(f, params, x, u):
    """J(x)^T u, with x's shape."""
    return jax.vjp(lambda z: _flat(f, params, z), x)[1](u)[0]


@partial(jax.jit, static_argnums=0)
def _squared_jvp_norms(f, params, x, vs):
    return jax.vmap(lambda v: jnp.sum(jvp.__wrapped__(f, params, x, v) ** 2))(vs)


@partial(jax.jit, static_argnums=0)
def _difference_quotients(f, params, x, ns, t, p):
    y0 = _flat(f, params, x)
    return jax.vmap(lambda n: jnp.linalg.norm(_flat(f, params, x + t * n) - y0) ** p / t**p)(ns)


@partial(jax.jit, static_argnums=0)
def _jvp_norms(f, params, x, ns, p):
    return jax.vmap(lambda n: jnp.linalg.norm(jvp.__wrapped__(f, params, x, n)) ** p)(ns)


@partial(jax.jit, static_argnums=0)
def _vjp_rows(f, params, x, basis):
    return jax.vmap(lambda u: vjp.__wrapped__(f, params, x, u).ravel())(basis)


@dataclasses.dataclass(frozen=True)
class NormEstimate:
    """A norm estimate: `value`; for power iteration the `iterations` used, whether it `converged` and the last
    `rel_change`; for Hutchinson the `probes`, the `stderr` of the squared norm's mean and the interval
    [`ci_low`, `ci_high`] of the norm."""

    value: float
    iterations: int = 0
    converged: bool = True
    rel_change: float = 0.0
    stderr: float = 0.0
    ci_low: float = 0.0
    ci_high: float = 0.0
    probes: int = 0

    def to_json(self) -> dict:
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


def spectral_norm(f, params, x, *, key=None, iters: int = 200, tol: float = 1e-4) -> NormEstimate:
    """||J(x)||_2 of f(params, .) at x by power iteration with jvp / vjp (a lower bound converging to the true
    value)."""
    key = jax.random.key(0) if key is None else key
    x = jnp.asarray(x, jnp.float32)
    return power_iteration(
        lambda v: jvp(f, params, x, v), lambda u: vjp(f, params, x, u), x.shape, key=key, iters=iters, tol=tol
    )


def frobenius_hutchinson(f, params, x, *, key=None, probes: int = 64, chunk: int = 8, z: float = 1.96) -> NormEstimate:
    """||J(x)||_F of f(params, .) at x by Hutchinson probes (Gaussian v, E ||J v||^2 = ||J||_F^2), with a
    `z`-sigma interval.

    The interval is for the squared norm's mean (normal approximation, stderr = sample std / sqrt(probes)),
    mapped through the square root."""
    key = jax.random.key(0) if key is None else key
    x = jnp.asarray(x, jnp.float32)
    samples = []
    for start in range(0, probes, chunk):
        v = jax.random.normal(jax.random.fold_in(key, start), (chunk, *x.shape), jnp.float32)
        samples.append(np.asarray(_squared_jvp_norms(f, params, x, v), np.float64)[: probes - start])
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


def jacobian_matrix(f, params, x, *, chunk: int = 256) -> np.ndarray:
    """The exact Jacobian of f(params, .) at x (outputs x inputs, float64 numpy) by chunked vmapped vjps: small
    inputs only."""
    x = jnp.asarray(x, jnp.float32)
    m = jax.eval_shape(lambda z: _flat(f, params, z), x).shape[0]
    blocks = []
    for start in range(0, m, chunk):
        idx = np.arange(start, min(start + chunk, m))
        basis = jnp.zeros((len(idx), m), jnp.float32).at[np.arange(len(idx)), idx].set(1.0)
        blocks.append(np.asarray(_vjp_rows(f, params, x, basis), np.float64))
    return np.concatenate(blocks, axis=0)


def exact_norms(jacobian: np.ndarray) -> dict:
    """Spectral and Frobenius norms of an explicit Jacobian (the references of the estimators)."""
    singular = np.linalg.svd(jacobian, compute_uv=False)
    return {"spectral": float(singular[0]), "frobenius": float(np.sqrt(np.sum(singular**2)))}


@dataclasses.dataclass(frozen=True)
class MeanEstimate:
    """A Monte Carlo mean over the directions and its standard error (nan with one direction)."""

    mean: float
    stderr: float

    @classmethod
    def of(cls, values) -> MeanEstimate:
        values = np.asarray(values, np.float64)
        se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
        return cls(float(values.mean()), se)


@dataclasses.dataclass(frozen=True)
class DirectionalEstimate:
    """Eq. 12 over `directions` unit (or raw) directions n, exponent `p`: `limit` = E ||J n||^p (t -> 0, exact by
    jvp), `finite_differences` {t: E ||f(x + t n) - f(x)||^p / t^p}, and `per_direction_limit` ||J n||^p for each
    direction (in the order given)."""

    p: float
    directions: int
    limit: MeanEstimate
    finite_differences: dict
    per_direction_limit: np.ndarray

    def to_json(self, per_direction: bool = True) -> dict:
        out = {
            "p": self.p,
            "directions": self.directions,
            "limit": dataclasses.asdict(self.limit),
            "finite_differences": [{"t": t, **dataclasses.asdict(e)} for t, e in self.finite_differences.items()],
        }
        if per_direction:
            out["per_direction_limit"] = np.asarray(self.per_direction_limit).tolist()
        return out


def directional_estimates(
    f, params, x, directions, ts=(1.0, 0.1, 0.01, 0.001), *, p: float = 2.0, normalize: bool = True, chunk: int = 8
) -> DirectionalEstimate:
    """Eq. 12 for f(params, .) at x: E_n ||f(x + t n) - f(x)||^p / t^p for each t, and its limit E_n ||J(x) n||^p
    (exact, by jvp).

    `directions`: array (K, *x.shape), e.g. Gaussian draws or distortion residuals (distorted - clean). With
    `normalize` each is scaled to unit l2 norm (the paper's directions); without, Gaussian draws with p = 2
    estimate ||J||_F^2. Means and standard errors over the K directions."""
    x = jnp.asarray(x, jnp.float32)
    n = jnp.asarray(directions, jnp.float32)
    if normalize:
        norms = jnp.sqrt(jnp.sum(n.reshape(n.shape[0], -1) ** 2, axis=1))
        n = n / jnp.maximum(norms, 1e-30).reshape((-1,) + (1,) * (n.ndim - 1))
    p = float(p)
    count = n.shape[0]

    def chunked(fn, *extra):
        """fn over the directions in blocks of `chunk` (the last one zero-padded): one compilation for any K."""
        out = []
        for start in range(0, count, chunk):
            block = n[start : start + chunk]
            if block.shape[0] < chunk:
                block = jnp.concatenate([block, jnp.zeros((chunk - block.shape[0], *block.shape[1:]), block.dtype)])
            out.append(np.asarray(fn(f, params, x, block, *extra), np.float64)[: count - start])
        return np.concatenate(out)

    limit = chunked(_jvp_norms, p)
    return DirectionalEstimate(
        p=p,
        directions=int(count),
        limit=MeanEstimate.of(limit),
        finite_differences={float(t): MeanEstimate.of(chunked(_difference_quotients, jnp.float32(t), p)) for t in ts},
        per_direction_limit=limit,
    )
