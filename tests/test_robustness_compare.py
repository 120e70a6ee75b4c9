"""`python -m robustness.compare`: kept shares with paired bootstrap intervals, differences against a reference run
claimed only where their interval excludes 0, CE / mCE against a named run, old runs without per-image scores,
and one-line errors."""

import json

import numpy as np
import pytest

from robustness import bootstrap, compare
from robustness.corruptions import CORRUPTIONS

NAMES = [f"img{i:03d}" for i in range(40)]


def _entry(maps, interval=None):
    """One level of a robustness.json written before per-image scores: {map: (adp_f, mae)}, raw and normalised."""
    scores = {m: {"adp_f": f, "max_f": f, "mae": mae} for m, (f, mae) in maps.items()}
    ci = {m: {"adp_f": interval, "max_f": None, "mae": None} for m in maps}
    return {
        "raw": scores,
        "normalised": scores,
        "interval": {"raw": ci, "normalised": ci},
        "seeds": [0],
        "levels_used": {"mean": 1.0, "min": 1.0, "max": 1.0},
    }


def _per_image_entry(f, mae):
    """One level as robustness.evaluate writes it now, for one map "map": per-image (seeds, images) scores."""
    f, mae = np.atleast_2d(f), np.atleast_2d(mae)
    level = _entry({"map": (float(f.mean()), float(mae.mean()))})
    per_image = {"map": {"adp_f": np.round(f, 6).tolist(), "mae": np.round(mae, 6).tolist()}}
    level["per_image"] = {"raw": per_image, "normalised": per_image}
    level["seeds"] = list(range(f.shape[0]))
    return level


def _write(path, distortion, results, images=None):
    data = {"distortion": distortion, "noise_at": "original", "datasets": {"ECSSD": results}}
    if images is not None:
        data["images"] = {"ECSSD": images}
    path.write_text(json.dumps(data))
    return path


def _level_run(clean, noisy, mae=0.1):
    """An AWGN run: level 0 with the `clean` per-image F-beta, level 100 with `noisy` (seeds, images)."""
    return {"0.0": _per_image_entry(clean, np.full_like(clean, mae)), "100.0": _per_image_entry(noisy, noisy * 0 + mae)}


