"""`python -m menet_datasets.prepare`: counts per split, the build report, and one-line errors with exit status 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import one_line_error
from PIL import Image

from menet_datasets import prepare

REPO = Path(__file__).resolve().parents[1]


def _folder(root: Path, stems=("a", "b", "c")) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, stem in enumerate(stems):
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(
            root / "images" / f"{stem}.jpg"
        )
        mask = np.zeros((10, 12), np.uint8)
        mask[2:8, 3:9] = 255
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return root


def test_cli_builds_and_prints_counts(tmp_path):
    manual = _folder(tmp_path / "mine", stems=("a", "b", "c", "d"))
    out = tmp_path / "tfds"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "menet_datasets.prepare",
            "salient_folder",
            "--manual-dir",
            str(manual),
            "--data-dir",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 0, run.stderr
    assert re.search(r"^  test +4 examples$", run.stdout, re.M), run.stdout
    assert f"(from {manual.resolve()})" in run.stdout and "JPEG 4" in run.stdout
    assert (out / "salient_folder" / "1.0.0" / "dataset_info.json").is_file()
    assert "tensorflow " not in run.stderr.lower()


def test_skip_bad_reports_each_skipped_file(tmp_path, capsys):
    manual = _folder(tmp_path / "mine")
    bad = manual / "images" / "b.jpg"
    bad.write_bytes(b"broken")
    orphan = manual / "masks" / "z.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(orphan)
    (manual / "images" / "readme.txt").write_text("x")
    assert prepare.main(["salient_folder", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "o1")]) == 2
    assert str(orphan) in one_line_error(capsys, last_line=True)
    assert (
        prepare.main(["salient_folder", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "o2"), "--skip-bad"])
        == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"^  test +2 examples$", out, re.M), out
    assert "bad inputs skipped: 2" in out and str(bad) in out and str(orphan) in out
    assert "non-image files ignored: 1" in out and "readme.txt" in out
    # A second run reuses the prepared copy; --force rebuilds it (here after the bad image was replaced).
    assert prepare.main(["salient_folder", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "o2")]) == 0
    assert "already prepared" in capsys.readouterr().out
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(bad)
    assert (
        prepare.main(
            ["salient_folder", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "o2"), "--skip-bad", "--force"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"^  test +3 examples$", out, re.M) and "bad inputs skipped: 1" in out


def test_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    assert prepare.main(["imagenet", "--manual-dir", str(tmp_path)]) == 2
    line = one_line_error(capsys, last_line=True)
    assert "unknown dataset 'imagenet'" in line and "ecssd" in line and "pascal_s" in line
    missing = tmp_path / "nowhere"
    assert prepare.main(["ecssd", "--manual-dir", str(missing)]) == 2
    assert str(missing) in one_line_error(capsys, last_line=True)
    assert prepare.main(["ecssd"]) == 2
    assert "--manual-dir" in one_line_error(capsys, last_line=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare.main(["ecssd", "--manual-dir", str(empty), "--data-dir", str(tmp_path / "o")]) == 2
    line = one_line_error(capsys, last_line=True)
    assert str(empty / "images") in line and "ground_truth_mask" in line  # the paths searched


def test_instructions_name_the_publisher(capsys):
    assert prepare.main(["dut_omron", "--instructions"]) == 0
    out = capsys.readouterr().out
    assert "saliencydetection.net" in out and "pixelwiseGT-new-PNG" in out
