"""Saliency metrics against PySODMetrics 1.6.2 (the field's reference) on real ECSSD masks, per image and per
dataset."""

import warnings

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy.ndimage import distance_transform_edt

import menet_datasets
from menet_jax.core import metrics
from menet_jax.core.metrics import SODMetrics, adaptive_fbeta, image_scores, mae

py_sod_metrics = pytest.importorskip(
    "py_sod_metrics", reason="pysodmetrics is a test dependency: pip install -e .[test]"
)

TOL = 1e-6
SCALARS = ("mae", "adp_f", "adp_e", "s_measure", "w_f")
CURVES = ("precision", "recall", "f_curve", "e_curve")


def _predictions(mask, rng):
    """Many kinds of maps for one uint8 0/255 ground truth (all uint8, as PySODMetrics takes them)."""
    h, w = mask.shape
    blurred = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(6)))
    noisy = np.clip(mask * 0.7 + rng.normal(0, 40, mask.shape) + 30, 0, 255).astype(np.uint8)
    shifted = np.roll(mask, (7, -5), axis=(0, 1))
    # a map produced at another resolution (and aspect), then resized to the ground truth's size (bilinear)
    small = Image.fromarray(np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(3))))
    small = small.resize((max(w // 3, 2), max(h // 2, 2)), Image.BILINEAR)
    resized = np.asarray(small.resize((w, h), Image.BILINEAR))
    return {
        "random": rng.integers(0, 256, mask.shape, dtype=np.uint8),
        "blurred": blurred,
        "noisy": noisy,
        "shifted": shifted,
        "constant": np.full(mask.shape, 77, np.uint8),
        "zeros": np.zeros_like(mask),
        "perfect": mask,
        "resized": resized,
    }


@pytest.fixture(scope="module")
def cases(shared_data):
    source = menet_datasets.FolderSource(shared_data / "ECSSD")
    masks = [menet_datasets.load_mask(source.pairs[i][1]) for i in range(0, 1000, 67)]  # 15 real masks
    masks += [np.zeros((50, 60), np.uint8), np.full((50, 60), 255, np.uint8)]  # empty and all-salient
    tall = np.asarray(Image.fromarray(masks[0]).resize((48, 150), Image.NEAREST))  # another aspect (1:3)
    masks.append(tall)
    rng = np.random.default_rng(0)
    return [(name, pred, gt) for gt in masks for name, pred in _predictions(gt, rng).items()]


class _Reference:
    """PySODMetrics's accumulators for every metric we provide."""

    def __init__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.fm = py_sod_metrics.Fmeasure()
        self.mae, self.sm = py_sod_metrics.MAE(), py_sod_metrics.Smeasure()
        self.em, self.wfm = py_sod_metrics.Emeasure(), py_sod_metrics.WeightedFmeasure()

    def step(self, pred, gt, normalize=True):
        for m in (self.fm, self.mae, self.sm, self.em, self.wfm):
            m.step(pred, gt, normalize=normalize)

    # PySODMetrics's curves run from threshold 255/255 down to 0; ours (index t = threshold t/255) are reversed.
    def last(self) -> dict:
        return {
            "mae": self.mae.maes[-1],
            "adp_f": self.fm.adaptive_fms[-1],
            "adp_e": self.em.adaptive_ems[-1],
            "s_measure": self.sm.sms[-1],
            "w_f": self.wfm.weighted_fms[-1],
            "precision": self.fm.precisions[-1][::-1],
            "recall": self.fm.recalls[-1][::-1],
            "f_curve": self.fm.changeable_fms[-1][::-1],
            "e_curve": self.em.changeable_ems[-1][::-1],
        }

    def results(self) -> dict:
        f, pr, e = self.fm.get_results()["fm"], self.fm.get_results()["pr"], self.em.get_results()["em"]
        return {
            "n_images": len(self.mae.maes),
            "mae": self.mae.get_results()["mae"],
            "adp_f": f["adp"],
            "mean_f": f["curve"].mean(),
            "max_f": f["curve"].max(),
            "s_measure": self.sm.get_results()["sm"],
            "adp_e": e["adp"],
            "mean_e": e["curve"].mean(),
            "max_e": e["curve"].max(),
            "w_f": self.wfm.get_results()["wfm"],
            "precision": pr["p"][::-1],
            "recall": pr["r"][::-1],
            "f_curve": f["curve"][::-1],
        }


def _check(ours: dict, ref: dict, label: str, worst: dict):
    assert set(ref) <= set(ours), label
    for key, value in ref.items():
        got = ours[key]
        if key in CURVES or key in ("f_curve",):
            assert np.shape(got) == (256,), (label, key)
        diff = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(value, np.float64))))
        worst[key] = max(worst.get(key, 0.0), diff)
        assert diff <= TOL, f"{label} {key}: ours {got} reference {value}"


