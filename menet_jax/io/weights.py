"""Trained weights as one small file: float16 parameters, float32 BatchNorm statistics and the config, checksummed.

    python -m menet_jax.pretrained export runs/duts192_160w8 menet_jax/weights/menet-duts192-160w8.npz --step 6500
    python -m menet_jax.pretrained verify menet_jax/weights/menet-duts192-160w8.npz

A training workdir (Orbax, float32, optimiser state) is the format to resume from; this one is the format to ship
and to load anywhere with numpy alone. The SHA-256 of the shipped file is recorded in this module, so a truncated
or altered download fails with one clear line instead of giving wrong maps. Every file also records the SHA-256 of
its own contents (the `__sha256__` member, `contents_sha256`), checked on load, so the same holds for weights a
user exported: the zip's CRC-32s only catch accidents inside compressed data, not an edited or rewritten member.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
from flax import traverse_util

from menet_jax.core.config import Config
from menet_jax.errors import ConfigError, OutputError, WeightsError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
# The weights shipped in the repository (issue 21: all of DUTS-TR at 160 px, width 8): file name -> SHA-256.
SHIPPED = {"menet-duts192-160w8.npz": "6af85c4c94b00811ec6df49528b576a9779056c9a647222b1c1e69cc3b98c8f5"}
DEFAULT = "menet-duts192-160w8.npz"
# The member holding the hex SHA-256 of every other member (`contents_sha256`). Files written before it existed
# (the shipped one among them: its whole-file SHA-256 above is the stronger check) have none and still load.
DIGEST_MEMBER = "__sha256__"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def contents_sha256(arrays: dict) -> str:
    """The hex SHA-256 of `arrays` (member name -> array, `DIGEST_MEMBER` left out), independent of the zip
    around them: each member in sorted order as one JSON line [name, dtype, shape] and its C-order bytes (the line
    fixes how many bytes follow, so no two contents hash alike by moving a boundary)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        if name == DIGEST_MEMBER:
            continue
        value = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, value.dtype.str, list(value.shape)]).encode() + b"\n")
        digest.update(value.tobytes())
    return digest.hexdigest()


def export(variables, config: Config, path, *, meta: dict | None = None) -> str:
    """Write `variables` ({"params", "batch_stats"}) and `config` to `path` (.npz); returns the file's SHA-256.

    Parameters are stored in float16 (half the bytes; the maps move by ~1e-3), BatchNorm statistics in float32
    (their variances reach 1e4 on raw 0..255 inputs and are tiny in number)."""
    arrays = {}
    for collection, dtype in (("params", np.float16), ("batch_stats", np.float32)):
        for key, value in traverse_util.flatten_dict(variables[collection], sep="/").items():
            value = np.asarray(value, np.float32)
            if dtype == np.float16 and np.abs(value).max(initial=0) >= np.finfo(np.float16).max:
                raise ValueError(f"{collection}/{key} does not fit in float16")
            arrays[f"{collection}/{key}"] = value.astype(dtype)
    header = {"config": dataclasses.asdict(config), "meta": meta or {}}
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    arrays[DIGEST_MEMBER] = np.frombuffer(contents_sha256(arrays).encode(), np.uint8)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as f:  # np.savez on a file object: no ".npz" appended to the name
            np.savez_compressed(f, **arrays)
        partial.replace(path)  # never a half-written file under the name
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({error.strerror or error})") from None
    return sha256(path)


def _check_declared_sizes(path: Path) -> None:
    """Refuse a member whose .npy header declares more data than the member holds: numpy would first allocate what
    the header says (a damaged or hostile file can declare tens of GiB)."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else (np.lib.format.read_array_header_2_0)
                )
                shape, _, dtype = read_header(member)
                declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if declared > info.file_size:
                    raise ValueError(f"{info.filename} declares {declared} bytes but holds {info.file_size}")


def _check_contents(path: Path, arrays: dict) -> None:
    """The recorded contents SHA-256 against the arrays read: flipped bytes that still decode (a member rewritten
    with a valid CRC, an edited array) are refused instead of giving other maps. No record: a file written before
    the digest existed, loaded as it always was."""
    if DIGEST_MEMBER not in arrays:
        return
    recorded = bytes(np.asarray(arrays[DIGEST_MEMBER], np.uint8).ravel()).decode("ascii", "replace")
    actual = contents_sha256(arrays)
    if recorded != actual:
        shown = "".join(c if c.isalnum() else "?" for c in recorded[:12])  # a damaged record: still one line
        raise WeightsError(
            f"{path}: checksum does not match its contents (SHA-256 {actual[:12]}..., recorded {shown}...): "
            "the file is damaged or was modified"
        )


def load(path=None, *, expected_sha256: str | None = None):
    """(variables in float32, config, meta) from an exported file; the shipped default when `path` is None.

    The checksum is checked against `expected_sha256`, or against the recorded one for a shipped file; a file that
    is not such an archive is a one-line WeightsError. Whether the arrays fit the network and are finite is checked
    where they are used (`inference.Predictor`)."""
    if path is None:
        if DEFAULT is None:
            raise WeightsError(
                "this copy of menet-jax ships no trained weights: give --checkpoint "
                "(a training workdir or an exported .npz)"
            )
        path = WEIGHTS_DIR / DEFAULT
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    expected = expected_sha256 or (SHIPPED.get(path.name) if path.parent == WEIGHTS_DIR else None)
    if expected is not None:
        actual = sha256(path)
        if actual != expected:
            raise WeightsError(
                f"{path}: checksum mismatch (SHA-256 {actual[:12]}..., expected {expected[:12]}...): "
                "the file is damaged or not the shipped one; restore it with git checkout"
            )
    try:  # whatever a damaged or foreign file raises, one line naming it
        if not zipfile.is_zipfile(path):
            raise zipfile.BadZipFile("not a .npz archive")
        _check_declared_sizes(path)
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
        _check_contents(path, arrays)
        header = json.loads(bytes(arrays.pop("__header__")).decode())
        flat = {key: np.asarray(value, np.float32) for key, value in arrays.items() if key != DIGEST_MEMBER}
        config = Config.from_dict(header["config"], source=f"{path} (its config)")
    except ConfigError:
        raise
    except (
        OSError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        zipfile.BadZipFile,
        zlib.error,
    ) as error:
        reason = f"no {error} entry" if isinstance(error, KeyError) else " ".join(str(error).split())
        raise WeightsError(
            f"{path}: not an exported menet-jax weights file ({reason or type(error).__name__})"
        ) from None
    variables = {}
    for collection in ("params", "batch_stats"):
        prefix = collection + "/"
        variables[collection] = traverse_util.unflatten_dict(
            {tuple(k[len(prefix) :].split("/")): v for k, v in flat.items() if k.startswith(prefix)}
        )
    return variables, config, header.get("meta", {})
