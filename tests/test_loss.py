"""The MEnet loss: mining against a brute-force reference, the authors' gradient, Eq. 3-4, edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from menet_jax.core.loss import class_centroids, hard_mining_mask, l2_normalize, menet_loss, pixel_metric_loss


def brute_force_mining(loss, salient):
    """The authors' procedure, literally: sort (loss, index) pairs of the mined class descending, keep the top k."""
    keep = np.zeros_like(salient)
    for n in range(loss.shape[0]):
        fg = np.flatnonzero(salient[n])
        bg = np.flatnonzero(~salient[n])
        minority, majority = (fg, bg) if len(fg) <= len(bg) else (bg, fg)
        k = len(minority)
        ranked = sorted(((loss[n, i], i) for i in majority), reverse=True)
        keep[n, minority] = True
        keep[n, [i for _, i in ranked[:k]]] = True
        if k == 0:
            keep[n] = False
    return keep


@pytest.mark.parametrize("seed", range(6))
def test_mining_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, p = 5, 40
    # Coarse values so that ties occur; a spread of class balances including one-class images.
    loss = rng.integers(-3, 4, size=(n, p)).astype(np.float32)
    salient = rng.random((n, p)) < np.array([0.0, 0.2, 0.5, 0.8, 1.0])[:, None]
    got = np.asarray(hard_mining_mask(jnp.asarray(loss), jnp.asarray(salient)))
    np.testing.assert_array_equal(got, brute_force_mining(loss, salient))


def test_mining_treats_signed_zeros_as_ties_on_long_rows():
    """-0.0 and 0.0 tie (broken by index, as in the authors' sort), and rows longer than 2**16 pixels."""
    rng = np.random.default_rng(7)
    loss = rng.choice(np.array([-1.0, -0.0, 0.0, 1.0, 2.5], np.float32), size=(2, 70_000))
    salient = rng.random((2, 70_000)) < np.array([0.3, 0.6])[:, None]
    got = np.asarray(hard_mining_mask(jnp.asarray(loss), jnp.asarray(salient)))
    np.testing.assert_array_equal(got, brute_force_mining(loss, salient))


def test_mining_keeps_one_to_one():
    rng = np.random.default_rng(0)
    salient = rng.random((3, 100)) < np.array([0.1, 0.5, 0.9])[:, None]
    keep = np.asarray(hard_mining_mask(jnp.asarray(rng.normal(size=(3, 100))), jnp.asarray(salient)))
    for n in range(3):
        assert (
            (keep[n] & salient[n]).sum() == (keep[n] & ~salient[n]).sum() == min(salient[n].sum(), (~salient[n]).sum())
        )


def _random_problem(seed, n=2, h=6, w=5, fg_fraction=0.3):
    rng = np.random.default_rng(seed)
    features = jnp.asarray(np.tanh(rng.normal(size=(n, h, w, 16))), jnp.float32)
    logits = jnp.asarray(rng.normal(size=(n, h, w, 2)), jnp.float32)
    labels = jnp.asarray(rng.random((n, h, w)) < fg_fraction, jnp.uint8)
    return features, logits, labels


def test_official_gradient_is_the_authors_hand_written_one():
    """Kept salient pixel: (c_bg - c_fg) / (16 H W) on the raw tanh output; CE: (p - onehot) / (2 H W)."""
    features, logits, labels = _random_problem(0)
    n, h, w, c = features.shape
    g_f, g_z = jax.grad(lambda f, z: menet_loss(f, z, labels, variant="official")[0], argnums=(0, 1))(features, logits)

    f = np.asarray(l2_normalize(features)).reshape(n, h * w, c)
    y = np.asarray(labels).reshape(n, h * w) > 0
    expected_f = np.zeros_like(f)
    for i in range(n):
        c_fg, c_bg = f[i][y[i]].mean(0), f[i][~y[i]].mean(0)
        d_fg, d_bg = ((f[i] - c_fg) ** 2).sum(1), ((f[i] - c_bg) ** 2).sum(1)
        pixel = np.where(y[i], d_fg - d_bg, d_bg - d_fg)
        keep = brute_force_mining(pixel[None], y[i][None])[0]
        expected_f[i][keep & y[i]] = c_bg - c_fg
        expected_f[i][keep & ~y[i]] = c_fg - c_bg
    expected_f /= 16 * h * w
    np.testing.assert_allclose(np.asarray(g_f).reshape(n, h * w, c), expected_f, atol=1e-7)

    p = np.asarray(jax.nn.softmax(logits, -1))
    onehot = np.stack([1 - np.asarray(labels), np.asarray(labels)], -1)
    np.testing.assert_allclose(g_z, (p - onehot) / (2 * h * w), atol=1e-7)


