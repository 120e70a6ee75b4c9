"""Shared fixtures: the real data folder (../shared/data or $MENET_DATA_DIR) and tiny configurations."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# One persistent XLA cache for the session and the CLI runs it starts: each network compiles once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".pytest_cache" / "xla"))


def data_root() -> Path:
    return Path(os.environ.get("MENET_DATA_DIR", SHARED / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark data; a skip with the searched path, or a failure under CI where it must exist."""
    root = data_root()
    if not (root / "ECSSD").is_dir() or not (root / "DUTS-TR-subset").is_dir():
        message = f"real data not found at {root} (set MENET_DATA_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def shared_docs() -> Path:
    docs = SHARED / "docs"
    if not docs.is_dir():
        message = f"shared docs not found at {docs}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return docs


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A saved (untrained) tiny MEnet in a training workdir, without compiling a train step."""
    from menet_jax.core.config import get_config
    from menet_jax.core.model import MEnet
    from menet_jax.io import checkpoint as ckpt
    from menet_jax.training.state import create_state, make_optimizer

    config = get_config("tiny", ["conv=plain"])  # the plain convolutions compile quicker; the same function
    workdir = tmp_path_factory.mktemp("run")
    manager = ckpt.open_manager(workdir, config)
    ckpt.save(manager, 0, create_state(MEnet.from_config(config), make_optimizer(config)), force=True)
    manager.close()
    return workdir
