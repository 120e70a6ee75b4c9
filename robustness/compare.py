"""`python -m robustness.compare`: several models' `robustness.evaluate` results side by side, as the share of their
own clean F-beta that each keeps.

    python -m robustness.compare --output cmp \
        "MEnet metric map=eval/awgn_menet/robustness.json:metric" \
        "U^2-Netp=eval/awgn_u2netp/robustness.json" --reference U^2-Netp

Each RUN is LABEL=PATH[:MAP] (MAP may be left out when the file has one map). All runs must be of one
distortion. AWGN, JPEG and PGD: a table per level of each run's F-beta and kept share (% of its first level's
F-beta), with 95 % intervals, the kept share's difference to the reference run (--reference LABEL, default the
first) with its interval, and MAE; kept share, MAE and the differences against the level with error bars
(compare.png). ImageNet-C: per corruption the F-beta kept on average over severities and its difference to the
reference run, the mean over corruptions, and with --reference LABEL the corruption error CE and mCE relative to
that run; a bar chart per corruption. Every number with its interval is also in compare.json. Runs that record
PR curves: pr.png, each run's dataset PR curve at every level they share (the paper's Fig. 7).

Intervals are paired percentile bootstrap intervals over the images (and the noise seeds; robustness.bootstrap)
from the per-image scores robustness.evaluate records, so the runs compared must have scored the same images in
the same order (else a one-line error), or with --common-images are compared on the images all of them scored (a
slow model run on a subset). A difference is claimed, one sentence per level or corruption, only
where its interval excludes 0; otherwise it is "not distinguishable". Runs written before per-image scores were
recorded still compare, with "n/a" for the intervals and no claims.
Comparing by the kept share puts models of different clean quality on one scale: the robustness question.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: a notebook's backend is left alone

from menet_jax import api
from robustness import bootstrap, corruptions
from robustness.evaluate import (
    UNITS,
    corruption_arrays,
    corruption_errors,
    corruption_kept_interval,
    error_bars,
    kept_share,
    label_level_axes,
    per_image_scores,
)


class CompareError(api.MenetError, ValueError):
    pass


def load_run(spec: str, dataset: str | None, mode: str) -> dict:
    """LABEL=PATH[:MAP] -> {label, path, distortion, results (one dataset), map, images (the names in per-image
    order, None for runs written before per-image scores), settings}."""
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
        "path": path,
        "distortion": data["distortion"],
        "results": results,
        "map": name or maps[0],
        "images": (data.get("images") or {}).get(dataset or names[0]),  # None: a run from before per-image scores
        "settings": {k: data.get(k) for k in ("noise_at", "input_size", "seeds", "model")},
    }


def _kept(value, clean):
    return 100.0 * value / clean if clean else float("nan")


def _paired(run) -> bool:
    """Whether the run has per-image scores and image names (robustness.evaluate since they were recorded)."""
    return run["images"] is not None and "per_image" in next(iter(run["results"].values()))


def _scores(run, level, mode, key="adp_f"):
    return per_image_scores(level, mode, run["map"], key) if _paired(run) else None


def _sentence(where, run, ref, diff: bootstrap.Interval) -> str:
    """A claim only where the interval excludes 0."""
    if diff.excludes(0.0):
        more = "more" if diff.estimate > 0 else "less"
        return f"{where}, {run} keeps {more} than {ref}: {diff.text('+.1f', ' points')}"
    return f"{where}, {run} and {ref}: not distinguishable ({diff.text('+.1f', ' points')})"


# --------------------------------------------------------------------------------------- AWGN, JPEG, PGD levels
def level_intervals(run, mode) -> dict:
    """level -> {"adp_f", "mae": the score, "kept": % of the run's first level's F-beta}, each an Interval
    (without bounds for a run that has no per-image scores)."""
    res, m = run["results"], run["map"]
    clean = next(iter(res.values()))
    out = {}
    for level, r in res.items():
        if _paired(run):
            scores = {k: bootstrap.mean_interval(per_image_scores(r, mode, m, k)) for k in ("adp_f", "mae")}
            out[level] = scores | {"kept": kept_share(clean, r, mode, m)}
        else:
            scores = {k: bootstrap.Interval(r[mode][m][k]) for k in ("adp_f", "mae")}
            out[level] = scores | {"kept": bootstrap.Interval(_kept(r[mode][m]["adp_f"], clean[mode][m]["adp_f"]))}
    return out


def _same_noise(run, ref, level_a, level_b) -> bool:
    """Whether two runs' level drew the same noise per image: the same seeds at the same protocol and size."""
    settings = ("noise_at", "input_size")
    same_protocol = all(run["settings"].get(k) == ref["settings"].get(k) for k in settings)
    return same_protocol and level_a.get("seeds") is not None and level_a.get("seeds") == level_b.get("seeds")


