"""`python -m robustness.compare`: several models' `robustness.evaluate` results side by side, as the share of their
own clean F-beta that each keeps.

    python -m robustness.compare --output cmp \
        "MEnet metric map=eval/awgn_menet/robustness.json:metric" \
        "U^2-Netp=eval/awgn_u2netp/robustness.json" --reference U^2-Netp

Each RUN is LABEL=PATH[:MAP] (MAP may be left out when the file has one map). All runs must be of one
distortion. AWGN, JPEG and PGD: a table (F-beta ± 95 % half-width, kept %, per level) and retained F-beta and MAE
against the level (compare.png). ImageNet-C: per corruption the F-beta kept on average over severities, the mean,
and with --reference LABEL the corruption error CE and mCE relative to that run; a bar chart per corruption.
Comparing by the kept share puts models of different clean quality on one scale: the robustness question.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: a notebook's backend is left alone

from menet_jax import api
from robustness import corruptions
from robustness.evaluate import UNITS, corruption_errors, label_level_axes


class CompareError(api.MenetError, ValueError):
    pass


def load_run(spec: str, dataset: str | None, mode: str) -> dict:
    """LABEL=PATH[:MAP] -> {label, distortion, results (one dataset), map, settings}."""
    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise CompareError(f"{spec!r}: give a run as LABEL=PATH[:MAP]")
    path, _, name = rest.rpartition(":") if ":" in rest and not Path(rest).exists() else (rest, "", "")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise CompareError(f"{path}: cannot read it ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict) or "distortion" not in data or "datasets" not in data:
        raise CompareError(f"{path}: not a robustness.json of python -m robustness.evaluate")
    names = list(data["datasets"])
    if dataset is None and len(names) != 1:
        raise CompareError(f"{path}: holds {', '.join(names)}; choose one with --dataset")
    if (dataset or names[0]) not in data["datasets"]:
        raise CompareError(f"{path}: no dataset {dataset!r} (it has {', '.join(names)})")
    results = data["datasets"][dataset or names[0]]
    maps = sorted(next(iter(results.values()))[mode])  # the first level (imagenet-c: "clean") has every map
    if not name and len(maps) != 1:
        raise CompareError(f"{path}: has the maps {', '.join(maps)}; name one as {label}={path}:MAP")
    if name and name not in maps:
        raise CompareError(f"{path}: no map {name!r} (it has {', '.join(maps)})")
    return {
        "label": label,
        "distortion": data["distortion"],
        "results": results,
        "map": name or maps[0],
        "settings": {k: data.get(k) for k in ("noise_at", "input_size", "seeds", "model")},
    }


def _kept(value, clean):
    return 100.0 * value / clean if clean else float("nan")


def level_table(runs, mode) -> str:
    """One row per level of the first run; per run F-beta (± 95 % half-width) with the kept share, then MAE."""
    kind = runs[0]["distortion"]
    levels = list(runs[0]["results"])
    lines = [
        f"| {UNITS.get(kind, kind)} | "
        + " | ".join(r["label"] for r in runs)
        + " | "
        + " | ".join(f"MAE {r['label']}" for r in runs)
        + " |",
        "|---|" + "---|" * (2 * len(runs)),
    ]
    for level in levels:
        first = runs[0]["results"][level]
        name = f"{float(level):g}" if level != "random" else f"random (mean {first['levels_used']['mean']:.4g})"
        f_cells, mae_cells = [], []
        for r in runs:
            res = r["results"]
            if level not in res:
                f_cells.append("-")
                mae_cells.append("-")
                continue
            value = res[level][mode][r["map"]]
            clean = res[next(iter(res))][mode][r["map"]]["adp_f"]
            ci = res[level]["interval"][mode][r["map"]]["adp_f"]
            f_cells.append(
                f"{value['adp_f']:.4f}"
                + (f" ± {(ci[1] - ci[0]) / 2:.4f}" if ci else "")
                + f" ({_kept(value['adp_f'], clean):.0f} %)"
            )
            mae_cells.append(f"{value['mae']:.4f}")
        lines.append(f"| {name} | " + " | ".join(f_cells) + " | " + " | ".join(mae_cells) + " |")
    return "\n".join(lines)


def plot_levels(runs, mode, output: Path) -> None:
    """Retained F-beta (% of the run's clean score, with the seeds' 95 % band) and MAE against the level."""
    kind = runs[0]["distortion"]
    fig = Figure(figsize=(11, 4), dpi=120)
    axes = fig.subplots(1, 2)
    for r in runs:
        res = r["results"]
        levels = [lv for lv in res if lv != "random"]
        x = [float(lv) for lv in levels]
        clean = res[levels[0]][mode][r["map"]]["adp_f"]
        kept = [_kept(res[lv][mode][r["map"]]["adp_f"], clean) for lv in levels]
        (line,) = axes[0].plot(x, kept, "-o", ms=3, label=r["label"])
        band = [res[lv]["interval"][mode][r["map"]]["adp_f"] for lv in levels]
        if all(band):
            axes[0].fill_between(
                x,
                [_kept(b[0], clean) for b in band],
                [_kept(b[1], clean) for b in band],
                color=line.get_color(),
                alpha=0.2,
            )
        axes[1].plot(x, [res[lv][mode][r["map"]]["mae"] for lv in levels], "-o", ms=3, color=line.get_color())
    label_level_axes(axes, kind, ("F-beta kept (% of clean)", "MAE"))
    fig.suptitle(f"{kind} ({mode} maps)")
    fig.tight_layout()
    api.save_figure(fig, output / "compare.png")


def corruption_kept(run, mode) -> dict:
    """corruption -> mean over severities of the F-beta kept (% of the run's clean F-beta)."""
    res = run["results"]
    clean = res["clean"][mode][run["map"]]["adp_f"]
    return {
        c: float(np.mean([_kept(v[mode][run["map"]]["adp_f"], clean) for v in sev.values()]))
        for c, sev in res.items()
        if c != "clean"
    }


def _common_corruptions(runs, mode):
    """(the corruptions every run has, in ImageNet-C order; each run's corruption_kept)."""
    kept = [corruption_kept(r, mode) for r in runs]
    return [c for c in corruptions.CORRUPTIONS if all(c in k for k in kept)], kept


def corruption_table(runs, mode, reference=None) -> str:
    names, kept = _common_corruptions(runs, mode)
    errors = None
    if reference is not None:
        errors = [corruption_errors(r["results"], reference["results"], mode, r["map"], reference["map"]) for r in runs]
    head = "| corruption | family | " + " | ".join(f"kept {r['label']}" for r in runs)
    head += (" | " + " | ".join(f"CE {r['label']}" for r in runs)) if errors else ""
    lines = [head + " |", "|---|---|" + "---|" * (len(runs) * (2 if errors else 1))]
    clean = [f"F {r['results']['clean'][mode][r['map']]['adp_f']:.4f}" for r in runs]
    lines.append("| clean | | " + " | ".join(clean) + (" |" * len(runs) if errors else "") + " |")
    for c in names:
        row = f"| {c} | {corruptions.FAMILY_OF[c]} | " + " | ".join(f"{k[c]:.0f} %" for k in kept)
        if errors:
            row += " | " + " | ".join("-" if e.get(c) is None else f"{e[c]:.3f}" for e in errors)
        lines.append(row + " |")
    row = "| **mean** | | " + " | ".join(f"**{np.mean([k[c] for c in names]):.1f} %**" for k in kept)
    if errors:
        row += " | " + " | ".join("-" if e.get("mCE") is None else f"**mCE {e['mCE']:.3f}**" for e in errors)
    return "\n".join(lines + [row + " |"])


def plot_corruptions(runs, mode, output: Path) -> None:
    """Horizontal bars: per corruption, the F-beta each run keeps on average over the severities."""
    names, kept = _common_corruptions(runs, mode)
    fig = Figure(figsize=(7, 0.18 * len(names) * len(runs) + 2), dpi=120)
    ax = fig.subplots()
    height = 0.8 / len(runs)
    y = np.arange(len(names))
    for i, (r, k) in enumerate(zip(runs, kept)):
        ax.barh(y + i * height, [k[c] for c in names], height, label=r["label"])
    ax.set(yticks=y + 0.4 - height / 2, yticklabels=names, xlabel="F-beta kept, mean over severities (% of clean)")
    ax.invert_yaxis()
    ax.axvline(100, color="grey", lw=1, ls=":")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, frameon=False)
    fig.tight_layout()
    api.save_figure(fig, output / "compare.png")


