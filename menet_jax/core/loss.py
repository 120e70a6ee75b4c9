"""The MEnet loss: metric loss (Eq. 3) on 1:1 hard-mined pixels plus cross entropy (Eq. 1), combined as Eq. 4.

Two variants (docs/paper.md, section 2):

* ``paper``: automatic differentiation of Eq. 3-4 as written: per-image centroids of the L2-normalised features,
  ``||f_i - c_own||^2 - ||f_i - c_other||^2`` summed over the kept pixels and divided by N * |Omega|, plus
  ``lambda`` times the mean cross entropy. Gradients flow through the normalisation and the centroids.
* ``official``: the gradient the authors' Caffe layer applies: straight-through normalisation, constant centroids,
  metric terms scaled by 1 / (32 H W) and cross entropy by 1 / (2 H W) per image, summed (not averaged) over the
  batch; there is no lambda.

Mining (both variants): the whole minority class of an image is kept, plus as many pixels of the majority class as
the minority has, those with the largest per-pixel metric loss (ties: larger pixel index first, as the authors'
descending sort of (loss, index) pairs). An image with only one class keeps no pixel: it adds cross entropy only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def at_least_f32(x):
    """Low-precision inputs are promoted to float32; float64 (in gradient checks) is kept."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def l2_normalize(features):
    """Unit vectors along the last axis; a zero vector stays zero (divided by 1, as the authors), with finite grads."""
    sq = jnp.sum(features * features, axis=-1, keepdims=True)
    nonzero = sq > 0
    norm = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 1.0)
    return features / norm


def class_centroids(features, salient):
    """Per-image mean feature of the salient and of the background pixels; an empty class gives a zero vector.

    features: (N, P, C); salient: (N, P) bool. Returns (c_fg, c_bg), each (N, C).
    """
    fg = salient.astype(features.dtype)
    bg = 1.0 - fg
    c_fg = jnp.einsum("npc,np->nc", features, fg) / jnp.maximum(fg.sum(1), 1.0)[:, None]
    c_bg = jnp.einsum("npc,np->nc", features, bg) / jnp.maximum(bg.sum(1), 1.0)[:, None]
    return c_fg, c_bg


def pixel_metric_loss(features, salient, c_fg, c_bg):
    """Eq. 3 per pixel: squared distance to the own class centroid minus that to the other one. (N, P)."""
    d_fg = jnp.sum((features - c_fg[:, None, :]) ** 2, axis=-1)
    d_bg = jnp.sum((features - c_bg[:, None, :]) ** 2, axis=-1)
    return jnp.where(salient, d_fg - d_bg, d_bg - d_fg)


def hard_mining_mask(pixel_loss, salient):
    """1:1 mining: all minority-class pixels plus the hardest majority-class pixels, as many. (N, P) bool.

    The background is the mined class when it is not smaller than the salient class (the usual case). The kept
    candidates are those above the quota-th largest (loss, index) pair, found by bisection rather than by sorting
    every pixel (an argsort of the paper batch was a visible share of the CPU step; BENCHMARKS.md).
    """
    n_fg = salient.sum(axis=1)
    n_bg = salient.shape[1] - n_fg
    quota = jnp.minimum(n_fg, n_bg)
    mine_background = n_fg <= n_bg
    candidate = jnp.where(mine_background[:, None], ~salient, salient)
    key = _order_keys(jnp.where(candidate, pixel_loss, -jnp.inf))
    # The quota-th largest loss, then, among the pixels tied with it, the smallest index still kept (ties go to the
    # larger index, as in the authors' descending sort of (loss, index) pairs).
    threshold = _kth_largest(key, quota, 32)
    tied = key == threshold[:, None]
    index = jnp.broadcast_to(jnp.arange(key.shape[1], dtype=jnp.uint32), key.shape)
    still_needed = quota - jnp.sum(key > threshold[:, None], axis=1)
    first_index = _kth_largest(jnp.where(tied, index, 0), still_needed, max(1, (key.shape[1] - 1).bit_length()))
    kept = (key > threshold[:, None]) | (tied & (index >= first_index[:, None]))
    return jnp.where(candidate, kept, True) & (quota[:, None] > 0)


def _order_keys(x):
    """uint32 keys in the order of the float32 values (-0.0 equal to 0.0, -inf lowest)."""
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x).astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _kth_largest(values, k, bits: int):
    """Per row, the largest t with #(values >= t) >= k: the k-th largest of the unsigned `values` (< 2**bits) when
    k >= 1. Bisection over the value range: `bits` passes of a compare and a count instead of a sort."""

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2 + (lo < hi).astype(lo.dtype)  # lo < mid <= hi, or mid == lo == hi
        enough = jnp.sum(values >= mid[:, None], axis=1) >= k
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - 1)

    lo = jnp.zeros(values.shape[0], jnp.uint32)
    hi = jnp.full(values.shape[0], (1 << bits) - 1, jnp.uint32)
    return jax.lax.fori_loop(0, bits, halve, (lo, hi))[0]


def cross_entropy(logits, salient):
    """Per-pixel two-class cross entropy, channel 1 = salient. (N, P)."""
    log_p = jax.nn.log_softmax(at_least_f32(logits), axis=-1)
    return -jnp.where(salient, log_p[..., 1], log_p[..., 0])


def menet_loss(features, logits, labels, *, variant: str = "official", ce_weight: float = 1.0):
    """Total loss and its terms.

    features: (N, H, W, C) tanh outputs (before normalisation); logits: (N, H, W, 2); labels: (N, H, W), nonzero =
    salient. Returns ``(loss, {"metric": ..., "ce": ..., "kept": fraction of pixels kept by the mining})``.
    """
    n, h, w, c = features.shape
    f = at_least_f32(features.reshape(n, h * w, c))
    z = logits.reshape(n, h * w, 2)
    salient = labels.reshape(n, h * w) > 0
    ce_pixels = cross_entropy(z, salient)

    if variant in ("official", "ce"):  # ce: the CE-only ablation (Table IV); its metric term is only logged
        f_hat = f + sg(l2_normalize(f) - f)  # value: normalised; gradient: identity (straight through)
        if variant == "ce":
            f_hat = sg(f_hat)
        c_fg, c_bg = class_centroids(sg(f_hat), salient)
        pixel_loss = pixel_metric_loss(f_hat, salient, c_fg, c_bg)
        keep = hard_mining_mask(sg(pixel_loss), salient)
        metric = jnp.sum(jnp.where(keep, pixel_loss, 0.0)) / (32.0 * h * w)
        ce = jnp.sum(ce_pixels) / (2.0 * h * w)
        total = metric + ce if variant == "official" else ce
    elif variant == "paper":
        f_hat = l2_normalize(f)
        c_fg, c_bg = class_centroids(f_hat, salient)
        pixel_loss = pixel_metric_loss(f_hat, salient, c_fg, c_bg)
        keep = hard_mining_mask(sg(pixel_loss), salient)
        metric = jnp.sum(jnp.where(keep, pixel_loss, 0.0)) / (n * h * w)
        ce = jnp.mean(ce_pixels)
        total = metric + ce_weight * ce
    else:
        raise ValueError(f"unknown loss variant {variant!r} (official, paper or ce)")
    return total, {"metric": metric, "ce": ce, "kept": jnp.mean(keep)}