def level_differences(run, ref, mode) -> dict:
    """level (those both runs have) -> the kept share of `run` minus `ref`'s, in points, paired over images."""
    a, b = run["results"], ref["results"]
    ca, cb = next(iter(a.values())), next(iter(b.values()))
    out = {}
    for level in a:
        if level not in b:
            continue
        if _paired(run) and _paired(ref):
            out[level] = bootstrap.kept_difference_interval(
                _scores(run, ca, mode),
                _scores(run, a[level], mode),
                _scores(ref, cb, mode),
                _scores(ref, b[level], mode),
                paired_seeds=_same_noise(run, ref, a[level], b[level]),
            ).scaled(100.0)
        else:
            ka = _kept(a[level][mode][run["map"]]["adp_f"], ca[mode][run["map"]]["adp_f"])
            kb = _kept(b[level][mode][ref["map"]]["adp_f"], cb[mode][ref["map"]]["adp_f"])
            out[level] = bootstrap.Interval(ka - kb)
    return out


def _level_name(level, result) -> str:
    return f"{float(level):g}" if level != "random" else f"random (mean {result['levels_used']['mean']:.4g})"


def level_table(runs, mode, reference=None) -> str:
    """One row per level of the first run; per run F-beta [95 % interval] and the kept share [interval], the kept
    share's paired difference to the reference run (the first by default) [interval], then MAE [interval]."""
    kind = runs[0]["distortion"]
    reference = reference or runs[0]
    others = [r for r in runs if r is not reference]
    levels = list(runs[0]["results"])
    intervals = [level_intervals(r, mode) for r in runs]
    diffs = [level_differences(r, reference, mode) for r in others]
    lines = [
        f"| {UNITS.get(kind, kind)} | "
        + " | ".join(f"F {r['label']} | kept {r['label']}" for r in runs)
        + "".join(f" | kept {r['label']} - {reference['label']}" for r in others)
        + " | "
        + " | ".join(f"MAE {r['label']}" for r in runs)
        + " |",
        "|---|" + "---|" * (3 * len(runs) + len(others)),
    ]
    for level in levels:
        cells, mae = [], []
        for iv in intervals:
            if level not in iv:
                cells.append("- | -")
                mae.append("-")
                continue
            cells.append(f"{iv[level]['adp_f'].text()} | {iv[level]['kept'].text('.1f', ' %')}")
            mae.append(iv[level]["mae"].text())
        cells += [d[level].text("+.1f") if level in d else "-" for d in diffs]
        name = _level_name(level, runs[0]["results"][level])
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(mae) + " |")
    return "\n".join(lines)


def level_claims(runs, mode, reference=None) -> list[str]:
    """One sentence per level (but the first, where every run keeps 100 %) and run paired with the reference."""
    reference = reference or runs[0]
    lines = []
    for r in runs:
        if r is reference or not (_paired(r) and _paired(reference)):
            continue
        first = next(iter(r["results"]))
        for level, diff in level_differences(r, reference, mode).items():
            if level == first:
                continue
            where = f"At level {_level_name(level, r['results'][level])}"
            lines.append(_sentence(where, r["label"], reference["label"], diff) + ".")
    return lines


