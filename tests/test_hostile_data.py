"""Hostile data folders (issue 36): symlink loops, dangling links, pipes and unreadable files in the image and mask
folders, file names that are not UTF-8, and outputs that a failed write must not damage.

The policy (menet_datasets.folder's docstring): an entry that would be part of the dataset (an image extension) but
cannot be read is exit code 2 with one line naming it (prepare --skip-bad: skipped and listed); a broken entry
without an image extension is skipped with one `warning:` line naming it, and the result is that of the folder
without it. Every input is byte-identical afterwards."""

import csv
import hashlib
import json
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
from conftest import data_root
from helpers import ecssd_subset, one_line_error

from menet_datasets import prepare
from menet_datasets.folder import FolderSource, original_name, printable_name
from menet_jax import evaluate, train
from robustness import evaluate as robustness_evaluate

PREDICTOR = '''
import numpy as np
def grey(images):
    """Each image's grey level: a map any model could give."""
    return [np.asarray(im, np.float32).mean(-1) / 255.0 for im in images]
'''


def _snapshot(root: Path) -> dict:
    """Every entry under `root`, links not followed: its type and permissions, a symlink's target, a regular file's
    hash (None where even root cannot read it)."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            content = None
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                try:
                    content = hashlib.sha256(path.read_bytes()).hexdigest()
                except OSError:
                    pass
            seen[path] = (info.st_mode, content)
    return seen


def _copy_pair(shared_data: Path, root: Path, stem: str, image_name: str | bytes, mask_name: str | bytes) -> None:
    images, masks = os.fsencode(root / "images"), os.fsencode(root / "masks")
    shutil.copyfile(shared_data / "ECSSD" / "images" / f"{stem}.jpg", os.path.join(images, os.fsencode(image_name)))
    shutil.copyfile(shared_data / "ECSSD" / "masks" / f"{stem}.png", os.path.join(masks, os.fsencode(mask_name)))


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the socket file stays: opening it for reading fails (ENXIO), even as root


def _replace_with_link(folder: Path, target: str) -> None:
    shutil.rmtree(folder)
    folder.symlink_to(target)


def _unreadable(path: Path) -> None:
    path.chmod(0)


# name: (how the clean folder is made hostile, "skip" (exit 0, warnings) or "error" (exit 2), the entries named
# relative to the data folder, what the line says)
CASES = {
    "image-folder-self-loop": (
        lambda r: (r / "images/loop").symlink_to("loop"),
        "skip",
        ["images/loop"],
        "a symlink loop",
    ),
    "image-folder-link-pair-loop": (
        lambda r: ((r / "images/a").symlink_to("b"), (r / "images/b").symlink_to("a")),
        "skip",
        ["images/a", "images/b"],
        "a symlink loop",
    ),
    "mask-folder-dangling-link": (
        lambda r: (r / "masks/notes.txt").symlink_to("gone.txt"),
        "skip",
        ["masks/notes.txt"],
        "a dangling symlink (to gone.txt, which does not exist)",
    ),
    "image-folder-folder-cycle": (lambda r: (r / "images/up").symlink_to(".."), "skip", [], ""),
    "mask-folder-folder-cycle": (lambda r: (r / "masks/again").symlink_to("../masks"), "skip", [], ""),
    "image-self-loop": (
        lambda r: (r / "images/zz.jpg").symlink_to("zz.jpg"),
        "error",
        ["images/zz.jpg"],
        "a symlink loop",
    ),
    "image-dangling": (
        lambda r: (r / "images/zz.jpg").symlink_to("missing.jpg"),
        "error",
        ["images/zz.jpg"],
        "a dangling symlink (to missing.jpg, which does not exist)",
    ),
    "mask-self-loop": (
        lambda r: (r / "masks/zz.png").symlink_to("zz.png"),
        "error",
        ["masks/zz.png"],
        "a symlink loop",
    ),
    "mask-dangling": (
        lambda r: (r / "masks/zz.png").symlink_to("../nowhere/zz.png"),
        "error",
        ["masks/zz.png"],
        "a dangling symlink",
    ),
    "image-socket": (lambda r: _socket(r / "images/zz.png"), "error", ["images/zz.png"], "not a regular file"),
    "image-read-fails": (  # a file whose read raises OSError (EIO) even as root
        lambda r: (r / "images/0002.jpg").unlink() or (r / "images/0002.jpg").symlink_to("/proc/self/mem"),
        "error",
        ["images/0002.jpg"],
        "cannot read image",
    ),
    "images-folder-is-a-loop": (
        lambda r: _replace_with_link(r / "images", "images"),
        "error",
        ["images"],
        "a symlink loop; no image/mask folder pair found",
    ),
    "masks-folder-dangling": (
        lambda r: _replace_with_link(r / "masks", "gone"),
        "error",
        ["masks"],
        "a dangling symlink (to gone, which does not exist); no image/mask folder pair found",
    ),
}


def _data(shared_data: Path, root: Path, case: str | None) -> Path:
    data = ecssd_subset(shared_data, root / "data", 0, 3)  # the same folder name: the same results keys
    if case is not None:
        CASES[case][0](data)
    return data


def _evaluate(data: Path, out: Path, tmp: Path) -> tuple:
    preds = tmp / "preds"  # perfect maps: the three masks, from the shared copy (the data's may be what is broken)
    if not preds.exists():
        preds.mkdir()
        for stem in ("0001", "0002", "0003"):
            shutil.copyfile(data_root() / "ECSSD" / "masks" / f"{stem}.png", preds / f"{stem}.png")
    return evaluate.main, ["--predictions", str(preds), "--data-dir", str(data), "--output", str(out), "--no-progress"]


def _robustness(data: Path, out: Path, tmp: Path) -> tuple:
    argv = ["--predictor", "hostile_peer:grey", "--data-dir", str(data), "--distortion", "awgn"]
    return robustness_evaluate.main, [*argv, "--levels", "0", "400", "--output", str(out), "--no-progress"]


def _train(data: Path, out: Path, tmp: Path) -> tuple:
    return train.main, ["--config", "tiny", "--data-dir", str(data), "--workdir", str(out), "--no-progress"]


def _prepare(data: Path, out: Path, tmp: Path, *extra) -> tuple:
    return prepare.main, ["salient_folder", "--manual-dir", str(data), "--data-dir", str(out), *extra]


def _prepare_skip_bad(data, out, tmp):
    return _prepare(data, out, tmp, "--skip-bad")


COMMANDS = {
    "evaluate": _evaluate,
    "robustness": _robustness,
    "prepare": _prepare,
    "prepare-skip-bad": _prepare_skip_bad,
    "train": _train,  # only where the data is refused: an accepted folder would start training
}


def _result(command: str, out: Path):
    """What a run wrote, for comparison with the same run on the clean folder."""
    if command == "evaluate":
        return (out / "results.json").read_bytes(), (out / "per_image.csv").read_bytes()
    if command == "robustness":
        return json.loads((out / "robustness.json").read_text())["datasets"]
    from menet_datasets.tfds_source import load_source

    prepared = load_source("salient_folder", split="test", data_dir=out)
    return {name: prepared[i]["mask"].tobytes() for i, name in enumerate(prepared.names)}


@pytest.fixture()
def peer(tmp_path, monkeypatch):
    """robustness.evaluate's --predictor module (no network to compile)."""
    (tmp_path / "hostile_peer.py").write_text(PREDICTOR)
    monkeypatch.syspath_prepend(str(tmp_path))


