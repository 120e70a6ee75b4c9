"""Inference at any image size and the rembg-style predict CLI."""

import numpy as np
import pytest
from PIL import Image

from menet_jax.core.config import get_config
from menet_jax.core.model import MEnet, init_variables
from menet_jax.inference.predictor import Predictor
from menet_jax.inference.render import render
from menet_jax.io.images import load_photo, resize_to
from menet_jax.predict import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny trained workdir (a few steps are enough to exercise loading and inference)."""
    from menet_jax.training.loop import train

    path = tmp_path_factory.mktemp("run")
    train(get_config("tiny", ["steps=2", "train_size=8", "val_size=4", "checkpoint_every=2"]), path, progress=False)
    return path


def test_predictor_returns_maps_at_each_image_size(workdir):
    predictor = Predictor.load(workdir, batch_size=4)
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (h, w, 3)).astype(np.uint8) for h, w in [(50, 70), (32, 32), (120, 40), (33, 91), (64, 64)]
    ]
    out = predictor(images)  # five images: two batches, one padded
    assert [m["metric"].shape for m in out] == [im.shape[:2] for im in images]
    for maps in out:
        for name in ("metric", "ce"):
            assert maps[name].dtype == np.float32 and 0 <= maps[name].min() and maps[name].max() <= 1
    assert predictor.predict_batch._cache_size() == 1  # one compiled shape for all image sizes
    # The same image alone or in a batch gives the same map (evaluation-mode BatchNorm, padding ignored).
    np.testing.assert_allclose(predictor([images[2]])[0]["ce"], out[2]["ce"], atol=1e-5)


def test_predictor_matches_the_model_at_network_size():
    config = get_config("tiny")
    variables = init_variables(MEnet.from_config(config), 0)
    predictor = Predictor(variables, config, batch_size=2)
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    from menet_jax.core.network import predict_function

    direct = predict_function(config)(variables, image[None])
    np.testing.assert_allclose(predictor([image])[0]["metric"], direct["metric"][0], atol=1e-6)


def test_load_photo_handles_modes_and_exif(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((10, 20), 7, np.uint8)).save(grey)
    assert load_photo(grey).shape == (10, 20, 3)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((10, 20, 4), np.uint8)).save(rgba)
    assert load_photo(rgba).shape == (10, 20, 3)
    rotated = tmp_path / "rotated.jpg"
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(rotated, exif=exif)
    assert load_photo(rotated).shape == (20, 10, 3)  # upright, as a viewer shows it
    # A 16-bit PNG with the same orientation is upright too (it was read unrotated), scaled to 8 bit.
    deep = tmp_path / "rotated16.png"
    img16 = Image.fromarray(np.full((10, 20), 65535, np.uint16))
    exif16 = img16.getexif()
    exif16[0x0112] = 6
    img16.save(deep, exif=exif16)
    photo16 = load_photo(deep)
    assert photo16.shape == (20, 10, 3) and (photo16 == 255).all()
    # A float TIFF photo in [0, 1] is scaled (it was truncated to an all-black image).
    floats = tmp_path / "float.tiff"
    Image.fromarray(np.full((10, 20), 0.5, np.float32)).save(floats)
    assert (load_photo(floats) == 128).all()


def test_render_modes():
    image = np.full((2, 2, 3), 9, np.uint8)
    saliency = np.array([[0.0, 0.4], [0.6, 1.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(render(image, saliency)), [[0, 102], [153, 255]])
    np.testing.assert_array_equal(np.asarray(render(image, saliency, threshold=0.5)), [[0, 0], [255, 255]])
    cut = np.asarray(render(image, saliency, cutout=True))
    assert cut.shape == (2, 2, 4) and cut[1, 1, 3] == 255 and cut[0, 0, 0] == 9


def test_resize_to_keeps_range_and_shape():
    out = resize_to(np.random.default_rng(0).random((8, 8)).astype(np.float32), 30, 17)
    assert out.shape == (30, 17) and out.min() >= 0 and out.max() <= 1


def test_cli_folder_on_real_images(workdir, shared_data, tmp_path, capsys):
    images = sorted((shared_data / "ECSSD" / "images").glob("*.jpg"))[555:560]  # includes greyscale 0557
    folder = tmp_path / "in"
    folder.mkdir()
    for p in images:
        (folder / p.name).write_bytes(p.read_bytes())
    assert main(["p", str(folder), str(tmp_path / "out"), "--checkpoint", str(workdir), "--no-progress"]) == 0
    for p in images:
        out = Image.open(tmp_path / "out" / f"{p.stem}.png")
        assert out.size == Image.open(p).size and out.mode == "L"
    assert (
        main(
            ["i", str(images[0]), str(tmp_path / "one.png"), "--checkpoint", str(workdir), "--cutout", "--no-progress"]
        )
        == 0
    )
    assert Image.open(tmp_path / "one.png").mode == "RGBA"


def test_cli_errors_are_one_line(workdir, tmp_path, capsys):
    for argv, expected in (
        (["i", str(tmp_path / "missing.jpg"), "o.png", "--checkpoint", str(workdir)], "image not found"),
        (["p", str(tmp_path), "out", "--checkpoint", str(workdir)], "no images found in"),
        (["i", __file__, "o.png", "--checkpoint", str(tmp_path)], "not a training workdir"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err


def test_exported_weights_load_and_predict_like_the_checkpoint(workdir, tmp_path, capsys):
    """`pretrained export` (float16 parameters) gives the checkpoint's maps within half precision, loads through
    Predictor.load and the CLIs, and a damaged file fails with one line naming it."""
    from menet_jax.io import weights as pretrained
    from menet_jax.pretrained import main as pretrained_main

    out = tmp_path / "weights.npz"
    assert pretrained_main(["export", str(workdir), str(out)]) == 0
    variables, config, meta = pretrained.load(out, expected_sha256=pretrained.sha256(out))
    assert config == Predictor.load(workdir).config and meta == {"source": str(workdir), "step": 2}
    capsys.readouterr()
    assert pretrained_main(["export", str(workdir), str(tmp_path / "w7.npz"), "--step", "7"]) == 2  # no such step
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no checkpoint of step 7") and "kept: " in err and "\n" not in err
    reference = Predictor.load(workdir)
    shipped = Predictor.load(out)
    assert jax_tree_dtypes(shipped.variables) == {"float32"}
    image = np.random.default_rng(2).integers(0, 256, (48, 40, 3)).astype(np.uint8)
    a, b = reference([image])[0], shipped([image])[0]
    for name in ("metric", "ce"):
        assert np.abs(a[name] - b[name]).max() < 2e-2
    photo = tmp_path / "photo.png"
    Image.fromarray(image).save(photo)
    assert main(["i", str(photo), str(tmp_path / "map.png"), "--checkpoint", str(out), "--no-progress"]) == 0
    assert Image.open(tmp_path / "map.png").size == (40, 48)

    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(out.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(Exception, match="checksum mismatch"):
        pretrained.load(damaged, expected_sha256=pretrained.sha256(out))
    assert main(["i", str(photo), str(tmp_path / "x.png"), "--checkpoint", str(damaged), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(damaged) in err and "\n" not in err


def jax_tree_dtypes(tree):
    import jax

    return {str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(tree)}


def test_training_curves_png(workdir, tmp_path):
    from menet_jax.curves import main as curves_main
    from menet_jax.errors import WorkdirError
    from menet_jax.training.curves import read_log

    train_log, val_log = read_log(workdir)
    assert [r["step"] for r in train_log] == sorted(r["step"] for r in train_log) and train_log and val_log
    assert curves_main([str(workdir), "--output", str(tmp_path / "c.png")]) == 0
    assert Image.open(tmp_path / "c.png").size[0] > 1000
    with pytest.raises(WorkdirError, match="no training log"):
        read_log(tmp_path)


def test_shipped_weights_are_the_default_and_segment_real_images(shared_data, tmp_path):
    """A fresh clone predicts without --checkpoint, and the shipped network is a trained one: on real ECSSD images
    its maps beat the all-background baseline by far (fresh weights do not)."""
    from menet_jax.io import weights as pretrained

    assert pretrained.DEFAULT in pretrained.SHIPPED
    path = pretrained.WEIGHTS_DIR / pretrained.DEFAULT
    assert path.stat().st_size <= 25e6 and pretrained.sha256(path) == pretrained.SHIPPED[pretrained.DEFAULT]
    photo = shared_data / "ECSSD" / "images" / "0001.jpg"
    assert main(["i", str(photo), str(tmp_path / "0001.png"), "--no-progress"]) == 0
    assert Image.open(tmp_path / "0001.png").size == Image.open(photo).size
    stems = ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"]
    images = [load_photo(shared_data / "ECSSD" / "images" / f"{s}.jpg") for s in stems]
    masks = [np.asarray(Image.open(shared_data / "ECSSD" / "masks" / f"{s}.png")) > 127 for s in stems]
    shipped = Predictor.load(None)
    fresh = Predictor(init_variables(MEnet.from_config(shipped.config), 0), shipped.config)
    baseline = np.mean([gt.mean() for gt in masks])  # MAE of the all-background map
    for predictor, trained in ((shipped, True), (fresh, False)):
        maps = predictor(images)
        for name in ("metric", "ce"):
            mae = np.mean([np.abs(m[name] - gt).mean() for m, gt in zip(maps, masks)])
            assert (mae < 0.75 * baseline) == trained, (name, trained, mae, baseline)


def test_a_damaged_shipped_file_fails_with_one_line(tmp_path, monkeypatch, capsys):
    from menet_jax.io import weights as pretrained

    original = pretrained.WEIGHTS_DIR / pretrained.DEFAULT
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    (tmp_path / pretrained.DEFAULT).write_bytes(original.read_bytes()[:-1])
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photo)
    assert main(["i", str(photo), str(tmp_path / "map.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "checksum mismatch" in err and pretrained.DEFAULT in err and "\n" not in err


def _tiny_export(path, collection=None, value=None):
    """Fresh tiny weights exported to `path`, with `value` in the first array of `collection` when given (a
    diverged run's NaN or inf)."""
    from menet_jax.io import weights as pretrained

    config = get_config("tiny")
    variables = init_variables(MEnet.from_config(config), 0)
    if collection is not None:
        node = variables[collection]
        while isinstance(node[sorted(node)[0]], dict):
            node = node[sorted(node)[0]]
        key = sorted(node)[0]
        node[key] = np.array(node[key])
        node[key].flat[0] = value
    pretrained.export(variables, config, path)
    return variables, config


@pytest.mark.parametrize("collection, value", [("params", np.nan), ("batch_stats", np.inf)])
def test_non_finite_weights_are_refused(tmp_path, capsys, monkeypatch, collection, value):
    """NaN / inf weights (a diverged run) give black maps; predict and evaluate refuse them, from a weights file
    or a training workdir, before writing anything."""
    import dataclasses
    import json

    from menet_jax.errors import WeightsError
    from menet_jax.evaluate import main as evaluate_main
    from menet_jax.io import checkpoint

    weights = tmp_path / "diverged.npz"
    variables, config = _tiny_export(weights, collection, value)
    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(data / "images" / "a.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(data / "masks" / "a.png")
    for run, argv in (
        (main, ["i", str(data / "images" / "a.png"), str(tmp_path / "map.png")]),
        (evaluate_main, ["--data-dir", str(data), "--output", str(tmp_path / "eval")]),
    ):
        assert run(argv + ["--checkpoint", str(weights), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {weights}: {collection}/") and "NaN or infinite" in err and "\n" not in err
    assert not (tmp_path / "map.png").exists() and not (tmp_path / "eval").exists()
    # A training workdir goes through the same check (the checkpoint reader stubbed with the diverged weights).
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    monkeypatch.setattr(checkpoint, "load_variables", lambda workdir, step=None: variables)
    with pytest.raises(WeightsError, match=f"^{tmp_path / 'run'}: {collection}/.*NaN or infinite"):
        Predictor.load(tmp_path / "run")


def test_damaged_weights_files_are_one_line_errors(tmp_path, capsys):
    """Whatever is wrong with a --checkpoint file, one line naming it, not a traceback."""
    import io
    import zipfile

    good = tmp_path / "good.npz"
    _tiny_export(good)
    data = good.read_bytes()
    middle = bytearray(data)
    middle[len(data) // 2 : len(data) // 2 + 200] = bytes(200)  # corrupt compressed data (zlib.error)
    no_params = io.BytesIO()
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(no_params, "w") as zout:
        for name in zin.namelist():
            if not name.startswith("params/"):
                zout.writestr(name, zin.read(name))
    no_header = io.BytesIO()
    np.savez(no_header, x=np.zeros(3))
    damaged = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "random": np.random.default_rng(0).bytes(4096),
        "middle": bytes(middle),
        "no_params": no_params.getvalue(),
        "no_header": no_header.getvalue(),
    }
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photo)
    for name, content in damaged.items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(content)
        assert main(["i", str(photo), str(tmp_path / "map.png"), "--checkpoint", str(path), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {path}: ") and "\n" not in err, (name, err)
    assert not (tmp_path / "map.png").exists()


def test_a_photo_over_the_decompression_bomb_limit_is_one_line(tmp_path, capsys, monkeypatch):
    photo = tmp_path / "huge.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photo)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 600 pixels: over twice the limit
    with pytest.raises(Exception, match=f"^{photo}: cannot read image .*decompression bomb"):
        load_photo(photo)
    weights = tmp_path / "w.npz"
    _tiny_export(weights)
    assert main(["i", str(photo), str(tmp_path / "map.png"), "--checkpoint", str(weights), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {photo}: cannot read image") and "\n" not in err
    assert not (tmp_path / "map.png").exists()


def test_dtype_flag_runs_the_shipped_network_in_bfloat16(shared_data, tmp_path):
    """`predict --dtype bfloat16` computes in bfloat16 (maps close to float32's, not equal to them)."""
    photo = shared_data / "ECSSD" / "images" / "0002.jpg"
    maps = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"{dtype}.png"
        assert main(["i", str(photo), str(out), "--dtype", dtype, "--no-progress"]) == 0
        maps[dtype] = np.asarray(Image.open(out), np.float32) / 255
    difference = np.abs(maps["bfloat16"] - maps["float32"])
    assert 0 < difference.mean() < 0.01, difference.mean()
