"""robustness.bootstrap: the resampled statistic against hand-computed means, exact degenerate cases, pairing,
coverage; and the per-image scores robustness.evaluate records on real ECSSD images."""

import numpy as np
import pytest
from helpers import ecssd_subset

from robustness import bootstrap
from robustness.bootstrap import Interval


def test_resampled_means_are_the_means_over_the_drawn_grid():
    scores = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (seeds, images)
    images = [[0, 0, 2], [1, 2, 2], [0, 1, 2]]
    seeds = [[1, 1], [0, 1], [0, 0]]
    got = bootstrap.resampled_means(scores, bootstrap.counts(images, 3), bootstrap.counts(seeds, 2))
    # By hand: (4 + 4 + 6) / 3; (2 + 3 + 3 + 5 + 6 + 6) / 6; (1 + 2 + 3) / 3.
    assert got == pytest.approx([14 / 3, 25 / 6, 2.0], abs=1e-12)
    for b in range(3):
        assert got[b] == pytest.approx(scores[np.ix_(seeds[b], images[b])].mean(), abs=1e-12)
    assert bootstrap.full_mean(scores) == pytest.approx(3.5, abs=1e-12)


def test_the_image_draw_is_multinomial_and_reproducible():
    w = bootstrap.image_counts(7, 500, 3)
    assert w.shape == (500, 7) and (w.sum(1) == 7).all() and (w >= 0).all()
    assert (bootstrap.image_counts(7, 500, 4) != w).any()
    scores = np.random.default_rng(0).uniform(size=(3, 30))
    assert bootstrap.mean_interval(scores) == bootstrap.mean_interval(scores)  # the fixed default seed
    assert bootstrap.mean_interval(scores, seed=1) != bootstrap.mean_interval(scores)


def test_constant_scores_give_a_zero_width_interval_at_their_value():
    assert bootstrap.mean_interval(np.full((3, 50), 0.7)) == Interval(0.7, 0.7, 0.7)
    assert bootstrap.mean_interval([0.25] * 9) == Interval(0.25, 0.25, 0.25)


def test_seeds_are_resampled_too():
    """Two seeds, no spread over the images: the seed means 0.5 and 0.7 are drawn (0.5, 0.5), (0.5, 0.7), (0.7,
    0.7) with probabilities 1/4, 1/2, 1/4, so the 2.5 and 97.5 percentiles are 0.5 and 0.7."""
    scores = np.array([[0.5] * 20, [0.7] * 20])
    got = bootstrap.mean_interval(scores)
    assert got.estimate == pytest.approx(0.6) and (got.low, got.high) == pytest.approx((0.5, 0.7))


def test_a_run_against_itself_differs_by_exactly_zero():
    rng = np.random.default_rng(0)
    clean, noisy = rng.uniform(0.5, 0.9, 40), rng.uniform(0.2, 0.8, 40)
    assert bootstrap.difference_interval(noisy, noisy) == Interval(0.0, 0.0, 0.0)
    assert bootstrap.kept_difference_interval(clean, noisy, clean, noisy) == Interval(0.0, 0.0, 0.0)
    assert bootstrap.mean_kept_difference_interval(clean, [noisy, clean], clean, [noisy, clean]) == Interval(0, 0, 0)
    # Several seeds: with the same noise (paired seeds) the difference is exactly 0 again; drawn on their own, the
    # seeds leave no difference, yet a non-zero width.
    seeds = rng.uniform(0.2, 0.8, (3, 40))
    assert bootstrap.difference_interval(seeds, seeds, paired_seeds=True) == Interval(0.0, 0.0, 0.0)
    assert bootstrap.kept_difference_interval(clean, seeds, clean, seeds, paired_seeds=True) == Interval(0, 0, 0)
    d = bootstrap.difference_interval(seeds, seeds)
    assert d.estimate == 0.0 and d.low < 0 < d.high
    with pytest.raises(ValueError, match="paired seeds need as many seeds"):
        bootstrap.difference_interval(seeds, seeds[:2], paired_seeds=True)


