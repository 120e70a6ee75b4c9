"""Hostile input, as a user who mistypes would give it: every case is exit code 2 with one stderr line naming the
flag or file, before any work, and every file the user owns is byte-identical afterwards.

The start of the hostile-input suite (issue 36): values checked before work, outputs that are an input under
another name (hard links, symlinks), exports over weights, devices or a training workdir."""

import hashlib
import os
import zipfile

import numpy as np
import pytest
from helpers import ecssd_subset, one_line_error
from PIL import Image

from menet_datasets import prepare
from menet_jax import curves, evaluate, export, predict, pretrained, train
from menet_jax.core.config import get_config
from menet_jax.core.model import MEnet, init_variables
from menet_jax.io import weights
from robustness import compare, jacobian, lipschitz, report
from robustness import evaluate as robustness_evaluate


@pytest.fixture(scope="module")
def owned(tmp_path_factory, shared_data):
    """What a user owns: photos (one hard-linked into an output folder), a weights file and a hard link of it, files
    that are not what their names say, 8 real ECSSD pairs, a workdir with a training log."""
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
    # Files that are not what their names say, an empty folder, JSON that is not a tool's, a small real dataset.
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    (root / "truncated.png").write_bytes((photos / "a.png").read_bytes()[:200])
    (root / "emptydir").mkdir()
    (root / "dir.png").mkdir()
    (root / "bad.json").write_text("{")
    (root / "list.json").write_text("[1, 2]")
    ecssd_subset(shared_data, root / "data8", 0, 8)
    logged = root / "logged"  # a workdir with a training log (what curves draws)
    (logged / "checkpoints").mkdir(parents=True)
    get_config("tiny").to_json(logged / "config.json")
    (logged / "metrics.jsonl").write_text(
        "".join(
            f'{{"step": {s}, "split": "train", "loss": 1.0, "metric": 0.5, "ce": 0.5, "lr": 0.1}}\n' for s in (1, 2)
        )
    )
    return root


