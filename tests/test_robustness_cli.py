"""python -m robustness.evaluate and python -m robustness.jacobian on real ECSSD images."""

import json

import numpy as np
import pytest
from helpers import ecssd_subset

from menet_datasets import FolderSource


@pytest.fixture(scope="module")
def ecssd6(shared_data, tmp_path_factory):
    """Six real ECSSD pairs in the images/ + masks/ layout."""
    return ecssd_subset(shared_data, tmp_path_factory.mktemp("data") / "ECSSD6", 100, 6)


PREDICTOR = '''
import numpy as np
def brightness(images):
    """A map any model could give: each image's grey level, at half resolution (the evaluator resizes)."""
    return [np.asarray(im, np.float32).mean(-1)[::2, ::2] / 255.0 for im in images]
'''


def _hand_scores(source, distort, prepare=lambda im: im, per_image=False):
    """The predictor hook's raw scores computed by hand: `distort(image, index, name)` per image, scored as
    8-bit maps without min-max (`per_image`: and each image's scores)."""
    from menet_jax.core.metrics import SODMetrics, to_8bit
    from menet_jax.io.images import resize_to

    meter, images = SODMetrics(normalize=False), []
    for i in range(len(source)):
        e = source[i]
        noisy = distort(prepare(e["image"]), i, e["name"])
        m = noisy.astype(np.float32).mean(-1)[::2, ::2] / 255.0
        images.append(meter.step(to_8bit(resize_to(m, *e["mask"].shape)), e["mask"]))
    return (meter.results(), images) if per_image else meter.results()


