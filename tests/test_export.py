"""`python -m menet_jax.export` (ONNX, StableHLO) and `predict --backend onnx`: the exported files give the JAX
Predictor's maps, the ONNX path runs without JAX, and damaged or foreign files are one-line errors.

Tolerance: max |exported map - Predictor map| < 2e-4 (float32, maps in [0, 1]). Measured on these three images:
6e-5 for ONNX, 3e-5 for StableHLO; over 20 ECSSD images at most 1.02e-4 for ONNX (the CE map's per-image min-max
stretch magnifies the convolutions' summation-order differences), hence the margin for other CPUs and versions.
"""

import hashlib
import importlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import one_line_error
from PIL import Image

from menet_jax import export as menet_export
from menet_jax.core.config import get_config
from menet_jax.inference import exported as exported_files
from menet_jax.inference.predictor import Predictor
from menet_jax.inference.render import render
from menet_jax.io.images import load_photo, resize_input
from menet_jax.predict import main as predict_main

TOLERANCE = 2e-4
STEMS = ("0001", "0002", "0003")


def _require(module):
    """The module, or a skip naming it (a failure under CI, whose test extra installs it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"{module} is not installed (pip install -e '.[export]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def onnx():
    _require("onnxruntime")
    return _require("onnx")


@pytest.fixture(scope="module")
def exported(onnx, tmp_path_factory):
    """The shipped weights exported once with the CLI in both formats."""
    folder = tmp_path_factory.mktemp("export")
    paths = {"onnx": folder / "menet.onnx", "stablehlo": folder / "menet.stablehlo"}
    assert menet_export.main([str(paths["onnx"])]) == 0  # default: shipped weights
    assert menet_export.main([str(paths["stablehlo"])]) == 0  # the format from the extension
    return paths


@pytest.fixture(scope="module")
def photos(shared_data):
    return [load_photo(shared_data / "ECSSD" / "images" / f"{stem}.jpg") for stem in STEMS]


@pytest.fixture(scope="module")
def predictor():
    return Predictor.load(None, batch_size=len(STEMS))


def _max_difference(a, b):
    return max(float(np.abs(np.asarray(a[name]) - np.asarray(b[name])).max()) for name in ("metric", "ce"))


def test_exports_give_the_predictors_maps_on_real_images(exported, photos, predictor):
    reference = predictor(photos)  # at each image's size
    onnx_maps = exported_files.OnnxPredictor(exported["onnx"], batch_size=2)(photos)  # two runs: 2 + 1 images
    for ours, theirs in zip(onnx_maps, reference):
        assert ours["metric"].shape == theirs["metric"].shape
        assert _max_difference(ours, theirs) < TOLERANCE
    size = predictor.config.image_size
    batch = np.stack([resize_input(image, size) for image in photos])
    at_network_size = predictor.predict_batch(predictor.variables, batch)
    hlo = exported_files.load(exported["stablehlo"])
    assert isinstance(hlo, exported_files.StableHLOModel) and hlo.image_size == size
    assert _max_difference(hlo(batch.astype(np.float32)), at_network_size) < TOLERANCE
    assert (
        _max_difference(hlo(batch[:1].astype(np.float32)), {k: v[:1] for k, v in at_network_size.items()}) < TOLERANCE
    )  # the batch dimension is symbolic


def test_predict_backend_onnx_imports_no_jax(exported, shared_data, photos, predictor, tmp_path):
    """The CLI's ONNX path in a fresh interpreter: no jax / flax module imported, and the map the JAX path gives
    (within one grey level of 255)."""
    photo = shared_data / "ECSSD" / "images" / f"{STEMS[0]}.jpg"
    out = tmp_path / "map.png"
    run = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "menet_jax.predict",
            "i",
            str(photo),
            str(out),
            "--backend",
            "onnx",
            "--checkpoint",
            str(exported["onnx"]),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    imported = {m.group(1) for m in re.finditer(r"^import time:.*\|\s+([\w.]+)\s*$", run.stderr, re.M)}
    assert "menet_jax.inference.exported" in imported and "onnxruntime" in imported
    assert not {name for name in imported if name.split(".")[0] in ("jax", "jaxlib", "flax")}
    expected = np.asarray(render(photos[0], predictor([photos[0]])[0]["metric"]), np.int16)
    assert np.abs(np.asarray(Image.open(out), np.int16) - expected).max() <= 1


@pytest.fixture(scope="module")
def tiny(onnx, tmp_path_factory):
    """Tiny weights (another size and width than the shipped ones) as an .npz, exported with the CLI to both
    formats: {"npz", "onnx", "stablehlo"} -> path."""
    from menet_jax.core.model import MEnet, init_variables
    from menet_jax.io import weights as pretrained

    folder = tmp_path_factory.mktemp("tiny")
    config = get_config("tiny")
    paths = {"npz": folder / "tiny.npz", "onnx": folder / "tiny.onnx", "stablehlo": folder / "tiny.stablehlo"}
    pretrained.export(init_variables(MEnet.from_config(config), 3), config, paths["npz"])
    for fmt in ("onnx", "stablehlo"):
        assert menet_export.main(["--checkpoint", str(paths["npz"]), str(paths[fmt])]) == 0
    return paths


def test_export_from_a_weights_file_of_another_size(tiny):
    """--checkpoint as an exported .npz (the tiny config: another size and width), both formats against the
    Predictor on a random image."""
    reference = Predictor.load(tiny["npz"], batch_size=2)
    size = reference.config.image_size
    batch = np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype(np.uint8)
    expected = reference.predict_batch(reference.variables, batch)
    for fmt in ("onnx", "stablehlo"):
        out = tiny[fmt]
        runner = exported_files.load(out)
        maps = runner.forward(batch) if fmt == "onnx" else runner(batch.astype(np.float32))
        assert runner.image_size == size and _max_difference(maps, expected) < TOLERANCE, fmt


def _wrong_input_onnx(onnx, path):
    """A valid ONNX model that is not ours: NCHW (1, 3, 224, 224) in, one output."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 224, 224])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _wrong_output_onnx(onnx, path):
    """Our input and output names, other output shapes: (N, 32, 32, 3) maps (the input passed through)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["metric"]), helper.make_node("Identity", ["images"], ["ce"])],
        "other",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 32, 32, 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 32, 32, 3]) for name in ("metric", "ce")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def test_damaged_and_foreign_files_are_one_line_errors(onnx, exported, tmp_path, capsys):
    onnx_bytes, hlo_bytes = exported["onnx"].read_bytes(), exported["stablehlo"].read_bytes()
    rng = np.random.default_rng(0)
    files = {
        "random.onnx": rng.bytes(4096),
        "truncated.onnx": onnx_bytes[: len(onnx_bytes) // 2],
        "empty.onnx": b"",
        "truncated.stablehlo": hlo_bytes[: len(hlo_bytes) // 2],
        "random.stablehlo": rng.bytes(4096),
        "onnx_as.stablehlo": onnx_bytes[:100000],
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    _wrong_input_onnx(onnx, tmp_path / "wrong_input.onnx")
    _wrong_output_onnx(onnx, tmp_path / "wrong_output.onnx")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photo)
    for path in sorted(tmp_path.iterdir()):
        if path == photo:
            continue
        runs = [(menet_export.main, ["--check", str(path)])]
        if path.suffix == ".onnx":
            runs.append(
                (
                    predict_main,
                    [
                        "i",
                        str(photo),
                        str(tmp_path / "map.png"),
                        "--backend",
                        "onnx",
                        "--checkpoint",
                        str(path),
                        "--no-progress",
                    ],
                )
            )
        for run, argv in runs:
            assert run(argv) == 2, (path.name, argv)
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"error: {path}: ") and "\n" not in err, (path.name, err)
            if path.name == "wrong_input.onnx":
                assert "not a menet-jax export" in err and "[1, 3, 224, 224]" in err
            if path.name == "wrong_output.onnx":
                assert "output metric is ['batch', 32, 32, 3]; expected [N, 32, 32]" in err
    assert not (tmp_path / "map.png").exists()


def test_predict_backend_option_errors(exported, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photo)
    out = str(tmp_path / "map.png")
    for argv, expected in (
        (["--backend", "onnx"], "--backend onnx needs --checkpoint FILE.onnx"),
        (["--checkpoint", str(exported["onnx"])], "run it with --backend onnx"),
        (["--backend", "onnx", "--checkpoint", str(exported["onnx"]), "--dtype", "bfloat16"], "computes in float32"),
        (["--backend", "onnx", "--checkpoint", str(tmp_path / "missing.onnx")], "not found"),
    ):
        assert predict_main(["i", str(photo), out, "--no-progress", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err, err


def _flip_kernel_bytes(data: bytes, fmt: str, weights_file) -> bytearray:
    """`data` with 64 bytes inverted (XOR 0x5a) in the middle of the largest kernel's float32 values, found by
    their bytes (ONNX stores the kernel OIHW, StableHLO as the HWIO constant): damage that still decodes."""
    from menet_jax.io import weights as pretrained

    variables, _, _ = pretrained.load(weights_file)
    kernel = np.asarray(variables["params"]["E5_block"]["BRC_0"]["Conv_0"]["kernel"], np.float32)
    raw = (kernel.transpose(3, 2, 0, 1) if fmt == "onnx" else kernel).tobytes()
    start = data.find(raw)
    assert start > 0 and len(raw) > 1024, fmt
    at = start + len(raw) // 2
    damaged = bytearray(data)
    damaged[at : at + 64] = bytes(b ^ 0x5A for b in damaged[at : at + 64])
    return damaged


def test_flipped_weight_bytes_are_refused_though_the_file_decodes(tiny, tmp_path, capsys):
    """64 flipped bytes inside a kernel: the file still decodes (onnxruntime runs it, with other maps; jax.export
    deserializes it), so only the recorded SHA-256 can catch it: --check and predict --backend onnx refuse it in
    one line naming the file; the intact file still passes."""
    import onnxruntime as ort
    from jax import export as jax_export

    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photo)
    for fmt in ("onnx", "stablehlo"):
        intact = tiny[fmt].read_bytes()
        damaged = _flip_kernel_bytes(intact, fmt, tiny["npz"])
        path = tmp_path / f"damaged.{fmt}"
        path.write_bytes(damaged)
        runs = [(menet_export.main, ["--check", str(path)])]
        if fmt == "onnx":
            batch = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
            before, after = (
                ort.InferenceSession(bytes(b), providers=["CPUExecutionProvider"]).run(["metric"], {"images": batch})[0]
                for b in (intact, damaged)
            )
            assert not np.allclose(before, after, atol=1e-3)  # the damage decodes and changes the maps
            out = str(tmp_path / "map.png")
            runs.append((predict_main, ["i", str(photo), out, "--backend", "onnx", "--checkpoint", str(path)]))
        else:
            payload, recorded = exported_files.split_stablehlo(bytes(damaged))
            assert recorded is not None
            jax_export.deserialize(bytearray(payload))  # decodes: the damage is inside a constant
        for run in runs:
            line = one_line_error(capsys, f"error: {path}: checksum does not match", "damaged or was modified", run=run)
            assert "re-export it" in line
        assert menet_export.main(["--check", str(tiny[fmt])]) == 0, fmt
        assert capsys.readouterr().out.startswith(f"{tiny[fmt]}: input [N, 32, 32, 3] float32")
    assert not (tmp_path / "map.png").exists()


def test_exports_record_their_checksum_and_files_without_one_are_refused(tiny, tmp_path, capsys):
    """The ONNX digest is the SHA-256 of the file with the placeholder in its place (checkable with bytes alone),
    the StableHLO one that of the serialization before the trailer; a damaged record and files without one (an
    older export, the record stripped) are one-line errors that say to re-export."""
    import onnxruntime as ort

    from menet_jax.inference.export import onnx_model
    from menet_jax.io import weights as pretrained

    data = tiny["onnx"].read_bytes()
    meta = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    digest = meta[exported_files.DIGEST_KEY]
    assert digest != exported_files.DIGEST_PLACEHOLDER and data.count(digest.encode()) == 1
    unsealed = data.replace(digest.encode(), exported_files.DIGEST_PLACEHOLDER.encode())
    assert hashlib.sha256(unsealed).hexdigest() == digest
    payload, recorded = exported_files.split_stablehlo(tiny["stablehlo"].read_bytes())
    assert recorded == hashlib.sha256(payload).hexdigest().encode()

    variables, config, _ = pretrained.load(tiny["npz"])
    other_digest = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    files = {
        "old.onnx": (onnx_model(variables, config).SerializeToString(), "records no checksum"),
        "old.stablehlo": (payload, "records no checksum"),
        "record.onnx": (data.replace(digest.encode(), other_digest.encode()), "checksum does not match"),
        "record.stablehlo": (payload + exported_files.STABLEHLO_TRAILER + b"0" * 64 + b"\n", "checksum does not match"),
    }
    for name, (content, expected) in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        one_line_error(
            capsys, f"error: {path}: {expected}", "re-export it", run=(menet_export.main, ["--check", str(path)])
        )


def test_export_takes_one_out_and_the_network_as_checkpoint(tiny, tmp_path, capsys):
    """OUT is the only positional path: the old CHECKPOINT OUT form, a lone weights file (the old form's accident:
    the weights as the output), an extension naming no format and a --format contradicting it are one-line errors
    that write nothing and leave the weights as they were; --format names the format of any other file name."""
    weights = tiny["npz"]
    before = weights.read_bytes()
    out = tmp_path / "new.onnx"
    other = tmp_path / "net.bin"
    for argv, expected in (
        (
            [str(weights), str(out)],
            f"give the network with --checkpoint: python -m menet_jax.export --checkpoint {weights} {out}",
        ),
        ([str(weights)], f"{weights}: a weights file is not an export format; give the network with --checkpoint"),
        (["--checkpoint", str(weights), str(other)], f"{other}: unknown export extension '.bin'"),
        (["--checkpoint", str(weights), str(out), "--format", "stablehlo"], "--format stablehlo, but .onnx names onnx"),
        (["--checkpoint", str(weights), str(out), str(other)], "give one OUT file"),
    ):
        one_line_error(capsys, expected, run=(menet_export.main, argv))
        assert not out.exists() and not other.exists() and weights.read_bytes() == before, argv
    assert menet_export.main(["--checkpoint", str(weights), str(other), "--format", "stablehlo"]) == 0
    assert menet_export.main(["--check", str(other)]) == 0  # read by its content: the StableHLO trailer
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{other}: input [N, 32, 32, 3] float32")
