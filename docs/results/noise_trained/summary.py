"""The noise-trained certificates side by side, and the paired differences that answer "does the metric loss give
larger certified radii?" (per image A - B on the same images, mean and Student-t 95 % interval); draws
certified_accuracy.png (the certified accuracy against the radius, each run's mean with its interval band).

    cd docs/results/noise_trained && python summary.py
"""

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import t as student_t

HERE = Path(__file__).parent
RADII = (0.0, 16.0, 32.0, 48.0, 56.0)
NAMES = {"official": "full loss", "ce": "CE-only"}


def load(noise, loss, map_name):
    report = json.loads((HERE / f"certify_noise{noise}_{loss}_{map_name}" / "certify.json").read_text())
    (dataset,) = report["datasets"].values()
    return dataset


def mean_interval(values):
    v = np.asarray(values, np.float64)
    half = student_t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return f"{v.mean():.3f} [{v.mean() - half:.3f}, {v.mean() + half:.3f}]"


def columns(dataset):
    rows, radii = dataset["images"], dataset["radii"]
    out = {f"r = {r:g}": [row["certified_accuracy"][radii.index(r)] for row in rows] for r in RADII}
    for key in ("abstain_rate", "certified_fbeta"):
        out[key.replace("_", " ")] = [row[key] for row in rows]
    return out


def main():
    runs = [(n, loss, m) for n in (0, 64) for loss in ("official", "ce") for m in ("ce", "metric")]
    runs = [r for r in runs if (HERE / f"certify_noise{r[0]}_{r[1]}_{r[2]}").is_dir()]
    header = list(columns(load(*runs[0])))
    print("| training noise | loss | map | images | certified accuracy " + " | ".join(header) + " |")
    print("|---|---|---|---:|" + "---:|" * len(header))
    for noise, loss, m in runs:
        dataset = load(noise, loss, m)
        cells = " | ".join(mean_interval(v) for v in columns(dataset).values())
        print(f"| sigma {noise} | {NAMES[loss]} | {m} | {len(dataset['images'])} | {cells} |")
    plot(runs)
    pairs = [((n, "official", "ce"), (n, "ce", "ce"), f"sigma {n}: full loss - CE-only, CE maps") for n in (0, 64)]
    pairs += [((n, "official", "metric"), (n, "ce", "ce"), f"sigma {n}: full metric map - CE-only") for n in (0, 64)]
    pairs += [((64, loss, "ce"), (0, loss, "ce"), f"{NAMES[loss]}: sigma 64 - sigma 0, CE maps") for loss in NAMES]
    print("\n| paired difference (same images) | " + " | ".join(header) + " |")
    print("|---|" + "---:|" * len(header))
    for a, b, label in pairs:
        if not all((HERE / f"certify_noise{x[0]}_{x[1]}_{x[2]}").is_dir() for x in (a, b)):
            continue
        da, db = load(*a), load(*b)
        assert [r["name"] for r in da["images"]] == [r["name"] for r in db["images"]], "not the same images"
        ca, cb = columns(da), columns(db)
        diffs = []
        for key in header:
            d = np.asarray(ca[key]) - np.asarray(cb[key])
            half = student_t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
            bold = "**" if abs(d.mean()) > half else ""
            diffs.append(f"{bold}{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]{bold}")
        print(f"| {label} | " + " | ".join(diffs) + " |")


def plot(runs):
    fig = Figure(figsize=(6.5, 4.2), dpi=120)
    ax = fig.subplots()
    for noise, loss, m in runs:
        dataset = load(noise, loss, m)
        radii = np.asarray(dataset["radii"])
        summary = dataset["summary"]
        keep = radii < 64  # 64 and up: beyond what n = 96 samples can certify (0 for every run)
        (line,) = ax.plot(
            radii[keep],
            np.asarray(summary["certified_accuracy"])[keep],
            "-" if loss == "official" else "--",
            marker="o" if noise else "s",
            ms=3,
            label=f"sigma {noise}, {NAMES[loss]}, {m} map",
        )
        band = np.asarray(summary["certified_accuracy_interval"])[keep]
        ax.fill_between(radii[keep], band[:, 0], band[:, 1], color=line.get_color(), alpha=0.12)
    ax.set(xlabel="L2 radius (0..255 scale)", ylabel="certified pixel accuracy", title="smoothing sigma 64, 40 images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "certified_accuracy.png")


if __name__ == "__main__":
    main()
