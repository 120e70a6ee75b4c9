"""Every analysis of robustness/ on a second, independent Flax model: a small U-Net written here (nothing of MEnet),
given to each as `(f, params, x)` (robustness.model), each checked against an independent reference: the exact
Jacobian by `jax.jacrev`, a Monte Carlo majority, the model's own loss, the metrics computed by hand."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ecssd_subset, one_line_message
from scipy.stats import norm

from menet_datasets import FolderSource
from menet_jax.api import ConfigError, SODMetrics, resize_input, resize_to, to_8bit
from robustness import attacks, certify, corruptions, distortions, jacobian, lipschitz, model, norms

SIZE = 32


class UNet(nn.Module):
    """Two levels: conv + ReLU at 32 px, max-pool, conv + ReLU at 16 px, a transposed conv back up, the skip
    concatenated, conv + ReLU and a one-channel sigmoid head (3,081 parameters). The head's logit is scaled by 10:
    a random network's maps are otherwise flat near 0.5, and nothing would be certified or worth attacking."""

    @nn.compact
    def __call__(self, x):
        x = x / 127.5 - 1.0
        e1 = nn.relu(nn.Conv(8, (3, 3))(x))
        e2 = nn.relu(nn.Conv(16, (3, 3))(nn.max_pool(e1, (2, 2), (2, 2))))
        up = nn.relu(nn.ConvTranspose(8, (2, 2), strides=(2, 2))(e2))
        h = nn.relu(nn.Conv(8, (3, 3))(jnp.concatenate([up, e1], axis=-1)))
        return nn.sigmoid(10.0 * nn.Conv(1, (1, 1))(h))[..., 0]


def unet(params, x):
    """The model in the robustness convention: images (N, 32, 32, 3) on 0..255 -> maps (N, 32, 32) in [0, 1]."""
    return UNet().apply(params, x)


