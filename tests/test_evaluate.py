"""`python -m menet_jax.evaluate`: outputs, protocol (maps resized to the GT size, scored as 8-bit) and error cases."""

import csv
import json

import numpy as np
import pytest
from helpers import ecssd_subset, one_line_error
from PIL import Image, ImageFilter

from menet_jax.core.metrics import SODMetrics, to_8bit
from menet_jax.evaluate import main


@pytest.fixture(scope="module")
def small_ecssd(shared_data, tmp_path_factory):
    """Twelve real ECSSD pairs in the images/ + masks/ layout."""
    return ecssd_subset(shared_data, tmp_path_factory.mktemp("data") / "ECSSD12", 550, 12)


def _write_predictions(data, out):
    """Blurred ground truth saved at half resolution: the evaluator must resize it back."""
    out.mkdir()
    for mask in sorted((data / "masks").glob("*.png")):
        img = Image.open(mask).convert("L").filter(ImageFilter.GaussianBlur(4))
        img.resize((img.width // 2, img.height // 2), Image.BILINEAR).save(out / mask.name)


def test_predictions_are_scored_at_the_ground_truth_size(small_ecssd, tmp_path, capsys):
    preds = tmp_path / "preds"
    _write_predictions(small_ecssd, preds)
    out = tmp_path / "eval"
    assert (
        main(["--predictions", str(preds), "--data-dir", str(small_ecssd), "--output", str(out), "--no-progress"]) == 0
    )
    printed = capsys.readouterr().out
    assert "ECSSD12" in printed and "F-beta" in printed and "MAE" in printed
    results = json.loads((out / "results.json").read_text())["datasets"]["ECSSD12"]
    assert set(results) == {
        "n_images",
        "mae",
        "adp_f",
        "mean_f",
        "max_f",
        "s_measure",
        "adp_e",
        "mean_e",
        "max_e",
        "w_f",
    }
    assert results["n_images"] == 12
    # The same numbers from the metric library fed with the maps resized by hand, as 8-bit images (the field's
    # toolkits resize the 8-bit map and get an 8-bit map).
    meter = SODMetrics()
    for mask in sorted((small_ecssd / "masks").glob("*.png")):
        gt = np.asarray(Image.open(mask).convert("L"))
        grey = np.asarray(Image.open(preds / mask.name).convert("L"), np.float32) / 255
        pred = Image.fromarray(grey, mode="F").resize(gt.shape[::-1], Image.BILINEAR)
        meter.step(to_8bit(np.asarray(pred)), gt)
    expected = meter.results()
    for key in ("mae", "adp_f", "max_f", "s_measure", "w_f", "max_e"):
        assert results[key] == pytest.approx(expected[key], abs=1e-6)
    assert 0.8 < results["max_f"] <= 1.0  # blurred GT is a good map
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 12 and {"name", "mae", "adp_f", "s_measure"} <= set(rows[0])
    assert (out / "pr_curve.png").stat().st_size > 1000 and (out / "f_curve.png").stat().st_size > 1000


def test_missing_and_extra_predictions_are_one_line_errors(small_ecssd, tmp_path, capsys):
    preds = tmp_path / "preds"
    _write_predictions(small_ecssd, preds)
    first = sorted(preds.iterdir())[0]
    first.rename(tmp_path / first.name)
    assert (
        main(
            [
                "--predictions",
                str(preds),
                "--data-dir",
                str(small_ecssd),
                "--no-progress",
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "no prediction with the same stem" in err and first.stem in err and "\n" not in err
    (tmp_path / first.name).rename(first)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(preds / "stray.png")
    assert (
        main(
            [
                "--predictions",
                str(preds),
                "--data-dir",
                str(small_ecssd),
                "--no-progress",
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "stray.png: no ground truth with the same stem" in err


def test_checkpoint_scores_both_maps_and_saves_them(small_ecssd, tmp_path, capsys):
    from menet_jax.core.config import get_config
    from menet_jax.training.loop import train

    workdir = tmp_path / "run"
    train(get_config("tiny", ["steps=2", "train_size=8", "val_size=4", "checkpoint_every=2"]), workdir, progress=False)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "--checkpoint",
                str(workdir),
                "--data-dir",
                str(small_ecssd),
                "--output",
                str(out),
                "--save-maps",
                "--no-progress",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())["datasets"]
    assert set(results) == {"ECSSD12/metric", "ECSSD12/ce"}
    saved = sorted((out / "maps" / "ECSSD12" / "ce").glob("*.png"))
    assert len(saved) == 12
    first_mask = sorted((small_ecssd / "masks").glob("*.png"))[0]
    assert Image.open(saved[0]).size == Image.open(first_mask).size  # maps at the original size
    # The saved maps, scored as another method's PNGs, give the same numbers (maps are scored as 8-bit images).
    for map_name in ("metric", "ce"):
        rescored = tmp_path / f"rescored_{map_name}"
        assert (
            main(
                [
                    "--predictions",
                    str(out / "maps" / "ECSSD12" / map_name),
                    "--data-dir",
                    str(small_ecssd),
                    "--output",
                    str(rescored),
                    "--no-progress",
                ]
            )
            == 0
        )
        again = json.loads((rescored / "results.json").read_text())["datasets"]["ECSSD12"]
        for key in ("mae", "adp_f", "max_f", "s_measure", "adp_e", "w_f"):
            assert again[key] == pytest.approx(results[f"ECSSD12/{map_name}"][key], abs=1e-12), (map_name, key)


def test_bad_output_folders_are_refused_before_any_work(tmp_path, capsys):
    afile = tmp_path / "results.txt"
    afile.write_text("keep me")
    for output, problem in (
        (afile, "is a file, not a folder"),
        (afile / "eval", f"{afile} is a file, not a folder"),
        ("/proc/menet-eval", "cannot write in /proc"),
    ):
        # The data folder does not exist: the output is checked first.
        assert (
            main(
                [
                    "--predictions",
                    str(tmp_path),
                    "--data-dir",
                    str(tmp_path / "nowhere"),
                    "--output",
                    str(output),
                    "--no-progress",
                ]
            )
            == 2
        )
        one_line_error(capsys, f"error: {output}: {problem}")
    assert afile.read_text() == "keep me"


def test_two_maps_of_one_stem_are_refused(small_ecssd, tmp_path, capsys):
    preds = tmp_path / "preds"
    _write_predictions(small_ecssd, preds)
    first = sorted(preds.iterdir())[0]
    Image.open(first).save(preds / f"{first.stem}.jpg")
    assert (
        main(
            [
                "--predictions",
                str(preds),
                "--data-dir",
                str(small_ecssd),
                "--no-progress",
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    one_line_error(capsys, first.stem, "another file with the same stem")
    assert not (tmp_path / "o").exists()


def test_float_and_16_bit_maps_score_as_their_8_bit_png(small_ecssd, tmp_path):
    """A float TIFF in [0, 1] is used as it is, a 16-bit PNG scaled by 65535, a float map of another range
    min-max rescaled: each scores as the 8-bit PNG of the same map (to 1/255), not as `convert("L")`'s black."""
    folders = {kind: tmp_path / kind for kind in ("png", "float", "uint16", "float_range")}
    for folder in folders.values():
        folder.mkdir()
    for mask in sorted((small_ecssd / "masks").glob("*.png")):
        img = Image.open(mask).convert("L").filter(ImageFilter.GaussianBlur(4))
        soft = np.asarray(img.resize((img.width // 2, img.height // 2), Image.BILINEAR), np.float32) / 255
        soft = np.clip(soft + np.linspace(0, 0.3 / 255, soft.shape[1]), 0, 1).astype(np.float32)  # off 8-bit grid
        soft[0, 0], soft[0, 1] = 0, 1  # the range exactly [0, 1]: min-max rescaling gives it back
        Image.fromarray(np.round(soft * 255).astype(np.uint8)).save(folders["png"] / mask.name)
        Image.fromarray(soft, mode="F").save(folders["float"] / f"{mask.stem}.tif")
        Image.fromarray(np.round(soft * 65535).astype(np.uint16)).save(folders["uint16"] / mask.name)
        Image.fromarray(soft * 40 - 7, mode="F").save(folders["float_range"] / f"{mask.stem}.tif")
    scores = {}
    for kind, folder in folders.items():
        out = tmp_path / f"eval_{kind}"
        assert (
            main(
                [
                    "--predictions",
                    str(folder),
                    "--data-dir",
                    str(small_ecssd),
                    "--output",
                    str(out),
                    "--no-normalize",
                    "--no-progress",
                ]
            )
            == 0
        )
        scores[kind] = json.loads((out / "results.json").read_text())["datasets"]["ECSSD12"]
    assert scores["png"]["max_f"] > 0.8
    for kind in ("float", "uint16", "float_range"):
        assert scores[kind]["mae"] == pytest.approx(scores["png"]["mae"], abs=1 / 255), kind
        for key in ("adp_f", "max_f", "s_measure", "w_f"):
            assert scores[kind][key] == pytest.approx(scores["png"][key], abs=0.01), (kind, key)


def test_unreadable_maps_are_one_line_errors(small_ecssd, tmp_path, capsys, monkeypatch):
    preds = tmp_path / "preds"
    _write_predictions(small_ecssd, preds)
    first = sorted(preds.iterdir())[0]
    argv = [
        "--predictions",
        str(preds),
        "--data-dir",
        str(small_ecssd),
        "--no-progress",
        "--output",
        str(tmp_path / "o"),
    ]
    nan_map = np.full((10, 10), np.nan, np.float32)
    first.unlink()
    Image.fromarray(nan_map, mode="F").save(preds / f"{first.stem}.tif")
    assert main(argv) == 2
    one_line_error(capsys, f"error: {preds / first.stem}.tif: the map has NaN or infinite values")
    (preds / f"{first.stem}.tif").unlink()
    Image.fromarray(np.zeros((700, 700), np.uint8)).save(first)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)  # the map over twice the limit, the photos under it
    assert main(argv) == 2
    one_line_error(capsys, f"error: {first}: cannot read", "decompression bomb")
