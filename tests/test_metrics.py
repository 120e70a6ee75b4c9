"""MAE and adaptive F-beta against PySODMetrics (the field's reference) on real ECSSD masks."""
import numpy as np
import pytest
from PIL import Image, ImageFilter

import datasets
from menet_jax.metrics import adaptive_fbeta, mae

py_sod_metrics = pytest.importorskip("py_sod_metrics", reason="pysodmetrics is a test dependency: pip install -e .[test]")


def _predictions(mask, rng):
    """Many kinds of maps for one uint8 0/255 ground truth (all uint8, as PySODMetrics takes them)."""
    blurred = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(6)))
    noisy = np.clip(mask * 0.7 + rng.normal(0, 40, mask.shape) + 30, 0, 255).astype(np.uint8)
    shifted = np.roll(mask, (7, -5), axis=(0, 1))
    return {"random": rng.integers(0, 256, mask.shape, dtype=np.uint8), "blurred": blurred, "noisy": noisy,
            "shifted": shifted, "constant": np.full(mask.shape, 77, np.uint8), "zeros": np.zeros_like(mask),
            "perfect": mask}


@pytest.mark.filterwarnings("ignore:This class will be removed")
def test_metrics_equal_pysodmetrics_on_ecssd(shared_data):
    source = datasets.FolderSource(shared_data / "ECSSD")
    rng = np.random.default_rng(0)
    cases = [source[i]["mask"] for i in range(0, 1000, 97)]
    cases += [np.zeros((50, 60), np.uint8), np.full((50, 60), 255, np.uint8)]   # empty and all-salient GT
    for gt in cases:
        for name, pred in _predictions(gt, rng).items():
            ref_mae, ref_f = py_sod_metrics.MAE(), py_sod_metrics.Fmeasure()
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
