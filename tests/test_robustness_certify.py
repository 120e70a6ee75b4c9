"""robustness.certify: SegCertify's statistics against closed forms, a linear model whose certified radius is known
exactly, reproducibility of the noise, the CLI's one-line errors and one run on real ECSSD images."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ecssd_subset, one_line_error
from scipy.stats import beta as beta_dist
from scipy.stats import binom

from robustness import certify

SIGMA = 64.0
W = np.array([1.0, 2.0, -0.5])
T = 100.0


def linear_model(params, images):
    """f(params, x)[p] = 1 where w . x_p > t: under N(0, sigma^2) noise pixel p is salient with probability
    Phi((w . x_p - t) / (sigma |w|)), and the smoothed classifier's exact radius at p is |w . x_p - t| / |w|."""
    return (jnp.asarray(images) @ params["w"] > params["t"]).astype(jnp.float32)


LINEAR = {"w": jnp.asarray(W, jnp.float32), "t": jnp.float32(T)}


def linear_image(distances, w=W, t=T):
    """A (H, W, 3) image whose pixel p lies at signed distance distances[p] from the plane w . x = t."""
    unit = np.asarray(w) / np.linalg.norm(w)
    base = unit * t / np.linalg.norm(w) + np.array([50.0, 20.0, 80.0]) - unit * (unit @ [50.0, 20.0, 80.0])
    assert abs(np.asarray(w) @ base - t) < 1e-9
    return (base + np.asarray(distances)[..., None] * unit).astype(np.float32)


DISTANCES = SIGMA * np.array(
    [[0.2, -0.3, 0.5, -0.7], [0.9, -1.1, 1.3, -0.4], [0.35, -0.6, 0.8, -1.0], [1.2, -0.25, 0.45, -0.9]]
)


def test_clopper_pearson_lower_bound_is_the_beta_quantile():
    n, level = 96, 1e-4
    k = np.arange(n + 1)
    lower = certify.clopper_pearson_lower(k, n, level)
    assert lower[0] == 0.0
    # k = n: the closed form level^(1/n); 0 < k: P(Bin(n, L) >= k) = level defines the bound.
    assert lower[-1] == pytest.approx(level ** (1 / n), rel=1e-10)
    np.testing.assert_allclose(binom.sf(k[1:] - 1, n, lower[1:]), level, rtol=1e-6)
    np.testing.assert_allclose(lower[1:], beta_dist.ppf(level, k[1:], n - k[1:] + 1))
    # Per-element levels, and the duality with the exact test: L > 1/2 exactly where the p-value is below level.
    levels = np.linspace(1e-6, 0.2, n + 1)
    bounds = certify.clopper_pearson_lower(k, n, levels)
    assert np.array_equal(bounds > 0.5, certify.binomial_pvalues(k, n) < levels)


