"""Time scoring ECSSD with every saliency metric: menet_jax.core.metrics.SODMetrics vs PySODMetrics, same run.

    python benchmarks/metrics.py [--n 1000] [--data DIR]

Predictions: each ground truth blurred (PIL Gaussian, radius 4) and noised (seeded normal, sigma 20 grey levels),
at the ground truth's resolution, all built before the timers start. Both sides get the same uint8 maps and uint8
masks with their default normalisation, and compute MAE, adaptive/mean/max F (beta^2 0.3), S-measure, adaptive/mean/
max E-measure and the weighted F-measure. The two run interleaved, 50 images at a time, so that other load on a
shared machine falls on both alike. Prints a one-row table and the largest difference between the two.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from menet_datasets import FolderSource, load_mask
from menet_jax.core.metrics import SODMetrics

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


class Ours:
    def __init__(self, batch_size: int = 8):
        self.metrics, self.batch_size = SODMetrics(), batch_size

    def step_many(self, pairs):
        """In batches, as `python -m menet_jax.evaluate` scores (its default --batch-size 8)."""
        for start in range(0, len(pairs), self.batch_size):
            preds, gts = zip(*pairs[start : start + self.batch_size])
            self.metrics.step_batch(preds, gts)

    def results(self) -> dict:
        return self.metrics.results()


class Reference:
    def __init__(self):
        import py_sod_metrics as ref

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.all = ref.Fmeasure(), ref.MAE(), ref.Smeasure(), ref.Emeasure(), ref.WeightedFmeasure()

    def step_many(self, pairs):
        for pred, gt in pairs:
            for m in self.all:
                m.step(pred, gt)

    def results(self) -> dict:
        fm, mae, sm, em, wfm = self.all
        f, e = fm.get_results()["fm"], em.get_results()["em"]
        return {
            "mae": mae.get_results()["mae"],
            "adp_f": f["adp"],
            "mean_f": f["curve"].mean(),
            "max_f": f["curve"].max(),
            "s_measure": sm.get_results()["sm"],
            "adp_e": e["adp"],
            "mean_e": e["curve"].mean(),
            "max_e": e["curve"].max(),
            "w_f": wfm.get_results()["wfm"],
        }


def timed_interleaved(pairs, chunk: int = 50):
    """Both scorers over the same images, alternating in chunks (and alternating which goes first), so that load
    from other processes on a shared machine falls on both sides alike. Returns (seconds ours, seconds reference,
    results ours, results reference)."""
    scorers, seconds = {"ours": Ours(), "reference": Reference()}, {"ours": 0.0, "reference": 0.0}
    for k, start in enumerate(range(0, len(pairs), chunk)):
        order = ("ours", "reference") if k % 2 == 0 else ("reference", "ours")
        for name in order:
            scorer = scorers[name]
            tick = time.perf_counter()
            scorer.step_many(pairs[start : start + chunk])
            seconds[name] += time.perf_counter() - tick
    tick = time.perf_counter()
    ours = scorers["ours"].results()
    seconds["ours"] += time.perf_counter() - tick
    tick = time.perf_counter()
    reference = scorers["reference"].results()
    seconds["reference"] += time.perf_counter() - tick
    return seconds["ours"], seconds["reference"], ours, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="number of ECSSD images")
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("MENET_DATA_DIR", REPO.parent / "shared" / "data"))
    )
    args = parser.parse_args()
    pairs = make_pairs(args.data, args.n)
    Ours().step_many(pairs[:50])  # compile the batched curve function outside the timer (batches of 8 and 2)
    t_ours, t_ref, ours, reference = timed_interleaved(pairs)

    diff = max(abs(float(ours[k]) - float(reference[k])) for k in reference)
    print(f"{'n images':>8} | {'ours (s)':>9} | {'PySODMetrics (s)':>16} | {'speed-up':>8} | max |diff|")
    print(f"{len(pairs):>8} | {t_ours:>9.2f} | {t_ref:>16.2f} | {t_ref / t_ours:>7.2f}x | {diff:.1e}")


if __name__ == "__main__":
    main()
