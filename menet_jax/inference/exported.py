"""Exported networks read back and run: `OnnxPredictor` (onnxruntime, no JAX: what `predict --backend onnx`
uses) and `StableHLOModel` (a deserialized `jax.export` artifact). `inference.export` writes both formats.

This module imports neither JAX nor onnxruntime when it is imported: onnxruntime is an optional dependency (the
export extra), and JAX stays off the ONNX path.

Every export records the SHA-256 of its own bytes, checked here before it is run: flipped bytes inside the weights
still decode (any bit pattern is a float) and gave maps off by up to 56/255, now they are a one-line ExportError.
ONNX: the metadata entry `menet.sha256` holds the SHA-256 of the file as written with `DIGEST_PLACEHOLDER` (64 '0's)
in its place; the digest has the placeholder's length, so writing it moves no other byte and the reader recomputes
it from plain bytes (no `onnx` package). StableHLO: `jax.export`'s serialization followed by a trailer line
`STABLEHLO_TRAILER` + the SHA-256 of the serialization; a flatbuffer is read from its root offset at the start, so
`jax.export.deserialize` of the whole file still works elsewhere. A file without a digest (written before it existed,
or with the record itself damaged) is refused with "re-export it": exports are regenerated in seconds.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from menet_jax.errors import ExportError
from menet_jax.io.images import MAPS, resize_input, resize_to

INPUT_NAME = "images"
DIGEST_KEY = "menet.sha256"  # ONNX metadata_props key of the file's SHA-256
DIGEST_PLACEHOLDER = "0" * 64  # the digest's stand-in while it is computed: the same length as a hex SHA-256
STABLEHLO_TRAILER = b"\nmenet-jax sha256 "  # + 64 hex digits + b"\n", after the serialization
_TRAILER_LENGTH = len(STABLEHLO_TRAILER) + 64 + 1
_HEX_DIGEST = re.compile(rb"[0-9a-f]{64}")
REEXPORT = "re-export it with python -m menet_jax.export"


def _mismatch(path, actual: str, recorded) -> ExportError:
    shown = recorded.decode("ascii", "replace") if isinstance(recorded, bytes) else str(recorded)
    shown = "".join(c if c.isalnum() else "?" for c in shown[:12])  # a damaged record: still one printable line
    return ExportError(
        f"{path}: checksum does not match (SHA-256 {actual[:12]}..., recorded {shown}...): the file is damaged "
        f"or was modified; {REEXPORT}"
    )


def _no_digest(path) -> ExportError:
    return ExportError(
        f"{path}: records no checksum (written by an older menet-jax, or its record is damaged); {REEXPORT}"
    )


def check_onnx_digest(path, data: bytes, recorded: str | None) -> None:
    """`recorded` (the `menet.sha256` metadata value) against the SHA-256 of `data`, the file's bytes, with the
    recorded digest put back to the placeholder it was computed with. It must occur exactly once in the bytes:
    otherwise which occurrence is the record is ambiguous, and the file is not one the writer produced."""
    if recorded is None:
        raise _no_digest(path)
    digest = recorded.encode("utf-8", "replace")
    if not _HEX_DIGEST.fullmatch(digest) or data.count(digest) != 1:
        raise _mismatch(path, hashlib.sha256(data).hexdigest(), digest)
    actual = hashlib.sha256(data.replace(digest, DIGEST_PLACEHOLDER.encode())).hexdigest()
    if actual != recorded:
        raise _mismatch(path, actual, recorded)


def split_stablehlo(data: bytes) -> tuple[bytes, bytes | None]:
    """(serialization, recorded digest or None) of a StableHLO file's bytes."""
    tail = data[-_TRAILER_LENGTH:]
    if len(data) > _TRAILER_LENGTH and tail.startswith(STABLEHLO_TRAILER) and tail.endswith(b"\n"):
        return data[:-_TRAILER_LENGTH], tail[len(STABLEHLO_TRAILER) : -1]
    return data, None


def check_stablehlo_digest(path, payload: bytes, recorded: bytes | None) -> None:
    """`recorded` (the trailer's digest) against the SHA-256 of the serialization before the trailer."""
    if recorded is None:
        raise _no_digest(path)
    actual = hashlib.sha256(payload).hexdigest()
    if actual.encode() != recorded:
        raise _mismatch(path, actual, recorded)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_signature(path, shape, dtype, names, output_shapes=None):
    """The input must be (N, S, S, 3) float32 and the outputs the two maps, (N, S, S) each: anything else is another
    model (with our names, but other shapes, its maps would be wrong or fail deep inside the runtime)."""
    ok = (
        len(shape) == 4
        and shape[3] == 3
        and isinstance(shape[1], int)
        and shape[1] == shape[2]
        and shape[1] > 0
        and dtype == "float32"
        and list(names) == list(MAPS)
    )
    if not ok:
        raise ExportError(
            f"{path}: not a menet-jax export (input {list(shape)} {dtype}, outputs {list(names)}; "
            f"expected input [N, S, S, 3] float32 and outputs {list(MAPS)})"
        )
    for name, out in zip(names, output_shapes or ()):
        if len(out) != 3 or list(out[1:]) != [shape[1], shape[2]]:
            raise ExportError(
                f"{path}: not a menet-jax export (output {name} is {list(out)}; expected [N, {shape[1]}, {shape[2]}])"
            )
    return shape[1]


