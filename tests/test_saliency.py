"""Saliency maps: Eq. 5 against a numpy reference, the authors' border estimate, scaling and resizing."""

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.core.saliency import (
    border_band,
    metric_distance,
    resize_map,
    saliency_maps,
    salient_probability,
    scale_to_unit,
)


def test_eq5_matches_numpy_reference():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 8, 8, 16)).astype(np.float32)
    logits = rng.normal(size=(2, 8, 8, 2)).astype(np.float32)
    p = np.asarray(salient_probability(jnp.asarray(logits)))
    got = np.asarray(metric_distance(jnp.asarray(features), jnp.asarray(p)))
    f = features / np.linalg.norm(features, axis=-1, keepdims=True)
    for n in range(2):
        b = f[n][p[n] < 0.5].mean(0)
        np.testing.assert_allclose(got[n], np.linalg.norm(f[n] - b, axis=-1), rtol=1e-5, atol=1e-6)


def test_eq5_map_separates_two_feature_clusters():
    features = np.zeros((1, 6, 6, 16), np.float32)
    features[..., 0] = 1.0  # background at e1
    features[0, 2:4, 2:5, :] = 0.0
    features[0, 2:4, 2:5, 1] = 1.0  # object at e2
    logits = np.zeros((1, 6, 6, 2), np.float32)
    logits[..., 0] = 1.0
    logits[0, 1:5, 1:5, 1] = 3.0  # the CE head over-segments: still fine
    maps = saliency_maps({"features": jnp.asarray(features), "logits": jnp.asarray(logits)})
    expected = np.zeros((6, 6))
    expected[2:4, 2:5] = 1.0
    np.testing.assert_allclose(maps["metric"][0], expected, atol=1e-6)
    assert maps["ce"].min() >= 0 and maps["ce"].max() <= 1


def test_border_estimate_takes_the_larger_group_and_is_seeded():
    size = 32
    band = np.asarray(border_band(size))
    assert band.sum() == size * size - (size - 6) ** 2  # 3 px at 32 px (20 px at 224 px)
    features = np.zeros((1, size, size, 16), np.float32)
    features[..., 0] = 1.0
    # 60 candidate border pixels: 40 at +e1, 20 at -e1 (squared distance 4 > 2, so the split opens a second group).
    candidates = np.flatnonzero(band.ravel())[:60]
    flat = features.reshape(-1, 16)
    flat[candidates[40:], 0] = -1.0
    probability = np.ones((1, size, size), np.float32)
    probability.reshape(-1)[candidates] = 0.1
    key = jax.random.key(0)
    d = metric_distance(jnp.asarray(features), jnp.asarray(probability), background="border", key=key)
    # Background reference = +e1: squared distance 0 for +e1 pixels, 4 for -e1 pixels.
    np.testing.assert_allclose(np.asarray(d).reshape(-1)[candidates[:40]], 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(d).reshape(-1)[candidates[40:]], 4.0, atol=1e-6)
    again = metric_distance(jnp.asarray(features), jnp.asarray(probability), background="border", key=key)
    np.testing.assert_array_equal(d, again)


def test_border_sampling_uses_at_most_100_pixels_of_the_band():
    rng = np.random.default_rng(1)
    size = 64
    features = rng.normal(size=(1, size, size, 16)).astype(np.float32)
    probability = np.zeros((1, size, size), np.float32)  # every pixel is a candidate
    d1 = metric_distance(jnp.asarray(features), jnp.asarray(probability), background="border", key=jax.random.key(1))
    d2 = metric_distance(jnp.asarray(features), jnp.asarray(probability), background="border", key=jax.random.key(2))
    assert not np.allclose(d1, d2)  # a random subset: another seed, another reference
    interior = np.zeros((1, size, size), np.float32)
    interior[:, :] = 1.0
    interior[0, size // 2, size // 2] = 0.0  # the only low-probability pixel is not in the band
    d = metric_distance(jnp.asarray(features), jnp.asarray(interior), background="border", key=jax.random.key(1))
    f = features / np.linalg.norm(features, axis=-1, keepdims=True)
    np.testing.assert_allclose(d[0], (f[0] ** 2).sum(-1), rtol=1e-5)  # no candidate: reference 0


def test_scale_to_unit():
    maps = jnp.asarray(np.stack([np.linspace(2, 6, 16).reshape(4, 4), np.full((4, 4), 0.6)]), jnp.float32)
    scaled = np.asarray(scale_to_unit(maps))
    np.testing.assert_allclose(scaled[0].min(), 0.0)
    np.testing.assert_allclose(scaled[0].max(), 1.0)
    np.testing.assert_allclose(scaled[1], 0.6)  # constant: its absolute value, not a stretched 0 or 1


def test_resize_map_back_to_original_size():
    saliency = jnp.asarray(np.random.default_rng(2).random((32, 32)), jnp.float32)
    out = resize_map(saliency, 300, 400)
    assert out.shape == (300, 400)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    np.testing.assert_allclose(float(out.mean()), float(saliency.mean()), atol=0.02)


def test_raw_maps_are_the_probability_and_half_the_distance_and_normalise_to_the_maps():
    from menet_jax.core.saliency import scale_to_unit

    rng = np.random.default_rng(1)
    outputs = {
        "features": jnp.asarray(rng.normal(size=(2, 8, 8, 16)), jnp.float32),
        "logits": jnp.asarray(rng.normal(size=(2, 8, 8, 2)) * 0.3, jnp.float32),
    }
    raw = saliency_maps(outputs, normalize=False)
    p = np.asarray(salient_probability(outputs["logits"]))
    np.testing.assert_array_equal(np.asarray(raw["ce"]), p)
    np.testing.assert_allclose(
        np.asarray(raw["metric"]), np.asarray(metric_distance(outputs["features"], jnp.asarray(p))) / 2, rtol=1e-6
    )
    assert 0.2 < p.min() and p.max() < 0.8  # a narrow band: the raw map is not its normalised map
    normalised = saliency_maps(outputs)
    for name in ("metric", "ce"):
        assert np.abs(np.asarray(raw[name]) - np.asarray(normalised[name])).max() > 0.1
        for n in range(2):
            np.testing.assert_allclose(scale_to_unit(np.asarray(raw[name][n])), normalised[name][n], atol=1e-5)
