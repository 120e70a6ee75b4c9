"""`python -m menet_jax.evaluate`: score MEnet (or any method's saliency maps) with the standard SOD metrics.

    python -m menet_jax.evaluate --checkpoint runs/duts --data-dir ../shared/data/ECSSD --output eval/ecssd
    python -m menet_jax.evaluate --predictions maps/ --data-dir ../shared/data/ECSSD --output eval/other

Protocol (the field's, as PySODMetrics): each map is resized to its ground truth's original size (bilinear) and
scored as the 8-bit image saving it gives (`metrics.to_8bit`), the ground truth is binarised at 128 and never
resized, and maps are min-max normalised per image (--no-normalize to score them as they are).

Saved maps are read as: 8-bit images / 255 (colour ones by luminance), 16-bit ones / 65535, float TIFFs (mode F)
with values in [0, 1] as they are and float maps of any other range min-max rescaled to [0, 1]; a map with NaN or
inf, or two maps of one stem (x.png and x.jpg), is an error.

Writes DIR/results.json, DIR/per_image.csv, DIR/pr_curve.png and DIR/f_curve.png; with --save-maps also the maps,
as DIR/maps/<dataset>/<map>/<stem>.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

import menet_datasets
from menet_datasets.cli import add_source_arguments, sources_from_args
from menet_jax.config import ConfigError
from menet_jax.inference import CHECKPOINT_HELP, MAPS, resize_to
from menet_jax.outputs import OutputError, check_folder, save_image

DATASET_KEYS = ("n_images", "mae", "adp_f", "mean_f", "max_f", "s_measure", "adp_e", "mean_e", "max_e", "w_f")
IMAGE_KEYS = ("mae", "adp_f", "s_measure", "adp_e", "w_f")


def prediction_folder(predictions: Path, dataset: str) -> Path:
    """PySODEvalToolkit's layout (PRED/<dataset>/<stem>.png) when that folder exists, else PRED itself."""
    return predictions / dataset if (predictions / dataset).is_dir() else predictions


def map_values(img: Image.Image, path) -> np.ndarray:
    """A map image's values in [0, 1], by mode (see the module docstring): a float or 16-bit map must not be cut
    to 8 bit by `convert("L")`, which clips a [0, 1] float map to black."""
    if img.mode not in ("F", "I") and not img.mode.startswith("I;16"):
        return np.asarray(img.convert("L"), np.float64) / 255
    values = np.asarray(img, np.float64)
    if not np.isfinite(values).all():
        raise menet_datasets.DataError(f"{path}: the map has NaN or infinite values")
    if img.mode != "F":                       # I;16, or I: 16-bit data when any value exceeds 8 bit
        values = values / (255 if img.mode == "I" and values.max(initial=0) <= 255 else 65535)
    low, high = values.min(), values.max()
    if low < 0 or high > 1:
        values = (values - low) / (high - low) if high > low else np.clip(values, 0, 1)
    return values


def load_prediction(path: Path, height: int, width: int) -> np.ndarray:
    """A saved saliency map (any size, any mode) as float in [0, 1] at the ground truth's size."""
    values = map_values(menet_datasets.open_image(path, "prediction"), path)
    return resize_to(values.astype(np.float32), height, width)


def match_predictions(name: str, stems, predictions: Path):
    """Prediction paths in the order of the ground truth's `stems`; every stem must be on both sides."""
    if not predictions.is_dir():
        raise menet_datasets.DataError(f"prediction folder not found: {predictions}")
    found = menet_datasets.list_images(predictions)           # two maps of one stem: an error, not one scored
    for stem in stems:
        if stem not in found:
            raise menet_datasets.DataError(f"{name}/{stem}: no prediction with the same stem in {predictions}")
    extra = sorted(set(found) - set(stems))
    if extra:
        raise menet_datasets.DataError(f"{found[extra[0]]}: no ground truth with the same stem in {name} "
                                       f"({len(extra)} such predictions)")
    return [found[stem] for stem in stems]


def evaluate_source(name: str, source, maps_for, map_names, *, normalize=True, save_dir=None,
                    progress=True, batch_size=8):
    """Score every image of `source`; `maps_for(indices, examples)` returns one {map name: (H, W) map} each.

    Returns ({map name: dataset results}, [per-image rows]).
    """
    from menet_jax.metrics import SODMetrics, to_8bit
    meters = {name: SODMetrics(normalize=normalize) for name in map_names}
    rows = []
    bar = tqdm(total=len(source), desc=name, unit="img", disable=not progress)
    for start in range(0, len(source), batch_size):
        indices = range(start, min(start + batch_size, len(source)))
        examples = [source[i] for i in indices]
        batch_maps = maps_for(indices, examples)
        for map_name in map_names:
            preds = [to_8bit(maps[map_name]) for maps in batch_maps]
            scores = meters[map_name].step_batch(preds, [example["mask"] for example in examples])
            for example, pred, image_scores in zip(examples, preds, scores):
                rows.append({"dataset": name, "map": map_name, "name": example["name"],
                             **{key: float(image_scores[key]) for key in IMAGE_KEYS}})
                if save_dir is not None:
                    save_image(Image.fromarray(pred), Path(save_dir) / name / map_name / f"{example['name']}.png")
        bar.update(len(examples))
    bar.close()
    return {map_name: meter.results() for map_name, meter in meters.items()}, rows


