"""Exported networks read back and run: `OnnxPredictor` (onnxruntime, no JAX: what `predict --backend onnx`
uses) and `StableHLOModel` (a deserialized `jax.export` artifact). `inference.export` writes both formats.

This module imports neither JAX nor onnxruntime when it is imported: onnxruntime is an optional dependency (the
export extra), and JAX stays off the ONNX path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from menet_jax.errors import ExportError
from menet_jax.io.images import MAPS, resize_input, resize_to

INPUT_NAME = "images"


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
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's error types (InvalidProtobuf, Fail, ...) vary by version
            raise ExportError(f"{path}: not a readable ONNX model ({_one_line(error)})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ExportError(f"{path}: not a menet-jax export ({len(inputs)} inputs, expected 1)")
        dtype = {"tensor(float)": "float32"}.get(inputs[0].type, inputs[0].type)
        self.image_size = _check_signature(
            path, inputs[0].shape, dtype, [o.name for o in outputs], [o.shape for o in outputs]
        )
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
            self.exported = jax_export.deserialize(bytearray(path.read_bytes()))
            (aval,) = self.exported.in_avals
            names = [f"output {i}" for i in range(len(self.exported.out_avals))]
            shape = tuple(d if isinstance(d, int) else "N" for d in aval.shape)
            dtype = str(aval.dtype)
        except OSError as error:
            raise ExportError(f"{path}: cannot read ({error.strerror or error})") from None
        except Exception as error:  # flatbuffers / struct errors of a damaged or foreign file
            raise ExportError(f"{path}: not a serialized jax.export artifact ({_one_line(error)})") from None
        if len(self.exported.out_avals) == len(MAPS):
            names = list(MAPS)
        output_shapes = [tuple(d if isinstance(d, int) else "N" for d in a.shape) for a in self.exported.out_avals]
        self.image_size = _check_signature(path, shape, dtype, names, output_shapes)
        self.path = path

    def __call__(self, batch) -> dict:
        try:
            results = self.exported.call(np.asarray(batch, np.float32))
        except Exception as error:
            raise ExportError(f"{self.path}: cannot run ({_one_line(error)})") from None
        return {name: np.asarray(r) for name, r in zip(MAPS, results)}


def load(path):
    """The runner for an exported file, by its content: OnnxPredictor for ONNX, StableHLOModel otherwise."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxPredictor(path)
    return StableHLOModel(path)