def test_distorted_scores_equal_to_the_clean_ones_keep_exactly_all():
    clean = np.random.default_rng(1).uniform(0.3, 0.9, 25)
    assert bootstrap.kept_interval(clean, clean) == Interval(1.0, 1.0, 1.0)
    assert bootstrap.mean_kept_interval(clean, [clean, clean]) == Interval(1.0, 1.0, 1.0)


def test_the_image_draw_is_shared_by_the_quantities_of_one_statistic():
    """b = a + 0.01 on every image: the paired difference is 0.01 with (almost) no width, where independent
    draws of the two runs' images would give about +- 2.8 sd / sqrt(n)."""
    a = np.random.default_rng(2).normal(0.6, 0.1, 100)
    d = bootstrap.difference_interval(a + 0.01, a)
    assert (d.estimate, d.low, d.high) == pytest.approx((0.01, 0.01, 0.01), abs=1e-12)
    kept = bootstrap.kept_interval(a, 0.5 * a)
    assert (kept.estimate, kept.low, kept.high) == pytest.approx((0.5, 0.5, 0.5), abs=1e-12)


def test_the_interval_of_a_mean_covers_it_with_the_normal_width():
    mean, sd, n = 0.6, 0.1, 200
    scores = np.random.default_rng(123).normal(mean, sd, n)
    got = bootstrap.mean_interval(scores)
    assert got.low < mean < got.high
    assert got.estimate == pytest.approx(scores.mean(), abs=1e-12)
    assert got.high - got.low == pytest.approx(2 * 1.96 * sd / np.sqrt(n), rel=0.2)


def test_weighted_mean_of_kept_shares():
    rng = np.random.default_rng(3)
    clean, a, b, c = rng.uniform(0.5, 0.9, (4, 30))
    got = bootstrap.mean_kept_interval(clean, [a, b, c], weights=[0.5, 0.25, 0.25])
    assert got.estimate == pytest.approx((0.5 * a.mean() + 0.25 * b.mean() + 0.25 * c.mean()) / clean.mean())
    assert got.low < got.estimate < got.high


def test_interval_forms():
    i = Interval(0.75, 0.7, 0.8)
    assert i.bounds == [0.7, 0.8] and i.scaled(100) == Interval(75.0, 70.0, 80.0)
    assert (
        i.text() == "0.7500 [0.7000, 0.8000]" and Interval(-0.031, -0.05, -0.012).text("+.1%") == "-3.1% [-5.0%, -1.2%]"
    )
    assert Interval(0.5).text(".1f", " %") == "0.5 % [n/a]" and Interval(0.5).bounds is None
    assert Interval(0.5, 0.4, 0.6).to_json() == {"estimate": 0.5, "low": 0.4, "high": 0.6}
    assert i.excludes(0.0) and not i.excludes(0.75) and not Interval(0.5).excludes(0.0)
    # A zero clean score in some resample: no interval, and JSON's None for what is not a number.
    zero = bootstrap.kept_interval([0.0, 0.0, 0.5], [0.1, 0.1, 0.1])
    assert zero.bounds is None and zero.estimate == pytest.approx(0.6)
    assert Interval(float("nan")).to_json() == {"estimate": None, "low": None, "high": None}


def test_one_line_errors():
    with pytest.raises(bootstrap.PairingError) as info:
        bootstrap.check_paired(["a", "b"], ["a", "c"], "run A", "run B")
    message = str(info.value)
    assert "\n" not in message and "run A and run B" in message and "image 1 is 'b' vs 'c'" in message
    with pytest.raises(bootstrap.PairingError, match="2 vs 3 images"):
        bootstrap.check_paired(["a", "b"], ["a", "b", "c"])
    bootstrap.check_paired(("a", "b"), ["a", "b"])
    with pytest.raises(ValueError, match="same images"):
        bootstrap.difference_interval(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="shaped"):
        bootstrap.mean_interval(np.ones((2, 2, 2)))