def test_official_loss_is_summed_over_the_batch():
    features, logits, labels = _random_problem(1, n=3)
    total = menet_loss(features, logits, labels, variant="official")[0]
    parts = sum(
        menet_loss(features[i : i + 1], logits[i : i + 1], labels[i : i + 1], variant="official")[0] for i in range(3)
    )
    np.testing.assert_allclose(total, parts, rtol=1e-5)


def test_paper_loss_value_is_eq_3_and_4():
    features, logits, labels = _random_problem(2)
    n, h, w, c = features.shape
    total, terms = menet_loss(features, logits, labels, variant="paper", ce_weight=0.7)
    f = np.asarray(l2_normalize(features)).reshape(n, h * w, c)
    y = np.asarray(labels).reshape(n, h * w) > 0
    metric = 0.0
    for i in range(n):
        c_fg, c_bg = f[i][y[i]].mean(0), f[i][~y[i]].mean(0)
        pixel = np.where(
            y[i],
            ((f[i] - c_fg) ** 2).sum(1) - ((f[i] - c_bg) ** 2).sum(1),
            ((f[i] - c_bg) ** 2).sum(1) - ((f[i] - c_fg) ** 2).sum(1),
        )
        metric += pixel[brute_force_mining(pixel[None], y[i][None])[0]].sum()
    metric /= n * h * w
    log_p = np.asarray(jax.nn.log_softmax(logits, -1)).reshape(n, h * w, 2)
    ce = -np.where(y, log_p[..., 1], log_p[..., 0]).mean()
    np.testing.assert_allclose(terms["metric"], metric, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(terms["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(total, metric + 0.7 * ce, rtol=1e-5)


def test_paper_gradient_matches_finite_differences():
    """Through the normalisation and the centroids (the mined set is locally constant)."""
    features, logits, labels = _random_problem(3, n=2, h=4, w=4)
    with jax.enable_x64(True):
        f64, z64 = jnp.asarray(features, jnp.float64), jnp.asarray(logits, jnp.float64)
        check_grads(
            lambda f, z: menet_loss(f, z, labels, variant="paper")[0], (f64, z64), order=1, modes=["rev"], eps=1e-6
        )


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("fill", [0, 1])
def test_one_class_images_give_finite_loss_and_gradients(variant, fill):
    features, logits, _ = _random_problem(4)
    labels = jnp.full(features.shape[:3], fill, jnp.uint8)
    features = features.at[0, 0, 0].set(0.0)  # a zero feature vector, too
    (loss, terms), grads = jax.value_and_grad(
        lambda f, z: menet_loss(f, z, labels, variant=variant), argnums=(0, 1), has_aux=True
    )(features, logits)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads)
    assert terms["metric"] == 0.0 and terms["kept"] == 0.0  # no pair of classes: no metric term
    assert np.all(np.asarray(grads[0]) == 0.0)  # ... and no metric gradient
    assert terms["ce"] > 0


def test_centroids_and_pixel_loss_on_a_hand_made_case():
    f = jnp.asarray([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # two salient pixels at e1, one background at e2
    salient = jnp.asarray([[True, True, False]])
    c_fg, c_bg = class_centroids(f, salient)
    np.testing.assert_allclose(c_fg, [[1.0, 0.0]])
    np.testing.assert_allclose(c_bg, [[0.0, 1.0]])
    np.testing.assert_allclose(pixel_metric_loss(f, salient, c_fg, c_bg), [[-2.0, -2.0, -2.0]])


def test_unknown_variant_is_an_error():
    features, logits, labels = _random_problem(5)
    with pytest.raises(ValueError, match="unknown loss variant"):
        menet_loss(features, logits, labels, variant="nope")


def test_ce_only_ablation_trains_the_classifier_alone():
    """variant="ce": the loss is the official CE term, the features get no gradient, the logits the same one as
    under the full loss, and the metric term is still reported (the same value) for the log."""
    features, logits, labels = _random_problem(5)
    grad = lambda variant: jax.value_and_grad(
        lambda f, z: menet_loss(f, z, labels, variant=variant), argnums=(0, 1), has_aux=True
    )(features, logits)
    (full, full_terms), (full_df, full_dz) = grad("official")
    (ce_only, ce_terms), (ce_df, ce_dz) = grad("ce")
    assert float(ce_only) == float(ce_terms["ce"]) == float(full_terms["ce"])
    assert float(ce_terms["metric"]) == float(full_terms["metric"]) != 0.0
    assert np.all(np.asarray(ce_df) == 0.0) and np.abs(np.asarray(full_df)).max() > 0
    np.testing.assert_allclose(np.asarray(ce_dz), np.asarray(full_dz), rtol=1e-6, atol=1e-9)