def test_old_runs_without_per_image_scores_compare_with_na(tmp_path, capsys):
    a = _write(
        tmp_path / "a.json",
        "awgn",
        {
            "0.0": _entry({"metric": (0.8, 0.1), "ce": (0.6, 0.2)}),
            "100.0": _entry({"metric": (0.6, 0.2), "ce": (0.3, 0.3)}, [0.5, 0.7]),
        },
    )
    b = _write(
        tmp_path / "b.json", "awgn", {"0.0": _entry({"map": (0.9, 0.05)}), "100.0": _entry({"map": (0.45, 0.25)})}
    )
    assert compare.main([f"A={a}:metric", f"A ce={a}:ce", f"B={b}", "--output", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "compare.md").read_text()
    row = [line for line in text.splitlines() if line.startswith("| 100 ")]
    assert row == [
        "| 100 | 0.6000 [n/a] | 75.0 % [n/a] | 0.3000 [n/a] | 50.0 % [n/a] | 0.4500 [n/a] | 50.0 % [n/a] "
        "| -25.0 [n/a] | -25.0 [n/a] | 0.2000 [n/a] | 0.3000 [n/a] | 0.2500 [n/a] |"
    ]
    # A 25-point drop, but no interval: nothing is claimed, and one line says why.
    assert "keeps" not in text and "not distinguishable" not in text
    assert [line for line in text.splitlines() if "n/a for" in line] == [
        "Intervals n/a for A, A ce, B: intervals need runs made with the current robustness.evaluate (per-image "
        "scores); no difference is claimed for them."
    ]
    summary = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert summary["reference"] == "A" and summary["runs"]["B"]["per_image"] is False
    assert summary["runs"]["B"]["levels"]["100.0"]["kept"] == {"estimate": 50.0, "low": None, "high": None}
    assert summary["differences"]["B"]["100.0"] == {
        "kept": {"estimate": -25.0, "low": None, "high": None},
        "distinguishable": False,
    }
    assert (tmp_path / "out" / "compare.png").stat().st_size > 10_000


def test_a_real_difference_is_claimed_and_identical_runs_are_not_distinguishable(tmp_path, capsys):
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.6, 0.9, len(NAMES))
    # A keeps about 90 % of each image's F-beta, B about 70 %: B is worse on every image, under two noise seeds.
    good = np.clip(0.9 * clean + rng.normal(0, 0.02, (2, len(NAMES))), 0, 1)
    bad = np.clip(0.7 * clean + rng.normal(0, 0.02, (2, len(NAMES))), 0, 1)
    a = _write(tmp_path / "a.json", "awgn", _level_run(clean, good), NAMES)
    b = _write(tmp_path / "b.json", "awgn", _level_run(clean, bad), NAMES)
    out = tmp_path / "out"
    assert compare.main([f"A={a}", f"B={b}", f"A again={a}", "--output", str(out)]) == 0
    text = (out / "compare.md").read_text()
    summary = json.loads((out / "compare.json").read_text())
    # The kept share and its interval are the bootstrap's, from the per-image scores as written (6 decimals).
    kept_b = bootstrap.kept_interval(np.round(clean, 6), np.round(bad, 6)).scaled(100)
    assert summary["runs"]["B"]["levels"]["100.0"]["kept"] == pytest.approx(kept_b.to_json())
    assert kept_b.estimate == pytest.approx(100 * bad.mean() / clean.mean(), abs=1e-3)
    diff = summary["differences"]["B"]["100.0"]
    assert diff["distinguishable"] and diff["kept"]["high"] < 0
    assert diff["kept"]["estimate"] == pytest.approx(100 * (bad.mean() - good.mean()) / clean.mean(), abs=1e-3)
    d = bootstrap.Interval(**diff["kept"])
    assert f"At level 100, B keeps less than A: {d.text('+.1f', ' points')}." in text.splitlines()
    assert f"| 100 | {bootstrap.Interval(**summary['runs']['A']['levels']['100.0']['adp_f']).text()} |" in text
    # The same run again: exactly no difference with a zero-width interval, at the deterministic level and at the
    # noisy one (the same seeds drew the same noise, so they are resampled together), and never a claim.
    same = summary["differences"]["A again"]
    assert same["0.0"]["kept"] == same["100.0"]["kept"] == {"estimate": 0.0, "low": 0.0, "high": 0.0}
    assert not same["100.0"]["distinguishable"]
    assert [line for line in text.splitlines() if line.startswith("At level 100, A again")] == [
        "At level 100, A again and A: not distinguishable "
        f"({bootstrap.Interval(**same['100.0']['kept']).text('+.1f', ' points')})."
    ]
    assert "n/a" not in text
    # --reference B turns the sign round.
    assert compare.main([f"A={a}", f"B={b}", "--reference", "B", "--output", str(tmp_path / "ref")]) == 0
    assert "At level 100, A keeps more than B: +" in (tmp_path / "ref" / "compare.md").read_text()


