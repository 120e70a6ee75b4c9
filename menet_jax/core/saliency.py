"""Saliency maps from the network outputs: the metric map of Eq. 5 and the logit head's salient probability.

Eq. 5: S_i = || f_i - mean_{j in Omega_B} f_j ||_2 with f the L2-normalised 16-d features and Omega_B the pixels
the logit head calls background (salient probability < 0.5). ``background="border"`` is the authors' estimate
instead (docs/paper.md, section 3): up to 100 random low-probability pixels of a border
band (20 px at 224 px), split greedily into two groups, the larger group's mean; with the squared distance, as
their code. Here it is seeded and deterministic.

Maps are scaled to [0, 1] per image by min-max, as the authors (and PySODMetrics) do; a constant map has no range
to stretch and is divided by its largest possible value instead (2 for distances of unit vectors, 1 for p).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.core.loss import l2_normalize

RANGE_EPS = 1e-8  # a map with a smaller range is "constant" (`scale_to_unit`)


def salient_probability(logits):
    """Softmax probability of channel 1 (salient). (N, H, W)."""
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]


def scale_to_unit(maps, max_value: float = 1.0, *, eps: float = RANGE_EPS):
    """Per-map min-max to [0, 1] over the last two axes (one (H, W) map or a batch (N, H, W); numpy in, numpy out,
    JAX otherwise). A map whose range is at most `eps` has none to stretch and is divided by `max_value`, its
    largest possible value, instead (clipped to [0, 1]). The one min-max scaling of the project: the network's maps,
    the scoring protocol (`metrics.prepare`, with eps 0 as PySODMetrics) and the robustness scores use it, and the
    ONNX export writes the same operations as a graph."""
    xp = np if isinstance(maps, np.ndarray) else jnp
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = maps.max(axis=(-2, -1), keepdims=True)
    spread = hi - lo
    stretched = (maps - lo) / xp.where(spread > eps, spread, 1.0)
    return xp.where(spread > eps, stretched, xp.clip(maps / max_value, 0.0, 1.0))


def _mean_background(f, background):
    """Mean feature over the background pixels of each image; zero where an image has none. (N, C)."""
    weights = background.astype(f.dtype)
    return jnp.einsum("nhwc,nhw->nc", f, weights) / jnp.maximum(weights.sum((1, 2)), 1.0)[:, None]


def border_band(size: int, width: int | None = None):
    """Boolean (size, size) mask of the border frame used by the authors (20 px wide at 224 px)."""
    width = max(1, round(20 * size / 224)) if width is None else width
    inner = jnp.zeros((size, size), bool).at[width : size - width, width : size - width].set(True)
    return ~inner


def _border_background_one(f, candidates, key, max_samples):
    """The authors' estimate for one image: sample, greedy two-group split, mean of the larger group."""
    h, w, c = f.shape
    flat_f = f.reshape(h * w, c)
    priority = jnp.where(candidates.reshape(-1), jax.random.uniform(key, (h * w,)), -1.0)
    priority, index = jax.lax.top_k(priority, min(max_samples, h * w))  # random order, without replacement
    samples, valid = flat_f[index], priority >= 0

    def assign(state, item):
        sum_a, n_a, sum_b, n_b = state
        x, ok = item
        d_a = jnp.sum((x - sum_a / jnp.maximum(n_a, 1.0)) ** 2)
        d_b = jnp.where(n_b > 0, jnp.sum((x - sum_b / jnp.maximum(n_b, 1.0)) ** 2), 2.0)
        to_b = ok & (n_a > 0) & (d_a > d_b)
        to_a = ok & ~to_b
        return (sum_a + to_a * x, n_a + to_a, sum_b + to_b * x, n_b + to_b), None

    zero = jnp.zeros((c,), f.dtype)
    (sum_a, n_a, sum_b, n_b), _ = jax.lax.scan(assign, (zero, 0.0, zero, 0.0), (samples, valid))
    return jnp.where(n_a >= n_b, sum_a / jnp.maximum(n_a, 1.0), sum_b / jnp.maximum(n_b, 1.0))


def metric_distance(features, probability, *, background: str = "eq5", key=None, max_samples: int = 100):
    """Un-scaled metric saliency: distance of each normalised feature to the background reference. (N, H, W)."""
    f = l2_normalize(features.astype(jnp.float32))
    candidates = probability < 0.5
    if background == "eq5":
        b = _mean_background(f, candidates)
        return jnp.sqrt(jnp.sum((f - b[:, None, None, :]) ** 2, axis=-1))
    if background == "border":
        if key is None:
            raise ValueError("background='border' samples pixels at random: pass a PRNG key")
        n, size = f.shape[0], f.shape[1]
        candidates = candidates & border_band(size)[None]
        keys = jax.random.split(key, n)
        b = jax.vmap(_border_background_one, in_axes=(0, 0, 0, None))(f, candidates, keys, max_samples)
        return jnp.sum((f - b[:, None, None, :]) ** 2, axis=-1)
    raise ValueError(f"unknown background estimate {background!r} (eq5 or border)")


def saliency_maps(outputs, *, background: str = "eq5", key=None, normalize: bool = True):
    """Both maps in [0, 1] at the network's resolution: {"metric": (N, H, W), "ce": (N, H, W)}.

    Normalised (the field's convention): each map min-max stretched per image. Raw (`normalize=False`): the CE map
    is the salient probability as the network gives it, the metric map the distance divided by 2, the largest
    distance between two unit vectors; a constant normalised map is its raw map.
    """
    p = salient_probability(outputs["logits"])
    distance = metric_distance(outputs["features"], p, background=background, key=key)
    if not normalize:
        return {"metric": jnp.clip(distance / 2.0, 0.0, 1.0), "ce": p}
    return {"metric": scale_to_unit(distance, 4.0 if background == "border" else 2.0), "ce": scale_to_unit(p)}


def resize_map(saliency, height: int, width: int):
    """Bilinear resize of one (H, W) map back to an image's original size (values stay in [0, 1])."""
    return jnp.clip(jax.image.resize(saliency, (height, width), method="bilinear"), 0.0, 1.0)
