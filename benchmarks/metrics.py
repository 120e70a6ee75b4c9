"""Time scoring ECSSD with every saliency metric: menet_jax.metrics.SODMetrics vs PySODMetrics, same run.

    python benchmarks/metrics.py [--n 1000] [--data DIR]

Predictions: each ground truth blurred (PIL Gaussian, radius 4) and noised (seeded normal, sigma 20 grey levels),
at the ground truth's resolution, all built before the timers start. Both sides get the same uint8 maps and uint8
masks with their default normalisation, and compute MAE, adaptive/mean/max F (beta^2 0.3), S-measure, adaptive/mean/
max E-measure and the weighted F-measure. Prints a one-row table and the largest difference between the two.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from datasets import FolderSource, load_mask
from menet_jax.metrics import SODMetrics

REPO = Path(__file__).resolve().parents[1]


def make_pairs(root: Path, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pairs = []
    for _, mask_path in FolderSource(root / "ECSSD").pairs[:n]:
        gt = load_mask(mask_path)
        blurred = np.asarray(Image.fromarray(gt).filter(ImageFilter.GaussianBlur(4)), np.float64)
        pred = np.clip(np.rint(blurred + rng.normal(0, 20, gt.shape)), 0, 255).astype(np.uint8)
        pairs.append((pred, gt))
    return pairs


def run_ours(pairs):
    metrics = SODMetrics()
    for pred, gt in pairs:
        metrics.step(pred, gt)
    return metrics.results()


def run_reference(pairs):
    import py_sod_metrics as ref

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm, mae, sm, em, wfm = ref.Fmeasure(), ref.MAE(), ref.Smeasure(), ref.Emeasure(), ref.WeightedFmeasure()
    for pred, gt in pairs:
        for m in (fm, mae, sm, em, wfm):
            m.step(pred, gt)
    f, e = fm.get_results()["fm"], em.get_results()["em"]
    return {"mae": mae.get_results()["mae"], "adp_f": f["adp"], "mean_f": f["curve"].mean(), "max_f": f["curve"].max(),
            "s_measure": sm.get_results()["sm"], "adp_e": e["adp"], "mean_e": e["curve"].mean(),
            "max_e": e["curve"].max(), "w_f": wfm.get_results()["wfm"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="number of ECSSD images")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MENET_DATA_DIR", REPO.parent / "shared" / "data")))
    args = parser.parse_args()
    pairs = make_pairs(args.data, args.n)
    run_ours(pairs[:2])   # compile the jitted curve function outside the timer (one shape: it is batched per image)

    start = time.perf_counter()
    ours = run_ours(pairs)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    reference = run_reference(pairs)
    t_ref = time.perf_counter() - start

    diff = max(abs(float(ours[k]) - float(reference[k])) for k in reference)
    print(f"{'n images':>8} | {'ours (s)':>9} | {'PySODMetrics (s)':>16} | {'speed-up':>8} | max |diff|")
    print(f"{len(pairs):>8} | {t_ours:>9.2f} | {t_ref:>16.2f} | {t_ref / t_ours:>7.2f}x | {diff:.1e}")


if __name__ == "__main__":
    main()