def plot_levels(runs, mode, output: Path, reference=None) -> None:
    """Retained F-beta (% of the run's clean score) and MAE against the level, and the kept share's difference to
    the reference run, with 95 % error bars."""
    kind = runs[0]["distortion"]
    reference = reference or runs[0]
    others = [r for r in runs if r is not reference]
    fig = Figure(figsize=(16 if others else 11, 4), dpi=120)
    axes = fig.subplots(1, 3 if others else 2)
    colors = {}
    for r in runs:
        iv = level_intervals(r, mode)
        levels = [lv for lv in iv if lv != "random"]
        x = [float(lv) for lv in levels]
        for ax, key in zip(axes, ("kept", "mae")):
            y = [iv[lv][key].estimate for lv in levels]
            bars = error_bars(y, [iv[lv][key].bounds for lv in levels])
            drawn = ax.errorbar(
                x, y, yerr=bars, fmt="-o", ms=3, capsize=2, label=r["label"], color=colors.get(r["label"])
            )
            colors[r["label"]] = drawn.lines[0].get_color()
    label_level_axes(axes[:2], kind, ("F-beta kept (% of clean)", "MAE"))
    if others:
        for r in others:
            d = level_differences(r, reference, mode)
            levels = [lv for lv in d if lv != "random"]
            y = [d[lv].estimate for lv in levels]
            bars = error_bars(y, [d[lv].bounds for lv in levels])
            axes[2].errorbar(
                [float(lv) for lv in levels],
                y,
                yerr=bars,
                fmt="-o",
                ms=3,
                capsize=2,
                color=colors[r["label"]],
                label=f"{r['label']} - {reference['label']}",
            )
        axes[2].axhline(0.0, color="grey", lw=1, ls=":")
        label_level_axes(axes[2:], kind, (f"kept - {reference['label']} (points)",))
    fig.suptitle(f"{kind} ({mode} maps), 95 % paired bootstrap intervals")
    fig.tight_layout()
    api.save_figure(fig, output / "compare.png")


# ------------------------------------------------------------------------------------------------- ImageNet-C
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


def _groups(names) -> dict:
    """Each corruption alone, and "mean": all of them."""
    return {c: [c] for c in names} | ({"mean": names} if names else {})


def corruption_intervals(run, names, mode) -> dict:
    """ "clean" -> the clean F-beta, and each corruption of `names` and their "mean" -> the F-beta kept on average
    over the severities (%), as Intervals."""
    clean = run["results"]["clean"]
    out = {
        "clean": bootstrap.mean_interval(_scores(run, clean, mode))
        if _paired(run)
        else bootstrap.Interval(clean[mode][run["map"]]["adp_f"])
    }
    kept = {k: corruption_kept_interval(run["results"], g, mode, run["map"]) for k, g in _groups(names).items()}
    return out | kept


def corruption_differences(run, ref, names, mode) -> dict:
    """corruption and "mean" -> `run`'s mean kept share minus `ref`'s, in points, paired over images."""
    if not (_paired(run) and _paired(ref)):
        a, b = corruption_intervals(run, names, mode), corruption_intervals(ref, names, mode)
        return {k: bootstrap.Interval(a[k].estimate - b[k].estimate) for k in _groups(names)}
    out = {}
    for key, group in _groups(names).items():
        ca, la, wa = corruption_arrays(run["results"], group, mode, run["map"])
        cb, lb, wb = corruption_arrays(ref["results"], group, mode, ref["map"])
        out[key] = bootstrap.mean_kept_difference_interval(ca, la, cb, lb, wa, wb).scaled(100.0)
    return out


