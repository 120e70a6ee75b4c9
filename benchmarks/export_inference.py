"""Per-image inference time at batch 1 on CPU: the exported ONNX model in onnxruntime against the jitted JAX forward.

    python benchmarks/export_inference.py                   # shipped weights, 20 ECSSD images
    python benchmarks/export_inference.py --images 50 --checkpoint runs/duts

Both run the evaluation forward pass with both maps at the network's input size (images resized beforehand, not
timed): onnxruntime on a file written by `menet_jax.inference.export.onnx_bytes` (into a temporary folder), JAX on
`Predictor`'s jitted program (default CPU convolutions and compiler options). They alternate image by image, and
which goes first alternates too, so machine noise hits both; medians and the ratio (onnxruntime / JAX) are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def images(count: int, size: int):
    """`count` ECSSD photos at the network's size (random pixels where the data is missing)."""
    from menet_jax.io.images import load_photo, resize_input

    folder = Path(os.environ.get("MENET_DATA_DIR", ROOT.parent / "shared" / "data")) / "ECSSD" / "images"
    files = sorted(folder.glob("*.jpg"))[:count]
    if len(files) < count:
        print(f"(ECSSD not found at {folder}: random images)")
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]
    return [resize_input(load_photo(p), size) for p in files]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="training workdir or weights .npz (default: the shipped weights)")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    import jax

    from menet_jax.inference.export import onnx_bytes
    from menet_jax.inference.exported import OnnxPredictor
    from menet_jax.inference.predictor import Predictor

    predictor = Predictor.load(args.checkpoint, batch_size=1)
    size = predictor.config.image_size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "menet.onnx"
        # onnx_bytes, not onnx_model().SerializeToString(): the file must carry the checksum OnnxPredictor checks.
        path.write_bytes(onnx_bytes(jax.tree_util.tree_map(np.asarray, predictor.variables), predictor.config))
        runner = OnnxPredictor(path, batch_size=1)

    def run_jax(x):
        return jax.device_get(predictor.predict_batch(predictor.variables, x))

    def run_onnx(x):
        return runner.forward(x.astype(np.float32))

    batch = images(args.images, size)
    start = time.perf_counter()
    run_jax(batch[0][None])
    compile_s = time.perf_counter() - start
    for x in batch[: args.warmup]:
        run_jax(x[None]), run_onnx(x[None])
    times = {"onnxruntime": [], "jax": []}
    worst = 0.0
    for i, x in enumerate(batch):
        order = (("onnxruntime", run_onnx), ("jax", run_jax))
        results = {}
        for name, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            results[name] = fn(x[None])
            times[name].append(time.perf_counter() - start)
        worst = max(
            worst,
            *(float(np.abs(np.asarray(results["jax"][k]) - results["onnxruntime"][k]).max()) for k in ("metric", "ce")),
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{size}px width {predictor.config.width}, batch 1, {args.images} images, {os.cpu_count()} CPUs, "
        f"load average {load:.1f}; JAX compile {compile_s:.1f} s; max |map difference| {worst:.2e}"
    )
    print(f"{'backend':<14}{'median ms':>10}{'mean ms':>10}{'min ms':>10}")
    for name, values in times.items():
        print(
            f"{name:<14}{1e3 * statistics.median(values):>10.1f}{1e3 * statistics.mean(values):>10.1f}"
            f"{1e3 * min(values):>10.1f}"
        )
    ratio = statistics.median(times["onnxruntime"]) / statistics.median(times["jax"])
    print(f"ratio onnxruntime / jax (medians): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