def test_pairing_needs_the_same_images(tmp_path, capsys):
    clean = np.linspace(0.5, 0.9, len(NAMES))
    a = _write(tmp_path / "a.json", "awgn", _level_run(clean, clean * 0.8), NAMES)
    b = _write(tmp_path / "b.json", "awgn", _level_run(clean, clean * 0.8), NAMES[::-1])
    assert compare.main([f"A={a}", f"B={b}", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "B and A were scored on different images (image 0 is 'img039' vs 'img000')" in err


def _corruption_results(clean, f_of, names=None):
    """ImageNet-C results: per-image scores when `clean` is an array, else dataset-level values only."""
    if names is None:
        level = lambda f: _entry({"map": (f, 0.2)})
        return {
            "clean": _entry({"map": (clean, 0.1)}),
            **{c: {str(s): level(f_of(c, s)) for s in (1, 2)} for c in CORRUPTIONS},
        }
    level = lambda f: _per_image_entry(f, f * 0 + 0.2)
    return {
        "clean": _per_image_entry(clean, clean * 0 + 0.1),
        **{c: {str(s): level(f_of(c, s)) for s in (1, 2)} for c in CORRUPTIONS},
    }


def test_imagenet_c_kept_and_corruption_error_relative_to_the_reference(tmp_path):
    ours = _write(tmp_path / "ours.json", "imagenet-c", _corruption_results(0.8, lambda c, s: 0.8 - 0.1 * s))
    ref = _write(tmp_path / "ref.json", "imagenet-c", _corruption_results(0.9, lambda c, s: 0.9 - 0.2 * s))
    runs = [compare.load_run(f"ours={ours}", None, "normalised"), compare.load_run(f"ref={ref}", None, "normalised")]
    kept = compare.corruption_kept(runs[0], "normalised")
    assert kept["fog"] == pytest.approx(100 * (0.7 / 0.8 + 0.6 / 0.8) / 2)
    table = compare.corruption_table(runs, "normalised", reference=runs[1])
    ce = (0.3 + 0.4) / (0.3 + 0.5)  # sum (1 - F) over severities, ours / the reference's
    theirs = 100 * (0.7 / 0.9 + 0.5 / 0.9) / 2
    assert (
        f"| fog | weather | {kept['fog']:.1f} % [n/a] | {theirs:.1f} % [n/a] | {kept['fog'] - theirs:+.1f} [n/a] "
        f"| {ce:.3f} | 1.000 |" in table
    )
    assert table.splitlines()[-1].endswith(f"**mCE {ce:.3f}** | **mCE 1.000** |")


def test_imagenet_c_differences_per_corruption(tmp_path):
    rng = np.random.default_rng(1)
    clean = rng.uniform(0.6, 0.9, len(NAMES))
    # B loses 30 % more on fog than A, the same elsewhere.
    a = _corruption_results(clean, lambda c, s: clean * (1 - 0.1 * s), NAMES)
    b = _corruption_results(clean, lambda c, s: clean * (1 - 0.1 * s - (0.3 if c == "fog" else 0)), NAMES)
    paths = [_write(tmp_path / f"{k}.json", "imagenet-c", r, NAMES) for k, r in (("a", a), ("b", b))]
    runs = [compare.load_run(f"{k}={p}", None, "normalised") for k, p in zip("AB", paths)]
    names = compare._common_corruptions(runs, "normalised")[0]
    kept = compare.corruption_intervals(runs[1], names, "normalised")
    assert kept["fog"].estimate == pytest.approx(compare.corruption_kept(runs[1], "normalised")["fog"])
    assert kept["fog"].estimate == pytest.approx(100 * (0.9 + 0.8) / 2 - 30, abs=1e-3)
    assert kept["mean"].estimate == pytest.approx(
        np.mean(list(compare.corruption_kept(runs[1], "normalised").values()))
    )
    claims = compare.corruption_claims(runs, "normalised")
    diffs = compare.corruption_differences(runs[1], runs[0], names, "normalised")
    assert [c for c in claims if "keeps" in c] == [
        f"On fog, B keeps less than A: {diffs['fog'].text('+.1f', ' points')}.",
        f"On the mean over the corruptions, B keeps less than A: {diffs['mean'].text('+.1f', ' points')}.",
    ]
    assert diffs["fog"].high < 0 and diffs["mean"].high < 0 and diffs["fog"].estimate == pytest.approx(-30, abs=1e-3)
    assert "On contrast, B and A: not distinguishable (+0.0 points [+0.0, +0.0])." in claims
    table = compare.corruption_table(runs, "normalised")
    assert "| fog | weather | 85.0 % [" in table and "| -30.0 [-30.0, -30.0] |" in table


def test_common_images_compares_a_run_made_on_a_subset(tmp_path, capsys):
    """A slow model scored on the first 15 of the 40 images: --common-images compares both on those 15, with the
    same numbers as the full run would give restricted to them."""
    rng = np.random.default_rng(2)
    clean = rng.uniform(0.6, 0.9, len(NAMES))
    full = _corruption_results(clean, lambda c, s: clean * (1 - 0.1 * s) + rng.normal(0, 0.02, len(NAMES)), NAMES)
    first = lambda level: {
        mode: {"map": {k: [v[:15] for v in by_key] for k, by_key in level["per_image"][mode]["map"].items()}}
        for mode in ("raw", "normalised")
    }
    entry = lambda level: _per_image_entry(*(np.array(first(level)["normalised"]["map"][k]) for k in ("adp_f", "mae")))
    subset = {  # the same scores on the first 15 images, as a run with --limit 15 writes them
        key: entry(r) if "per_image" in r else {s: entry(x) for s, x in r.items()} for key, r in full.items()
    }
    a = _write(tmp_path / "a.json", "imagenet-c", full, NAMES)
    b = _write(tmp_path / "b.json", "imagenet-c", subset, NAMES[:15])
    assert compare.main([f"A={a}", f"B={b}", "--output", str(tmp_path / "no")]) == 2
    assert "--common-images" in capsys.readouterr().err
    out = tmp_path / "out"
    assert compare.main([f"A={a}", f"B={b}", "--common-images", "--output", str(out)]) == 0
    text = (out / "compare.md").read_text()
    assert "On the 15 images every run scored (of A 40, B 15)." in text
    summary = json.loads((out / "compare.json").read_text())
    # The same images, the same scores: no difference, zero width; A's kept share is that of its first 15 images.
    assert summary["differences"]["B"]["fog"]["kept"] == {"estimate": 0.0, "low": 0.0, "high": 0.0}
    fog = [np.array(full["fog"][s]["per_image"]["normalised"]["map"]["adp_f"])[:, :15].mean() for s in ("1", "2")]
    kept = 100 * np.mean(fog) / np.round(clean[:15], 6).mean()
    assert summary["runs"]["A"]["corruptions"]["fog"]["kept"]["estimate"] == pytest.approx(kept, abs=1e-4)
    assert summary["runs"]["A"]["corruptions"]["fog"] == summary["runs"]["B"]["corruptions"]["fog"]


@pytest.mark.parametrize("problem", ["mixed", "two maps", "no map", "not ours", "bad spec", "reference"])
def test_bad_runs_are_one_line_errors(tmp_path, capsys, problem):
    a = _write(tmp_path / "a.json", "awgn", {"0.0": _entry({"metric": (0.8, 0.1), "ce": (0.6, 0.2)})})
    j = _write(tmp_path / "j.json", "jpeg", {"90.0": _entry({"map": (0.8, 0.1)})})
    (tmp_path / "x.json").write_text('{"hello": 1}')
    argv, expected = {
        "mixed": ([f"A={a}:ce", f"J={j}"], "mix distortions (awgn, jpeg)"),
        "two maps": ([f"A={a}"], "has the maps ce, metric; name one as"),
        "no map": ([f"A={a}:edge"], "no map 'edge' (it has ce, metric)"),
        "not ours": ([f"X={tmp_path / 'x.json'}"], "not a robustness.json of"),
        "bad spec": ([str(a)], "give a run as LABEL=PATH[:MAP]"),
        "reference": ([f"J={j}", "--reference", "K"], "--reference K: give the label"),
    }[problem]
    assert compare.main([*argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err


def test_pr_curves_are_drawn_when_every_run_has_them(tmp_path):
    """pr.png (the paper's Fig. 7): one panel per shared level, only when every run recorded its PR curves."""
    clean = np.linspace(0.5, 0.9, len(NAMES))
    runs = {}
    for label, factor in (("A", 0.9), ("B", 0.7)):
        levels = _level_run(clean, factor * clean[None])
        for level in levels.values():
            curve = {"precision": np.linspace(1, factor, 256).tolist(), "recall": np.linspace(0, 1, 256).tolist()}
            level["pr_curve"] = {"raw": {"map": curve}, "normalised": {"map": curve}}
        runs[label] = _write(tmp_path / f"{label}.json", "awgn", levels, NAMES)
    assert compare.main([f"A={runs['A']}", f"B={runs['B']}", "--output", str(tmp_path / "pr")]) == 0
    assert (tmp_path / "pr" / "pr.png").stat().st_size > 0
    old = _write(tmp_path / "old.json", "awgn", _level_run(clean, clean[None]), NAMES)  # no curves recorded
    assert compare.main([f"A={runs['A']}", f"old={old}", "--output", str(tmp_path / "nopr")]) == 0
    assert not (tmp_path / "nopr" / "pr.png").exists()
