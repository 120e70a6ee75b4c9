"""robustness.corruptions: the 15 ImageNet-C corruptions (shape, dtype, seeding, severity order, definitions),
an imagecorruptions oracle where it imports, and `robustness.evaluate --distortion imagenet-c`."""

import colorsys
import importlib.util
import json
import os
import sys
import types

import numpy as np
import pytest

from menet_datasets import FolderSource
from robustness import corruptions as C


def _tiny(seed=0, shape=(24, 31, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


@pytest.fixture(scope="module")
def real_images(shared_data):
    """The first two ECSSD images (400 x 267 and 300 x 400: both orientations)."""
    source = FolderSource(shared_data / "ECSSD")
    return [source[i]["image"] for i in (0, 1)]


@pytest.mark.parametrize("name", C.NAMES)
def test_shape_dtype_and_seeding(name):
    image = _tiny()
    for severity in C.SEVERITIES:
        out = C.corrupt(image, name, severity, np.random.default_rng(1))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(out, C.corrupt(image, name, severity, np.random.default_rng(1)))
        other = C.corrupt(image, name, severity, np.random.default_rng(2))
        assert np.array_equal(out, other) != (name in C.RANDOM)  # random ones differ, the rest ignore rng
    assert not np.array_equal(C.corrupt(image, name, 5, np.random.default_rng(1)), image)
    with pytest.raises(ValueError):
        C.corrupt(image, name, 6, np.random.default_rng(0))
    with pytest.raises(ValueError):
        C.corrupt(image.astype(np.float32), name, 1, np.random.default_rng(0))


def test_the_global_numpy_rng_is_never_used():
    state = np.random.get_state()
    for name in C.NAMES:
        C.corrupt(_tiny(), name, 3, np.random.default_rng(0))
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(state[1:], after[1:])) and state[0] == after[0]


def _mad(a, b):
    return float(np.abs(a.astype(np.float64) - b).mean())


@pytest.mark.parametrize("name", C.NAMES)
def test_severity_order_on_real_images(real_images, name):
    """Mean absolute change from the clean image does not decrease with severity (same generator seed), with
    the two exceptions the published parameters imply:
    * frost 3 -> 4 keeps the frost weight (0.7) and lowers the image weight 0.70 -> 0.65, so each pixel moves by
      at most 0.05 x (x its value) either way: |MAD_4 - MAD_3| <= 0.05 mean(x) + rounding;
    * elastic_transform changes regime at 2 -> 3 (a large affine warp at 1-2, local jitter at 3-5): ordered
      within each regime only."""
    for image in real_images:
        mad = [_mad(C.corrupt(image, name, s, np.random.default_rng(0)), image) for s in C.SEVERITIES]
        steps = list(zip(C.SEVERITIES[:-1], C.SEVERITIES[1:]))
        for (s, t), a, b in zip(steps, mad[:-1], mad[1:]):
            if name == "frost" and (s, t) == (3, 4):
                assert abs(b - a) <= 0.05 * image.mean() + 0.5, mad
            elif name == "elastic_transform" and (s, t) == (2, 3):
                assert b < a, mad  # the documented regime change
            else:
                assert b >= a, (name, s, t, mad)
        assert mad[0] > 0


def test_definitions_brightness_contrast_pixelate():
    image = _tiny(3)
    out = C.brightness(image, 2)
    for y, x in ((0, 0), (5, 7), (20, 30)):
        h, s, v = colorsys.rgb_to_hsv(*(image[y, x] / 255.0))
        expected = np.array(colorsys.hsv_to_rgb(h, s, min(v + 0.2, 1.0))) * 255
        np.testing.assert_allclose(out[y, x], expected, atol=0.51)
    black = C.brightness(np.zeros((2, 2, 3), np.uint8), 5)
    assert np.all(black == 128)  # V = 0.5, saturation 0
    low = C.contrast(image, 5).astype(float)
    m = image.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(low, np.clip(np.rint((image - m) * 0.05 + m), 0, 255), atol=1)
    big = np.repeat(np.repeat(_tiny(4, (5, 6, 3)), 4, 0), 4, 1)  # 20 x 24: 4 px blocks
    assert np.array_equal(C.pixelate(big, 5), big)  # already pixelated at 1/4


def test_plasma_fractal_and_frost_texture():
    a = C.plasma_fractal(64, 2.0, np.random.default_rng(0))
    assert a.shape == (64, 64) and a.min() == 0 and a.max() == 1
    assert np.array_equal(a, C.plasma_fractal(64, 2.0, np.random.default_rng(0)))
    # Higher decay = smoother fractal: smaller neighbour differences.
    rough = C.plasma_fractal(64, 1.2, np.random.default_rng(0))
    assert np.abs(np.diff(a, axis=0)).mean() < np.abs(np.diff(rough, axis=0)).mean()
    with pytest.raises(ValueError):
        C.plasma_fractal(48, 2.0, np.random.default_rng(0))
    t = C.frost_texture(30, 50, np.random.default_rng(0))
    assert t.shape == (30, 50, 3) and 0 <= t.min() and t.max() <= 255
    assert t[..., 2].mean() > t[..., 0].mean()  # blue-white tint


def test_parse_names():
    assert C.parse_names(None) == list(C.NAMES) and len(C.NAMES) == 15
    assert C.parse_names("fog,noise") == ["fog", "gaussian_noise", "shot_noise", "impulse_noise"]
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        C.parse_names("fog,rain")


def _imagecorruptions():
    """imagecorruptions, or a skip with the reason. It imports pkg_resources (gone from setuptools >= 81) only for
    its frost photos: a stand-in is provided for that, nothing else is patched."""
    if importlib.util.find_spec("imagecorruptions") is None:
        pytest.skip("imagecorruptions is not installed (pip install --no-deps imagecorruptions)")
    stubbed = "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None
    if stubbed:
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = lambda pkg, name: os.path.join(
            os.path.dirname(importlib.util.find_spec(pkg).origin), name
        )
        sys.modules["pkg_resources"] = stub
    try:
        import imagecorruptions
    except Exception as error:  # noqa: BLE001 (any import failure)
        pytest.skip(f"imagecorruptions does not import here: {type(error).__name__}: {error}")
    finally:
        if stubbed:  # others (pytest's monkeypatch) import pkg_resources for real
            sys.modules.pop("pkg_resources", None)
    return imagecorruptions


def test_gaussian_noise_and_jpeg_agree_with_imagecorruptions(real_images):
    """Oracle (statistics only, different generators): residual std within 2 %, mean within 0.5 + 0.3 levels (it
    truncates, this module rounds); JPEG byte-identical (both Pillow at the same quality, 4:2:0)."""
    ic = _imagecorruptions()
    image = real_images[0]
    for severity in C.SEVERITIES:
        np.random.seed(severity)  # theirs draws from the global RNG
        theirs = ic.corrupt(image, corruption_name="gaussian_noise", severity=severity).astype(float) - image
        ours = C.gaussian_noise(image, severity, np.random.default_rng(severity)).astype(float) - image
        assert ours.std() == pytest.approx(theirs.std(), rel=0.02)
        assert abs(ours.mean() - theirs.mean() - 0.5) < 0.3
        jpeg = ic.corrupt(image, corruption_name="jpeg_compression", severity=severity)
        assert np.array_equal(jpeg, C.jpeg_compression(image, severity, None))


PREDICTOR = """
import numpy as np
def brightness(images):
    return [np.asarray(im, np.float32).mean(-1)[::2, ::2] / 255.0 for im in images]
"""


@pytest.fixture(scope="module")
def ecssd2(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "ECSSD2"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for image in sorted((shared_data / "ECSSD" / "images").glob("*.jpg"))[:2]:
        (root / "images" / image.name).write_bytes(image.read_bytes())
        mask = shared_data / "ECSSD" / "masks" / f"{image.stem}.png"
        (root / "masks" / mask.name).write_bytes(mask.read_bytes())
    return root


def test_cli_imagenet_c_table_reference_and_errors(ecssd2, tmp_path, monkeypatch, capsys):
    from robustness.evaluate import main

    (tmp_path / "peer_model.py").write_text(PREDICTOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    common = [
        "--predictor",
        "peer_model:brightness",
        "--data-dir",
        str(ecssd2),
        "--distortion",
        "imagenet-c",
        "--corruptions",
        "gaussian_noise,pixelate",
        "--levels",
        "1",
        "4",
        "--limit",
        "2",
        "--seeds",
        "2",
        "--no-progress",
    ]
    assert main(common + ["--output", str(tmp_path / "a")]) == 0
    table = (tmp_path / "a" / "table.md").read_text()
    assert "| gaussian_noise | noise |" in table and "| pixelate | digital |" in table and "No CE column" in table
    report = json.loads((tmp_path / "a" / "robustness.json").read_text())
    r = report["datasets"]["ECSSD2"]
    assert list(r) == ["clean", "gaussian_noise", "pixelate"] and list(r["pixelate"]) == ["1", "4"]
    assert r["gaussian_noise"]["4"]["seeds"] == [0, 1] and r["pixelate"]["4"]["seeds"] == [0]  # deterministic
    for c in ("gaussian_noise", "pixelate"):
        for s in ("1", "4"):
            assert 0 <= r[c][s]["raw"]["map"]["adp_f"] <= 1 and 0 <= r[c][s]["normalised"]["map"]["mae"] <= 1
    assert report["frost"].startswith("procedural") and report["reference"] is None
    assert (tmp_path / "a" / "curves.png").stat().st_size > 1000
    # The same model as its own reference: every CE is exactly 1 (same seeds, same images).
    assert main(common + ["--output", str(tmp_path / "b"), "--reference", str(tmp_path / "a" / "robustness.json")]) == 0
    errors = json.loads((tmp_path / "b" / "robustness.json").read_text())["corruption_errors"]["ECSSD2"]
    assert errors["raw"]["map"] == pytest.approx({"gaussian_noise": 1.0, "pixelate": 1.0, "mCE": 1.0})
    assert "mCE 1.000" in (tmp_path / "b" / "table.md").read_text()
    capsys.readouterr()
    for bad, message in (
        (["--corruptions", "rain"], "unknown corruption 'rain'"),
        (["--levels", "6"], "severity '6'"),
        (["--reference", str(tmp_path / "missing.json")], "--reference"),
    ):
        argv = [a for a in common if a not in ("--levels", "1", "4")] if bad[0] == "--levels" else common
        assert main(argv + bad + ["--output", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert (
        main(
            [
                "--predictor",
                "peer_model:brightness",
                "--data-dir",
                str(ecssd2),
                "--distortion",
                "awgn",
                "--corruptions",
                "fog",
                "--output",
                str(tmp_path / "d"),
            ]
        )
        == 2
    )
    assert "--corruptions is for --distortion imagenet-c" in capsys.readouterr().err
