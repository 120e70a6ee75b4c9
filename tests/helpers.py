"""Helpers shared by the test modules: the project's error contract (a command fails with exit code 2 and one
stderr line `error: <message>` naming what is wrong; an error's message is one line), and small real datasets."""

import shutil
from pathlib import Path


def one_line_error(capsys, *fragments, run=None, last_line: bool = False) -> str:
    """The `error: ...` line a command printed, after checking it is the only line on stderr (`last_line`: the last
    one, after log lines of a library such as TensorFlow Datasets) and contains every fragment. With `run=(main,
    argv)` the command is run here first and must return 2."""
    if run is not None:
        main, argv = run
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1] if last_line and err else err
    assert line.startswith("error: ") and "\n" not in line, err
    for fragment in fragments:
        assert str(fragment) in line, err
    return line


def one_line_message(excinfo, *fragments) -> str:
    """The message of a raised error (`pytest.raises(...) as excinfo`), checked to be one line containing every
    fragment (the paths it must name)."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


def ecssd_subset(shared_data: Path, root: Path, start: int, count: int) -> Path:
    """`count` real ECSSD pairs from the `start`-th image on, copied to root/images and root/masks."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for image in sorted((shared_data / "ECSSD" / "images").glob("*.jpg"))[start : start + count]:
        shutil.copyfile(image, root / "images" / image.name)
        shutil.copyfile(shared_data / "ECSSD" / "masks" / f"{image.stem}.png", root / "masks" / f"{image.stem}.png")
    return root