class _Captured:
    """A capsys result, read again by `one_line_error`."""

    def __init__(self, captured):
        self.captured = captured

    def readouterr(self):
        return self.captured


def _messages(err: str) -> list[str]:
    """The lines of stderr less TFDS's progress bars (prepare has no --no-progress; they redraw with a carriage
    return)."""
    return [line for line in err.split("\n") if line.strip() and "\r" not in line and "\x1b" not in line]


def _run(command, case, shared_data, root, capsys, spoil=None):
    data = _data(shared_data, root, case)
    if spoil is not None:
        spoil(data)
    main, argv = COMMANDS[command](data, root / "out", root)
    before = _snapshot(data)
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert _snapshot(data) == before  # every input byte-identical, links and permissions included
    assert "Traceback" not in captured.err
    return data, code, captured


def _same_as_clean(command, shared_data, tmp_path, capsys, drop=()):
    _, code, captured = _run(command, None, shared_data, tmp_path / "clean", capsys)
    assert code == 0 and not _messages(captured.err), captured.err
    expected = _result(command, tmp_path / "clean" / "out")
    if drop:  # prepare --skip-bad: the skipped pair is not in the prepared dataset
        expected = {name: mask for name, mask in expected.items() if name not in drop}
    assert _result(command, tmp_path / "hostile" / "out") == expected


