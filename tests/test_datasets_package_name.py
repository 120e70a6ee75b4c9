"""The data package installs as `menet_datasets`, so HuggingFace's top-level `datasets` and menet-jax both work.

Before, the folder was the package `datasets`: with HuggingFace datasets installed, `python -m menet_jax.train`
outside the checkout imported theirs and failed with `AttributeError: module 'datasets' has no attribute
'DataError'`. A stand-in `datasets` package on PYTHONPATH plays HuggingFace's here.
"""

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHECK = (
    "import datasets, menet_datasets; "
    "print(datasets.STAND_IN, menet_datasets.FolderSource.__module__, menet_datasets.__file__)"
)


@pytest.fixture
def stand_in(tmp_path):
    """A site folder whose top-level `datasets` is not ours (it has load_dataset, as HuggingFace's)."""
    package = tmp_path / "site" / "datasets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("STAND_IN = 'huggingface'\n\ndef load_dataset(name):\n    return name\n")
    return package.parent


def _python(args, cwd, pythonpath):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("where", ["outside the checkout", "in the checkout root"])
def test_huggingface_datasets_and_menet_datasets_both_import(tmp_path, stand_in, where):
    cwd = tmp_path if where == "outside the checkout" else REPO
    run = _python(["-c", CHECK], cwd, [stand_in])
    assert run.returncode == 0, run.stderr
    name, module, path = run.stdout.split()
    assert (name, module) == ("huggingface", "menet_datasets.folder")
    assert Path(path) == REPO / "datasets" / "__init__.py"


def test_training_outside_the_checkout_uses_our_data_errors(tmp_path, stand_in):
    """The failure once measured: a data error in `train`, with HuggingFace's `datasets` first on the path."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        Image.fromarray(np.full((30, 40, 3), 100, np.uint8)).save(root / "images" / f"{i}.jpg")
        Image.fromarray(np.zeros((30, 40) if i else (10, 10), np.uint8)).save(root / "masks" / f"{i}.png")
    run = _python(
        [
            "-m",
            "menet_jax.train",
            "--config",
            "tiny",
            "--set",
            "val_size=1",
            "--data-dir",
            str(root),
            "--workdir",
            str(tmp_path / "w"),
        ],
        tmp_path,
        [stand_in],
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: {root / 'masks' / '0.png'}: mask is 10x10 but image {root / 'images' / '0.jpg'} is 40x30"
    ]


def test_the_folder_imported_by_its_own_name_defers_to_the_installed_datasets():
    """From the checkout root `import datasets` finds the folder first: it hands over to HuggingFace's package when
    one is installed, else says which name to import (never a second copy of menet_datasets)."""
    path = [p for p in sys.path if Path(p or os.curdir).resolve() != REPO]
    installed = importlib.machinery.PathFinder.find_spec("datasets", path)
    run = _python(["-c", "import datasets; print(datasets.__file__)"], REPO, [])
    if installed is not None:
        assert run.returncode == 0 and Path(run.stdout.strip()) == Path(installed.origin), run.stderr
    else:
        assert run.returncode == 1
        assert run.stderr.strip().splitlines()[-1] == (
            f"ImportError: {REPO}/datasets is menet-jax's data package, installed as menet_datasets: import that name "
            "(`import datasets` is left to HuggingFace datasets, which is not installed)"
        )