def test_image_and_dataset_scores_equal_pysodmetrics(cases):
    ours, ref, worst = SODMetrics(), _Reference(), {}
    for name, pred, gt in cases:
        scores = ours.step(pred, gt)
        ref.step(pred, gt)
        _check(scores, ref.last(), f"{name} {gt.shape} fg={np.count_nonzero(gt)}", worst)
        assert all(isinstance(scores[k], float) for k in SCALARS)
    _check(ours.results(), ref.results(), "dataset", worst)
    assert ours.results()["n_images"] == len(cases) == 18 * 8
    print("max |ours - PySODMetrics|:", {k: f"{v:.1e}" for k, v in worst.items()})


def test_batched_scoring_equals_pysodmetrics_per_image(cases):
    """step_batch (one curve computation for a batch of images of different sizes, padded to a power of two)."""
    ours, ref, worst = SODMetrics(), _Reference(), {}
    batch = cases[::7][:11]  # 11 images: padded to 16 inside
    assert len({gt.shape for _, _, gt in batch}) > 1
    scores = ours.step_batch([pred for _, pred, _ in batch], [gt for _, _, gt in batch])
    assert len(scores) == len(ours) == len(batch)
    for (name, pred, gt), got in zip(batch, scores):
        ref.step(pred, gt)
        _check(got, ref.last(), f"batched {name}", worst)
    _check(ours.results(), ref.results(), "batched dataset", worst)


def test_without_structure_measures_the_rest_equals_pysodmetrics(cases):
    """structure=False (the robustness suites): no S-measure or weighted F, every other score as the reference's."""
    ours, ref, worst = SODMetrics(structure=False), _Reference(), {}
    batch = cases[::5][:9]
    scores = ours.step_batch([pred for _, pred, _ in batch], [gt for _, _, gt in batch])
    for (name, pred, gt), got in zip(batch, scores):
        ref.step(pred, gt)
        expected = {k: v for k, v in ref.last().items() if k not in ("s_measure", "w_f")}
        assert "s_measure" not in got and "w_f" not in got
        _check(got, expected, f"no structure {name}", worst)
    results = ours.results()
    assert "s_measure" not in results and "w_f" not in results
    _check(results, {k: v for k, v in ref.results().items() if k not in ("s_measure", "w_f")}, "dataset", worst)


def test_without_normalisation_equals_pysodmetrics_on_prescaled_maps(cases):
    """normalize=False: PySODMetrics takes float maps in [0, 1] and bool masks; we take the same (or uint8 / 255)."""
    ours, ref, worst = SODMetrics(normalize=False), _Reference(), {}
    for i, (name, pred, gt) in enumerate(cases[::3]):
        p = pred / 255 * 0.8 + 0.1  # not spanning [0, 1]: normalisation would change it
        given = pred if i % 2 else p  # uint8 maps are divided by 255, float maps taken as is
        expected = pred / 255 if i % 2 else p
        scores = ours.step(given, gt)
        ref.step(expected, gt > 128, normalize=False)
        _check(scores, ref.last(), f"{name} {gt.shape}", worst)
    _check(ours.results(), ref.results(), "dataset", worst)


def test_float_and_bool_inputs_match_uint8(cases):
    for name, pred, gt in cases[:16]:
        a = image_scores(pred, gt)
        b = image_scores(pred / 255, gt > 128)  # float map (min-max normalised the same way), bool mask
        for k in SCALARS + CURVES:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name} {k}")


def test_gt_binarised_above_128_as_pysodmetrics():
    rng = np.random.default_rng(3)
    gt = rng.choice(np.array([0, 127, 128, 129, 255], np.uint8), size=(30, 40))
    pred = rng.integers(0, 256, gt.shape, dtype=np.uint8)
    ref = _Reference()
    ref.step(pred, gt)
    _check(image_scores(pred, gt), ref.last(), "grey levels", {})
    np.testing.assert_array_equal(image_scores(pred, gt)["recall"], image_scores(pred, gt > 128)["recall"])


def test_hand_computed_4x4():
    """GT: the top-left 2x2 block. Prediction: three of those four pixels and one background pixel at 255."""
    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 255
    pred = np.zeros((4, 4), np.uint8)
    pred[0, 0] = pred[0, 1] = pred[1, 0] = pred[3, 3] = 255
    s = image_scores(pred, gt)
    assert s["mae"] == pytest.approx(2 / 16, abs=1e-15)  # one missed, one false pixel of 16
    # adaptive threshold 2 x mean = 0.5: 4 predicted, 3 hits: P = R = 3/4, F = 3/4
    assert s["adp_f"] == pytest.approx(0.75, abs=1e-15)
    # index t = threshold t / 255: threshold 0 keeps all 16 pixels; every threshold above 0 keeps the 4 at 255
    assert (s["precision"][0], s["recall"][0]) == pytest.approx((4 / 16, 1.0), abs=1e-15)
    np.testing.assert_allclose(s["precision"][1:], 0.75, atol=1e-15)
    np.testing.assert_allclose(s["recall"][1:], 0.75, atol=1e-15)
    f0 = 1.3 * 0.25 / (0.3 * 0.25 + 1)
    assert s["f_curve"][0] == pytest.approx(f0, abs=1e-15)
    assert s["f_curve"][1:] == pytest.approx(np.full(255, 0.75), abs=1e-15)
    data = SODMetrics()
    data.step(pred, gt)
    r = data.results()
    assert r["max_f"] == pytest.approx(0.75, abs=1e-15)
    assert r["mean_f"] == pytest.approx((255 * 0.75 + f0) / 256, abs=1e-15)
    # E-measure at the adaptive threshold: the binarised map has 3 TP, 1 FP, 1 FN, 11 TN; means 4/16 and 4/16
    a, b = 1 - 0.25, -0.25
    enhanced = lambda u, v: (2 * u * v / (u * u + v * v + metrics.EPS) + 1) ** 2 / 4  # noqa: E731
    expected_e = (3 * enhanced(a, a) + enhanced(a, b) + enhanced(b, a) + 11 * enhanced(b, b)) / (16 - 1 + metrics.EPS)
    assert s["adp_e"] == pytest.approx(expected_e, abs=1e-15)