PARAMS = [
    (command, case)
    for case, (_, outcome, _, _) in CASES.items()
    for command in COMMANDS
    if outcome == "error" or command not in ("train", "prepare-skip-bad")
]


@pytest.mark.parametrize("command, case", PARAMS, ids=[f"{c}-{k}" for c, k in PARAMS])
def test_hostile_data_folder(command, case, shared_data, tmp_path, capsys, peer):
    _, outcome, named, says = CASES[case]
    data, code, captured = _run(command, case, shared_data, tmp_path / "hostile", capsys)
    folder_level = case.startswith(("images-", "masks-"))  # no layout at all: --skip-bad has nothing to skip
    if outcome == "error" and (command != "prepare-skip-bad" or folder_level):
        assert code == 2, captured
        # prepare: the last line, after TFDS's progress bars where it had started building
        one_line_error(_Captured(captured), says, *(data / n for n in named), last_line=command.startswith("prepare"))
        assert not (tmp_path / "hostile" / "out" / "salient_folder" / "1.0.0").exists()
        return
    assert code == 0, captured.err
    if outcome == "skip":
        warnings = [f"warning: {data / n}: {says}; skipped" for n in named]
        assert _messages(captured.err) == warnings, captured.err  # one line each, nothing else
        _same_as_clean(command, shared_data, tmp_path, capsys)
    else:  # prepare --skip-bad: the entry listed among the bad inputs, the rest prepared as before
        assert "bad inputs skipped: 1\n" in captured.out, captured.out
        assert f"    {data / named[0]}: {says}" in captured.out, captured.out
        drop = ("0002",) if case == "image-read-fails" else ()
        _same_as_clean(command, shared_data, tmp_path, capsys, drop=drop)


@pytest.mark.parametrize("command", ["evaluate", "robustness", "prepare"])
def test_a_file_without_read_permission(command, shared_data, tmp_path, capsys, peer):
    """chmod 000: as root (this suite's usual user) the file is still read, and the result is the clean folder's;
    as any other user it is one line naming the file. Which one applies is found out, not assumed."""
    target = tmp_path / "hostile" / "data" / "images" / "0002.jpg"
    data, code, captured = _run(
        command,
        None,
        shared_data,
        tmp_path / "hostile",
        capsys,
        spoil=lambda d: _unreadable(d / "images" / "0002.jpg"),
    )
    try:
        target.read_bytes()
        readable = True
    except PermissionError:
        readable = False
    if readable:
        assert code == 0, captured.err
        _same_as_clean(command, shared_data, tmp_path, capsys)
    else:
        assert code == 2
        one_line_error(_Captured(captured), target, "Permission denied", last_line=command == "prepare")


def test_a_broken_entry_in_the_predictions_folder_is_skipped_with_a_warning(shared_data, tmp_path, capsys):
    data = _data(shared_data, tmp_path, None)
    preds = tmp_path / "preds"
    shutil.copytree(data / "masks", preds)
    (preds / "loop").symlink_to("loop")
    out = tmp_path / "out"
    argv = ["--predictions", str(preds), "--data-dir", str(data), "--output", str(out), "--no-progress"]
    capsys.readouterr()
    assert evaluate.main(argv) == 0
    assert capsys.readouterr().err.strip() == f"warning: {preds / 'loop'}: a symlink loop; skipped"
    assert json.loads((out / "results.json").read_text())["datasets"]["data"]["n_images"] == 3


# ------------------------------------------------------------------------------------- names that are not UTF-8
def _non_utf8_folder(shared_data: Path, root: Path) -> Path:
    """Two real pairs, one named with the byte 0xe9 (Latin-1 e-acute: "café" saved by an old tool), in a dataset
    folder whose own name is not UTF-8 either."""
    data = Path(os.fsdecode(os.path.join(os.fsencode(root), b"d\xe9j\xe0")))
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    _copy_pair(shared_data, data, "0001", "0001.jpg", "0001.png")
    _copy_pair(shared_data, data, "0002", b"caf\xe9.jpg", b"caf\xe9.png")
    return data


