"""`python -m robustness.evaluate`: saliency quality under AWGN or JPEG (the paper's Table II and Fig. 9).

    python -m robustness.evaluate --checkpoint runs/duts --data-dir ../shared/data/ECSSD --distortion awgn
    python -m robustness.evaluate --predictor mypkg.models:predict --data-dir DIR --distortion jpeg --levels 90 50 10

Every image is distorted with its own seeded generator (robustness.distortions), given to the model, and the maps
are scored against the untouched ground truth with the project's metrics (maps resized to the GT size and scored
as 8-bit images, as saved maps are; adaptive F-beta, max F-beta, MAE), both raw (the maps as the model gives
them: for MEnet the CE probability and the Eq. 5 distance / 2, its largest value) and after the field's per-image
min-max normalisation ("normalised"; it stretches a flat, noise-damaged map and hides part of the damage).

Where the noise goes (--noise-at): "original" distorts each image at its own size, as the paper corrupts the
benchmark datasets, so the paper's Table II and Fig. 9 compare with this protocol; the model then shrinks the image
to its input size, which averages pixel noise away (a 400 x 300 image at 128 px keeps about 1/7 of the noise
variance). "input" resizes the image to the model's square input size first and distorts that, so every model
sees the stated noise at its own resolution.

Seeds (--seeds, default 3): every level that draws random numbers (AWGN, "random") runs once per seed, and the
tables and curves give the mean over seeds with a Student-t 95 % interval; the interval is the spread due to the
noise draws on these images, not over images. Levels without randomness (variance 0, a fixed JPEG quality) run once.

Levels: AWGN noise variance on the 0..255 scale (default: 0 and the five ImageNet-C severities, variances 416 ..
9390), JPEG quality (default: the ImageNet-C qualities 25 18 15 10 7, and the clean images); "random" is the
Table II protocol, one random strength per image (ranges in robustness.distortions).

--predictor MODULE:FUNCTION scores any model the same way: FUNCTION(list of uint8 (H, W, 3) images) returns one
map per image (float (H, W) in [0, 1], any size) or one {map name: map} dict per image.

Writes DIR/robustness.json (means, intervals and every seed's scores), DIR/table.md (Table II layout: F-beta
mean +- 95 % half-width, the share of the first level's F-beta kept, MAE), and the Fig. 9 curves DIR/curves.png
(F-beta and MAE against the level, normalised and raw, interval bands).

Robustness commands run in float32 (the checkpoint's compute dtype is not changed here).
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
from menet_jax.inference import CHECKPOINT_HELP_FLOAT32, resize_to
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


def normalise(m: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1], a constant map left as it is (as `saliency.scale_to_unit` in the network)."""
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi - lo > 1e-12 else m