def corruption_table(runs, mode, reference=None) -> str:
    """Per corruption, each run's F-beta kept on average over the severities [95 % interval], the paired
    difference to `reference` (the first run by default) [interval], and with `reference` given CE and mCE."""
    names, _ = _common_corruptions(runs, mode)
    ce_reference, reference = reference, reference or runs[0]
    others = [r for r in runs if r is not reference]
    intervals = [corruption_intervals(r, names, mode) for r in runs]
    diffs = [corruption_differences(r, reference, names, mode) for r in others]
    errors = None
    if ce_reference is not None:
        errors = [
            corruption_errors(r["results"], ce_reference["results"], mode, r["map"], ce_reference["map"]) for r in runs
        ]
    head = "| corruption | family | " + " | ".join(f"kept {r['label']}" for r in runs)
    head += "".join(f" | kept {r['label']} - {reference['label']}" for r in others)
    head += (" | " + " | ".join(f"CE {r['label']}" for r in runs)) if errors else ""
    width = len(runs) + len(others) + (len(runs) if errors else 0)
    lines = [head + " |", "|---|---|" + "---|" * width]
    clean = [f"F {iv['clean'].text()}" for iv in intervals]
    lines.append("| clean | | " + " | ".join(clean + [""] * (width - len(runs))) + " |")
    for c in names:
        row = f"| {c} | {corruptions.FAMILY_OF[c]} | " + " | ".join(iv[c].text(".1f", " %") for iv in intervals)
        row += "".join(f" | {d[c].text('+.1f')}" for d in diffs)
        if errors:
            row += " | " + " | ".join("-" if e.get(c) is None else f"{e[c]:.3f}" for e in errors)
        lines.append(row + " |")
    if names:
        row = "| **mean** | | " + " | ".join(f"**{iv['mean'].text('.1f', ' %')}**" for iv in intervals)
        row += "".join(f" | **{d['mean'].text('+.1f')}**" for d in diffs)
        if errors:
            row += " | " + " | ".join("-" if e.get("mCE") is None else f"**mCE {e['mCE']:.3f}**" for e in errors)
        lines.append(row + " |")
    return "\n".join(lines)


def corruption_claims(runs, mode, reference=None) -> list[str]:
    """One sentence per corruption (and their mean) and run paired with the reference."""
    names, _ = _common_corruptions(runs, mode)
    reference = reference or runs[0]
    lines = []
    for r in runs:
        if r is reference or not (_paired(r) and _paired(reference)):
            continue
        for c, d in corruption_differences(r, reference, names, mode).items():
            where = "On the mean over the corruptions" if c == "mean" else f"On {c}"
            lines.append(_sentence(where, r["label"], reference["label"], d) + ".")
    return lines


def plot_corruptions(runs, mode, output: Path) -> None:
    """Horizontal bars: per corruption, the F-beta each run keeps on average over the severities, with 95 %
    error bars."""
    names, _ = _common_corruptions(runs, mode)
    fig = Figure(figsize=(7, 0.18 * len(names) * len(runs) + 2), dpi=120)
    ax = fig.subplots()
    height = 0.8 / len(runs)
    y = np.arange(len(names))
    for i, r in enumerate(runs):
        iv = corruption_intervals(r, names, mode)
        values = [iv[c].estimate for c in names]
        bars = error_bars(values, [iv[c].bounds for c in names])
        ax.barh(y + i * height, values, height, xerr=bars, capsize=2, label=r["label"])
    ax.set(yticks=y + 0.4 - height / 2, yticklabels=names, xlabel="F-beta kept, mean over severities (% of clean)")
    ax.invert_yaxis()
    ax.axvline(100, color="grey", lw=1, ls=":")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, frameon=False)
    fig.tight_layout()
    api.save_figure(fig, output / "compare.png")