def _holm_reference(pvalues, alpha):
    """Holm by the adjusted p-values (as statsmodels' multipletests(method="holm")): p_adj(k) = max_{j <= k}
    min(1, (m - j + 1) p(j)) over the sorted p-values, rejected where p_adj <= alpha."""
    p = np.asarray(pvalues, float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    rejected = np.zeros(m, bool)
    rejected[order] = adjusted <= alpha
    return rejected


def test_holm_matches_the_adjusted_p_value_reference():
    rng = np.random.default_rng(0)
    for trial in range(300):
        m = int(rng.integers(1, 12))
        p = rng.choice([1e-5, 1e-4, 1e-3, 0.004, 0.01, 0.02, 0.05, 0.3], size=m) * rng.uniform(0.5, 1.5, m)
        if trial % 3 == 0:
            p = rng.choice([1e-4, 0.004, 0.01], size=m)  # ties
        alpha = float(rng.choice([0.001, 0.01, 0.05]))
        rejected, levels = certify.holm(p, alpha)
        assert np.array_equal(rejected, _holm_reference(p, alpha)), (p, alpha)
        assert sorted(levels.tolist()) == pytest.approx(sorted(alpha / (m - np.arange(m))))
    # By hand: the second-smallest fails alpha / 2, so only the smallest is rejected, though 0.03 < alpha.
    rejected, levels = certify.holm([0.03, 0.001, 0.03], 0.05)
    assert rejected.tolist() == [False, True, False]
    assert levels.tolist() == pytest.approx([0.025, 0.05 / 3, 0.05])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_certified_radii_never_exceed_the_true_distance(seed):
    cert = certify.certify_image(linear_model, LINEAR, linear_image(DISTANCES), certify.image_key(seed, 0), sigma=SIGMA)
    truth = np.abs(DISTANCES)
    assert cert.certified.sum() >= 8
    assert np.all(cert.radius <= truth + 1e-6)
    assert np.all(cert.classes[cert.certified] == (DISTANCES > 0)[cert.certified])
    assert np.all(cert.radius[~cert.certified] == 0) and np.all(cert.p_lower[~cert.certified] == 0)


def test_certified_radii_approach_the_true_distance_as_n_grows():
    x, truth = linear_image(DISTANCES), np.abs(DISTANCES)
    medians = []
    for n in (100, 1000, 10000):
        cert = certify.certify_image(
            linear_model, LINEAR, x, certify.image_key(7, 0), sigma=SIGMA, n=n, n0=32, batch_size=2500
        )
        assert np.all(cert.radius <= truth + 1e-6)
        ratio = np.where(cert.certified, cert.radius / truth, 0.0)
        medians.append(float(np.median(ratio)))
    assert medians[0] < medians[1] < medians[2]
    assert medians[2] > 0.8, medians


def test_pixels_on_the_boundary_abstain():
    """w . x = t: both classes have probability exactly 1/2, nothing may be certified."""
    x = linear_image(np.zeros((3, 5)))
    for seed in range(3):
        cert = certify.certify_image(linear_model, LINEAR, x, certify.image_key(seed, 0), sigma=SIGMA, n=500)
        assert np.all(cert.classes == -1) and np.all(cert.radius == 0)
    # Half of the image on the boundary, half far from it: only the far half is certified.
    d = np.zeros((2, 6))
    d[1] = 3 * SIGMA
    cert = certify.certify_image(linear_model, LINEAR, linear_image(d), certify.image_key(0, 0), sigma=SIGMA)
    assert cert.classes[0].tolist() == [-1] * 6 and cert.classes[1].tolist() == [1] * 6


def test_the_noise_depends_on_the_seed_not_on_the_batch_size():
    x = linear_image(DISTANCES * 0.2)  # close to the plane: the counts vary
    model = (linear_model, LINEAR)
    runs = {
        b: certify.certify_image(*model, x, certify.image_key(3, 5), sigma=SIGMA, n0=10, n=50, batch_size=b)
        for b in (1, 7, 16, 60)
    }
    for b in (7, 16, 60):
        assert np.array_equal(runs[b].counts, runs[1].counts)
        assert np.array_equal(runs[b].classes, runs[1].classes) and np.array_equal(runs[b].radius, runs[1].radius)
    other_seed = certify.certify_image(*model, x, certify.image_key(4, 5), sigma=SIGMA, n0=10, n=50)
    other_image = certify.certify_image(*model, x, certify.image_key(3, 6), sigma=SIGMA, n0=10, n=50)
    assert not np.array_equal(other_seed.counts, runs[1].counts)
    assert not np.array_equal(other_image.counts, runs[1].counts)


def test_bonferroni_is_never_less_conservative_than_holm():
    x = linear_image(DISTANCES)
    holm = certify.certify_image(linear_model, LINEAR, x, certify.image_key(1, 0), sigma=SIGMA)
    bonf = certify.certify_image(linear_model, LINEAR, x, certify.image_key(1, 0), sigma=SIGMA, correction="bonferroni")
    assert np.all(bonf.certified <= holm.certified)
    assert np.all(bonf.radius <= holm.radius + 1e-9)


def test_scores_count_abstained_pixels_as_wrong():
    cert = certify.CertifiedMap(
        classes=np.array([[1, 0], [-1, -1]], np.int8),
        p_lower=np.array([[0.9, 0.8], [0, 0]]),
        radius=np.array([[80.0, 50.0], [0, 0]]),
        guess=np.array([[1, 0], [1, 0]], np.int8),
        counts=np.zeros((2, 2)),
    )
    mask = np.array([[1, 0], [1, 0]])
    s = certify.score_certificate(cert, mask, [0, 60, 100])
    assert s["certified_accuracy"] == [0.5, 0.25, 0.0]
    assert s["abstain_rate"] == 0.5 and s["smoothed_accuracy"] == 1.0
    # Worst case map [[1, 0], [0, 1]]: precision 1/2, recall 1/2, F = 1/2; MAE 2/4.
    assert s["certified_mae"] == 0.5 and s["certified_fbeta"] == pytest.approx(0.5)
    record = json.loads(json.dumps(cert.to_json()))
    assert record["classes"] == [[1, 0], [-1, -1]] and record["radius"] == [[80.0, 50.0], [0.0, 0.0]]


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--sigma", "0"], ["--sigma", "> 0"]),
        (["--sigma", "-3"], ["--sigma"]),
        (["--sigma", "nan"], ["--sigma", "finite"]),
        (["--sigma", "inf"], ["--sigma", "finite"]),
        (["--n0", "0"], ["--n0", ">= 1"]),
        (["--n", "0"], ["--n ", ">= 1"]),
        (["--alpha", "0"], ["--alpha", "(0, 1)"]),
        (["--alpha", "1"], ["--alpha"]),
        (["--alpha", "nan"], ["--alpha"]),
        (["--threshold", "1.5"], ["--threshold", "(0, 1)"]),
        (["--batch-size", "0"], ["--batch-size", ">= 1"]),
        (["--radii", "-1"], ["--radii"]),
        (["--predictor", "x:y"], ["--predictor", "--input-size"]),
        (["--input-size", "32"], ["--input-size", "--predictor"]),
    ],
)
def test_bad_settings_are_one_line_errors(flags, fragments, tmp_path, capsys):
    from robustness.certify import main

    one_line_error(capsys, *fragments, run=(main, [*flags, "--output", str(tmp_path / "out")]))
    assert not (tmp_path / "out").exists()