@api.command(compilation_cache=False)
def main(argv=None) -> int:
    parser = api.ArgumentParser(
        prog="python -m robustness.compare",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="LABEL=PATH[:MAP]")
    parser.add_argument("--output", type=Path, required=True, help="folder for compare.md and compare.png")
    parser.add_argument("--dataset", help="the dataset of the files (default: their only one)")
    parser.add_argument("--raw", action="store_true", help="score the raw maps (default: the normalised ones)")
    parser.add_argument("--reference", metavar="LABEL", help="imagenet-c: the run CE is relative to")
    args = parser.parse_args(argv)
    api.check_folder(args.output)  # before the runs are read
    mode = "raw" if args.raw else "normalised"
    runs = [load_run(spec, args.dataset, mode) for spec in args.runs]
    kinds = sorted({r["distortion"] for r in runs})
    if len(kinds) > 1:
        raise CompareError(f"the runs mix distortions ({', '.join(kinds)}): compare one at a time")
    labels = [r["label"] for r in runs]
    if len(set(labels)) < len(labels):
        raise CompareError("two runs have the same label")
    reference = None
    if args.reference is not None:
        if kinds[0] != "imagenet-c" or args.reference not in labels:
            raise CompareError(f"--reference {args.reference}: give the label of one of the runs, with imagenet-c")
        reference = runs[labels.index(args.reference)]
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise api.OutputError(f"{args.output}: cannot create the folder ({error.strerror or error})") from None
    if kinds[0] == "imagenet-c":
        table = corruption_table(runs, mode, reference)
        plot_corruptions(runs, mode, args.output)
    else:
        table = level_table(runs, mode)
        plot_levels(runs, mode, args.output)
    settings = "; ".join(
        f"{r['label']}: " + ", ".join(f"{k} {v}" for k, v in r["settings"].items() if v is not None) for r in runs
    )
    text = f"{kinds[0]}, {mode} maps, adaptive F-beta (beta^2 = 0.3), kept = % of the run's clean F-beta.\n\n"
    api.write_text(args.output / "compare.md", text + table + f"\n\nRuns: {settings}\n")
    print(text + table)
    print(f"results: {args.output / 'compare.md'}, {args.output / 'compare.png'}")
    return 0


if __name__ == "__main__":
    api.start(main)
