"""Helpers of the tests that run `python -m menet_jax.train` as a subprocess (test_train.py, test_train_faults.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from menet_jax.io import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None, file_size_limit=None, **kwargs):
    """`python -m menet_jax.train --no-progress ARGS` started in the background, output in one pipe. With
    `file_size_limit` (bytes), no file can grow past it and a write past it fails with EFBIG (SIGXFSZ ignored): an
    OS-level write failure, as a full disk's ENOSPC is, without a disk to fill (both survive the malloc re-exec)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    command = ["-m", "menet_jax.train"]
    if file_size_limit is not None:
        command = [
            "-c",
            "import resource, runpy, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size_limit}, {file_size_limit})); "
            "runpy.run_module('menet_jax.train', run_name='__main__')",
        ]
    return subprocess.Popen(
        [sys.executable, *command, "--no-progress", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def finish(process, timeout=600, code=0):
    """The run's output, once it has ended with exit status `code` (killed after `timeout` s)."""
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        raise AssertionError(f"the run took over {timeout} s:\n{out}") from None
    assert process.returncode == code, out
    return out


def wait_for(condition, process, timeout=120, poll=0.01) -> bool:
    """Poll `condition()` until it holds (True) or the run ends or `timeout` s pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(poll)
    return False


def steps(workdir) -> list:
    """The complete checkpoints' steps (Orbax's temporary folders are not digits)."""
    return sorted(int(p.name) for p in (Path(workdir) / "checkpoints").glob("*") if p.name.isdigit())


def params(workdir, step=None) -> list:
    return jax.tree_util.tree_leaves(ckpt.load_variables(workdir, step))


def generated_folder(root, n=40, size=48, seed=5):
    """A folder dataset (images/*.jpg + masks/*.png) of `n` generated scenes."""
    import menet_datasets

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    source = menet_datasets.SyntheticSource(n, size, seed=seed)
    for i in range(n):
        example = source[i]
        Image.fromarray(example["image"]).save(root / "images" / f"{i:03d}.jpg", quality=90)
        Image.fromarray(example["mask"]).save(root / "masks" / f"{i:03d}.png")
    return root


def assert_bitwise_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
