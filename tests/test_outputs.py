"""`predict` refuses bad output paths before any work, never overwrites its inputs, and a failed write is one line."""

import errno
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error
from PIL import Image

from menet_jax.io.outputs import json_text
from menet_jax.predict import main


@pytest.fixture()
def photos(tmp_path):
    """A folder of two photos and a file where a folder could be expected."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k, name in enumerate(("a.png", "b.jpg")):
        Image.fromarray(np.full((12, 16, 3), 40 * k, np.uint8)).save(folder / name)
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "maps.png").mkdir()
    return folder


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Fresh tiny weights as an exported file (no training needed to exercise writing)."""
    from menet_jax.core.config import get_config
    from menet_jax.core.model import MEnet, init_variables
    from menet_jax.io import weights as pretrained

    config = get_config("tiny")
    path = tmp_path_factory.mktemp("weights") / "tiny.npz"
    pretrained.export(init_variables(MEnet.from_config(config), 0), config, path)
    return path


# (argv after the mode, path the message names, fragment); {t} is tmp_path, {i} the photo folder.
BAD_OUTPUTS = [
    (["i", "{i}/a.png", "{t}/out"], "{t}/out", "no image extension; use one of .png, .jpg"),
    (["i", "{i}/a.png", "{t}/out.gif"], "{t}/out.gif", "unknown image extension '.gif'"),
    (["i", "{i}/a.png", "{t}/cut.jpg", "--cutout"], "{t}/cut.jpg", ".jpg cannot hold RGBA images; use one of .png, "),
    (["i", "{i}/a.png", "{t}/maps.png"], "{t}/maps.png", "is a folder"),
    (["i", "{i}/a.png", "{t}/afile/out.png"], "{t}/afile/out.png", "{t}/afile is a file, not a folder"),
    (["i", "{i}/a.png", "{t}/afile/sub/out.png"], "{t}/afile/sub/out.png", "{t}/afile is a file, not a folder"),
    (["p", "{i}", "{t}/afile"], "{t}/afile", "is a file, not a folder"),
    (["p", "{i}", "{t}/afile/maps"], "{t}/afile/maps", "{t}/afile is a file, not a folder"),
    (["i", "{i}/a.png", "/proc/menet-out.png"], "/proc/menet-out.png", "cannot write in /proc"),
    (["i", "{i}/a.png", "{i}/a.png"], "{i}/a.png", "is the input image"),
    (["p", "{i}", "{i}"], "{i}/a.png", "is the input image"),
]


@pytest.mark.parametrize("argv, named, fragment", BAD_OUTPUTS)
def test_bad_output_paths_are_refused_before_the_network_loads(photos, tmp_path, capsys, argv, named, fragment):
    fill = lambda s: s.format(t=tmp_path, i=photos)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # A missing weights file: the output check must come first, so the error is about the output.
    assert main([fill(a) for a in argv] + ["--checkpoint", str(tmp_path / "no.npz"), "--no-progress"]) == 2
    one_line_error(capsys, "error: " + fill(named) + ":", fill(fragment))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written


def test_two_inputs_of_one_stem_are_refused(photos, tmp_path, capsys):
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(photos / "a.jpg")  # a.jpg and a.png -> out/a.png
    assert main(["p", str(photos), str(tmp_path / "out"), "--checkpoint", str(tmp_path / "no.npz")]) == 2
    one_line_error(capsys, f"{tmp_path / 'out' / 'a.png'}: both {photos / 'a.jpg'} and {photos / 'a.png'}")
    assert not (tmp_path / "out").exists()


def test_formats_from_the_extension_and_a_full_disk(photos, tiny_weights, tmp_path, capsys):
    """Grey maps and masks write as JPEG, a cut-out as WebP (it has alpha); an output that is a device (here a
    symlink to one) is refused before the work: the map would be renamed over the device node."""
    common = ["--checkpoint", str(tiny_weights), "--no-progress"]
    assert main(["i", str(photos / "b.jpg"), str(tmp_path / "map.jpg"), *common]) == 0
    assert main(["i", str(photos / "b.jpg"), str(tmp_path / "mask.jpeg"), "--threshold", "0.5", *common]) == 0
    assert main(["i", str(photos / "b.jpg"), str(tmp_path / "cut.webp"), "--cutout", *common]) == 0
    for name, fmt, mode in (("map.jpg", "JPEG", "L"), ("mask.jpeg", "JPEG", "L"), ("cut.webp", "WEBP", "RGBA")):
        with Image.open(tmp_path / name) as img:
            assert (img.format, img.mode, img.size) == (fmt, mode, (16, 12))
    capsys.readouterr()
    full = tmp_path / "full.png"
    full.symlink_to("/dev/full")
    assert main(["i", str(photos / "a.png"), str(full), *common]) == 2
    one_line_error(capsys, f"error: {full}: exists and is not a regular file")
    assert full.is_symlink() and Path("/dev/full").is_char_device()


def test_a_failed_write_leaves_the_previous_file_and_no_partial_one(tmp_path, monkeypatch):
    """A disk that fills up mid-write: one line naming the file and the reason, the previous map as it was, and no
    temporary file left beside it (maps are written beside their name and renamed over it)."""
    from menet_jax.errors import OutputError
    from menet_jax.io.outputs import save_image

    target = tmp_path / "map.png"
    save_image(Image.new("L", (2, 2), 7), target)
    before = target.read_bytes()

    def full(self, fp, format=None, **params):
        fp.write(b"half a PNG")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OutputError, match=r"map\.png: cannot write \(No space left on device\)$"):
        save_image(Image.new("L", (2, 2), 9), target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["map.png"]


def test_json_text_puts_lists_of_numbers_on_one_line():
    value = {
        "per_image": [[0.5, -1e-07, 3, None], [1.25]],
        "names": ["a, b", "c"],
        "nested": {"empty": [], "mixed": [1, "x"], "flag": True},
    }
    text = json_text(value)
    assert json.loads(text) == value and text.endswith("}\n")
    assert '"per_image": [\n    [0.5, -1e-07, 3, null],\n    [1.25]\n  ]' in text
    # Lists holding anything but numbers keep one element per line (a comma inside a string is not split on).
    assert '"names": [\n    "a, b",\n    "c"\n  ]' in text and '"mixed": [\n      1,\n      "x"\n    ]' in text
