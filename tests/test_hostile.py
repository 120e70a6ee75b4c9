"""Hostile input, as a user who mistypes would give it: every case is exit code 2 with one stderr line naming the
flag or file, before any work, and every file the user owns is byte-identical afterwards.

The start of the hostile-input suite (issue 36): values checked before work, outputs that are an input under
another name (hard links, symlinks), exports over weights, devices or a training workdir."""

import hashlib
import os
import zipfile

import numpy as np
import pytest
from helpers import one_line_error
from PIL import Image

from menet_jax import evaluate, export, predict, pretrained, train
from menet_jax.core.config import get_config
from menet_jax.core.model import MEnet, init_variables
from menet_jax.io import weights
from robustness import compare, jacobian, lipschitz
from robustness import evaluate as robustness_evaluate


@pytest.fixture(scope="module")
def owned(tmp_path_factory):
    """What a user owns: photos (one hard-linked into an output folder), a weights file and a hard link of it."""
    root = tmp_path_factory.mktemp("owned")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(photos / f"{name}.png")
    linked = root / "maps"  # `cp -al photos maps`: the outputs are the photos
    linked.mkdir()
    for photo in photos.iterdir():
        os.link(photo, linked / photo.name)
    os.link(photos / "a.png", root / "a_link.png")
    config = get_config("tiny")
    weights.export(init_variables(MEnet.from_config(config), 0), config, root / "mine.npz")
    os.link(root / "mine.npz", root / "mine_link.npz")
    # An .npz whose only member declares 40 GB in its header and holds 16 bytes.
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**10,)}
    with zipfile.ZipFile(root / "huge.npz", "w") as archive, archive.open("params.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, header)
        member.write(np.zeros(4, np.float32).tobytes())
    empty = root / "emptyconfig"  # a workdir whose config.json was emptied
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.json").write_text("")
    return root


def _hashes(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


DATA = ["--data-dir", "{ecssd}", "--no-progress"]
ROBUST = [*DATA, "--distortion", "awgn", "--output", "{owned}/r"]
JAC = [*DATA, "--config", "tiny"]
# (command, argv with {owned}, {workdir} and {ecssd} filled in, what the one line must contain)
CASES = [
    (predict, ["i", "{owned}/photos/a.png", "{owned}/m.png", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (predict, ["i", "{owned}/photos/a.png", "{owned}/m.png", "--batch-size", "-1"], "--batch-size must be >= 1"),
    (predict, ["i", "{owned}/photos/a.png", "{owned}/a_link.png"], "is the input image"),
    (predict, ["p", "{owned}/photos", "{owned}/maps"], "is the input image"),
    (predict, ["i", "{owned}/photos/a.png", "{owned}/m.png", "--threshold", "2"], "--threshold must be in [0, 1]"),
    (evaluate, [*DATA, "--batch-size", "0", "--output", "{owned}/e"], "--batch-size must be >= 1"),
    (train, ["--config", "tiny", "--set", "checkpoint_every=0", "--dry-run"], "checkpoint_every must be >= 1"),
    (train, ["--config", "tiny", "--set", "log_every=0", "--dry-run"], "log_every must be >= 1"),
    (train, ["--config", "tiny", "--set", "eval_every=0", "--dry-run"], "eval_every must be >= 1"),
    (train, ["--config", "tiny", "--set", "keep_checkpoints=0", "--dry-run"], "keep_checkpoints must be >= 1"),
    (train, ["--config", "tiny", "--set", "batch_size=-2", "--dry-run"], "batch_size must be >= 1"),
    (train, ["--config", "tiny", "--set", "conv=cudnn", "--dry-run"], "conv must be one of auto, mixed"),
    (export, ["{owned}/mine.npz"], "a weights file is not an export format"),
    (export, ["--checkpoint", "{owned}/mine.npz", "{owned}/mine.npz", "--format=onnx"], "is the input"),
    (export, ["--checkpoint", "{owned}/mine.npz", "{owned}/mine_link.npz", "--format=onnx"], "is the input"),
    (export, ["--checkpoint", "{owned}/mine.npz", os.devnull, "--format=onnx"], "not a regular file"),
    (export, ["--checkpoint", "{workdir}", "{workdir}/config.json", "--format=onnx"], "belongs to the training run in"),
    (export, ["--checkpoint", "{owned}/mine.npz", "{owned}/photos/b.png", "--format=onnx"], "exists; give --overwrite"),
    (pretrained, ["export", "{workdir}", "{owned}/mine.npz"], "exists; give --overwrite to replace it"),
    (robustness_evaluate, [*ROBUST, "--levels", "nan"], "bad awgn level nan"),
    (robustness_evaluate, [*ROBUST, "--levels", "inf"], "a finite variance"),
    (
        robustness_evaluate,
        [*DATA, "--distortion", "jpeg", "--levels", "50.5", "--output", "{owned}/r"],
        "an integer quality",
    ),
    (robustness_evaluate, [*ROBUST, "--batch-size", "0"], "--batch-size must be >= 1"),
    (robustness_evaluate, [*ROBUST, "--seeds", "0"], "--seeds must be >= 1"),
    (robustness_evaluate, [*ROBUST, "--limit", "0"], "--limit must be >= 1"),
    (robustness_evaluate, [*ROBUST, "--input-size", "-5"], "--input-size must be >= 1"),
    (jacobian, [*JAC, "--probes", "-3"], "--probes must be >= 0, got -3"),
    (jacobian, [*JAC, "--power-iterations", "-1"], "--power-iterations must be >= 0"),
    (jacobian, [*JAC, "--t-schedule", "0"], "--t-schedule takes step sizes > 0"),
    (jacobian, [*JAC, "--limit", "0"], "--limit must be >= 1"),
    (lipschitz, ["--config", "tiny", "--power-iterations", "-1"], "--power-iterations must be >= 0"),
    # Outputs checked before the work: a file where a folder goes, a folder where a file goes, a run's own files.
    (lipschitz, ["--config", "tiny", "--json", "{workdir}/config.json"], "belongs to the training run in"),
    (lipschitz, ["--config", "tiny", "--json", "{owned}/photos"], "is a folder"),
    (jacobian, [*JAC, "--output-dir", "{owned}/mine.npz"], "is a file, not a folder"),
    (robustness_evaluate, [*DATA, "--distortion", "awgn", "--output", "{owned}/mine.npz"], "is a file, not a folder"),
    (compare, ["a={owned}/mine.npz", "--output", "{owned}/mine.npz"], "is a file, not a folder"),
    (pretrained, ["export", "{workdir}", "{workdir}/checkpoints/w.npz"], "belongs to the training run in"),
    (pretrained, ["export", "{workdir}", "{workdir}/config.json"], "weights are a .npz archive; name it"),
    (pretrained, ["export", "{workdir}", "{owned}/photos"], "weights are a .npz archive; name it"),
    (
        evaluate,
        ["--predictions", "{owned}/maps", *DATA, "--output", "{owned}", "--save-maps"],
        "--save-maps would write over the --predictions",
    ),
    (train, ["--config", "tiny", "--workdir", "{owned}/mine.npz", "--no-progress"], "cannot be used as a workdir"),
    # Inputs that are not what they claim.
    (predict, ["i", "{owned}/photos/a.png", "{owned}/m.png", "--checkpoint", "{owned}/huge.npz"], "declares"),
    (
        predict,
        ["i", "{owned}/photos/a.png", "{owned}/m.png", "--checkpoint", "{owned}/emptyconfig"],
        "not a config written by train",
    ),
]


@pytest.mark.parametrize(
    "command, argv, expected", CASES, ids=[f"{c.__name__.split('.')[-1]}-{i}" for i, (c, _, _) in enumerate(CASES)]
)
def test_hostile_case_is_one_line_and_exit_2_with_nothing_lost(
    owned, tiny_checkpoint, shared_data, capsys, command, argv, expected
):
    paths = {"owned": owned, "workdir": tiny_checkpoint, "ecssd": shared_data / "ECSSD"}
    argv = [a.format(**paths) for a in argv]
    before = {**_hashes(owned), **_hashes(tiny_checkpoint)}
    capsys.readouterr()
    line = one_line_error(capsys, expected, run=(command.main, argv))
    assert "Traceback" not in line
    assert {**_hashes(owned), **_hashes(tiny_checkpoint)} == before  # every file byte-identical
    assert not any((owned / name).exists() for name in ("m.png", "e", "r"))  # nothing written


def test_a_batch_size_larger_than_the_images_pads_only_to_the_images(owned, tiny_checkpoint, tmp_path, capsys):
    """One image with --batch-size 16384 is a batch of one (it was padded to 16384 images: std::bad_alloc)."""
    out = tmp_path / "map.png"
    argv = [
        "i",
        str(owned / "photos" / "b.png"),
        str(out),
        "--batch-size",
        "16384",
        "--checkpoint",
        str(tiny_checkpoint),
        "--no-progress",
    ]
    assert predict.main(argv) == 0
    assert Image.open(out).size == (60, 40) and "wrote 1 map" in capsys.readouterr().out


def test_checkpoints_of_another_network_are_refused_and_kept(tmp_path, capsys):
    """A workdir without its config.json, trained on with another width: its intact checkpoints were reported
    damaged and moved aside, and the run started from step 0. Now: one line naming the first array that differs,
    and every checkpoint where it was."""
    from menet_jax.io import checkpoint
    from menet_jax.training.state import create_state, make_optimizer

    config = get_config("tiny")
    workdir = tmp_path / "w"
    manager = checkpoint.open_manager(workdir, config)
    checkpoint.save(manager, 10, create_state(MEnet.from_config(config), make_optimizer(config)), force=True)
    manager.wait_until_finished()
    manager.close()
    (workdir / "config.json").unlink()
    before = _hashes(workdir / "checkpoints")
    line = one_line_error(
        capsys,
        "holds checkpoints of a network of other shapes than this config's (params/",
        "(4,) there, (8,) here",
        run=(train.main, ["--config", "tiny", "--set", "width=8", "--workdir", str(workdir), "--no-progress"]),
    )
    assert "use another --workdir" in line
    assert _hashes(workdir / "checkpoints") == before and not (workdir / "damaged").exists()
