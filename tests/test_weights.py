"""Weights files (`menet_jax.io.weights`): every export records the SHA-256 of its contents, checked on load, so an
array or config that was changed inside a file that still unzips (valid CRC-32s) is a one-line error naming the
file, through `load` and `predict --checkpoint F.npz`; files without the record (older exports, the shipped file)
load as before."""

import json
import zipfile

import numpy as np
import pytest
from helpers import one_line_error, one_line_message
from PIL import Image

from menet_jax.core.config import get_config
from menet_jax.core.model import MEnet, init_variables
from menet_jax.errors import WeightsError
from menet_jax.io import weights
from menet_jax.predict import main as predict_main

KERNEL = "params/E5_block/BRC_0/Conv_0/kernel.npy"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny.npz"
    config = get_config("tiny")
    weights.export(init_variables(MEnet.from_config(config), 0), config, path)
    return path


def _rewrite(source, target, change) -> None:
    """`source`'s members written again to `target` as a valid archive (fresh CRC-32s), each member's bytes passed
    through `change(name, data)`; None drops the member."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            data = change(info.filename, old.read(info))
            if data is not None:
                new.writestr(info.filename, data)


def _flip_tail(data: bytes) -> bytes:
    """The last 64 bytes of a .npy member (array data, after its header) inverted."""
    return data[:-64] + bytes(b ^ 0x5A for b in data[-64:])


def test_the_contents_checksum_is_recorded_and_an_intact_file_loads(exported):
    with np.load(exported) as data:
        arrays = {key: data[key] for key in data.files}
    recorded = bytes(arrays[weights.DIGEST_MEMBER]).decode()
    assert len(recorded) == 64 and recorded == weights.contents_sha256(arrays)
    variables, config, _ = weights.load(exported)
    assert config == get_config("tiny") and variables["params"]["E5_block"]["BRC_0"]["Conv_0"]["kernel"].ndim == 4


def test_changed_arrays_or_config_that_still_decode_are_refused(exported, tmp_path, capsys):
    """Flipped bytes in a kernel, and an edited config (bn_epsilon), rewritten with valid CRCs: np.load reads both
    files, with other values, and only the recorded SHA-256 refuses them, in load and through predict (exit 2,
    nothing written)."""
    flipped, edited = tmp_path / "flipped.npz", tmp_path / "edited.npz"
    _rewrite(exported, flipped, lambda name, data: _flip_tail(data) if name == KERNEL else data)

    def edit_config(name, data):
        if name != "__header__.npy":
            return data
        with np.load(exported) as archive:
            header = json.loads(bytes(archive["__header__"]).decode())
        header["config"]["bn_epsilon"] *= 10
        array = np.frombuffer(json.dumps(header).encode(), np.uint8)
        with (tmp_path / "header.npy").open("wb") as f:
            np.save(f, array)
        return (tmp_path / "header.npy").read_bytes()

    _rewrite(exported, edited, edit_config)
    with np.load(exported) as intact, np.load(flipped) as damaged, np.load(edited) as changed:
        name = KERNEL[: -len(".npy")]
        assert damaged[name].shape == intact[name].shape
        assert not np.array_equal(damaged[name], intact[name], equal_nan=True)  # decodes, to other values
        assert (
            json.loads(bytes(changed["__header__"]).decode())["config"]["bn_epsilon"] != get_config("tiny").bn_epsilon
        )
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photo)
    for path in (flipped, edited):
        with pytest.raises(WeightsError) as excinfo:
            weights.load(path)
        one_line_message(excinfo, f"{path}: checksum does not match its contents", "damaged or was modified")
        argv = ["i", str(photo), str(tmp_path / "map.png"), "--checkpoint", str(path), "--no-progress"]
        one_line_error(capsys, f"error: {path}: checksum does not match", run=(predict_main, argv))
    assert not (tmp_path / "map.png").exists()


def test_files_without_the_record_still_load(exported, tmp_path):
    """An export written before the record existed (the member dropped) loads, with the same arrays; so does the
    shipped file, whose whole-file SHA-256 is checked instead."""
    legacy = tmp_path / "legacy.npz"
    _rewrite(exported, legacy, lambda name, data: None if name == weights.DIGEST_MEMBER + ".npy" else data)
    with np.load(legacy) as data:
        assert weights.DIGEST_MEMBER not in data.files
    old, config, _ = weights.load(legacy)
    new, _, _ = weights.load(exported)
    assert config == get_config("tiny")
    kernel = ("E5_block", "BRC_0", "Conv_0", "kernel")
    a, b = old["params"], new["params"]
    for key in kernel:
        a, b = a[key], b[key]
    np.testing.assert_array_equal(a, b)
    shipped, _, _ = weights.load()
    assert shipped["params"]
