"""Adversarial attacks on any saliency model: PGD and APGD (white-box), Square Attack (black-box), L-inf and L2.

``pgd(f, params, x, y, eps=..., norm="linf" | "l2")`` perturbs a batch of images x (N, S, S, 3), float on the
0..255 scale, to maximise a loss of the map ``f(params, x)`` (N, S, S) in [0, 1] against the ground truth y
(N, S, S) in {0, 1}:

* loss "bce" (default): per-image mean binary cross entropy of the map (clipped to [1e-6, 1 - 1e-6]); "mae":
  per-image mean |map - y| (what the MAE metric scores; its gradient is a sign, so weaker for thresholded maps);
  "cospgd": the segmentation loss of CosPGD (Agnihotri and Keuper 2024), the cross entropy of each pixel weighted
  by the cosine similarity of its prediction with its target (see `map_loss`); it steers the steps, while the best
  point and the returned loss are the BCE's (`_criterion`).
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

``square(...)`` is Square Attack (Andriushchenko et al., ECCV 2020), score-based: forward passes only, so it attacks
a black-box predictor (`f(None, x)`, robustness.model.predictor_maps) as well as a network, by the same method at the
same budgets. Random search over square windows of the image (one window per query for the whole batch, as the
authors' code; the window's share of the image halves on the authors' schedule), an update kept per image when it
raises the loss; L-inf from vertical +-eps stripes, L2 from a grid of the authors' centred bumps. Departure: the
authors redraw an L-inf window until it changes the image; here a draw that changes nothing costs its query. A
black-box attack that beats the white-box ones flags masked gradients.

The attack space is the network's own input: images already resized to its input size, perturbed as floats (not
re-quantised to 8 bits, which would round away most of a 1/255 budget); for a black box that takes uint8 images,
Square Attack's candidates are whole pixel levels (`integer=True`).

The model is any `f(params, x)` of robustness.model's convention (MEnet's: `menet_jax.api.network_function(config,
output="salient_prob")`), jitted with `f` static and `params` traced. Both attacks return an `AttackResult`, a
named tuple (adversarial images, their loss) that unpacks as a pair; `to_json()` gives the losses.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NORMS = ("linf", "l2")
LOSSES = ("bce", "mae", "cospgd")
DEFAULT_BUDGETS = {"linf": (0.0, 1.0, 2.0, 4.0, 8.0), "l2": (0.0, 32.0, 64.0, 128.0, 255.0)}
PIXEL_RANGE = (0.0, 255.0)
_BCE_EPS = 1e-6


class AttackResult(NamedTuple):
    """An attack's result: `images` the adversarial images (N, S, S, 3) float32 on 0..255, `loss` (N,) the loss of
    each (the largest reached). A tuple: `adv, loss = pgd(...)`."""

    images: jax.Array
    loss: jax.Array

    def to_json(self) -> dict:
        return {"loss": np.asarray(self.loss, np.float64).tolist()}


class APGDResult(NamedTuple):
    """APGD's result with its convergence record (`apgd(..., record=...)`): `images` and `loss` as AttackResult's;
    `iterations` (P,) counts of iterations in all (the restarts one after another), and `trace` (P, N, S, S, 3) /
    `trace_loss` (P, N) each image's best point (largest loss) after that many iterations."""

    images: jax.Array
    loss: jax.Array
    iterations: np.ndarray
    trace: jax.Array
    trace_loss: jax.Array

    def to_json(self) -> dict:
        return {"loss": np.asarray(self.loss, np.float64).tolist(), "iterations": self.iterations.tolist()}