# ------------------------------------------------------------------------------------------------- compare.json
def summary(runs, mode, reference=None) -> dict:
    """compare.json: every interval of the table, as {"estimate", "low", "high"} (low / high None: n/a)."""
    reference = reference or runs[0]
    kind = runs[0]["distortion"]
    out = {
        "distortion": kind,
        "mode": mode,
        "reference": reference["label"],
        "intervals": bootstrap.METHOD,
        "units": "adp_f, mae: scores; kept: % of the run's clean F-beta (first level; imagenet-c: the mean over "
        'severities, and "mean" the mean over the corruptions); differences: percentage points of kept, run - '
        "reference, distinguishable where the interval excludes 0",
        "runs": {},
        "differences": {},
    }
    names = _common_corruptions(runs, mode)[0] if kind == "imagenet-c" else None
    for r in runs:
        entry = {"path": r["path"], "map": r["map"], "per_image": _paired(r)}
        if names is None:
            iv = level_intervals(r, mode)
            entry["levels"] = {lv: {k: v.to_json() for k, v in by_key.items()} for lv, by_key in iv.items()}
        else:
            iv = corruption_intervals(r, names, mode)
            entry["clean"] = {"adp_f": iv.pop("clean").to_json()}
            entry["corruptions"] = {c: {"kept": v.to_json()} for c, v in iv.items()}
        out["runs"][r["label"]] = entry
        if r is reference:
            continue
        paired = _paired(r) and _paired(reference)
        d = (
            level_differences(r, reference, mode)
            if names is None
            else corruption_differences(r, reference, names, mode)
        )
        out["differences"][r["label"]] = {
            key: {"kept": v.to_json(), "distinguishable": paired and v.excludes(0.0)} for key, v in d.items()
        }
    return out


def check_pairing(runs, reference) -> None:
    """Runs with per-image scores must share the reference's images, in the same order (one-line error)."""
    for r in runs:
        if r is not reference and _paired(r) and _paired(reference):
            try:
                bootstrap.check_paired(r["images"], reference["images"], r["label"], reference["label"])
            except bootstrap.PairingError as error:
                raise CompareError(f"{error} (--common-images compares the images both scored)") from None


def common_images(runs, reference) -> list[str]:
    """The images every run scored, in the reference's order (one-line error when a run has no per-image scores
    or they share none)."""
    for r in runs:
        if not _paired(r):
            raise CompareError(f"--common-images: {r['label']} has no per-image scores (a run of an older version)")
    others = [set(r["images"]) for r in runs]
    names = [n for n in reference["images"] if all(n in o for o in others)]
    if not names:
        raise CompareError("--common-images: the runs share no image")
    return names


def restrict(run, names) -> dict:
    """`run` on the images `names` (its own, in that order): per-image scores picked, the adp_f and MAE means
    recomputed from them; the dataset curve statistics (max F-beta, the PR curve), which need every image's
    curve, and the stored intervals are dropped."""
    index = {n: i for i, n in enumerate(run["images"])}
    pick = [index[n] for n in names]

    def level(r):
        per_image = {
            mode: {m: {k: np.asarray(v, np.float64)[:, pick] for k, v in by_key.items()} for m, by_key in maps.items()}
            for mode, maps in r["per_image"].items()
        }
        means = {
            mode: {m: {k: float(v.mean()) for k, v in by_key.items()} for m, by_key in maps.items()}
            for mode, maps in per_image.items()
        }
        kept = {k: r[k] for k in ("seeds", "levels_used") if k in r}
        return kept | means | {"per_image": per_image}

    results = {
        key: level(r) if "per_image" in r else {s: level(x) for s, x in r.items()} for key, r in run["results"].items()
    }
    return run | {"results": results, "images": list(names)}


