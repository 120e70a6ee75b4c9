"""Salient-object metrics, batched and jittable, with the definitions of PySODMetrics.

Maps are in [0, 1], ground truth is binary; both (N, H, W). Every function returns one value per image.
"""
from __future__ import annotations

import jax.numpy as jnp

BETA2 = 0.3   # beta^2 of the F-measure (paper Eq. 16)


def mae(saliency, gt):
    """Mean absolute error per image."""
    return jnp.mean(jnp.abs(saliency - (gt > 0)), axis=(1, 2))


def adaptive_fbeta(saliency, gt, beta2: float = BETA2):
    """F-beta at the adaptive threshold min(2 x mean saliency, 1) (paper Eq. 15), binarised with >=."""
    truth = gt > 0
    threshold = jnp.minimum(2.0 * jnp.mean(saliency, axis=(1, 2), keepdims=True), 1.0)
    predicted = saliency >= threshold
    hits = jnp.sum(predicted & truth, axis=(1, 2)).astype(jnp.float32)
    precision = hits / jnp.maximum(jnp.sum(predicted, axis=(1, 2)), 1)
    recall = hits / jnp.maximum(jnp.sum(truth, axis=(1, 2)), 1)
    f = (1 + beta2) * precision * recall / jnp.where(hits > 0, beta2 * precision + recall, 1.0)
    return jnp.where(hits > 0, f, 0.0)