def map_loss(maps, y, loss: str = "bce"):
    """Per-image loss of maps (N, H, W) in [0, 1] against y (N, H, W) in {0, 1}: (N,)."""
    y = y.astype(jnp.float32)
    if loss == "bce":
        m = jnp.clip(maps, _BCE_EPS, 1.0 - _BCE_EPS)
        per_pixel = -(y * jnp.log(m) + (1.0 - y) * jnp.log1p(-m))
    elif loss == "mae":
        per_pixel = jnp.abs(maps - y)
    elif loss == "cospgd":
        # CosPGD (Agnihotri and Keuper, ICML 2024): each pixel's cross entropy weighted by the cosine similarity of
        # its prediction (1 - m, m) with its one-hot target, a constant of the step (no gradient through it): pixels
        # still classified right count most, those already flipped little, so the attack spreads over the image.
        m = jnp.clip(maps, _BCE_EPS, 1.0 - _BCE_EPS)
        cosine = (m * y + (1.0 - m) * (1.0 - y)) / jnp.sqrt(m**2 + (1.0 - m) ** 2)
        per_pixel = jax.lax.stop_gradient(cosine) * -(y * jnp.log(m) + (1.0 - y) * jnp.log1p(-m))
    else:
        raise ValueError(f"unknown attack loss {loss!r} (one of {', '.join(LOSSES)})")
    return per_pixel.reshape(per_pixel.shape[0], -1).mean(-1)