def plot_pr(runs, mode, output: Path) -> bool:
    """The paper's Fig. 7 for every level all runs share: each run's dataset PR curve (mean over the images, and
    the seeds, of precision and recall at the 256 thresholds), one panel per level. False (nothing drawn) when a
    run has no curves (written before they were recorded)."""
    levels = [lv for lv in runs[0]["results"] if all(lv in r["results"] for r in runs)]
    if not levels or not all("pr_curve" in r["results"][lv] for r in runs for lv in levels):
        return False
    columns = min(4, len(levels))
    rows = -(-len(levels) // columns)
    fig = Figure(figsize=(3.2 * columns, 3.0 * rows), dpi=120)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax, level in zip(axes, levels):
        for run in runs:
            curve = run["results"][level]["pr_curve"][mode][run["map"]]
            ax.plot(curve["recall"], curve["precision"], label=run["label"])
        ax.set(
            title=f"{UNITS.get(runs[0]['distortion'], 'level')} {_level_name(level, runs[0]['results'][level])}",
            xlim=(0, 1),
            ylim=(0, 1),
        )
        ax.set(xlabel="recall", ylabel="precision")
    for ax in axes[len(levels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    api.save_figure(fig, output / "pr.png")
    return True


@api.command(compilation_cache=False)
def main(argv=None) -> int:
    parser = api.ArgumentParser(
        prog="python -m robustness.compare",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="LABEL=PATH[:MAP]")
    parser.add_argument("--output", type=Path, required=True, help="folder for compare.md, .json, .png (and pr.png)")
    parser.add_argument("--dataset", help="the dataset of the files (default: their only one)")
    parser.add_argument("--raw", action="store_true", help="score the raw maps (default: the normalised ones)")
    parser.add_argument(
        "--reference",
        metavar="LABEL",
        help="the run the differences are relative to (default: the first), and imagenet-c's CE (none without it)",
    )
    parser.add_argument(
        "--common-images",
        action="store_true",
        help="compare on the images every run scored (e.g. a slow model run on a subset): scores and intervals of "
        "that subset; max F-beta and PR curves left out",
    )
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
        if args.reference not in labels:
            raise CompareError(f"--reference {args.reference}: give the label of one of the runs")
        reference = runs[labels.index(args.reference)]
    subset = ""
    if args.common_images:
        names = common_images(runs, reference or runs[0])
        sizes = ", ".join(f"{r['label']} {len(r['images'])}" for r in runs)
        subset = f"On the {len(names)} images every run scored (of {sizes}).\n\n"
        runs = [restrict(r, names) for r in runs]
        reference = None if reference is None else runs[labels.index(args.reference)]
    check_pairing(runs, reference or runs[0])
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise api.OutputError(f"{args.output}: cannot create the folder ({error.strerror or error})") from None
    if kinds[0] == "imagenet-c":
        table = corruption_table(runs, mode, reference)
        claims = corruption_claims(runs, mode, reference)
        plot_corruptions(runs, mode, args.output)
    else:
        table = level_table(runs, mode, reference)
        claims = level_claims(runs, mode, reference)
        plot_levels(runs, mode, args.output, reference)
    written = ["compare.md", "compare.json", "compare.png"] + (["pr.png"] if plot_pr(runs, mode, args.output) else [])
    base = (reference or runs[0])["label"]
    text = (
        f"{kinds[0]}, {mode} maps, adaptive F-beta (beta^2 = 0.3), kept = % of the run's clean F-beta; differences "
        f"in points of kept, run - {base}; [95 % interval]: {bootstrap.METHOD}.\n\n{subset}{table}\n\n"
    )
    text += "".join(line + "\n" for line in claims)
    unpaired = [r["label"] for r in runs if not _paired(r)]
    if unpaired:
        text += (
            f"Intervals n/a for {', '.join(unpaired)}: intervals need runs made with the current robustness.evaluate "
            "(per-image scores); no difference is claimed for them.\n"
        )
    settings = "; ".join(
        f"{r['label']}: " + ", ".join(f"{k} {v}" for k, v in r["settings"].items() if v is not None) for r in runs
    )
    api.write_text(args.output / "compare.md", text + f"\nRuns: {settings}\n")
    api.write_text(args.output / "compare.json", json.dumps(summary(runs, mode, reference), indent=2) + "\n")
    print(text, end="")
    print("results: " + ", ".join(str(args.output / name) for name in written))
    return 0


if __name__ == "__main__":
    api.start(main)