def interval95(values) -> list | None:
    """Student-t 95 % confidence interval of the mean of `values` (None for a single value)."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return None
    from scipy.stats import t
    half = t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return [float(values.mean() - half), float(values.mean() + half)]


def evaluate_distorted(source, predict, kind, levels, *, seeds=(0,), noise_at="original", input_size=None,
                       batch_size=8, progress=True, desc=""):
    """Scores of `predict` on `source` at each level, as the mean over `seeds` with a 95 % interval.

    {level: {"normalised" | "raw": {map: {adp_f, max_f, mae}}, "interval": {mode: {map: {key: [lo, hi] | None}}},
    "per_seed": {mode: {map: {key: [one value per seed]}}}, "seeds": [...], "levels_used": {mean, min, max}}}.
    Levels without randomness (no noise, a fixed JPEG quality) run once. `noise_at="input"` resizes every image
    to the square `input_size` before distorting it. "raw" scores the maps as `predict` returns them,
    "normalised" after a per-image min-max (the field's convention).
    """
    from menet_jax.metrics import SODMetrics, to_8bit
    if noise_at not in ("original", "input"):
        raise ConfigError(f"noise_at must be original or input, got {noise_at!r}")
    if noise_at == "input" and not input_size:
        raise ConfigError("distorting at the input size needs the model's input size (--input-size)")
    results = {}
    for level in levels:
        level_seeds = list(seeds) if distortions.is_random(kind, level) else list(seeds)[:1]
        per_seed, used = {}, []
        for seed in level_seeds:
            meters = {}
            bar = tqdm(total=len(source), desc=f"{desc} {kind} {level} seed {seed}", unit="img",
                       disable=not progress)
            for start in range(0, len(source), batch_size):
                indices = list(range(start, min(start + batch_size, len(source))))
                examples = [source[i] for i in indices]
                clean = [e["image"] if noise_at == "original" else distortions.to_input_size(e["image"], input_size)
                         for e in examples]
                images, strengths = distortions.distort_batch(clean, kind, level, seed=seed, indices=indices,
                                                              names=[e["name"] for e in examples])
                used += strengths
                for example, maps in zip(examples, as_map_dicts(predict(images), len(images))):
                    h, w = example["mask"].shape
                    for name, m in maps.items():
                        m = np.clip(np.asarray(m, np.float32), 0.0, 1.0)
                        for mode, scored in (("raw", m), ("normalised", normalise(m))):
                            meter = meters.setdefault(mode, {}).setdefault(name, SODMetrics(normalize=False))
                            meter.step(to_8bit(resize_to(scored, h, w)), example["mask"])
                bar.update(len(examples))
            bar.close()
            for mode, by_map in meters.items():
                for name, meter in by_map.items():
                    scores = meter.results()
                    for k in KEYS:
                        per_seed.setdefault(mode, {}).setdefault(name, {}).setdefault(k, []).append(float(scores[k]))
        r = {mode: {name: {k: float(np.mean(v)) for k, v in by_key.items()} for name, by_key in by_map.items()}
             for mode, by_map in per_seed.items()}
        r["interval"] = {mode: {name: {k: interval95(v) for k, v in by_key.items()} for name, by_key in by_map.items()}
                         for mode, by_map in per_seed.items()}
        r["per_seed"], r["seeds"] = per_seed, level_seeds
        r["levels_used"] = {"mean": float(np.mean(used)), "min": float(np.min(used)), "max": float(np.max(used))}
        results[str(level)] = r
    return results


def _cell(r, mode, m, key) -> str:
    """mean, with the 95 % interval's half-width when there is one."""
    ci = r["interval"][mode][m][key]
    return f"{r[mode][m][key]:.4f}" + (f" ± {(ci[1] - ci[0]) / 2:.4f}" if ci else "")


def format_table(name, kind, results, mode="normalised") -> str:
    """Table II layout: one row per distortion level; adaptive F-beta (mean ± 95 % half-width over seeds), the share
    of the first level's F-beta it keeps, and MAE, per map."""
    first = next(iter(results.values()))
    maps = sorted(first[mode])
    unit = "variance" if kind == "awgn" else "quality"
    lines = [f"| {name} ({mode} maps) | {kind} {unit} | seeds | " +
             " | ".join(f"F-beta {m} | kept {m}" for m in maps) + " | " + " | ".join(f"MAE {m}" for m in maps) + " |",
             "|---|---|---|" + "---|" * (3 * len(maps))]
    for level, r in results.items():
        label = f"{float(level):.6g}" if level != "random" else f"random (mean {r['levels_used']['mean']:.4g})"
        kept = [f"{100 * r[mode][m]['adp_f'] / first[mode][m]['adp_f']:.0f} %" if first[mode][m]['adp_f'] else "-"
                for m in maps]
        lines.append(f"| | {label} | {len(r['seeds'])} | " +
                     " | ".join(f"{_cell(r, mode, m, 'adp_f')} | {k}" for m, k in zip(maps, kept)) + " | " +
                     " | ".join(_cell(r, mode, m, "mae") for m in maps) + " |")
    return "\n".join(lines)


def plot_curves(all_results, kind, output: Path) -> None:
    """Fig. 9: F-beta and MAE against the level, normalised (solid) and raw (dashed) maps, with the 95 % interval
    over seeds as a band."""
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
                    y = [results[lv][mode][m][key] for lv in levels]
                    line, = ax.plot(x, y, style, ms=3, label=f"{name}/{m} ({mode})")
                    ci = [results[lv]["interval"][mode][m][key] or (v, v) for lv, v in zip(levels, y)]
                    ax.fill_between(x, [c[0] for c in ci], [c[1] for c in ci], color=line.get_color(), alpha=0.2)
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
    model.add_argument("--checkpoint", type=Path, help=CHECKPOINT_HELP_FLOAT32)
    model.add_argument("--predictor", help="MODULE:FUNCTION, images -> maps (see above)")
    parser.add_argument("--distortion", choices=distortions.KINDS, required=True)
    parser.add_argument("--levels", nargs="+", help="AWGN variances (0..255 scale) or JPEG qualities, or 'random'")
    parser.add_argument("--map", default="both", choices=["metric", "ce", "both"], help="with --checkpoint")
    parser.add_argument("--output", type=Path, default=Path("robustness_eval"))
    parser.add_argument("--seed", type=int, default=0, help="first base seed of the per-image generators")
    parser.add_argument("--seeds", type=int, default=3,
                        help="noise seeds per random level (seed, seed + 1, ...): mean and 95%% interval (default 3)")
    parser.add_argument("--noise-at", choices=("original", "input"), default="original",
                        help="distort each image at its own size (original, default) or after resizing it to the "
                             "model's input size (input)")
    parser.add_argument("--input-size", type=int,
                        help="the model's square input side, for --noise-at input with --predictor (a checkpoint "
                             "knows its own)")
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
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
        input_size = args.input_size
        sources = sources_from_args(args)
        if args.predictor is None:
            from menet_jax.inference import Predictor
            # Raw maps (the CE probability and the Eq. 5 distance / 2 as the network gives them); the normalised
            # scores min-max them here, as the network's normalised maps are.
            predictor = Predictor.load(args.checkpoint, batch_size=args.batch_size, normalize=False,
                                       dtype="float32")
            input_size = predictor.config.image_size
            names = ("metric", "ce") if args.map == "both" else (args.map,)
            predict = lambda images: [{n: m[n] for n in names} for m in predictor(images)]
        else:
            predict = load_predictor(args.predictor)
        all_results = {}
        for name, source in sources:
            if args.limit is not None:
                source = datasets.Subset(source, list(range(min(args.limit, len(source)))))
            all_results[name] = evaluate_distorted(
                source, predict, args.distortion, levels, seeds=range(args.seed, args.seed + args.seeds),
                noise_at=args.noise_at, input_size=input_size, batch_size=args.batch_size,
                progress=not args.no_progress, desc=name)
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
         "seeds": args.seeds, "noise_at": args.noise_at, "input_size": input_size,
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
