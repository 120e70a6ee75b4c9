"""`python -m robustness.report`: one side-by-side report of a checkpoint from the three tools' JSON files.

    python -m robustness.report --lipschitz W/lipschitz.json --jacobian jac/jacobian.json \
        --evaluate eval_awgn/robustness.json eval_jpeg/robustness.json --output report

Puts the certified bounds, the distribution of local Jacobian norms over the images, the Eq. 12 estimates and the
measured degradation under each distortion next to each other in DIR/report.json and DIR/report.md. Any of the
inputs may be left out; what is given must be the file the tool wrote (checked, one-line errors).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from menet_jax import api


class ReportError(api.MenetError, ValueError):
    """An input file that is not what the tool it names writes."""


def _load(path: Path, key: str):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ReportError(f"{path}: cannot read ({error})") from None
    if key not in data:
        raise ReportError(f"{path}: not written by the expected tool (no {key!r})")
    return data


def build(lipschitz=None, jacobian=None, evaluations=()) -> dict:
    report = {}
    if lipschitz is not None:
        report["bounds"] = {
            out: (
                {
                    k: r[k]
                    for k in (
                        "layerwise_certified",
                        "layerwise_power_estimate",
                        "elementwise_certified",
                        "elementwise_estimate",
                    )
                }
                if r["bounded"]
                else {"not_bounded": r["reason"]}
            )
            for out, r in lipschitz["outputs"].items()
        }
    if jacobian is not None:
        local = {
            "output": jacobian["settings"]["output"],
            "authors_objective": jacobian["settings"]["authors_objective"],
        }
        for name, d in jacobian["datasets"].items():
            entry = {"table_iii": d["summary"]["gradient"]}
            spectral = [r["spectral"]["value"] for r in d["images"] if "spectral" in r]
            if spectral:
                entry["spectral_norm_quantiles"] = dict(
                    zip(("min", "p25", "median", "p75", "max"), np.quantile(spectral, [0, 0.25, 0.5, 0.75, 1]).tolist())
                )
            for key in ("frobenius", "eq12"):
                if key in d["summary"]:
                    entry[key] = d["summary"][key]
            local[name] = entry
        report["local"] = local
    for ev in evaluations:
        for name, levels in ev["datasets"].items():
            rows = {}
            for level, r in levels.items():
                rows[level] = {
                    mode: {m: {"adp_f": v["adp_f"], "mae": v["mae"]} for m, v in r[mode].items()}
                    for mode in ("normalised", "raw")
                }
            report.setdefault("degradation", {}).setdefault(ev["distortion"], {})[name] = rows
    return report


def markdown(report: dict) -> str:
    lines = []
    if "bounds" in report:
        lines += [
            "## Lipschitz upper bounds (input 0..255)",
            "",
            "| output | layerwise (FFT, certified) | layerwise (power) | Eq. 13 norm2(G) (certified) |",
            "|---|---|---|---|",
        ]
        for out, r in report["bounds"].items():
            if "not_bounded" in r:
                lines.append(f"| {out} | not bounded: {r['not_bounded']} | | |")
            else:
                est = r["layerwise_power_estimate"]
                lines.append(
                    f"| {out} | {r['layerwise_certified']:.4g} | {est:.4g} | {r['elementwise_certified']:.4g} |"
                    if est is not None
                    else f"| {out} | {r['layerwise_certified']:.4g} | - | {r['elementwise_certified']:.4g} |"
                )
        lines.append("")
    if "local" in report:
        lines += [
            f"## Local Jacobian of {report['local']['output']}",
            "",
            "| data | mean abs(g) | max abs(g) | median norm2(J) | max norm2(J) | mean normF(J) "
            "| Eq. 12 Gaussian (t->0) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, e in report["local"].items():
            if not isinstance(e, dict):
                continue
            q = e.get("spectral_norm_quantiles", {})
            eq = e.get("eq12", {}).get("gaussian", {}).get("limit")
            cell = lambda v: f"{v:.4g}" if v is not None else "-"
            lines.append(
                f"| {name} | {cell(e['table_iii']['mean'])} | {cell(e['table_iii']['max'])} | "
                f"{cell(q.get('median'))} | {cell(q.get('max'))} | "
                f"{cell(e.get('frobenius', {}).get('mean'))} | {cell(eq)} |"
            )
        lines.append("")
    for kind, by_data in report.get("degradation", {}).items():
        lines += [f"## Degradation under {kind} (adaptive F-beta / MAE, raw maps)", ""]
        for name, rows in by_data.items():
            maps = sorted(next(iter(rows.values()))["raw"])
            lines += [f"| {name} level | " + " | ".join(maps) + " |", "|---|" + "---|" * len(maps)]
            for level, r in rows.items():
                label = level if level == "random" else f"{float(level):.6g}"
                lines.append(
                    f"| {label} | "
                    + " | ".join(f"{r['raw'][m]['adp_f']:.4f} / {r['raw'][m]['mae']:.4f}" for m in maps)
                    + " |"
                )
            lines.append("")
    return "\n".join(lines)


@api.command(compilation_cache=False)
def main(argv=None) -> int:
    parser = api.ArgumentParser(prog="python -m robustness.report", description=__doc__.split("\n")[0])
    parser.add_argument("--lipschitz", type=Path)
    parser.add_argument("--jacobian", type=Path)
    parser.add_argument("--evaluate", type=Path, nargs="*", default=[])
    parser.add_argument("--output", type=Path, default=Path("robustness_report"))
    args = parser.parse_args(argv)
    if args.lipschitz is None and args.jacobian is None and not args.evaluate:
        raise ReportError("nothing to report: give --lipschitz, --jacobian and/or --evaluate")
    api.check_folder(args.output)
    report = build(
        _load(args.lipschitz, "outputs") if args.lipschitz else None,
        _load(args.jacobian, "settings") if args.jacobian else None,
        [_load(p, "distortion") for p in args.evaluate],
    )
    api.write_text(args.output / "report.json", json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    api.write_text(args.output / "report.md", text + "\n")
    print(text)
    print(f"report: {args.output / 'report.md'}, {args.output / 'report.json'}")
    return 0


if __name__ == "__main__":
    api.start(main)