class OnnxPredictor:
    """`Predictor`'s interface over an exported ONNX file with onnxruntime (no JAX): images of any size in, one
    {"metric", "ce"} dict of float32 maps in [0, 1] at each image's size out."""

    def __init__(self, path, *, batch_size: int = 8, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: ONNX file not found")
        try:
            import onnxruntime as ort  # optional dependency (the export extra)
        except ImportError:
            raise ExportError(f"{path}: onnxruntime is not installed (pip install 'menet-jax[export]')") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: no warnings on stderr
        try:
            data = path.read_bytes()  # read once: the bytes checked are the bytes run
        except OSError as error:
            raise ExportError(f"{path}: cannot read ({error.strerror or error})") from None
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            # The digest is read through onnxruntime's parse of the metadata, not by searching the bytes: a 64-hex
            # run elsewhere (a string, weights) cannot be taken for it, and a file whose record is damaged has none.
            recorded = self.session.get_modelmeta().custom_metadata_map.get(DIGEST_KEY)
        except Exception as error:  # onnxruntime's error types (InvalidProtobuf, Fail, ...) vary by version
            raise ExportError(f"{path}: not a readable ONNX model ({_one_line(error)})") from None
        if recorded is not None:  # damage first: a damaged export is reported as damaged, whatever else it breaks
            check_onnx_digest(path, data, recorded)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ExportError(f"{path}: not a menet-jax export ({len(inputs)} inputs, expected 1)")
        dtype = {"tensor(float)": "float32"}.get(inputs[0].type, inputs[0].type)
        self.image_size = _check_signature(
            path, inputs[0].shape, dtype, [o.name for o in outputs], [o.shape for o in outputs]
        )
        if recorded is None:  # a model of ours without a record (after foreign models, named as such above)
            raise _no_digest(path)
        self.input_name, self.path, self.batch_size = inputs[0].name, path, batch_size

    def forward(self, batch: np.ndarray) -> dict:
        """(N, S, S, 3) images at the network's size -> {"metric", "ce"}: (N, S, S) maps."""
        try:
            results = self.session.run(list(MAPS), {self.input_name: np.asarray(batch, np.float32)})
        except Exception as error:
            raise ExportError(f"{self.path}: cannot run ({_one_line(error)})") from None
        return dict(zip(MAPS, results))

    def __call__(self, images):
        """images: a list of uint8 (H, W, 3) arrays of any sizes."""
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            maps = self.forward(np.stack([resize_input(image, self.image_size) for image in chunk]))
            for j, image in enumerate(chunk):
                h, w = image.shape[:2]
                results.append({name: resize_to(maps[name][j], h, w) for name in MAPS})
        return results


class StableHLOModel:
    """A deserialized StableHLO export: `model(batch)` -> {"metric", "ce"} at the network's size (runs with JAX)."""

    def __init__(self, path):
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: StableHLO file not found")
        from jax import export as jax_export  # JAX only here: the ONNX path runs without it

        try:
            payload, recorded = split_stablehlo(path.read_bytes())
        except OSError as error:
            raise ExportError(f"{path}: cannot read ({error.strerror or error})") from None
        if recorded is not None:  # before deserializing: damaged bytes are never handed to the runtime
            check_stablehlo_digest(path, payload, recorded)
        try:
            self.exported = jax_export.deserialize(bytearray(payload))
            (aval,) = self.exported.in_avals
            names = [f"output {i}" for i in range(len(self.exported.out_avals))]
            shape = tuple(d if isinstance(d, int) else "N" for d in aval.shape)
            dtype = str(aval.dtype)
        except Exception as error:  # flatbuffers / struct errors of a damaged or foreign file
            raise ExportError(f"{path}: not a serialized jax.export artifact ({_one_line(error)})") from None
        if len(self.exported.out_avals) == len(MAPS):
            names = list(MAPS)
        output_shapes = [tuple(d if isinstance(d, int) else "N" for d in a.shape) for a in self.exported.out_avals]
        self.image_size = _check_signature(path, shape, dtype, names, output_shapes)
        if recorded is None:  # one of ours without a record (after foreign files, named as such above)
            raise _no_digest(path)
        self.path = path

    def __call__(self, batch) -> dict:
        try:
            results = self.exported.call(np.asarray(batch, np.float32))
        except Exception as error:
            raise ExportError(f"{self.path}: cannot run ({_one_line(error)})") from None
        return {name: np.asarray(r) for name, r in zip(MAPS, results)}


def _has_stablehlo_trailer(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(max(path.stat().st_size - _TRAILER_LENGTH, 0))
            return f.read().startswith(STABLEHLO_TRAILER)
    except OSError:
        return False


def load(path):
    """The runner for an exported file: OnnxPredictor for .onnx, StableHLOModel for .stablehlo; another name
    (written with --format) by its content, StableHLO if it ends with the StableHLO trailer, ONNX otherwise."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx" or (suffix != ".stablehlo" and not _has_stablehlo_trailer(path)):
        return OnnxPredictor(path)
    return StableHLOModel(path)