# ------------------------------------------------------------------------------- robustness.evaluate, real images
@pytest.fixture(scope="module")
def ecssd4(shared_data, tmp_path_factory):
    return ecssd_subset(shared_data, tmp_path_factory.mktemp("data") / "ECSSD4", 200, 4)


def brightness(images):
    """A map any model could give: each image's grey level (the evaluator resizes and scores it)."""
    return [np.asarray(im, np.float32).mean(-1)[::2, ::2] / 255.0 for im in images]


def _check_level(level, n_images):
    """Per-image adp_f / mae shaped [seeds][images], their means the dataset-level scores, and the interval the
    bootstrap's of them."""
    for mode in ("raw", "normalised"):
        assert set(level["per_image"][mode]["map"]) == {"adp_f", "mae"}  # max_f: a curve statistic, no per image
        for key in ("adp_f", "mae"):
            values = np.array(level["per_image"][mode]["map"][key])
            assert values.shape == (len(level["seeds"]), n_images)
            assert values.mean() == pytest.approx(level[mode]["map"][key], abs=1e-6)
            assert values.mean(1) == pytest.approx(level["per_seed"][mode]["map"][key], abs=1e-6)
            assert level["interval"][mode]["map"][key] == bootstrap.mean_interval(values).bounds
    assert len(set(np.array(level["per_image"]["raw"]["map"]["mae"]).ravel())) > 1  # really per image


def test_every_evaluation_path_records_per_image_scores(ecssd4):
    from menet_datasets import FolderSource, Subset
    from robustness.evaluate import evaluate_corruptions, evaluate_distorted, image_names

    source = FolderSource(ecssd4)
    assert image_names(source) == [source[i]["name"] for i in range(4)]
    assert image_names(Subset(source, [2, 0])) == [source[2]["name"], source[0]["name"]]
    results = evaluate_distorted(source, brightness, "awgn", [0.0, 900.0], seeds=(0, 1), progress=False)
    assert results["0.0"]["seeds"] == [0] and results["900.0"]["seeds"] == [0, 1]
    for level in results.values():
        _check_level(level, 4)
    c = evaluate_corruptions(
        Subset(source, [0, 1, 2]), brightness, ["gaussian_noise"], [3], seeds=(0, 1), progress=False
    )
    _check_level(c["clean"], 3)
    _check_level(c["gaussian_noise"]["3"], 3)


def test_a_zero_clean_score_keeps_no_number():
    got = bootstrap.kept_interval(np.zeros(5), np.zeros(5))
    assert np.isnan(got.estimate) and got.bounds is None and got.text() == "-"
    assert got.to_json() == {"estimate": None, "low": None, "high": None}


def test_the_pr_curve_is_pysodmetrics_on_the_scored_maps(ecssd4):
    """Each level records the dataset's PR curve (the paper's Fig. 7): at the clean level, PySODMetrics' curves of
    the same 8-bit maps (raw mode: the map as given, resized to the mask's size)."""
    py_sod = pytest.importorskip("py_sod_metrics")
    from menet_datasets import FolderSource
    from menet_jax import api
    from robustness.evaluate import evaluate_distorted

    source = FolderSource(ecssd4)
    results = evaluate_distorted(source, brightness, "awgn", [0.0], progress=False)
    oracle = py_sod.Fmeasure()  # the class the metric tests check SODMetrics against
    for i in range(len(source)):
        example = source[i]
        (m,) = brightness([example["image"]])
        pred = api.to_8bit(api.resize_to(np.clip(m, 0, 1), *example["mask"].shape))
        oracle.step(pred=pred / 255.0, gt=np.asarray(example["mask"]) > 0, normalize=False)
    expected = oracle.get_results()["pr"]
    curve = results["0.0"]["pr_curve"]["raw"]["map"]
    # PySODMetrics runs from threshold 255 down to 0, ours (index t: threshold t / 255) up.
    np.testing.assert_allclose(curve["precision"], expected["p"][::-1], atol=2e-6)
    np.testing.assert_allclose(curve["recall"], expected["r"][::-1], atol=2e-6)
