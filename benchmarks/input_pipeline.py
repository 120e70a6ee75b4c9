"""Images/s of the input pipeline (decode + the paper's augmentation + batching) at 224 px, per data source.

    python benchmarks/input_pipeline.py                                   # ../shared/data/DUTS-TR-subset
    python benchmarks/input_pipeline.py --data DIR --batch-sizes 5 10 --workers 2 --batches 40

Sources: the folder read as it is (FolderSource), the same files prepared as a TFDS dataset (TFDSSource; built
into --tfds-dir on first use), and an in-memory CachedSource, decoded once (as it is, and pre-resized to a longer
side of --cache-side), which is the way to feed a GPU. Each row runs BatchLoader (seeded shuffle, augmentation,
--workers threads) for --batches batches after one warm-up batch. The table ends with what the train step
consumes: --step-seconds (66 s/step: the paper config on this 2-core CPU) and --gpu-images-per-s (a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import menet_datasets  # noqa: E402
from menet_datasets.tfds_source import TFDSSource, prepared_builder  # noqa: E402


def images_per_s(source, *, batch_size: int, size: int, batches: int, workers: int) -> float:
    with menet_datasets.BatchLoader(
        source,
        0,
        batches + 1,
        batch_size=batch_size,
        size=size,
        seed=0,
        shuffle=True,
        augment=True,
        workers=workers,
        prefetch=2 * workers,
    ) as loader:
        next(loader)  # warm-up: thread start, first reads
        started = time.perf_counter()
        for _ in loader:
            pass
        return batches * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "DUTS-TR-subset")
    parser.add_argument("--dataset", default="duts", help="TFDS builder to prepare --data with (default: duts)")
    parser.add_argument("--tfds-dir", type=Path, help="prepared datasets (default: a temporary folder)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--batches", type=int, default=40, help="timed batches per row")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--cache-side", type=int, default=256, help="longer side of the pre-resized cache")
    parser.add_argument("--step-seconds", type=float, default=66.0, help="CPU train step, paper config")
    parser.add_argument("--gpu-images-per-s", type=float, default=300.0, help="what a GPU train step consumes")
    args = parser.parse_args()

    folder = menet_datasets.FolderSource(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        tfds_dir = args.tfds_dir or Path(tmp)
        started = time.perf_counter()
        builder = prepared_builder(args.dataset, data_dir=tfds_dir, manual_dir=args.data)
        prepare_s = time.perf_counter() - started
        prepare_s = f"{prepare_s:.1f} s" if prepare_s > 5 else f"{prepare_s:.1f} s, already prepared"
        split = "train" if "train" in builder.info.splits else "test"
        prepared = TFDSSource(builder, split)
        started = time.perf_counter()
        cached = menet_datasets.CachedSource(prepared, workers=args.workers)
        cache_s = time.perf_counter() - started
        started = time.perf_counter()
        small = menet_datasets.CachedSource(prepared, max_side=args.cache_side, workers=args.workers)
        small_s = time.perf_counter() - started
        sources = [
            ("FolderSource (JPEG/PNG files)", folder),
            (f"TFDSSource ({args.dataset}, array_record)", prepared),
            (f"CachedSource (decoded, {cached.nbytes / 2**20:.0f} MiB)", cached),
            (f"CachedSource (side {args.cache_side}, {small.nbytes / 2**20:.0f} MiB)", small),
        ]
        print(
            f"{len(folder)} pairs from {args.data}; {args.size} px, augmentation on, {args.workers} worker threads, "
            f"{os.cpu_count()} CPUs"
        )
        print(
            f"prepare ({args.dataset}): {prepare_s}; decode into memory: {cache_s:.1f} s as it is, "
            f"{small_s:.1f} s pre-resized"
        )
        print(f"{'source':44s} {'batch':>5s} {'images/s':>9s} {'batches/s':>9s}")
        rates = []
        for name, source in sources:
            for batch_size in args.batch_sizes:
                rate = images_per_s(
                    source, batch_size=batch_size, size=args.size, batches=args.batches, workers=args.workers
                )
                rates.append(rate)
                print(f"{name:44s} {batch_size:5d} {rate:9.1f} {rate / batch_size:9.2f}")
    slowest = min(rates)
    for batch_size in args.batch_sizes:
        need = batch_size / args.step_seconds
        print(
            f"CPU train step, paper config, batch {batch_size}: {args.step_seconds:.0f} s/step = {need:.3f} images/s "
            f"(slowest loader: {slowest / need:,.0f}x that)"
        )
    best = max(rates)
    verdict = "enough" if best >= args.gpu_images_per_s else f"{args.gpu_images_per_s / best:.1f}x short"
    print(
        f"GPU at {args.gpu_images_per_s:.0f} images/s: fastest loader here {best:.0f} images/s ({verdict}); "
        f"loaders scale with worker threads (PIL releases the GIL)"
    )


if __name__ == "__main__":
    main()