def _hashes(root):
    """Every path under `root` with its contents' SHA-256 (None for a folder): a changed, removed or added file or
    folder shows as a difference."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in sorted(root.rglob("*"))}


DATA = ["--data-dir", "{ecssd}", "--no-progress"]
ROBUST = [*DATA, "--distortion", "awgn", "--output", "{owned}/r"]
JAC = [*DATA, "--config", "tiny"]
DATA8 = ["--data-dir", "{owned}/data8", "--no-progress"]
PREDICT_A = ["i", "{owned}/photos/a.png", "{owned}/m.png"]
JPEG = [*DATA, "--distortion", "jpeg", "--output", "{owned}/r"]
PGD = [*DATA, "--distortion", "pgd-linf", "--output", "{owned}/r"]
APGD = [*DATA, "--distortion", "apgd-l2", "--output", "{owned}/r"]
CORRUPT = [*DATA, "--distortion", "imagenet-c", "--output", "{owned}/r"]
TRAIN8 = ["--config", "tiny", "--data-dir", "{owned}/data8", "--workdir", "{tmp}/w", "--no-progress"]
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
    # Paths that do not exist or are not what they claim, bad values and usage errors, command by command.
    (predict, ["i", "{owned}/nosuch.png", "{owned}/m.png"], "image not found"),
    (predict, ["p", "{owned}/photos/a.png", "{owned}/m"], "folder not found"),
    (predict, ["p", "{owned}/emptydir", "{owned}/m"], "no images found in"),
    (predict, [*PREDICT_A, "--checkpoint", "{owned}/nosuch"], "weights file not found"),
    (predict, [*PREDICT_A, "--checkpoint", "{owned}/photos/a.png"], "not an exported menet-jax weights file"),
    (predict, [*PREDICT_A, "--backend", "onnx", "--checkpoint", "{owned}/mine.npz"], "needs --checkpoint FILE.onnx"),
    (predict, [*PREDICT_A, "--threshold", "-0.5"], "--threshold must be in [0, 1], got -0.5"),
    (predict, [*PREDICT_A, "--threshold", "nan"], "--threshold must be in [0, 1], got nan"),
    (predict, ["i", "{owned}/photos/a.png", "{owned}/photos/a.png"], "is the input image"),
    (predict, ["p", "{owned}/photos", "{owned}/photos"], "is the input image"),
    (predict, ["i", "{owned}/photos/a.png", "{owned}/photos"], "no image extension"),
    (predict, ["i", "{owned}/photos/a.png", "{owned}/m.xyz"], "unknown image extension '.xyz'"),
    (predict, ["i", "{owned}/photos/a.png", "{owned}/m.jpg", "--cutout"], ".jpg cannot hold RGBA images"),
    (predict, [*PREDICT_A, "--map", "nosuch"], "argument --map: invalid choice: 'nosuch'"),
    (predict, [*PREDICT_A, "--batch-size", "x"], "argument --batch-size: invalid int value: 'x'"),
    (predict, ["x", "{owned}/photos/a.png", "{owned}/m.png"], "argument mode: invalid choice: 'x'"),
    (predict, ["i", "{owned}/photos/a.png"], "the following arguments are required: output"),
    (predict, ["i", "{owned}/text.png", "{owned}/m.png", "--no-progress"], "text.png: cannot read image"),
    (predict, ["i", "{owned}/empty.png", "{owned}/m.png", "--no-progress"], "empty.png: cannot read image"),
    (predict, ["i", "{owned}/truncated.png", "{owned}/m.png", "--no-progress"], "truncated.png: cannot read image"),
    (evaluate, ["--predictions", "{owned}/nosuch", *DATA8, "--output", "{owned}/e"], "prediction folder not found"),
    (evaluate, ["--data-dir", "{owned}/nosuch", "--output", "{owned}/e"], "dataset folder not found"),
    (evaluate, ["--data-dir", "{owned}/mine.npz", "--output", "{owned}/e"], "dataset folder not found"),
    (evaluate, ["--data-dir", "{owned}/photos", "--output", "{owned}/e"], "no image/mask folder pair found"),
    (evaluate, ["--dataset", "nosuch", "--output", "{owned}/e"], "unknown dataset 'nosuch'"),
    (
        evaluate,
        ["--checkpoint", "{owned}/photos/a.png", *DATA8, "--output", "{owned}/e"],
        "not an exported menet-jax weights file",
    ),
    (
        evaluate,
        ["--predictions", "{owned}/photos", *DATA8, "--output", "{owned}/e"],
        "no prediction with the same stem",
    ),
    (
        evaluate,
        ["--checkpoint", "{workdir}", "--predictions", "{owned}/photos", *DATA8],
        "argument --predictions: not allowed with argument --checkpoint",
    ),
    (evaluate, [*DATA8, "--map", "both", "--no-normalize", "--output", "{owned}/e", "--nosuch"], "unrecognized"),
    (train, ["--config", "nosuch", "--dry-run"], "argument --config: invalid choice: 'nosuch'"),
    (train, ["--config", "tiny", "--set", "nosuch=1", "--dry-run"], "unknown config key 'nosuch'"),
    (train, ["--config", "tiny", "--set", "width", "--dry-run"], "width"),
    (train, ["--config", "tiny", "--set", "width=abc", "--dry-run"], "bad value for width: 'abc'"),
    (train, ["--config", "tiny", "--set", "seed=abc", "--dry-run"], "bad value for seed: 'abc'"),
    (train, ["--config", "tiny", "--set", "width=0", "--dry-run"], "width must be >= 1, got 0"),
    (train, ["--config", "tiny", "--set", "image_size=0", "--dry-run"], "image_size must be a positive multiple of 32"),
    (train, ["--config", "tiny", "--set", "image_size=100", "--dry-run"], "positive multiple of 32, got 100"),
    (train, ["--config", "tiny", "--set", "dtype=float16", "--dry-run"], "dtype must be one of float32, bfloat16"),
    (train, ["--config", "tiny", "--set", "crop_min=2", "--dry-run"], "crop_min must be in (0, 1], got 2.0"),
    (train, ["--config", "tiny", "--set", "learning_rate=-1", "--dry-run"], "learning_rate must be > 0 and finite"),
    (train, ["--config", "tiny", "--set", "learning_rate=inf", "--dry-run"], "learning_rate must be > 0 and finite"),
    (train, ["--config", "tiny", "--set", "weight_decay=nan", "--dry-run"], "weight_decay must be >= 0 and finite"),
    (train, ["--config", "tiny", "--set", "momentum=1", "--dry-run"], "momentum must be in [0, 1), got 1.0"),
    (train, ["--config", "tiny", "--steps", "0", "--dry-run"], "steps must be >= 1, got 0"),
    (train, ["--config", "tiny", "--steps", "-5", "--dry-run"], "steps must be >= 1, got -5"),
    (train, [*TRAIN8, "--set", "val_size=100000"], "cannot hold out 100000 validation examples from a dataset of 8"),
    (
        train,
        [*TRAIN8, "--set", "val_size=2", "--set", "batch_size=100000"],
        "batch_size=100000 is larger than the training set (6 images",
    ),
    (train, ["--config", "tiny", "--data-dir", "{owned}/nosuch", "--workdir", "{tmp}/w"], "dataset folder not found"),
    (train, ["--config", "tiny", "--data-dir", "{owned}/photos", "--workdir", "{tmp}/w"], "no image/mask folder pair"),
    (train, ["--config", "tiny", "--data-dir", "{owned}/data8", "--dataset", "ecssd", "--workdir", "{tmp}/w"], "one"),
    (export, ["--check", "{owned}/nosuch.onnx"], "ONNX file not found"),
    (export, ["--check", "{owned}/photos/a.png"], "not a readable ONNX model"),
    (export, ["--check", "{owned}/mine.npz"], "not a readable ONNX model"),
    (export, ["{owned}/out.xyz"], "unknown export extension '.xyz'"),
    (export, ["{owned}/out.onnx", "--checkpoint", "{owned}/nosuch"], "weights file not found"),
    (export, ["{owned}/out.onnx", "--checkpoint", "{owned}/photos/a.png"], "not an exported menet-jax weights file"),
    (export, ["{owned}/out.onnx", "--format", "nosuch"], "argument --format: invalid choice: 'nosuch'"),
    (export, ["{owned}/mine.npz", "{owned}/out.onnx"], "give the network with --checkpoint"),
    (export, [], "the following arguments are required: OUT"),
    (pretrained, ["verify", "{owned}/nosuch.npz"], "weights file not found"),
    (pretrained, ["verify", "{owned}/photos/a.png"], "not an exported menet-jax weights file"),
    (pretrained, ["verify", "{owned}/huge.npz"], "declares"),
    (pretrained, ["export", "{owned}/nosuch", "{owned}/w.npz"], "not a training workdir (no config.json)"),
    (pretrained, ["export", "{workdir}", "{owned}/w.onnx"], "weights are a .npz archive; name it"),
    (pretrained, ["export", "{workdir}", "{tmp}/w.npz", "--step", "7"], "no checkpoint of step 7"),
    (pretrained, ["nosuch"], "argument command: invalid choice: 'nosuch'"),
    (curves, ["{owned}/nosuch"], "no training log"),
    (curves, ["{workdir}"], "no training log"),
    (curves, ["{owned}/logged", "--output", "{owned}/logged/config.json"], "curves are drawn as .png, .pdf, .svg"),
    (curves, ["{owned}/logged", "--output", "{owned}/photos"], "curves are drawn as"),
    (curves, ["{owned}/logged", "--output", "{owned}/dir.png"], "is a folder; give a file name such as"),
    (curves, ["{owned}/logged", "--output", "{owned}/logged/metrics.jsonl"], "curves are drawn as"),
    (curves, [], "the following arguments are required: workdir"),
    (report, ["--lipschitz", "{owned}/nosuch.json", "--output", "{owned}/r"], "nosuch.json: cannot read"),
    (report, ["--jacobian", "{owned}/photos/a.png", "--output", "{owned}/r"], "a.png: cannot read"),
    (report, ["--evaluate", "{owned}/bad.json", "--output", "{owned}/r"], "bad.json: cannot read"),
    (report, ["--evaluate", "{owned}/list.json", "--output", "{owned}/r"], "not written by the expected tool"),
    (report, ["--output", "{owned}/r"], "nothing to report"),
    (report, ["--lipschitz", "{owned}/bad.json", "--output", "{owned}/mine.npz"], "is a file, not a folder"),
    (compare, ["nolabel", "--output", "{owned}/r"], "give a run as LABEL=PATH[:MAP]"),
    (compare, ["a={owned}/nosuch", "--output", "{owned}/r"], "nosuch: cannot read it"),
    (compare, ["a={owned}/bad.json", "--output", "{owned}/r"], "bad.json: cannot read it"),
    (compare, ["a={owned}/photos", "--output", "{owned}/r"], "photos: cannot read it"),
    (compare, ["a={owned}/bad.json"], "the following arguments are required: --output"),
    (robustness_evaluate, [*ROBUST, "--levels", "-5"], "bad awgn level -5"),
    (robustness_evaluate, [*JPEG, "--levels", "0"], "bad jpeg level 0: an integer quality 1..100"),
    (robustness_evaluate, [*JPEG, "--levels", "101"], "bad jpeg level 101"),
    (robustness_evaluate, [*PGD, "--pgd-steps", "0"], "--pgd-steps must be >= 1, got 0"),
    (robustness_evaluate, [*PGD, "--pgd-step-size", "-1"], "--pgd-step-size must be > 0"),
    (robustness_evaluate, [*PGD, "--levels", "-2"], "bad pgd-linf budget '-2'"),
    (robustness_evaluate, [*APGD, "--restarts", "0"], "--restarts must be >= 1, got 0"),
    (robustness_evaluate, [*APGD, "--pgd-step-size", "0.1"], "--pgd-step-size is for --distortion pgd-linf / pgd-l2"),
    (robustness_evaluate, [*PGD, "--restarts", "3"], "--restarts is for --distortion apgd-linf / apgd-l2"),
    (robustness_evaluate, [*CORRUPT, "--corruptions", "nosuch"], "unknown corruption 'nosuch'"),
    (robustness_evaluate, [*CORRUPT, "--levels", "6"], "bad imagenet-c severity '6'"),
    (robustness_evaluate, [*ROBUST, "--predictor", "{owned}/nosuch.onnx"], "--predictor must be MODULE:FUNCTION"),
    (robustness_evaluate, [*PGD, "--predictor", "os:getcwd"], "--distortion pgd-linf needs --checkpoint"),
    (robustness_evaluate, [*ROBUST, "--checkpoint", "{owned}/photos/a.png"], "not an exported menet-jax weights"),
    (robustness_evaluate, [*ROBUST, "--reference", "{owned}/nosuch"], "--reference is for --distortion imagenet-c"),
    (robustness_evaluate, [*ROBUST, "--distortion", "nosuch"], "argument --distortion: invalid choice"),
    (
        robustness_evaluate,
        ["--data-dir", "{owned}/nosuch", "--distortion", "awgn", "--output", "{owned}/r"],
        "dataset folder not found",
    ),
    (jacobian, ["--checkpoint", "{owned}/nosuch", *DATA8], "weights file not found"),
    (jacobian, ["--config", "tiny", "--dataset", "nosuch"], "unknown dataset 'nosuch'"),
    (jacobian, [*JAC, "--probes", "x"], "argument --probes: invalid int value: 'x'"),
    (jacobian, ["--checkpoint", "{workdir}", "--config", "tiny", *DATA8], "not allowed with argument --checkpoint"),
    (lipschitz, ["--checkpoint", "{owned}/photos/a.png"], "not an exported menet-jax weights file"),
    (lipschitz, ["--config", "nosuch"], "unknown config 'nosuch'"),
    (prepare, ["nosuch", "--manual-dir", "{owned}/data8", "--data-dir", "{tmp}"], "unknown dataset 'nosuch'"),
    (prepare, ["ecssd", "--manual-dir", "{owned}/nosuch", "--data-dir", "{tmp}"], "manual dir not found"),
    (prepare, ["ecssd", "--data-dir", "{tmp}"], "--manual-dir DIR is needed"),
    (prepare, [], "the following arguments are required: NAME"),
]


@pytest.mark.parametrize(
    "command, argv, expected", CASES, ids=[f"{c.__name__.split('.')[-1]}-{i}" for i, (c, _, _) in enumerate(CASES)]
)
def test_hostile_case_is_one_line_and_exit_2_with_nothing_lost(
    owned, tiny_checkpoint, shared_data, tmp_path, capsys, command, argv, expected
):
    paths = {"owned": owned, "workdir": tiny_checkpoint, "ecssd": shared_data / "ECSSD", "tmp": tmp_path}
    argv = [a.format(**paths) for a in argv]
    before = {**_hashes(owned), **_hashes(tiny_checkpoint)}
    capsys.readouterr()
    line = one_line_error(capsys, expected, run=(command.main, argv))
    assert "Traceback" not in line
    # every file byte-identical, and nothing written beside them
    assert {**_hashes(owned), **_hashes(tiny_checkpoint)} == before


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