def _criterion(loss: str) -> str:
    """The loss that picks an attack's best point: CosPGD's weighted loss only steers the steps (its value falls as
    pixels flip, since flipped pixels weigh less), so its points are ranked by the cross entropy it aims to raise."""
    return "bce" if loss == "cospgd" else loss


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
        maps = f(params, z)
        return map_loss(maps, y, loss).sum(), map_loss(maps, y, _criterion(loss))

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
    last = map_loss(f(params, z), y, _criterion(loss))
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
    perturbation (e.g. `random_start`), else x itself. Returns AttackResult(adversarial x float32, loss of each
    (N,))."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r} (one of {', '.join(NORMS)})")
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r} (one of {', '.join(LOSSES)})")
    if eps < 0 or steps < 0:
        raise ValueError(f"eps and steps must be >= 0, got {eps}, {steps}")
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    if eps == 0 or steps == 0 and start is None:
        return AttackResult(x, map_loss(f(params, x), y, _criterion(loss)))
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else float(step_size)
    delta0 = jnp.zeros_like(x) if start is None else jnp.asarray(start, jnp.float32)
    return AttackResult(
        *_pgd(f, params, x, y, delta0, jnp.float32(eps), jnp.float32(step_size), norm=norm, steps=int(steps), loss=loss)
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


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("norm", "steps", "loss", "record"))
def _apgd(f, params, x, y, delta0, eps, *, norm, steps, loss, record=()):
    """One APGD run from `delta0`: (best point, its loss, trace, trace_loss), the trace (len(record), ...) each
    image's best point and loss after each iteration count in `record` (0: the start, `steps`: the end)."""
    lo, hi = PIXEL_RANGE
    n = x.shape[0]
    expand = (-1,) + (1,) * (x.ndim - 1)
    checkpoints = apgd_checkpoints(steps)
    # For each iteration: whether it is a checkpoint, and the length of the interval that ends there.
    is_checkpoint = np.zeros(steps + 1, bool)
    interval = np.zeros(steps + 1, np.float32)
    for previous, k in zip((0, *checkpoints), checkpoints):
        is_checkpoint[k], interval[k] = True, k - previous

    def both(v):
        maps = f(params, v)
        return map_loss(maps, y, loss), map_loss(maps, y, _criterion(loss))

    def value_and_grad(z):
        objective, vjp, losses = jax.vjp(both, z, has_aux=True)
        (g,) = vjp(jnp.ones_like(objective))  # each image's gradient of its own loss
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
        "trace": jnp.zeros((len(record), *x.shape), jnp.float32),
        "trace_loss": jnp.zeros((len(record), n), jnp.float32),
    }
    slot_of = np.full(steps + 1, -1, np.int32)  # iteration -> its place in the record, or -1
    for i, k in enumerate(record):
        slot_of[k] = i

    def recorded(trace, trace_loss, k, best, best_loss):
        """The trace with the best points after iteration k put in their slot, where k is recorded."""
        if not record:
            return trace, trace_loss
        slot = jnp.asarray(slot_of)[k]
        return jax.lax.cond(
            slot >= 0,
            lambda t, tl: (t.at[slot].set(best), tl.at[slot].set(best_loss)),
            lambda t, tl: (t, tl),
            trace,
            trace_loss,
        )

    state["trace"], state["trace_loss"] = recorded(state["trace"], state["trace_loss"], 0, start, loss0)

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
        trace, trace_loss = recorded(s["trace"], s["trace_loss"], k, best, best_loss)
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
            "trace": trace,
            "trace_loss": trace_loss,
        }

    s = jax.lax.fori_loop(1, steps, body, state)
    last = map_loss(f(params, s["z"]), y, _criterion(loss))  # the final iterate, not yet evaluated
    better = last > s["best_loss"]
    best, best_loss = jnp.where(better.reshape(expand), s["z"], s["best"]), jnp.maximum(last, s["best_loss"])
    return best, best_loss, *recorded(s["trace"], s["trace_loss"], steps, best, best_loss)


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
    record=None,
):
    """APGD (see the module docstring) on `f(params, x) -> maps in [0, 1]`: x (N, S, S, 3) on 0..255, y (N, S, S)
    in {0, 1}, eps in pixel levels. `starts`: one initial perturbation per restart (each (N, S, S, 3), e.g.
    `random_start`; default: `restarts` random starts from a generator seeded 0). Returns AttackResult(adversarial x
    float32, its loss (N,)): per image, the point of largest loss over every restart and iteration. `record`
    (iteration counts within a restart, 0..steps): an APGDResult instead, with each image's best point so far
    after those iterations of every restart (the convergence record; `apgd_record` gives a default)."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r} (one of {', '.join(NORMS)})")
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r} (one of {', '.join(LOSSES)})")
    if eps < 0 or steps < 1 or restarts < 1:
        raise ValueError(f"eps must be >= 0, steps and restarts >= 1, got {eps}, {steps}, {restarts}")
    points = () if record is None else tuple(sorted({int(k) for k in record}))
    if any(not 0 <= k <= steps for k in points):
        raise ValueError(f"record: iteration counts must be in 0..{steps}, got {list(record)}")
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    if eps == 0:
        clean = AttackResult(x, map_loss(f(params, x), y, _criterion(loss)))
        if record is None:
            return clean
        return APGDResult(*clean, np.zeros(1, np.int64), clean.images[None], clean.loss[None])
    if starts is None:
        rng = np.random.default_rng(0)
        starts = [random_start(x.shape, eps, norm, rng) for _ in range(restarts)]
    expand = (-1,) + (1,) * (x.ndim - 1)

    def keep_better(best, best_loss, candidate, candidate_loss):
        if best is None:
            return candidate, candidate_loss
        better = candidate_loss > best_loss
        return jnp.where(better.reshape(expand), candidate, best), jnp.maximum(candidate_loss, best_loss)

    best, best_loss, iterations, trace, trace_loss = None, None, [], [], []
    for r, start in enumerate(starts):
        adv, adv_loss, run_trace, run_loss = _apgd(
            f,
            params,
            x,
            y,
            jnp.asarray(start, jnp.float32),
            jnp.float32(eps),
            norm=norm,
            steps=int(steps),
            loss=loss,
            record=points,
        )
        for i, k in enumerate(points):  # the best so far: this restart's up to k, or an earlier restart's
            point, point_loss = keep_better(best, best_loss, run_trace[i], run_loss[i])
            iterations.append(r * steps + k)
            trace.append(point)
            trace_loss.append(point_loss)
        best, best_loss = keep_better(best, best_loss, adv, adv_loss)
    if record is None:
        return AttackResult(best, best_loss)
    return APGDResult(best, best_loss, np.asarray(iterations), jnp.stack(trace), jnp.stack(trace_loss))


def apgd_record(steps: int) -> tuple:
    """Default convergence-record points of one restart: 0, 1, 2, 5, 10, 20, 50, 100, ... up to `steps`, and
    `steps`."""
    points = {0, steps}
    for decade in (1, 10, 100, 1000, 10000):
        points |= {m * decade for m in (1, 2, 5) if m * decade <= steps}
    return tuple(sorted(points))


# ------------------------------------------------------------------------------------------ Square Attack
# p, the share of the image one update changes, halves at these fractions of a 10,000-query run (the authors'
# schedule, rescaled to the run's query budget).
_SQUARE_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SQUARE_P_INIT = {"linf": 0.05, "l2": 0.1}


def _square_p(p_init: float, query: int, queries: int) -> float:
    at = int(query / queries * 10_000)
    return p_init / 2 ** sum(at > h for h in _SQUARE_HALVINGS)


def _bump(h: int, w: int) -> np.ndarray:
    """The authors' centred bump on an h x w rectangle: nested squares weighted 1 / (k + 1)^2, unit L2 norm."""
    delta = np.zeros((h, w))
    ch, cw = h // 2, w // 2
    for k in range(max(ch + 1, cw + 1)):
        delta[max(ch - k, 0) : min(ch + k + 1, h), max(cw - k, 0) : min(cw + k + 1, w)] += 1.0 / (k + 1) ** 2
    return delta / np.sqrt(np.sum(delta**2))