def test_evaluate_writes_names_that_are_not_utf8_readably_and_recoverably(shared_data, tmp_path, capsys):
    data = _non_utf8_folder(shared_data, tmp_path)
    preds = tmp_path / "preds"
    shutil.copytree(data / "masks", preds)
    out = tmp_path / "out"
    before = _snapshot(data)
    argv = ["--predictions", str(preds), "--data-dir", str(data), "--output", str(out), "--save-maps"]
    assert evaluate.main([*argv, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "d\\xe9j\\xe0" in captured.out and "Traceback" not in captured.err  # the table names the dataset
    assert _snapshot(data) == before
    # Every output is UTF-8 (strict), and the escaped names give the files' names back.
    rows = list(csv.DictReader((out / "per_image.csv").read_text(encoding="utf-8", errors="strict").splitlines()))
    assert [row["name"] for row in rows] == ["0001", "caf\\xe9"]
    assert os.fsencode(original_name(rows[1]["name"])) == b"caf\xe9"
    assert os.fsencode(original_name(rows[1]["dataset"])) == b"d\xe9j\xe0"
    assert all(float(row["mae"]) == 0 for row in rows)
    results = json.loads((out / "results.json").read_text(encoding="utf-8", errors="strict"))
    assert list(results["datasets"]) == ["d\\xe9j\\xe0"]
    assert os.fsencode(original_name(next(iter(results["datasets"])))) == os.fsencode(data.name)
    # The saved map is named as the image, byte for byte.
    assert os.path.isfile(os.path.join(os.fsencode(out), b"maps", os.fsencode(data.name), b"caf\xe9.png"))


def test_prepare_keeps_names_that_are_not_utf8(shared_data, tmp_path, capsys):
    from menet_datasets.tfds_source import load_source

    data = _non_utf8_folder(shared_data, tmp_path)
    before = _snapshot(data)
    assert prepare.main(["salient_folder", "--manual-dir", str(data), "--data-dir", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert f"(from {printable_name(str(data.resolve()))})" in captured.out, captured.out
    assert "Traceback" not in captured.err and _snapshot(data) == before
    prepared = load_source("salient_folder", split="test", data_dir=tmp_path / "out")
    assert prepared.names == FolderSource(data).names == ["0001", os.fsdecode(b"caf\xe9")]
    assert prepared[1]["name"] == os.fsdecode(b"caf\xe9")
    assert (prepared[1]["mask"] == FolderSource(data)[1]["mask"]).all()


@pytest.mark.parametrize("raw", [b"caf\xe9", b"caf\xc3\xa9", b"a\\b", b"\\xe9", b"x\xff\\x41\\", b"plain"], ids=repr)
def test_printable_names_are_utf8_and_give_the_name_back(raw):
    text = printable_name(os.fsdecode(raw))
    text.encode("utf-8")  # never a surrogate left
    assert os.fsencode(original_name(text)) == raw
    assert (text == os.fsdecode(raw)) == (raw in (b"caf\xc3\xa9", b"plain"))  # UTF-8 names without \\ as they are


# ----------------------------------------------------------------------------------------------- atomic writes
def test_a_figure_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    from matplotlib.figure import Figure

    from menet_jax.io.outputs import save_figure

    target = tmp_path / "curves.png"
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1])
    save_figure(fig, target)
    before = target.read_bytes()
    assert before.startswith(b"\x89PNG")

    def dies(f, **kwargs):
        f.write(b"half a PNG")
        raise RuntimeError("renderer died")

    fig.savefig = dies
    with pytest.raises(RuntimeError, match="renderer died"):
        save_figure(fig, target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_a_text_write_that_fails_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    from menet_jax.errors import OutputError
    from menet_jax.io import outputs

    target = tmp_path / "results.json"
    outputs.write_text(target, '{"old": 1}\n')
    target.chmod(0o640)
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    with pytest.raises(OutputError, match=r"results\.json: cannot write \(No space left on device\)$"):
        outputs.write_text(target, '{"new": 2}\n')
    assert target.read_text() == '{"old": 1}\n' and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    monkeypatch.setattr(outputs.os, "fsync", real_fsync)
    outputs.write_text(target, "caf\udce9\n")  # a lone surrogate (an undecodable file name): escaped, not refused
    assert target.read_bytes() == b"caf\\udce9\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # a replaced file keeps its permissions


def test_new_outputs_get_the_permissions_open_would_give(tmp_path):
    from menet_jax.io.outputs import write_text

    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "sub" / "report.md", "# report\n")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "sub" / "report.md").stat().st_mode) == 0o644  # not tempfile's private 0600


def test_config_json_is_written_atomically(tmp_path, monkeypatch):
    from menet_jax.core.config import Config, get_config

    config = get_config("tiny")
    target = tmp_path / "config.json"
    config.to_json(target)
    before = target.read_bytes()

    def dies(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", dies)
    with pytest.raises(OSError):
        get_config("demo").to_json(target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["config.json"]
    assert Config.from_json(target) == config
