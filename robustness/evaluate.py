"""`python -m robustness.evaluate`: saliency quality under AWGN or JPEG (the paper's Table II and Fig. 9).

    python -m robustness.evaluate --checkpoint runs/duts --data-dir ../shared/data/ECSSD --distortion awgn
    python -m robustness.evaluate --predictor mypkg.models:predict --data-dir DIR --distortion jpeg --levels 90 50 10

Every image is distorted at its original size with its own seeded generator (robustness.distortions), given to
the model, and the maps are scored against the untouched ground truth with the project's metrics (maps resized
to the GT size and scored as 8-bit images, as saved maps are; adaptive F-beta, max F-beta, MAE), both with the
field's per-image min-max normalisation and without it (normalising stretches a flat, noise-damaged map and hides
the damage).

Levels: AWGN noise variance on the 0..255 scale (default: 0 and the five ImageNet-C severities, variances 416 ..
9390), JPEG quality (default: the ImageNet-C qualities 25 18 15 10 7, and the clean images); "random" is the
Table II protocol, one random strength per image (ranges in robustness.distortions).

--predictor MODULE:FUNCTION scores any model the same way: FUNCTION(list of uint8 (H, W, 3) images) returns one
map per image (float (H, W) in [0, 1], any size) or one {map name: map} dict per image.

Writes DIR/robustness.json, DIR/table.md (Table II layout: F-beta per distortion level, one column per map), and
the Fig. 9 curves DIR/curves.png (F-beta and MAE against the level, normalised and not) with their data in the
JSON.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import datasets
from datasets.cli import add_source_arguments, sources_from_args
from menet_jax.config import ConfigError
from menet_jax.inference import CHECKPOINT_HELP, resize_to
from robustness import distortions

KEYS = ("adp_f", "max_f", "mae")


def load_predictor(spec: str):
    """MODULE:FUNCTION -> the callable (one-line ConfigError when it cannot be found)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--predictor must be MODULE:FUNCTION, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"--predictor {spec}: cannot import {module_name} ({error})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--predictor {spec}: {module_name} has no callable {attr!r}")
    return fn


def as_map_dicts(outputs, count):
    """A predictor's result as one {name: map} per image ("map" when it returns bare arrays)."""
    outputs = list(outputs)
    if len(outputs) != count:
        raise ConfigError(f"the predictor returned {len(outputs)} maps for {count} images")
    return [o if isinstance(o, dict) else {"map": np.asarray(o, np.float32)} for o in outputs]


def evaluate_distorted(source, predict, kind, levels, *, seed=0, batch_size=8, progress=True, desc=""):
    """Scores of `predict` on `source` at each level: {level: {normalised|raw: {map: {adp_f, max_f, mae}}}},
    plus the strengths used per image for "random"."""
    from menet_jax.metrics import SODMetrics, to_8bit
    results = {}
    for level in levels:
        meters, used = {}, []
        bar = tqdm(total=len(source), desc=f"{desc} {kind} {level}", unit="img", disable=not progress)
        for start in range(0, len(source), batch_size):
            indices = list(range(start, min(start + batch_size, len(source))))
            examples = [source[i] for i in indices]
            images, strengths = distortions.distort_batch([e["image"] for e in examples], kind, level, seed=seed,
                                                          indices=indices, names=[e["name"] for e in examples])
            used += strengths
            for example, maps in zip(examples, as_map_dicts(predict(images), len(images))):
                h, w = example["mask"].shape
                for name, m in maps.items():
                    m = to_8bit(resize_to(np.clip(np.asarray(m, np.float32), 0.0, 1.0), h, w))
                    for mode, normalize in (("normalised", True), ("raw", False)):
                        meters.setdefault(mode, {}).setdefault(name, SODMetrics(normalize=normalize))
                        meters[mode][name].step(m, example["mask"])
            bar.update(len(examples))
        bar.close()
        results[str(level)] = {mode: {name: {k: float(meter.results()[k]) for k in KEYS}
                                      for name, meter in by_map.items()} for mode, by_map in meters.items()}
        results[str(level)]["levels_used"] = {"mean": float(np.mean(used)), "min": float(np.min(used)),
                                              "max": float(np.max(used))}
    return results