def test_nearest_foreground_search_matches_scipy_feature_transform():
    """The weighted F-measure's Et: our band search picks the same nearest foreground pixel as scipy's exact EDT
    (ties included), on random masks with many ties."""
    rng = np.random.default_rng(1)
    for trial in range(40):
        h, w = rng.integers(6, 60, 2)
        g = rng.random((h, w)) < rng.choice([0.02, 0.1, 0.4, 0.8])
        if not g.any() or g.all():
            continue
        e = rng.random((h, w))
        dist, (iy, ix) = distance_transform_edt(~g, return_indices=True)
        expected = e[iy, ix]
        band = np.asarray(Image.fromarray(g.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(7))) > 0
        d2 = np.rint(dist**2).astype(np.int32)
        for got in (metrics._band_errors(e, g), metrics._band_errors(e, g, d2)):  # search by groups / by distance
            np.testing.assert_array_equal(got[band], expected[band], err_msg=f"trial {trial}")


def test_batched_jax_curves_equal_per_image(cases):
    stats = []
    for _, pred, gt in cases[::9]:
        p, g = metrics.prepare(pred, gt)
        hist, adp, _ = metrics._pixel_stats(p, g, np.abs(p - g))
        stats.append((hist, adp, np.count_nonzero(g), g.size))
    batch = metrics.curves_from_histograms(*(np.stack(s) for s in zip(*stats)))
    for i, s in enumerate(stats):
        single = metrics.curves_from_histograms(*(np.asarray(x)[None] for x in s))
        for a, b in zip(batch, single):
            np.testing.assert_allclose(a[i], b[0], rtol=0, atol=1e-15)


def test_input_validation():
    with pytest.raises(ValueError, match="same"):
        image_scores(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_scores(np.full((4, 4), 2.0), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="no image"):
        SODMetrics().results()


def test_training_metrics_close_to_pysodmetrics(cases):
    """The batched float32 ``mae`` / ``adaptive_fbeta`` used during training (float32 accumulation: 1e-5)."""
    for name, pred, gt in cases[::2]:
        ref_mae, ref_f = py_sod_metrics.MAE(), _Reference().fm
        ref_mae.step(pred, gt)
        ref_f.step(pred, gt)
        # PySODMetrics scales uint8 maps to [0, 1] and min-max normalises them (a constant map is left as is).
        p = pred.astype(np.float64) / 255
        if p.max() != p.min():
            p = (p - p.min()) / (p.max() - p.min())
        ours_mae = float(mae(p[None].astype(np.float32), gt[None])[0])
        ours_f = float(adaptive_fbeta(p[None].astype(np.float32), gt[None])[0])
        assert ours_mae == pytest.approx(ref_mae.get_results()["mae"], abs=1e-5), name
        assert ours_f == pytest.approx(ref_f.get_results()["fm"]["adp"], abs=1e-5), name


def test_to_8bit_scores_a_saturated_map_as_its_saved_png_is_scored():
    """A map whose normalised mean exceeds 0.5 has the adaptive threshold 1: on floats only the exact maximum
    reaches it, on the 8-bit map (what saving it gives, what PySODMetrics reads) every pixel that rounds to 255."""
    rng = np.random.default_rng(3)
    gt = np.zeros((40, 60), np.uint8)
    gt[:, :36] = 255
    pred = np.where(gt > 0, 1 - 1e-3 * rng.random(gt.shape), 0.3)
    eight = metrics.to_8bit(pred)
    assert eight.dtype == np.uint8 and eight.max() == 255 and eight.min() == 76  # round(0.3 * 255)
    assert image_scores(pred, gt)["adp_f"] < 0.1
    fm = py_sod_metrics.Fmeasure()
    fm.step(pred=eight, gt=gt)
    assert image_scores(eight, gt)["adp_f"] == pytest.approx(fm.get_results()["fm"]["adp"], abs=1e-12)
    assert image_scores(eight, gt)["adp_f"] > 0.9
    np.testing.assert_array_equal(metrics.to_8bit(np.array([[-0.2, 0.0, 0.5, 1.0, 1.3]])), [[0, 0, 128, 255, 255]])