def scene(seed):
    """A 32 px uint8 image (a bright disk on a textured background) and its {0, 1} mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = ((yy - 14 - seed) ** 2 + (xx - 17) ** 2 < 64).astype(np.float32)
    image = np.where(mask[..., None] > 0, [220.0, 180.0, 60.0], 60 + 30 * rng.random((SIZE, SIZE, 3)))
    return np.clip(image + 10 * rng.standard_normal((SIZE, SIZE, 3)), 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def setup():
    params = UNet().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    assert sum(a.size for a in jax.tree.leaves(params)) == 3081
    images, masks = zip(*(scene(s) for s in (0, 1)))
    return params, np.stack(images), np.stack(masks)


@pytest.fixture(scope="module")
def exact(setup):
    """The exact Jacobian of the map at image 0 (1024 x 3072, by jax.jacrev) and its singular values."""
    params, images, _ = setup
    x = jnp.asarray(images[:1], jnp.float32)
    jac = np.asarray(jax.jit(jax.jacrev(lambda z: unet(params, z).ravel()))(x), np.float64).reshape(SIZE * SIZE, -1)
    return x, jac, np.linalg.svd(jac, compute_uv=False)


def test_norms_match_the_exact_jacobian(setup, exact):
    params, _, _ = setup
    x, jac, singular = exact
    np.testing.assert_allclose(norms.jacobian_matrix(unet, params, x), jac, rtol=1e-4, atol=1e-7)
    spectral = norms.spectral_norm(unet, params, x, iters=1000, tol=1e-7)
    assert spectral.converged and spectral.value <= singular[0] * (1 + 1e-5)
    assert spectral.value == pytest.approx(singular[0], rel=1e-3)
    frobenius = norms.frobenius_hutchinson(unet, params, x, probes=256, chunk=64, key=jax.random.key(1))
    exact_frobenius = float(np.sqrt(np.sum(singular**2)))
    assert frobenius.ci_low <= exact_frobenius <= frobenius.ci_high
    assert frobenius.value == pytest.approx(exact_frobenius, rel=0.15)
    # Eq. 12: the t -> 0 limit is ||J n||^2 for each unit direction, exactly; small steps approach it.
    directions = np.random.default_rng(2).normal(size=(6, *x.shape)).astype(np.float32)
    est = norms.directional_estimates(unet, params, x, directions, ts=(0.01,))
    unit = directions.reshape(6, -1) / np.linalg.norm(directions.reshape(6, -1), axis=1, keepdims=True)
    np.testing.assert_allclose(est.per_direction_limit, np.sum((unit @ jac.T) ** 2, axis=1), rtol=1e-4)
    assert est.finite_differences[0.01].mean == pytest.approx(est.limit.mean, rel=1e-2)
    assert json.loads(json.dumps(est.to_json()))["limit"]["mean"] == pytest.approx(est.limit.mean)


def test_jacobian_analysis_of_one_image(setup):
    params, images, _ = setup
    x = jnp.asarray(images[:1], jnp.float32)
    analysis = jacobian.analyse_image(
        unet, params, x, image=images[0], power_iterations=4, probes=4, mc_count=2, t_schedule=(1.0,)
    )
    reference = jax.grad(lambda z: jnp.sum(unet(params, z)))(x)
    np.testing.assert_allclose(analysis.gradient, reference, rtol=1e-4, atol=1e-8)
    assert analysis.stats["max"] == pytest.approx(float(jnp.abs(reference).max()), rel=1e-6)
    row = json.loads(json.dumps(analysis.to_json()))
    assert list(row) == ["stats", "spectral", "frobenius", "eq12"] and set(row["eq12"]) == {"gaussian", "awgn", "jpeg"}
    assert set(row["stats"]) == set(jacobian.STATS) and row["spectral"]["iterations"] <= 4
    assert set(row["eq12"]["awgn"]) == {"p", "directions", "limit", "finite_differences"}
    assert jacobian.summarize([{"name": "a", **row}])["n_images"] == 1


def test_lipschitz_bounds_hold(setup, exact):
    params, images, _ = setup
    x, jac, singular = exact
    layer = lipschitz.layerwise_bound(unet, params, x)
    element = lipschitz.elementwise_bound(unet, params, x)
    assert [r["op"] for r in layer.layers] == ["conv", "conv", "transposed conv", "conv", "conv"]
    abs_norm = np.sqrt(np.linalg.eigvalsh(np.abs(jac) @ np.abs(jac).T)[-1])  # ||J||_2 <= || |J| ||_2 <= ||G||_2
    assert layer.certified >= singular[0] and element.certified >= abs_norm * (1 - 1e-6)
    # Sound for every pair of inputs, not only at x: the other image and a random pair.
    rng = np.random.default_rng(3)
    for a, b in ((images[0], images[1]), rng.uniform(0, 255, (2, SIZE, SIZE, 3))):
        a, b = jnp.asarray(a[None], jnp.float32), jnp.asarray(b[None], jnp.float32)
        assert float(jnp.linalg.norm(unet(params, a) - unet(params, b)) / jnp.linalg.norm(a - b)) <= layer.certified
    assert json.loads(json.dumps(layer.to_json()))["certified"] == pytest.approx(layer.certified)
    # An operation without a bound (the map divided by its own sum) is one line naming it.
    with pytest.raises(lipschitz.LipschitzError) as excinfo:
        lipschitz.layerwise_bound(lambda p, z: unet(p, z) / jnp.sum(unet(p, z)), params, x)
    one_line_message(excinfo, "div", "not bounded")


@pytest.mark.parametrize("method, norm, eps", [("pgd", "linf", 4.0), ("apgd", "l2", 128.0)])
def test_attacks_raise_the_loss_within_the_budget(setup, method, norm, eps):
    params, images, masks = setup
    x, y = images.astype(np.float32), masks
    if method == "pgd":
        adv, loss = attacks.pgd(unet, params, x, y, eps=eps, norm=norm, steps=8)
    else:
        adv, loss = attacks.apgd(unet, params, x, y, eps=eps, norm=norm, steps=12, restarts=1)
    adv = np.asarray(adv)
    delta = (adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert np.all(size <= eps * (1 + 1e-5)) and adv.min() >= 0 and adv.max() <= 255

    def bce(images):  # by hand, in float64
        m = np.clip(np.asarray(unet(params, jnp.asarray(images)), np.float64), 1e-6, 1 - 1e-6)
        return -(y * np.log(m) + (1 - y) * np.log(1 - m)).reshape(len(images), -1).mean(1)

    np.testing.assert_allclose(loss, bce(adv), rtol=1e-4)
    assert np.all(bce(adv) > 1.05 * bce(x))


def test_certification_agrees_with_the_smoothed_majority(setup):
    params, images, _ = setup
    f, sigma = jax.jit(unet), 16.0
    x = images[0].astype(np.float32)
    cert = certify.certify_image(f, params, x, certify.image_key(0, 0), sigma=sigma, n0=16, n=64)
    # The smoothed classifier estimated independently: 512 noisy copies from another generator.
    noise = np.random.default_rng(5).standard_normal((512, *x.shape)).astype(np.float32)
    salient = np.mean([np.asarray(f(params, x + sigma * n)) >= 0.5 for n in np.split(noise, 8)], axis=(0, 1))
    assert 0.05 < np.mean(cert.certified) < 0.95  # both certified and abstained pixels
    assert np.all(cert.radius >= 0) and np.all(cert.radius[~cert.certified] == 0)
    assert np.all(cert.classes[cert.certified] == (salient >= 0.5)[cert.certified])
    assert not np.any(cert.certified & (np.abs(salient - 0.5) < 0.15))  # near-ties abstain
    assert np.all(cert.classes[cert.certified] == cert.guess[cert.certified])
    # No count of n = 64 samples bounds p above alpha^(1/n), the unanimous count's bound at the largest level.
    assert 0 < cert.radius.max() <= sigma * norm.ppf(certify.DEFAULTS["alpha"] ** (1 / 64))
    assert json.loads(json.dumps(cert.to_json()))["classes"] == cert.classes.tolist()


def test_distortions_and_corruptions_feed_the_model(setup):
    params, images, _ = setup
    image, rng = images[0], np.random.default_rng(0)
    distorted = [distortions.distort(image, "awgn", 0.0, rng)[0], distortions.distort(image, "awgn", 900.0, rng)[0]]
    distorted += [distortions.distort(image, "jpeg", 10, rng)[0]]
    distorted += [corruptions.corrupt(image, name, 3, rng) for name in ("gaussian_noise", "defocus_blur", "fog")]
    assert all(d.dtype == np.uint8 and d.shape == image.shape for d in distorted)
    maps = np.asarray(unet(params, jnp.asarray(np.stack([image, *distorted]), jnp.float32)))
    assert maps.shape == (7, SIZE, SIZE) and np.all((maps >= 0) & (maps <= 1))
    assert np.array_equal(maps[1], maps[0])  # variance 0: the clean image
    assert all(np.abs(m - maps[0]).max() > 1e-3 for m in maps[2:])


def test_evaluate_a_flax_model_through_the_adapter(setup, shared_data, tmp_path):
    from robustness.evaluate import evaluate_distorted

    params, _, _ = setup
    source = FolderSource(ecssd_subset(shared_data, tmp_path / "ECSSD3", 0, 3))
    predict = model.as_predictor(unet, params, SIZE, batch_size=2)
    results = evaluate_distorted(source, predict, "awgn", [0.0, 900.0], batch_size=2, progress=False)
    # Level 0 by hand: each image resized to 32 px, the U-Net's map resized back to the mask and scored 8-bit.
    meter = SODMetrics(normalize=False)
    for i in range(len(source)):
        example = source[i]
        x = resize_input(example["image"], SIZE)[None].astype(np.float32)
        m = np.asarray(unet(params, jnp.asarray(x)))[0]
        meter.step(to_8bit(resize_to(m, *example["mask"].shape)), example["mask"])
    expected = meter.results()
    got = results["0.0"]["raw"]["map"]
    assert got == pytest.approx({k: float(expected[k]) for k in got}, abs=1e-6)
    assert results["900.0"]["raw"]["map"]["mae"] != got["mae"]
    # And back: the predictor as a black-box model f(None, x) gives the U-Net's maps (integer images: no rounding).
    x = setup[1].astype(np.float32)
    np.testing.assert_allclose(model.predictor_maps(predict, SIZE)(None, x), unet(params, x), atol=1e-6)
    # A model that breaks the convention is a one-line error before any work.
    with pytest.raises(ConfigError) as excinfo:
        model.as_predictor(lambda p, x: unet(p, x)[..., None], params, SIZE)
    one_line_message(excinfo, "(8, 32, 32, 1)", "(N, H, W)")