def format_table(name, kind, results, mode="normalised") -> str:
    """Table II layout: one row per distortion level, one F-beta (adaptive) column per map."""
    maps = sorted(next(iter(results.values()))[mode])
    unit = "variance" if kind == "awgn" else "quality"
    lines = [f"| {name} ({mode} maps) | {kind} {unit} | " + " | ".join(f"F-beta {m}" for m in maps) +
             " | " + " | ".join(f"MAE {m}" for m in maps) + " |",
             "|---|---|" + "---|" * (2 * len(maps))]
    for level, r in results.items():
        label = f"{float(level):.6g}" if level != "random" else f"random (mean {r['levels_used']['mean']:.4g})"
        lines.append(f"| | {label} | " + " | ".join(f"{r[mode][m]['adp_f']:.4f}" for m in maps) + " | " +
                     " | ".join(f"{r[mode][m]['mae']:.4f}" for m in maps) + " |")
    return "\n".join(lines)


def plot_curves(all_results, kind, output: Path) -> None:
    """Fig. 9: F-beta and MAE against the level, normalised (solid) and raw (dashed) maps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for name, results in all_results.items():
        levels = [lv for lv in results if lv != "random"]
        x = [float(lv) for lv in levels]
        for mode, style in (("normalised", "-o"), ("raw", "--s")):
            for m in sorted(results[levels[0]][mode]):
                for ax, key in zip(axes, ("adp_f", "mae")):
                    ax.plot(x, [results[lv][mode][m][key] for lv in levels], style, ms=3,
                            label=f"{name}/{m} ({mode})")
    xlabel = "noise variance (0..255 scale)" if kind == "awgn" else "JPEG quality"
    for ax, ylabel in zip(axes, ("adaptive F-beta (beta^2 = 0.3)", "MAE")):
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if kind == "jpeg":
            ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output / "curves.png")
    plt.close(fig)


def parse_levels(kind, items):
    if not items:
        return [0.0, *distortions.severity_levels("awgn"), "random"] if kind == "awgn" else \
            [100.0, *distortions.severity_levels("jpeg"), "random"]
    levels = []
    for item in items:
        if item == "random":
            levels.append(item)
            continue
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"bad level {item!r}: a number or 'random'") from None
        if kind == "awgn" and value < 0 or kind == "jpeg" and not 1 <= value <= 100:
            raise ConfigError(f"bad {kind} level {item}: " + ("variance >= 0" if kind == "awgn" else "quality 1..100"))
        levels.append(value)
    return levels


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m robustness.evaluate", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", type=Path, help=CHECKPOINT_HELP)
    model.add_argument("--predictor", help="MODULE:FUNCTION, images -> maps (see above)")
    parser.add_argument("--distortion", choices=distortions.KINDS, required=True)
    parser.add_argument("--levels", nargs="+", help="AWGN variances (0..255 scale) or JPEG qualities, or 'random'")
    parser.add_argument("--map", default="both", choices=["metric", "ce", "both"], help="with --checkpoint")
    parser.add_argument("--output", type=Path, default=Path("robustness_eval"))
    parser.add_argument("--seed", type=int, default=0, help="base seed of the per-image generators")
    parser.add_argument("--limit", type=int, help="first N images of each source")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-progress", action="store_true")
    add_source_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from menet_jax.trainer import enable_compilation_cache
    enable_compilation_cache()
    try:
        levels = parse_levels(args.distortion, args.levels)
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {args.limit}")
        sources = sources_from_args(args)
        if args.predictor is None:
            from menet_jax.inference import Predictor
            predictor = Predictor.load(args.checkpoint, batch_size=args.batch_size)
            names = ("metric", "ce") if args.map == "both" else (args.map,)
            predict = lambda images: [{n: m[n] for n in names} for m in predictor(images)]
        else:
            predict = load_predictor(args.predictor)
        all_results = {}
        for name, source in sources:
            if args.limit is not None:
                source = datasets.Subset(source, list(range(min(args.limit, len(source)))))
            all_results[name] = evaluate_distorted(source, predict, args.distortion, levels, seed=args.seed,
                                                   batch_size=args.batch_size, progress=not args.no_progress,
                                                   desc=name)
    except (ConfigError, datasets.DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    tables = "\n\n".join(format_table(name, args.distortion, r, mode)
                         for name, r in all_results.items() for mode in ("normalised", "raw"))
    (out / "table.md").write_text(tables + "\n")
    (out / "robustness.json").write_text(json.dumps(
        {"distortion": args.distortion, "levels": [str(lv) for lv in levels], "seed": args.seed,
         "level_unit": "noise variance, 0..255 scale" if args.distortion == "awgn" else "JPEG quality",
         "random_ranges": distortions.RANDOM_RANGES[args.distortion], "datasets": all_results}, indent=2) + "\n")
    written = [out / "robustness.json", out / "table.md"]
    if any(level != "random" for level in levels):      # Fig. 9 needs fixed levels; "random" alone is Table II
        plot_curves(all_results, args.distortion, out)
        written.append(out / "curves.png")
    print(tables)
    print("results: " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