def _square_pattern(s: int, rng) -> np.ndarray:
    """An s x s L2 update of unit norm: a bump on one half, minus one on the other, transposed half the time."""
    delta = np.concatenate([_bump(s // 2, s), -_bump(s - s // 2, s)])
    delta /= np.sqrt(np.sum(delta**2))
    return delta.T if rng.random() > 0.5 else delta


def _norms(v):
    return np.sqrt(np.sum(v.reshape(v.shape[0], -1) ** 2, -1)).reshape((-1,) + (1,) * (v.ndim - 1))


class SquareResult(NamedTuple):
    """Square Attack's result: `images` and `loss` as AttackResult's, and `history` (queries, N) each image's best
    loss after each query (the convergence record). A tuple: `adv, loss, history = square(...)`."""

    images: np.ndarray
    loss: np.ndarray
    history: np.ndarray

    def to_json(self) -> dict:
        return {"loss": np.asarray(self.loss, np.float64).tolist(), "loss_per_query": self.history.mean(1).tolist()}


def square(
    f,
    params,
    x,
    y,
    *,
    eps: float,
    norm: str = "linf",
    queries: int = 1000,
    p_init=None,
    loss="bce",
    seed=0,
    integer=False,
):
    """Square Attack (Andriushchenko et al., ECCV 2020) on `f(params, x) -> maps in [0, 1]`, forward passes only
    (so any black-box predictor, as `f(None, x)`): random search over square windows, each update kept per image
    when it raises the loss. x (N, S, S, 3) on 0..255, y (N, S, S), eps in pixel levels. L-inf: vertical stripes of
    +-eps to start, then a window set to +-eps per channel; L2: a grid of unit bumps scaled to norm eps, then a
    window's perturbation replaced by a bump (its mass taken from a second window, so the norm stays eps). One
    window per step for the whole batch, as the authors' code. `integer`: every candidate rounded towards the clean
    (whole-valued) x to whole pixel levels, for a model that takes uint8 images (each entry moves no further, so the
    budget holds). `seed`: anything np.random.default_rng takes. Returns (adversarial x float32, its loss (N,),
    each image's best loss after each query (queries, N)); `queries` forward passes in all: the clean image, the
    start, then the search."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r} (one of {', '.join(NORMS)})")
    if not (eps >= 0 and queries >= 1):  # nan fails too
        raise ValueError(f"eps must be >= 0 and queries >= 1, got {eps}, {queries}")
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    n, h, w, c = x.shape
    lo, hi = PIXEL_RANGE

    def objective(images):
        # A search keeps what raises its loss: CosPGD's weighted loss (which falls as pixels flip) would refuse the
        # flips it aims for, so the search ranks by the cross entropy instead, as the gradient attacks do.
        return np.asarray(map_loss(jnp.asarray(f(params, images)), jnp.asarray(y), _criterion(loss)), np.float64)

    if eps == 0:
        clean = objective(x)
        return SquareResult(x, clean.astype(np.float32), np.tile(clean, (queries, 1)))

    def candidate_of(delta):
        candidate = np.clip(x + delta, lo, hi)
        return (x + np.trunc(candidate - x) if integer else candidate).astype(np.float32)

    p_init = SQUARE_P_INIT[norm] if p_init is None else p_init
    if norm == "linf":
        delta = eps * rng.choice([-1.0, 1.0], size=(n, 1, w, c))
    else:
        s = h // 5
        start = (h - 5 * s) // 2
        delta = np.zeros(x.shape)
        for i in range(h // s):
            for j in range(w // s):
                bump = _square_pattern(s, rng)[None, :, :, None] * rng.choice([-1.0, 1.0], size=(n, 1, 1, c))
                delta[:, start + i * s : start + (i + 1) * s, start + j * s : start + (j + 1) * s] += bump
        delta *= eps / np.maximum(_norms(delta), 1e-12)
    # Query 0 is the clean image itself, so the attack never returns a point the model handles better than the
    # clean one (an evaluation's worst case is at most the clean score); the start is the second.
    best, best_loss = x.copy(), objective(x)
    history = [best_loss.copy()]
    if queries > 1:
        start = candidate_of(delta)
        start_loss = objective(start)
        better = start_loss > best_loss
        best[better], best_loss[better] = start[better], start_loss[better]
        history.append(best_loss.copy())
    for query in range(2, queries):
        p = _square_p(p_init, query, queries)
        delta = best.astype(np.float64) - x
        if norm == "linf":
            s = min(max(int(round(np.sqrt(p * h * w))), 1), h - 1)
            r, q = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            delta[:, r : r + s, q : q + s] = eps * rng.choice([-1.0, 1.0], size=(n, 1, 1, c))
            candidate = candidate_of(delta)
        else:
            s = max(int(round(np.sqrt(p * h * w))), 3)
            s = min(s + (s % 2 == 0), h)  # odd, as the authors', and inside the image
            r, q = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            r2, q2 = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            window = (slice(None), slice(r, r + s), slice(q, q + s))
            window2 = (slice(None), slice(r2, r2 + s), slice(q2, q2 + s))
            both = np.zeros(x.shape[:3] + (1,))
            both[window] = both[window2] = 1.0
            free = np.maximum(eps**2 - _norms(delta) ** 2, 0.0)  # the budget clipping left unused
            mass = np.sqrt(np.sum((delta * both) ** 2, axis=(1, 2), keepdims=True))  # per channel
            old = delta[window] / (1e-10 + np.sqrt(np.sum(delta[window] ** 2, axis=(1, 2), keepdims=True)))
            new = _square_pattern(s, rng)[None, :, :, None] * rng.choice([-1.0, 1.0], size=(n, 1, 1, c)) + old
            new *= np.sqrt(free / c + mass**2) / np.maximum(np.sqrt(np.sum(new**2, axis=(1, 2), keepdims=True)), 1e-12)
            delta[window2] = 0.0
            delta[window] = new
            candidate = candidate_of(delta * (eps / np.maximum(_norms(delta), 1e-12)))
        candidate_loss = objective(candidate)
        better = candidate_loss > best_loss
        best[better], best_loss[better] = candidate[better], candidate_loss[better]
        history.append(best_loss.copy())
    return SquareResult(best, best_loss.astype(np.float32), np.stack(history))
