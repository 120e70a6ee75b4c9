"""The evaluation forward pass, both maps, written as an ONNX model or a StableHLO artifact (`python -m
menet_jax.export`; `inference.exported` reads them back).

Both files compute `Predictor`'s maps at the network's input size: input `images`, float32 (N, S, S, 3) RGB
values 0..255 (NHWC, S the config's image_size, N free), outputs `metric` (Eq. 5) and `ce`, float32 (N, S, S) in
[0, 1], min-max normalised per image. The network's input size is fixed (its bottleneck is an S/32 x S/32 valid
convolution), so images are resized to S x S and the maps back outside the file, with Pillow
(`io.images.resize_input`, `io.images.resize_to`), as `Predictor` does. Both compute in float32 whatever dtype the
weights were trained with.

The ONNX graph is written here from the parameters with the `onnx` package, one node group per layer (NCHW inside,
BatchNorm in inference mode), rather than by jax2onnx: jax2onnx 0.17 converts this network (maps within 4e-5) but
pins orbax-checkpoint < 0.11.37, which would downgrade the checkpoint library of every install with the extra.
`tests/test_export.py` checks both files against the JAX Predictor on real images, so a change to `model.py`
that this builder does not follow fails there.

The graph is written with the optional `onnx` package (`pip install 'menet-jax[export]'`), imported where a graph
is built.

Both files carry the SHA-256 of their bytes (`onnx_bytes`, `stablehlo_bytes`; `inference.exported` says where and
checks it on load), so a damaged export is refused instead of giving other maps.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from menet_jax.core.config import Config
from menet_jax.core.model import SIDE_MAP_ORDER
from menet_jax.core.network import network_function
from menet_jax.core.saliency import RANGE_EPS
from menet_jax.errors import ExportError
from menet_jax.inference.exported import DIGEST_KEY, DIGEST_PLACEHOLDER, INPUT_NAME, STABLEHLO_TRAILER
from menet_jax.inference.predictor import load_network
from menet_jax.io.images import MAPS
from menet_jax.io.outputs import check_output_file

FORMATS = ("onnx", "stablehlo")
OPSET = 18  # ReduceMin / ReduceMax take axes as an input


# ------------------------------------------------------------------------------------------------ ONNX: writing
class _Graph:
    """A small ONNX graph builder: each method adds one node and returns its output's name."""

    def __init__(self):
        from onnx import helper, numpy_helper  # optional dependency (the export extra)

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers, self._count = [], [], 0

    def _name(self, hint):
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, hint="c"):
        name = self._name(hint)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type, *inputs, hint=None, **attrs):
        out = self._name(hint or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out


def _bn(g, x, bn, stats, eps):
    """Inference-mode BatchNorm in JAX's order of operations, (x - mean) * (rsqrt(var + eps) * scale) + bias."""
    k = (1.0 / np.sqrt(np.asarray(stats["var"], np.float32) + np.float32(eps))) * np.asarray(bn["scale"], np.float32)
    shape = (-1, 1, 1)
    x = g.op("Sub", x, g.const(np.asarray(stats["mean"], np.float32).reshape(shape), "bn_mean"))
    x = g.op("Mul", x, g.const(k.astype(np.float32).reshape(shape), "bn_k"))
    return g.op("Add", x, g.const(np.asarray(bn["bias"], np.float32).reshape(shape), "bn_bias"))


def _conv(g, x, conv, stride=1, padding=1):
    kernel = np.asarray(conv["kernel"], np.float32)  # HWIO -> OIHW
    inputs = [x, g.const(kernel.transpose(3, 2, 0, 1), "w")]
    if "bias" in conv:
        inputs.append(g.const(np.asarray(conv["bias"], np.float32), "b"))
    return g.op("Conv", *inputs, kernel_shape=list(kernel.shape[:2]), strides=[stride, stride], pads=[padding] * 4)


def _deconv(g, x, conv, stride, padding):
    """layers.conv_transpose2d: ONNX ConvTranspose scatters x[h] * W[i] to h * stride + i - padding, the same
    (unflipped) definition, with the kernel HWIO -> IOHW."""
    kernel = np.asarray(conv["kernel"], np.float32)
    return g.op(
        "ConvTranspose",
        x,
        g.const(kernel.transpose(2, 3, 0, 1), "w"),
        kernel_shape=list(kernel.shape[:2]),
        strides=[stride, stride],
        pads=[padding] * 4,
    )


def _brc(g, x, params, stats, eps, *, stride=1, padding=1, transpose=False):
    """BRC unit: BatchNorm -> ReLU -> (transposed) convolution."""
    x = g.op("Relu", _bn(g, x, params["BatchNorm_0"], stats["BatchNorm_0"], eps))
    if transpose:
        return _deconv(g, x, params["ConvTranspose_0"], stride, padding)
    return _conv(g, x, params["Conv_0"], stride, padding)


def _identity(g, x, p, s, eps):
    """model.IdentityBlock: flax names the outer BRC (built first) BRC_0, so BRC_1 is the one applied first."""
    return g.op("Add", x, _brc(g, _brc(g, x, p["BRC_1"], s["BRC_1"], eps), p["BRC_0"], s["BRC_0"], eps))


def _down(g, x, p, s, eps):
    main = _brc(g, _brc(g, x, p["BRC_0"], s["BRC_0"], eps, stride=2), p["BRC_1"], s["BRC_1"], eps)
    return g.op("Add", main, _brc(g, x, p["BRC_2"], s["BRC_2"], eps, stride=2, padding=0))


def _up(g, x, p, s, eps):
    main = _brc(g, x, p["BRC_0"], s["BRC_0"], eps, stride=2, padding=1, transpose=True)
    main = _brc(g, main, p["BRC_1"], s["BRC_1"], eps)
    return g.op("Add", main, _brc(g, x, p["BRC_2"], s["BRC_2"], eps, stride=2, padding=0, transpose=True))


def _scale_to_unit(g, m, max_value):
    """saliency.scale_to_unit on (N, 1, S, S)."""
    axes = g.const(np.array([2, 3], np.int64), "axes")
    lo = g.op("ReduceMin", m, axes, keepdims=1)
    hi = g.op("ReduceMax", m, axes, keepdims=1)
    spread = g.op("Sub", hi, lo)
    wide = g.op("Greater", spread, g.const(np.float32(RANGE_EPS)))
    stretched = g.op("Div", g.op("Sub", m, lo), g.op("Where", wide, spread, g.const(np.float32(1.0))))
    flat = g.op(
        "Clip", g.op("Div", m, g.const(np.float32(max_value))), g.const(np.float32(0.0)), g.const(np.float32(1.0))
    )
    return g.op("Where", wide, stretched, flat)


def onnx_model(variables, config):
    """The ONNX ModelProto of `config`'s network with `variables` (eval mode, normalised eq5 and CE maps), built
    layer by layer as `model.MEnet.__call__` and `saliency.saliency_maps` compute them."""
    from onnx import TensorProto, checker, helper  # optional dependency (the export extra)

    p, s, eps, size = variables["params"], variables["batch_stats"], config.bn_epsilon, config.image_size
    g = _Graph()
    x = g.op("Transpose", INPUT_NAME, perm=[0, 3, 1, 2], hint="nchw")
    if config.input_scale == "normalized":
        x = g.op("Sub", g.op("Div", x, g.const(np.float32(127.5))), g.const(np.float32(1.0)))

    h = g.op("Relu", _bn(g, _conv(g, x, p["stem_conv"]), p["stem_bn"], s["stem_bn"], eps))
    for i in range(2):
        h = _identity(g, h, p[f"E0_block{i}"], s[f"E0_block{i}"], eps)
    encoder = [h]
    for level in range(1, 6):
        h = _down(g, h, p[f"E{level}_down"], s[f"E{level}_down"], eps)
        h = _identity(g, h, p[f"E{level}_block"], s[f"E{level}_block"], eps)
        encoder.append(h)
    b = _brc(g, encoder[5], p["bottleneck_conv"], s["bottleneck_conv"], eps, padding=0)
    bottleneck = _brc(g, b, p["bottleneck_deconv"], s["bottleneck_deconv"], eps, padding=0, transpose=True)
    decoder, h = {}, bottleneck
    for level in range(4, -1, -1):
        h = g.op("Concat", h, encoder[level + 1], axis=1)
        h = _up(g, h, p[f"D{level}_up"], s[f"D{level}_up"], eps)
        h = _identity(g, h, p[f"D{level}_block"], s[f"D{level}_block"], eps)
        decoder[level] = h

    sides = []
    feature_sizes = [size] + [size // 2**i for i in range(6)] + [size // 2**i for i in range(5)] + [size // 32]
    sources = [x, *encoder, *(decoder[i] for i in range(5)), bottleneck]
    for name, src, src_size in zip(SIDE_MAP_ORDER, sources, feature_sizes):
        side = _brc(g, src, p[f"side_{name}"], s[f"side_{name}"], eps)
        factor = size // src_size
        if factor > 1:  # Eq. 14 replication: exact for integer factors with asymmetric / floor nearest
            side = g.op(
                "Resize",
                side,
                "",
                g.const(np.array([1, 1, factor, factor], np.float32), "scales"),
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
        sides.append(side)
    z = g.op("Concat", *sides, axis=1)
    features = g.op("Tanh", _bn(g, _conv(g, z, p["metric_conv"]), p["metric_bn"], s["metric_bn"], eps))
    logits = _bn(g, _conv(g, z, p["logit_conv"]), p["logit_bn"], s["logit_bn"], eps)

    # saliency.saliency_maps, background "eq5", normalised.
    prob = g.op(
        "Slice",
        g.op("Softmax", logits, axis=1),
        g.const(np.array([1], np.int64)),
        g.const(np.array([2], np.int64)),
        g.const(np.array([1], np.int64)),
        hint="p",
    )  # (N, 1, S, S)
    channel = g.const(np.array([1], np.int64), "axis1")
    sq = g.op("ReduceSum", g.op("Mul", features, features), channel, keepdims=1)
    nonzero = g.op("Greater", sq, g.const(np.float32(0.0)))
    norm = g.op(
        "Where", nonzero, g.op("Sqrt", g.op("Where", nonzero, sq, g.const(np.float32(1.0)))), g.const(np.float32(1.0))
    )
    f = g.op("Div", features, norm)
    weights = g.op("Cast", g.op("Less", prob, g.const(np.float32(0.5))), to=TensorProto.FLOAT)
    hw = g.const(np.array([2, 3], np.int64), "axes_hw")
    total = g.op("ReduceSum", g.op("Mul", f, weights), hw, keepdims=1)
    count = g.op("Max", g.op("ReduceSum", weights, hw, keepdims=1), g.const(np.float32(1.0)))
    diff = g.op("Sub", f, g.op("Div", total, count))
    distance = g.op("Sqrt", g.op("ReduceSum", g.op("Mul", diff, diff), channel, keepdims=1))
    outputs = []
    for name, raw, max_value in (("metric", distance, 2.0), ("ce", prob, 1.0)):
        g.nodes.append(helper.make_node("Squeeze", [_scale_to_unit(g, raw, max_value), channel], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", size, size]))

    graph = helper.make_graph(
        g.nodes,
        "menet",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", size, size, 3])],
        outputs,
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="menet-jax")
    helper.set_model_props(
        model, {"menet.image_size": str(size), "menet.width": str(config.width), "menet.maps": ",".join(MAPS)}
    )
    checker.check_model(model)
    return model


def onnx_bytes(variables, config) -> bytes:
    """The ONNX file of `onnx_model(variables, config)`, its SHA-256 in the metadata entry `menet.sha256`: the
    model serialized once with the placeholder there, hashed, and the placeholder's bytes replaced by the hex digest
    (the same length, so no other byte moves and the reader can recompute it from the bytes alone)."""
    model = onnx_model(variables, config)
    model.metadata_props.add(key=DIGEST_KEY, value=DIGEST_PLACEHOLDER)
    data = model.SerializeToString()
    placeholder = DIGEST_PLACEHOLDER.encode()
    if data.count(placeholder) != 1:  # 64 '0' bytes inside the weights too: which one is the record is ambiguous
        raise ExportError(f"cannot record the ONNX file's checksum: {DIGEST_PLACEHOLDER[:8]}... occurs in its weights")
    return data.replace(placeholder, hashlib.sha256(data).hexdigest().encode())


# --------------------------------------------------------------------------------------------- StableHLO: writing


def stablehlo_bytes(variables, config: Config) -> bytes:
    """`jax.export` of the jitted forward pass (float32, plain convolutions: one conv_general_dilated per layer, what
    another runtime should be handed) with a symbolic batch dimension, serialized, then the trailer with the
    serialization's SHA-256 (`inference.exported.STABLEHLO_TRAILER`): the file's bytes."""
    maps = network_function(dataclasses.replace(config, dtype="float32", conv="plain"))

    def forward(images):
        return tuple(maps(variables, images)[name] for name in MAPS)

    (batch,) = jax_export.symbolic_shape("batch")
    size = config.image_size
    exported = jax_export.export(jax.jit(forward))(jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
    payload = bytes(exported.serialize())
    return payload + STABLEHLO_TRAILER + hashlib.sha256(payload).hexdigest().encode() + b"\n"


def export(checkpoint, out, fmt: str = "onnx", *, overwrite: bool = False) -> Path:
    """Write `checkpoint`'s network (a workdir, an exported .npz, or None: the shipped weights) to `out`; an
    existing `out` only with `overwrite`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (onnx or stablehlo)")
    out = Path(out)
    check_output_file(out, reads=[checkpoint], example=f"menet.{fmt}", overwrite=overwrite)
    variables, config = load_network(checkpoint)  # weights checked: shapes, finite values
    variables = jax.tree_util.tree_map(np.asarray, variables)
    data = onnx_bytes(variables, config) if fmt == "onnx" else stablehlo_bytes(variables, config)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        tmp.write_bytes(data)
        tmp.replace(out)  # never a half-written file under the name
    except OSError as error:
        raise ExportError(f"{out}: cannot write ({error.strerror or error})") from None
    return out
