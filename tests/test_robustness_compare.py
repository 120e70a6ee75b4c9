"""`python -m robustness.compare`: kept shares, CE / mCE against a named run, and one-line errors."""

import json

import pytest

from robustness import compare
from robustness.corruptions import CORRUPTIONS


def _entry(maps, interval=None):
    """One level of a robustness.json: {map: (adp_f, mae)} for the raw and normalised maps."""
    scores = {m: {"adp_f": f, "max_f": f, "mae": mae} for m, (f, mae) in maps.items()}
    ci = {m: {"adp_f": interval, "max_f": None, "mae": None} for m in maps}
    return {
        "raw": scores,
        "normalised": scores,
        "interval": {"raw": ci, "normalised": ci},
        "seeds": [0],
        "levels_used": {"mean": 1.0, "min": 1.0, "max": 1.0},
    }


def _write(path, distortion, results):
    path.write_text(json.dumps({"distortion": distortion, "noise_at": "original", "datasets": {"ECSSD": results}}))
    return path


def test_levels_table_gives_each_runs_kept_share(tmp_path, capsys):
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
    row = [line for line in (tmp_path / "out" / "compare.md").read_text().splitlines() if line.startswith("| 100 ")]
    assert row == [
        "| 100 | 0.6000 ± 0.1000 (75 %) | 0.3000 ± 0.1000 (50 %) | 0.4500 (50 %) | 0.2000 | 0.3000 | 0.2500 |"
    ]
    assert (tmp_path / "out" / "compare.png").stat().st_size > 10_000


def test_imagenet_c_kept_and_corruption_error_relative_to_the_reference(tmp_path):
    def results(clean, f_of):
        return {
            "clean": _entry({"map": (clean, 0.1)}),
            **{c: {str(s): _entry({"map": (f_of(c, s), 0.2)}) for s in (1, 2)} for c in CORRUPTIONS},
        }

    ours = _write(tmp_path / "ours.json", "imagenet-c", results(0.8, lambda c, s: 0.8 - 0.1 * s))
    ref = _write(tmp_path / "ref.json", "imagenet-c", results(0.9, lambda c, s: 0.9 - 0.2 * s))
    runs = [compare.load_run(f"ours={ours}", None, "normalised"), compare.load_run(f"ref={ref}", None, "normalised")]
    kept = compare.corruption_kept(runs[0], "normalised")
    assert kept["fog"] == pytest.approx(100 * (0.7 / 0.8 + 0.6 / 0.8) / 2)
    table = compare.corruption_table(runs, "normalised", reference=runs[1])
    ce = (0.3 + 0.4) / (0.3 + 0.5)  # sum (1 - F) over severities, ours / the reference's
    assert f"| fog | weather | {kept['fog']:.0f} % | 67 % | {ce:.3f} | 1.000 |" in table
    assert table.splitlines()[-1].endswith(f"**mCE {ce:.3f}** | **mCE 1.000** |")


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
        "reference": ([f"J={j}", "--reference", "J"], "--reference J: give the label"),
    }[problem]
    assert compare.main([*argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err