def format_tables(results) -> str:
    """The paper's Table I layout (an F-beta / MAE row pair per dataset, one column per map) and all metrics."""
    datasets_ = sorted({key.split("/")[0] for key in results})
    maps = sorted({key.split("/")[1] if "/" in key else "" for key in results})
    column = lambda m: m or "map"
    lines = [f"{'Dataset':14s} {'':7s}" + "".join(f"{column(m):>10s}" for m in maps)]
    for name in datasets_:
        for label, key in (("F-beta", "adp_f"), ("MAE", "mae")):
            values = [results.get(f"{name}/{m}" if m else name, {}).get(key) for m in maps]
            cells = "".join(f"{v:10.4f}" if v is not None else f"{'-':>10s}" for v in values)
            lines.append(f"{name if label == 'F-beta' else '':14s} {label:7s}{cells}")
    lines.append("")
    header = ["adpF", "MAE", "maxF", "meanF", "S", "adpE", "meanE", "maxE", "wF"]
    keys = ["adp_f", "mae", "max_f", "mean_f", "s_measure", "adp_e", "mean_e", "max_e", "w_f"]
    lines.append(f"{'Dataset/map':22s} {'n':>5s}" + "".join(f"{h:>8s}" for h in header))
    for key, r in results.items():
        lines.append(f"{key:22s} {r['n_images']:5d}" + "".join(f"{r[k]:8.4f}" for k in keys))
    return "\n".join(lines)


def plot_curves(results, output: Path) -> None:
    """PR curves and F-beta-vs-threshold curves, one line per dataset (and map)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    thresholds = np.arange(256) / 255
    for filename, draw, xlabel, ylabel in (
            ("pr_curve.png", lambda r: (r["recall"], r["precision"]), "recall", "precision"),
            ("f_curve.png", lambda r: (thresholds, r["f_curve"]), "threshold", "F-beta (beta^2 = 0.3)")):
        fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
        for key, r in results.items():
            ax.plot(*draw(r), label=key)
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(output / filename)
        plt.close(fig)


def write_outputs(results, rows, output: Path) -> None:
    """results.json, per_image.csv and the curves; a failed write (disk full, ...) is one line."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        summary = {"datasets": {key: {k: r[k] for k in DATASET_KEYS} for key, r in results.items()}}
        (output / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        with open(output / "per_image.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["dataset", "map", "name", *IMAGE_KEYS])
            writer.writeheader()
            writer.writerows(rows)
        plot_curves(results, output)
    except OSError as error:
        raise OutputError(f"{output}: cannot write the results ({error.strerror or error})") from None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m menet_jax.evaluate", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help=CHECKPOINT_HELP)
    source.add_argument("--predictions", type=Path, help="folder of saliency maps (PNG per stem, any size)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="compute dtype (default: the one the weights were trained with)")
    parser.add_argument("--map", default="both", choices=["metric", "ce", "both"], help="with --checkpoint")
    parser.add_argument("--output", type=Path, default=Path("eval"), help="results folder (default: eval)")
    parser.add_argument("--save-maps", action="store_true", help="also write the maps as PNGs")
    parser.add_argument("--no-normalize", action="store_true", help="no per-image min-max of the maps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-progress", action="store_true")
    add_source_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from menet_jax.trainer import enable_compilation_cache
    enable_compilation_cache()
    try:
        check_folder(args.output)                          # before the data is read and the network loaded
        sources = sources_from_args(args)
        if args.predictions is None:
            from menet_jax.inference import Predictor
            predictor = Predictor.load(args.checkpoint, batch_size=args.batch_size, dtype=args.dtype)
            map_names = MAPS if args.map == "both" else (args.map,)
            maps_for = lambda indices, examples: predictor([e["image"] for e in examples])
        else:
            map_names = ("",)
        results, rows = {}, []
        for name, source in sources:
            if args.predictions is not None:
                paths = match_predictions(name, source.names, prediction_folder(args.predictions, name))
                maps_for = lambda indices, examples, paths=paths: [
                    {"": load_prediction(paths[i], *e["mask"].shape)} for i, e in zip(indices, examples)]
            scores, source_rows = evaluate_source(
                name, source, maps_for, map_names, normalize=not args.no_normalize,
                save_dir=args.output / "maps" if args.save_maps else None, progress=not args.no_progress,
                batch_size=args.batch_size)
            for map_name, r in scores.items():     # NAME, or NAME/metric and NAME/ce when both maps are scored
                results[f"{name}/{map_name}" if len(map_names) > 1 else name] = r
            rows += source_rows
        write_outputs(results, rows, args.output)
    except (ConfigError, menet_datasets.DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_tables(results))
    print(f"results: {args.output / 'results.json'}, per-image scores and PR / F curves in {args.output}")
    return 0


if __name__ == "__main__":
    from menet_jax.host_memory import reexec_with_reused_memory
    reexec_with_reused_memory()
    sys.exit(main())
