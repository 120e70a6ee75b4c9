"""Paired differences of two certify.json runs on the same images (A - B per image): mean and Student-t 95 %
interval over the images both hold, for the certified accuracy at each radius and the other per-image scores.

    cd docs/results/certify && python paired.py menet/certify.json u2netp/certify.json
"""

import json
import sys

import numpy as np
from scipy.stats import t as student_t


def rows(path):
    report = json.loads(open(path).read())
    (dataset,) = report["datasets"].values()
    return dataset["radii"], {row["name"]: row for row in dataset["images"]}


def main(a_path, b_path):
    radii, a = rows(a_path)
    _, b = rows(b_path)
    names = sorted(set(a) & set(b))
    print(f"{a_path} - {b_path}: {len(names)} images both hold")
    columns = [
        (f"certified accuracy r = {r:g}", lambda row, i=i: row["certified_accuracy"][i]) for i, r in enumerate(radii)
    ]
    columns += [(key, lambda row, key=key: row[key]) for key in ("abstain_rate", "certified_fbeta", "certified_mae")]
    print("| score | mean A - B | 95 % interval |\n|---|---:|---|")
    for label, value in columns:
        d = np.array([value(a[n]) - value(b[n]) for n in names])
        half = student_t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        print(f"| {label} | {d.mean():+.3f} | [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}] |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
