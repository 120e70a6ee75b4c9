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

``apgd(...)`` is APGD (Croce and Hein, ICML 2020), the attack of AutoAttack, on the same loss, budgets, projection
and pixel range: no step size to tune (it starts at 2 eps and halves, per image, at checkpoints where the loss has
not risen often enough or the best loss has not improved since the last checkpoint, restarting from the best
point), a momentum of 0.25 on the last move, and several restarts from uniform random points of the ball keeping,
per image, the point of largest loss over all restarts. Weak single attacks overstate robustness (Croce et al.,
ECCV 2024, for segmentation); 10-step PGD without restarts is one.

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


# APGD's constants (Croce and Hein 2020, Sec. 3): the momentum weight alpha of the move, the share rho of
# iterations that must raise the loss between checkpoints, and the checkpoint schedule p_j.
APGD_ALPHA = 0.75
APGD_RHO = 0.75


def apgd_checkpoints(steps: int) -> tuple:
    """The iterations at which APGD may halve its step: ceil(p_j steps), p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return tuple(sorted({int(np.ceil(q * steps)) for q in p[1:]} - {0}))


def _direction(g, norm):
    return jnp.sign(g) if norm == "linf" else g / jnp.maximum(_per_image_norm(g), 1e-12)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("norm", "steps", "loss"))
def _apgd(f, params, x, y, delta0, eps, *, norm, steps, loss):
    lo, hi = PIXEL_RANGE
    n = x.shape[0]
    expand = (-1,) + (1,) * (x.ndim - 1)
    checkpoints = apgd_checkpoints(steps)
    # For each iteration: whether it is a checkpoint, and the length of the interval that ends there.
    is_checkpoint = np.zeros(steps + 1, bool)
    interval = np.zeros(steps + 1, np.float32)
    for previous, k in zip((0, *checkpoints), checkpoints):
        is_checkpoint[k], interval[k] = True, k - previous

    def value_and_grad(z):
        losses, vjp = jax.vjp(lambda v: map_loss(f(params, v), y, loss), z)
        (g,) = vjp(jnp.ones_like(losses))  # each image's gradient of its own loss
        return losses, jnp.where(jnp.isfinite(g), g, 0.0)

    def step(z, previous, g, eta, momentum):
        """The projected gradient step from z, then the move with momentum from the previous point."""
        candidate = jnp.clip(x + project(z + eta.reshape(expand) * _direction(g, norm) - x, eps, norm), lo, hi)
        moved = z + momentum * (candidate - z) + (1.0 - momentum) * (z - previous)
        return jnp.clip(x + project(moved - x, eps, norm), lo, hi)

    start = jnp.clip(x + project(delta0, eps, norm), lo, hi)
    loss0, g0 = value_and_grad(start)
    eta = jnp.full((n,), 2.0, jnp.float32) * eps
    state = {
        "previous": start,
        "z": step(start, start, g0, eta, 1.0),  # the first move has no momentum
        "last_loss": loss0,
        "best": start,
        "best_grad": g0,
        "best_loss": loss0,
        "eta": eta,
        "rises": jnp.zeros((n,), jnp.float32),  # loss rises since the last checkpoint
        "best_at_checkpoint": loss0,
        "halved_at_checkpoint": jnp.zeros((n,), bool),
    }

    def body(k, s):
        losses, g = value_and_grad(s["z"])
        rises = s["rises"] + (losses > s["last_loss"])
        better = losses > s["best_loss"]
        best = jnp.where(better.reshape(expand), s["z"], s["best"])
        best_grad = jnp.where(better.reshape(expand), g, s["best_grad"])
        best_loss = jnp.where(better, losses, s["best_loss"])
        # At a checkpoint: halve the step of the images whose loss rose in fewer than rho of the iterations since
        # the last one, or whose best loss has not improved since then (unless the step was just halved), and
        # send them back to their best point.
        at = jnp.asarray(is_checkpoint)[k]
        halve = at & (
            (rises < APGD_RHO * jnp.asarray(interval)[k])
            | (~s["halved_at_checkpoint"] & (best_loss <= s["best_at_checkpoint"]))
        )
        z = jnp.where(halve.reshape(expand), best, s["z"])
        g = jnp.where(halve.reshape(expand), best_grad, g)
        eta = jnp.where(halve, s["eta"] / 2.0, s["eta"])
        return {
            "previous": s["z"],
            "z": step(z, s["z"], g, eta, APGD_ALPHA),
            "last_loss": losses,
            "best": best,
            "best_grad": best_grad,
            "best_loss": best_loss,
            "eta": eta,
            "rises": jnp.where(at, 0.0, rises),
            "best_at_checkpoint": jnp.where(at, best_loss, s["best_at_checkpoint"]),
            "halved_at_checkpoint": jnp.where(at, halve, s["halved_at_checkpoint"]),
        }

    s = jax.lax.fori_loop(1, steps, body, state)
    last = map_loss(f(params, s["z"]), y, loss)  # the final iterate, not yet evaluated
    better = last > s["best_loss"]
    return jnp.where(better.reshape(expand), s["z"], s["best"]), jnp.maximum(last, s["best_loss"])


def apgd(
    f,
    params,
    x,
    y,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 3,
    loss: str = "bce",
    starts=None,
):
    """APGD (see the module docstring) on `f(params, x) -> maps in [0, 1]`: x (N, S, S, 3) on 0..255, y (N, S, S)
    in {0, 1}, eps in pixel levels. `starts`: one initial perturbation per restart (each (N, S, S, 3), e.g.
    `random_start`; default: `restarts` random starts from a generator seeded 0). Returns (adversarial x float32,
    its loss (N,)): per image, the point of largest loss over every restart and iteration."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r} (one of {', '.join(NORMS)})")
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r} (one of {', '.join(LOSSES)})")
    if eps < 0 or steps < 1 or restarts < 1:
        raise ValueError(f"eps must be >= 0, steps and restarts >= 1, got {eps}, {steps}, {restarts}")
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    if eps == 0:
        return x, map_loss(f(params, x), y, loss)
    if starts is None:
        rng = np.random.default_rng(0)
        starts = [random_start(x.shape, eps, norm, rng) for _ in range(restarts)]
    best, best_loss = None, None
    for start in starts:
        adv, adv_loss = _apgd(
            f, params, x, y, jnp.asarray(start, jnp.float32), jnp.float32(eps), norm=norm, steps=int(steps), loss=loss
        )
        if best is None:
            best, best_loss = adv, adv_loss
        else:
            better = adv_loss > best_loss
            best = jnp.where(better.reshape((-1,) + (1,) * (x.ndim - 1)), adv, best)
            best_loss = jnp.maximum(adv_loss, best_loss)
    return best, best_loss