PREDICTOR = '''
import numpy as np
def brightness(images):
    """Each image's grey level at half resolution: the certifier resizes it back."""
    return [np.asarray(im, np.float32).mean(-1)[::2, ::2] / 255.0 for im in images]
'''


def _check_run(out, dataset, radii_count):
    report = json.loads((out / "certify.json").read_text())
    result = report["datasets"][dataset]
    s = result["summary"]
    assert s["images"] == 2 and len(result["images"]) == 2 and len(result["radii"]) == radii_count
    acc = s["certified_accuracy"]
    assert acc[0] <= 1 - s["abstain_rate"] + 1e-9
    assert all(a >= b for a, b in zip(acc, acc[1:]))
    assert 0 <= s["certified_mae"] <= 1 and 0 <= s["certified_fbeta"] <= 1
    for row in result["images"]:
        assert row["certified_accuracy"][0] <= 1 - row["abstain_rate"] + 1e-9
        # Every certified-and-correct pixel is scored right, every abstained one wrong.
        assert row["certified_mae"] <= 1 - row["certified_accuracy"][0] + 1e-9
        assert row["certified_mae"] >= row["abstain_rate"] - 1e-9
    assert "certified accuracy" in (out / "table.md").read_text()
    assert (out / "certify.png").stat().st_size > 1000
    return report


@pytest.fixture(scope="module")
def ecssd2(shared_data, tmp_path_factory):
    return ecssd_subset(shared_data, tmp_path_factory.mktemp("data") / "ECSSD2", 40, 2)


def test_cli_certifies_a_predictor_on_real_images(ecssd2, tmp_path, monkeypatch, capsys):
    from robustness.certify import main

    (tmp_path / "peer_model.py").write_text(PREDICTOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    argv = ["--predictor", "peer_model:brightness", "--input-size", "24", "--data-dir", str(ecssd2)]
    argv += ["--n0", "4", "--n", "40", "--sigma", "16", "--no-progress", "--radii", "0", "8"]
    assert main([*argv, "--output", str(out)]) == 0
    assert "certified accuracy" in capsys.readouterr().out
    report = _check_run(out, "ECSSD2", 2)
    assert report["model"] == "peer_model:brightness" and report["input_size"] == 24
    # An output "folder" that is a file is refused before any work.
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, "file", run=(main, [*argv, "--output", str(tmp_path / "file")]))


def test_cli_certifies_a_tiny_network_on_real_images(ecssd2, tmp_path, capsys):
    from robustness.certify import main

    out = tmp_path / "out"
    argv = ["--config", "tiny", "--data-dir", str(ecssd2), "--n0", "2", "--n", "6", "--batch-size", "4"]
    assert main([*argv, "--map", "metric", "--output", str(out), "--no-progress"]) == 0
    report = _check_run(out, "ECSSD2", len(certify.RADIUS_GRID))
    assert report["map"] == "metric"
    assert report["datasets"]["ECSSD2"]["radii"][-1] == pytest.approx(1.5 * 64)
    assert math.isfinite(report["datasets"]["ECSSD2"]["summary"]["median_radius"])


def test_tied_pixels_get_one_radius_and_more_evidence_never_a_smaller_one():
    # Holm's own levels for ties depend on the sort; the bounds use the tie group's first level.
    levels = certify.tied_levels([0.01, 0.001, 0.01, 0.001, 0.5], 0.05)
    assert levels.tolist() == pytest.approx([0.05 / 3, 0.05 / 5, 0.05 / 3, 0.05 / 5, 0.05])
    # Almost every pixel unanimous (96 of 96), a few 95 of 96 near the end of the Holm order: at their larger
    # levels they would have the larger bound; the monotone step lowers theirs to the unanimous one.
    counts = np.array([96] * 2000 + [95] * 3 + [40] * 10)
    pvalues = certify.binomial_pvalues(counts, 96)
    rejected, _ = certify.holm(pvalues, 0.001)
    raw = certify.clopper_pearson_lower(counts, 96, certify.tied_levels(pvalues, 0.001))
    assert raw[2000] > raw[0]  # the artefact
    fixed = certify.monotone_in_counts(np.where(rejected, raw, 0.0), counts)
    assert fixed[2000] == fixed[0] and len(set(fixed[:2000])) == 1 and np.all(fixed[-10:] == 0)
    assert np.all(fixed <= np.where(rejected, raw, 0.0))