def test_evaluate_with_a_predictor_hook_scores_the_distorted_images(ecssd6, tmp_path, monkeypatch, capsys):
    from robustness import bootstrap, distortions, evaluate
    from robustness.evaluate import main

    (tmp_path / "peer_model.py").write_text(PREDICTOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    assert (
        main(
            [
                "--predictor",
                "peer_model:brightness",
                "--data-dir",
                str(ecssd6),
                "--distortion",
                "awgn",
                "--levels",
                "0",
                "900",
                "random",
                "--output",
                str(out),
                "--seed",
                "3",
                "--seeds",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "F-beta map" in printed and "random" in printed and " % [" in printed and " ± " not in printed
    report = json.loads((out / "robustness.json").read_text())
    results = report["datasets"]["ECSSD6"]
    assert list(results) == ["0.0", "900.0", "random"]
    # The same numbers by hand: the images distorted with the same per-image generators, one run per seed; each
    # image's adaptive F-beta and MAE, their means the dataset's, and the intervals: the bootstrap's over the
    # images and seeds (adp_f, mae), the Student-t of the two seeds' scores (max_f).
    source = FolderSource(ecssd6)
    assert report["images"] == {"ECSSD6": source.names} and "bootstrap" in report["intervals"]
    per_seed, per_image = zip(
        *(
            _hand_scores(
                source,
                lambda im, i, name, s=s: distortions.awgn(im, distortions.image_rng(s, i, name), variance=900.0),
                per_image=True,
            )
            for s in (3, 4)
        )
    )
    r = results["900.0"]
    assert r["seeds"] == [3, 4] and results["0.0"]["seeds"] == [3]  # no noise: nothing to repeat
    for key in ("adp_f", "max_f", "mae"):
        values = [scores[key] for scores in per_seed]
        assert r["per_seed"]["raw"]["map"][key] == pytest.approx(values, abs=1e-6)
        assert r["raw"]["map"][key] == pytest.approx(np.mean(values), abs=1e-6)
        if key == "max_f":
            lo, hi = r["interval"]["raw"]["map"][key]
            half = 12.706 * np.std(values, ddof=1) / np.sqrt(2)  # t(0.975, 1 degree of freedom)
            assert (lo, hi) == pytest.approx((np.mean(values) - half, np.mean(values) + half), abs=1e-6)
            assert key not in r["per_image"]["raw"]["map"]
            continue
        images = np.array(r["per_image"]["raw"]["map"][key])
        assert images == pytest.approx(np.array([[scores[key] for scores in seed] for seed in per_image]), abs=1e-6)
        assert images.shape == (2, 6) and images.mean() == pytest.approx(r["raw"]["map"][key], abs=1e-6)
        assert r["interval"]["raw"]["map"][key] == bootstrap.mean_interval(images).bounds
    assert per_seed[0]["mae"] != per_seed[1]["mae"]
    assert results["0.0"]["interval"]["raw"]["map"]["max_f"] is None
    # The table: F-beta [interval], kept [interval] relative to variance 0, MAE [interval].
    first = results["0.0"]
    f, kept, mae = (
        evaluate.score_interval(r, "raw", "map", "adp_f"),
        evaluate.kept_share(first, r, "raw", "map"),
        evaluate.score_interval(r, "raw", "map", "mae"),
    )
    assert kept.estimate == pytest.approx(100 * r["raw"]["map"]["adp_f"] / first["raw"]["map"]["adp_f"])
    assert kept.low < kept.estimate < kept.high
    row = f"| | 900 | 2 | {f.text()} | {kept.text('.1f', ' %')} | {mae.text()} |"
    assert row in (out / "table.md").read_text().splitlines()
    # The run compared with itself (robustness.compare reads the per-image scores back): no difference.
    from robustness import compare

    assert (
        compare.main(
            [f"A={out / 'robustness.json'}", f"B={out / 'robustness.json'}", "--raw", "--output", str(out / "cmp")]
        )
        == 0
    )
    text = (out / "cmp" / "compare.md").read_text()
    assert "At level 900, B and A: not distinguishable (+0.0 points [" in text and "keeps" not in text
    lo, hi = distortions.RANDOM_RANGES["awgn"]
    used = results["random"]["levels_used"]
    assert (lo * 255) ** 2 <= used["min"] < used["max"] <= (hi * 255) ** 2
    assert (out / "curves.png").stat().st_size > 1000 and "| ECSSD6 (raw maps)" in (out / "table.md").read_text()
    assert (
        main(
            [
                "--predictor",
                "peer_model:nothing",
                "--data-dir",
                str(ecssd6),
                "--distortion",
                "jpeg",
                "--output",
                str(out),
            ]
        )
        == 2
    )
    assert "no callable 'nothing'" in capsys.readouterr().err


def test_noise_at_the_input_size_distorts_the_resized_image(ecssd6, tmp_path, monkeypatch, capsys):
    from robustness import distortions
    from robustness.evaluate import main

    (tmp_path / "peer_model.py").write_text(PREDICTOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    common = [
        "--predictor",
        "peer_model:brightness",
        "--data-dir",
        str(ecssd6),
        "--distortion",
        "awgn",
        "--levels",
        "2500",
        "--seeds",
        "1",
        "--no-progress",
    ]
    assert main(common + ["--noise-at", "input", "--output", str(tmp_path / "out")]) == 2
    assert "--input-size" in capsys.readouterr().err
    results = {}
    for where in ("input", "original"):
        assert main(common + ["--noise-at", where, "--input-size", "64", "--output", str(tmp_path / where)]) == 0
        results[where] = json.loads((tmp_path / where / "robustness.json").read_text())
    assert results["input"]["noise_at"] == "input" and results["input"]["input_size"] == 64
    expected = _hand_scores(
        FolderSource(ecssd6),
        lambda im, i, name: distortions.awgn(im, distortions.image_rng(0, i, name), variance=2500.0),
        lambda im: distortions.to_input_size(im, 64),
    )
    got = results["input"]["datasets"]["ECSSD6"]["2500.0"]["raw"]["map"]
    assert got == pytest.approx({k: expected[k] for k in got}, abs=1e-6)
    assert got["mae"] != results["original"]["datasets"]["ECSSD6"]["2500.0"]["raw"]["map"]["mae"]


def test_raw_maps_are_scored_without_min_max(ecssd6, tmp_path, monkeypatch):
    """A map in [0.2, 0.7] scores differently raw and normalised (the normalised one is stretched to [0, 1])."""
    from robustness.evaluate import main

    (tmp_path / "squeezed.py").write_text(
        PREDICTOR + "\ndef squeezed(images):\n    return [0.2 + 0.5 * m for m in brightness(images)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert (
        main(
            [
                "--predictor",
                "squeezed:squeezed",
                "--data-dir",
                str(ecssd6),
                "--distortion",
                "jpeg",
                "--levels",
                "100",
                "--output",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        == 0
    )
    r = json.loads((tmp_path / "out" / "robustness.json").read_text())["datasets"]["ECSSD6"]["100.0"]
    raw, normalised = r["raw"]["map"], r["normalised"]["map"]
    assert abs(raw["mae"] - normalised["mae"]) > 0.05


def test_evaluate_checkpoint_jpeg(ecssd6, tiny_checkpoint, tmp_path):
    from robustness.evaluate import main

    out = tmp_path / "jpeg"
    assert (
        main(
            [
                "--checkpoint",
                str(tiny_checkpoint),
                "--data-dir",
                str(ecssd6),
                "--distortion",
                "jpeg",
                "--levels",
                "90",
                "10",
                "--limit",
                "4",
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    r = json.loads((out / "robustness.json").read_text())["datasets"]["ECSSD6"]
    assert set(r["90.0"]["normalised"]) == {"metric", "ce"} and set(r["10.0"]["raw"]) == {"metric", "ce"}
    assert all(
        0 <= r[lv][mode][m]["adp_f"] <= 1
        for lv in ("90.0", "10.0")
        for mode in ("raw", "normalised")
        for m in ("metric", "ce")
    )


def test_attacks_record_per_image_scores(ecssd6, tiny_checkpoint, tmp_path):
    """The attack path keeps every image's scores like the others (budget 0: the clean images, no attack to
    compile)."""
    from robustness.evaluate import main

    out = tmp_path / "pgd"
    argv = ["--checkpoint", str(tiny_checkpoint), "--data-dir", str(ecssd6), "--distortion", "pgd-linf"]
    assert main([*argv, "--levels", "0", "--limit", "3", "--output", str(out), "--no-progress"]) == 0
    report = json.loads((out / "robustness.json").read_text())
    assert report["images"] == {"ECSSD6": FolderSource(ecssd6).names[:3]}
    level = report["datasets"]["ECSSD6"]["0.0"]
    for mode in ("raw", "normalised"):
        for key in ("adp_f", "mae"):
            values = np.array(level["per_image"][mode]["ce"][key])
            assert values.shape == (1, 3) and values.mean() == pytest.approx(level[mode]["ce"][key], abs=1e-6)


def test_jacobian_cli_table_json_and_histogram(ecssd6, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from robustness.jacobian import main

    # Each estimator is one more compilation of the network (a minute each on two busy cores): Hutchinson and
    # Eq. 12 are checked against exact Jacobians in test_robustness_norms.py, so here only the gradient
    # statistics and the power iteration run, with the plain convolutions of the checkpoint's config (quicker
    # to compile).
    out = tmp_path / "jac"
    assert (
        main(
            [
                "--checkpoint",
                str(tiny_checkpoint),
                "--data-dir",
                str(ecssd6),
                "--limit",
                "2",
                "--output-dir",
                str(out),
                "--power-iterations",
                "3",
                "--probes",
                "0",
                "--mc-directions",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Table III (salient_prob" in printed and "median(|g|)" in printed and "power iteration" in printed
    report = json.loads((out / "jacobian.json").read_text())
    assert report["settings"]["bn_mode"] == "eval"
    images = report["datasets"]["ECSSD6"]["images"]
    summary = report["datasets"]["ECSSD6"]["summary"]
    assert len(images) == 2
    assert summary["gradient"]["max"] == pytest.approx(np.mean([r["stats"]["max"] for r in images]))
    for r in images:
        s = r["stats"]
        assert s["min"] <= s["median"] <= s["max"] and s["max"] > 0
        assert r["spectral"]["iterations"] <= 3 and r["spectral"]["value"] > 0 and "frobenius" not in r
    assert (out / "gradient_histogram.png").stat().st_size > 1000
    assert main(["--checkpoint", str(tiny_checkpoint), "--data-dir", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_report_puts_the_tools_outputs_side_by_side(tmp_path, capsys):
    from robustness.report import main

    jac = {
        "settings": {"output": "salient_prob", "authors_objective": False},
        "datasets": {
            "D": {
                "summary": {"gradient": {"max": 2.0, "min": 0.0, "median": 0.5, "mean": 0.75, "var": 0.1}},
                "images": [{"spectral": {"value": v}} for v in (1.0, 3.0, 2.0)],
            }
        },
    }
    lip = {
        "outputs": {
            "logits": {
                "bounded": True,
                "layerwise_certified": 10.0,
                "layerwise_power_estimate": 4.0,
                "elementwise_certified": 99.0,
                "elementwise_estimate": 98.0,
            },
            "metric_map": {"bounded": False, "reason": "rsqrt at MEnet"},
        }
    }
    ev = {
        "distortion": "awgn",
        "datasets": {"D": {"0.0": {m: {"map": {"adp_f": 0.8, "mae": 0.1}} for m in ("normalised", "raw")}}},
    }
    for name, data in (("jac.json", jac), ("lip.json", lip), ("ev.json", ev)):
        (tmp_path / name).write_text(json.dumps(data))
    out = tmp_path / "report"
    assert (
        main(
            [
                "--jacobian",
                str(tmp_path / "jac.json"),
                "--lipschitz",
                str(tmp_path / "lip.json"),
                "--evaluate",
                str(tmp_path / "ev.json"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["local"]["D"]["spectral_norm_quantiles"]["median"] == 2.0
    assert report["bounds"]["metric_map"] == {"not_bounded": "rsqrt at MEnet"}
    text = (out / "report.md").read_text()
    assert "| logits | 10 | 4 | 99 |" in text and "0.8000 / 0.1000" in text
    assert main(["--jacobian", str(tmp_path / "lip.json"), "--output", str(out)]) == 2
    assert "not written by the expected tool" in capsys.readouterr().err
