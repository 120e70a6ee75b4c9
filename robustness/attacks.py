"""Projected gradient ascent (PGD; Madry et al. 2018) in L-inf and L2 on any differentiable saliency model.

``pgd(f, params, x, y, eps=..., norm="linf" | "l2")`` perturbs a batch of images x (N, S, S, 3), float on the
0..255 scale, to maximise a loss of the map ``f(params, x)`` (N, S, S) in [0, 1] against the ground truth y
(N, S, S) in {0, 1}:

* loss "bce" (default): per-image mean binary cross entropy of the map (clipped to [1e-6, 1 - 1e-6]); "mae":
  per-image mean |map - y| (what the MAE metric scores; its gradient is a sign, so weaker for thresholded maps).
  Images are attacked independently (each image's own loss; eval-mode BatchNorm does not mix a batch).
* Budgets in pixel levels of the 0..255 scale, i.e. eps = k means k / 255 of the [0, 1] range: L-inf
  ||delta||_inf <= eps, L2 ||delta||_2 <= eps over all 3 S^2 entries of one image.
* Each step: L-inf x + a sign(g), L2 x + a g / ||g||_2, then projection onto the eps-ball around the clean x and
  clipping to the pixel range [0, 255] (clipping moves every entry towards x, so it never leaves the ball). The
  step a defaults to 2.5 eps / steps. Random start (optional): uniform in the L-inf ball, or uniform direction
  times radius eps u^(1/d) in the L2 ball, drawn from the caller's numpy Generator. The returned image is the
  iterate (start included) with the largest loss, so the loss is never below the start's; eps = 0 returns x.
* Non-finite gradient entries (the Eq. 5 distance's sqrt at 0, measure zero) are set to 0.

The attack space is the network's own input: images already resized to its input size, perturbed as floats (not
re-quantised to 8 bits, which would round away most of a 1/255 budget).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

NORMS = ("linf", "l2")
LOSSES = ("bce", "mae")
DEFAULT_BUDGETS = {"linf": (0.0, 1.0, 2.0, 4.0, 8.0), "l2": (0.0, 32.0, 64.0, 128.0, 255.0)}
PIXEL_RANGE = (0.0, 255.0)
_BCE_EPS = 1e-6


def map_loss(maps, y, loss: str = "bce"):
    """Per-image loss of maps (N, H, W) in [0, 1] against y (N, H, W) in {0, 1}: (N,)."""
    y = y.astype(jnp.float32)
    if loss == "bce":
        m = jnp.clip(maps, _BCE_EPS, 1.0 - _BCE_EPS)
        per_pixel = -(y * jnp.log(m) + (1.0 - y) * jnp.log1p(-m))
    elif loss == "mae":
        per_pixel = jnp.abs(maps - y)
    else:
        raise ValueError(f"unknown attack loss {loss!r} (one of {', '.join(LOSSES)})")
    return per_pixel.reshape(per_pixel.shape[0], -1).mean(-1)


def _per_image_norm(v):
    return jnp.sqrt(jnp.sum(v.reshape(v.shape[0], -1) ** 2, -1)).reshape((-1,) + (1,) * (v.ndim - 1))


def project(delta, eps, norm: str):
    """delta onto the eps-ball (per image)."""
    if norm == "linf":
        return jnp.clip(delta, -eps, eps)
    n = _per_image_norm(delta)
    return delta * jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12))


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("norm", "steps", "loss"))
def _pgd(f, params, x, y, delta0, eps, step_size, *, norm, steps, loss):
    lo, hi = PIXEL_RANGE

    def objective(z):
        losses = map_loss(f(params, z), y, loss)
        return losses.sum(), losses

    grad_fn = jax.grad(objective, has_aux=True)

    def body(_, state):
        z, best, best_loss = state
        g, losses = grad_fn(z)
        better = losses > best_loss  # the loss at z, before the step
        mask = better.reshape((-1,) + (1,) * (z.ndim - 1))
        best, best_loss = jnp.where(mask, z, best), jnp.where(better, losses, best_loss)
        g = jnp.where(jnp.isfinite(g), g, 0.0)
        direction = jnp.sign(g) if norm == "linf" else g / jnp.maximum(_per_image_norm(g), 1e-12)
        z = jnp.clip(x + project(z + step_size * direction - x, eps, norm), lo, hi)
        return z, best, best_loss

    start = jnp.clip(x + project(delta0, eps, norm), lo, hi)
    init = (start, start, jnp.full((x.shape[0],), -jnp.inf, jnp.float32))
    z, best, best_loss = jax.lax.fori_loop(0, steps, body, init)
    last = map_loss(f(params, z), y, loss)
    better = last > best_loss
    best = jnp.where(better.reshape((-1,) + (1,) * (z.ndim - 1)), z, best)
    return best, jnp.maximum(last, best_loss)


def random_start(shape, eps: float, norm: str, rng: np.random.Generator) -> np.ndarray:
    """A uniform point of the eps-ball (per image of the batch `shape`), float32."""
    if norm == "linf":
        return rng.uniform(-eps, eps, shape).astype(np.float32)
    d = int(np.prod(shape[1:]))
    v = rng.standard_normal(shape)
    v /= np.linalg.norm(v.reshape(shape[0], -1), axis=1).reshape((-1,) + (1,) * (len(shape) - 1))
    radius = eps * rng.random(shape[0]) ** (1.0 / d)
    return (v * radius.reshape((-1,) + (1,) * (len(shape) - 1))).astype(np.float32)


def pgd(
    f,
    params,
    x,
    y,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    loss: str = "bce",
    start=None,
):
    """Adversarial images for `f(params, x) -> maps in [0, 1]` (see the module docstring).

    x: (N, S, S, 3) on 0..255; y: (N, S, S) in {0, 1}; eps in pixel levels (0..255 scale); `start` an initial
    perturbation (e.g. `random_start`), else x itself. Returns (adversarial x float32, loss of each, (N,))."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r} (one of {', '.join(NORMS)})")
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r} (one of {', '.join(LOSSES)})")
    if eps < 0 or steps < 0:
        raise ValueError(f"eps and steps must be >= 0, got {eps}, {steps}")
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    if eps == 0 or steps == 0 and start is None:
        return x, map_loss(f(params, x), y, loss)
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else float(step_size)
    delta0 = jnp.zeros_like(x) if start is None else jnp.asarray(start, jnp.float32)
    return _pgd(
        f, params, x, y, delta0, jnp.float32(eps), jnp.float32(step_size), norm=norm, steps=int(steps), loss=loss
    )
