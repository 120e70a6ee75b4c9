"""Scoring saliency maps with the standard SOD metrics (the library of `python -m menet_jax.evaluate`).

Protocol (the field's, as PySODMetrics): each map is resized to its ground truth's original size (bilinear) and
scored as the 8-bit image saving it gives (`core.metrics.to_8bit`), the ground truth is binarised at 128 and never
resized, and maps are min-max normalised per image (or scored as they are).

Saved maps are read as: 8-bit images / 255 (colour ones by luminance), 16-bit ones / 65535, float TIFFs (mode F)
with values in [0, 1] as they are and float maps of any other range min-max rescaled to [0, 1]; a map with NaN or
inf, or two maps of one stem (x.png and x.jpg), is an error.

Names in the outputs (per_image.csv's image and dataset names, results.json's keys, the tables) are written with
`menet_datasets.folder.printable_name`: a file name that is not UTF-8 has each undecodable byte as \\xNN and
backslashes doubled, so every output is UTF-8 and `original_name` gives the file's name back. Every file is written
atomically (`io.outputs.atomic_write`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone
from PIL import Image
from tqdm.auto import tqdm

import menet_datasets
from menet_datasets.folder import printable_name
from menet_jax.core.metrics import SODMetrics, to_8bit
from menet_jax.errors import OutputError
from menet_jax.io.images import resize_to
from menet_jax.io.outputs import atomic_write, save_figure, save_image, write_text

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
    if img.mode != "F":  # I;16, or I: 16-bit data when any value exceeds 8 bit
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
    found = menet_datasets.list_images(predictions)  # two maps of one stem: an error, not one scored
    for stem in stems:
        if stem not in found:
            raise menet_datasets.DataError(f"{name}/{stem}: no prediction with the same stem in {predictions}")
    extra = sorted(set(found) - set(stems))
    if extra:
        raise menet_datasets.DataError(
            f"{found[extra[0]]}: no ground truth with the same stem in {name} ({len(extra)} such predictions)"
        )
    return [found[stem] for stem in stems]


def evaluate_source(
    name: str, source, maps_for, map_names, *, normalize=True, save_dir=None, progress=True, batch_size=8
):
    """Score every image of `source`; `maps_for(indices, examples)` returns one {map name: (H, W) map} each.

    Returns ({map name: dataset results}, [per-image rows]).
    """
    meters = {name: SODMetrics(normalize=normalize) for name in map_names}
    rows = []
    # The bar is closed (its line ended) before an error propagates to be printed.
    with tqdm(total=len(source), desc=printable_name(name), unit="img", disable=not progress) as bar:
        for start in range(0, len(source), batch_size):
            indices = range(start, min(start + batch_size, len(source)))
            examples = [source[i] for i in indices]
            batch_maps = maps_for(indices, examples)
            for map_name in map_names:
                preds = [to_8bit(maps[map_name]) for maps in batch_maps]
                scores = meters[map_name].step_batch(preds, [example["mask"] for example in examples])
                for example, pred, image_scores in zip(examples, preds, scores):
                    rows.append(
                        {
                            "dataset": name,
                            "map": map_name,
                            "name": example["name"],
                            **{key: float(image_scores[key]) for key in IMAGE_KEYS},
                        }
                    )
                    if save_dir is not None:
                        save_image(Image.fromarray(pred), Path(save_dir) / name / map_name / f"{example['name']}.png")
            bar.update(len(examples))
    return {map_name: meter.results() for map_name, meter in meters.items()}, rows


def format_tables(results) -> str:
    """The paper's Table I layout (an F-beta / MAE row pair per dataset, one column per map) and all metrics."""
    datasets_ = sorted({key.split("/")[0] for key in results})
    maps = sorted({key.split("/")[1] if "/" in key else "" for key in results})
    column = lambda m: m or "map"
    lines = [f"{'Dataset':14s} {'':7s}" + "".join(f"{column(m):>10s}" for m in maps)]
    shown = printable_name  # a dataset folder's name need not be UTF-8: printed as results.json keys it
    for name in datasets_:
        for label, key in (("F-beta", "adp_f"), ("MAE", "mae")):
            values = [results.get(f"{name}/{m}" if m else name, {}).get(key) for m in maps]
            cells = "".join(f"{v:10.4f}" if v is not None else f"{'-':>10s}" for v in values)
            lines.append(f"{shown(name) if label == 'F-beta' else '':14s} {label:7s}{cells}")
    lines.append("")
    header = ["adpF", "MAE", "maxF", "meanF", "S", "adpE", "meanE", "maxE", "wF"]
    keys = ["adp_f", "mae", "max_f", "mean_f", "s_measure", "adp_e", "mean_e", "max_e", "w_f"]
    lines.append(f"{'Dataset/map':22s} {'n':>5s}" + "".join(f"{h:>8s}" for h in header))
    for key, r in results.items():
        lines.append(f"{shown(key):22s} {r['n_images']:5d}" + "".join(f"{r[k]:8.4f}" for k in keys))
    return "\n".join(lines)


def plot_curves(results, output: Path) -> None:
    """PR curves and F-beta-vs-threshold curves, one line per dataset (and map)."""
    thresholds = np.arange(256) / 255
    for filename, draw, xlabel, ylabel in (
        ("pr_curve.png", lambda r: (r["recall"], r["precision"]), "recall", "precision"),
        ("f_curve.png", lambda r: (thresholds, r["f_curve"]), "threshold", "F-beta (beta^2 = 0.3)"),
    ):
        fig = Figure(figsize=(5, 4), dpi=120)
        ax = fig.subplots()
        for key, r in results.items():
            ax.plot(*draw(r), label=printable_name(key))
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, output / filename)


def write_outputs(results, rows, output: Path) -> None:
    """results.json, per_image.csv and the curves; a failed write (disk full, ...) is one line."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        datasets_ = {printable_name(key): {k: r[k] for k in DATASET_KEYS} for key, r in results.items()}
        write_text(output / "results.json", json.dumps({"datasets": datasets_}, indent=2) + "\n")
        with atomic_write(output / "per_image.csv") as f:
            writer = csv.DictWriter(f, fieldnames=["dataset", "map", "name", *IMAGE_KEYS])
            writer.writeheader()
            writer.writerows(
                {**row, "dataset": printable_name(row["dataset"]), "name": printable_name(row["name"])} for row in rows
            )
        plot_curves(results, output)
    except OSError as error:
        raise OutputError(f"{output}: cannot write the results ({error.strerror or error})") from None
