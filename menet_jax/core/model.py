"""MEnet: the pre-activation residual encoder-decoder with 13 side maps and two heads (paper Fig. 2).

Structure as in the authors' Caffe net (docs/paper.md, section 1), for any square input
size that is a multiple of 32 and any base width:

  stem conv -> E0 (2 identity blocks) -> E1..E5 (down block + identity block, channels x2 each)
  -> k x k valid conv to 1 x 1 -> k x k transposed conv back (k = size / 32)
  -> D4..D0 (up block + identity block) on [decoder, encoder] concatenations
  13 one-channel side maps (input, E0..E5, D0..D4, bottleneck), replicated to full size (Eq. 14)
  -> metric head (conv -> BN -> tanh, 16 channels) and logit head (conv -> BN, 2 channels).

`MEnet.apply` returns a dict with `features` (N, H, W, 16), un-normalised tanh outputs, and `logits` (N, H, W, 2),
channel 1 = salient. Inputs are NHWC RGB images with values 0..255 (any dtype).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.core.config import Config
from menet_jax.core.layers import BRC, Conv, batch_norm, xavier_bound

SIDE_MAP_ORDER = ("input", "E0", "E1", "E2", "E3", "E4", "E5", "D0", "D1", "D2", "D3", "D4", "bottleneck")
FEATURE_DIM = 16


class _Block(nn.Module):
    """Base for residual blocks: carries the BN settings and dtype to their BRC units."""

    features: int
    bn_momentum: float = 0.999
    bn_epsilon: float = 1e-5
    dtype: Any = jnp.float32
    conv: str = "auto"

    def brc(self, **kw):
        return BRC(
            self.features,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            dtype=self.dtype,
            conv=self.conv,
            **kw,
        )


class IdentityBlock(_Block):
    """y = x + BRC3x3(BRC3x3(x))."""

    @nn.compact
    def __call__(self, x, train: bool):
        return x + self.brc()(self.brc()(x, train), train)


class DownBlock(_Block):
    """Main path BRC3x3/2 -> BRC3x3; shortcut BRC1x1/2 (symmetric padding, as in Caffe)."""

    @nn.compact
    def __call__(self, x, train: bool):
        main = self.brc(stride=2, padding=1)(x, train)
        main = self.brc()(main, train)
        return main + self.brc(kernel_size=1, stride=2, padding=0)(x, train)


class UpBlock(_Block):
    """Main path BR-deconv k4 s2 p1 -> BRC3x3; shortcut BR-deconv k2 s2 p0 (both bias-free)."""

    @nn.compact
    def __call__(self, x, train: bool):
        main = self.brc(kernel_size=4, stride=2, padding=1, transpose=True)(x, train)
        main = self.brc()(main, train)
        return main + self.brc(kernel_size=2, stride=2, padding=0, transpose=True)(x, train)


def replicate_upsample(x, size: int):
    """Eq. 14: copy each pixel into an s x s block (s = size / current size); exact nearest upsampling."""
    factor = size // x.shape[1]
    if factor == 1:
        return x
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class MEnet(nn.Module):
    image_size: int = 224
    width: int = 32
    dtype: Any = jnp.float32
    input_scale: str = "raw"
    bn_momentum: float = 0.999
    bn_epsilon: float = 1e-5
    conv: str = "auto"  # convolution formulation (`layers.conv_impl`): a field, so jit caches see it

    @classmethod
    def from_config(cls, config: Config) -> "MEnet":
        return cls(
            image_size=config.image_size,
            width=config.width,
            dtype=jnp.dtype(config.dtype),
            input_scale=config.input_scale,
            bn_momentum=config.bn_momentum,
            bn_epsilon=config.bn_epsilon,
            conv=config.conv,
        )

    @nn.compact
    def __call__(self, images, train: bool = False):
        n, h, w, c = images.shape
        if (h, w, c) != (self.image_size, self.image_size, 3):
            raise ValueError(f"MEnet expects (N, {self.image_size}, {self.image_size}, 3) images, got {images.shape}")
        x = images.astype(jnp.float32)
        if self.input_scale == "normalized":
            x = x / 127.5 - 1.0
        x = x.astype(self.dtype)
        bn = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=self.dtype, conv=self.conv)
        channels = [self.width * 2**i for i in range(6)]

        # Encoder.
        h = Conv(channels[0], 3, 1, 1, self.dtype, self.conv, name="stem_conv")(x)
        h = jax.nn.relu(batch_norm(h, train, self.bn_momentum, self.bn_epsilon, self.dtype, "stem_bn"))
        for i in range(2):
            h = IdentityBlock(channels[0], **bn, name=f"E0_block{i}")(h, train)
        encoder = [h]
        for s in range(1, 6):
            h = DownBlock(channels[s], **bn, name=f"E{s}_down")(h, train)
            h = IdentityBlock(channels[s], **bn, name=f"E{s}_block")(h, train)
            encoder.append(h)

        # Bottleneck: valid k x k conv to 1 x 1 and the k x k transposed conv back.
        k = self.image_size // 32
        b = BRC(channels[5], k, 1, 0, name="bottleneck_conv", **bn)(encoder[5], train)
        bottleneck = BRC(channels[5], k, 1, 0, transpose=True, name="bottleneck_deconv", **bn)(b, train)

        # Decoder: concatenations are always [decoder, encoder]; E0 is not concatenated (as in the authors' net).
        decoder = {}
        h = bottleneck
        for s in range(4, -1, -1):
            h = jnp.concatenate([h, encoder[s + 1]], axis=-1)
            h = UpBlock(channels[s], **bn, name=f"D{s}_up")(h, train)
            h = IdentityBlock(channels[s], **bn, name=f"D{s}_block")(h, train)
            decoder[s] = h

        # 13 one-channel side maps, replicated to full resolution and concatenated in the authors' order.
        sources = [x, *encoder, *(decoder[s] for s in range(5)), bottleneck]
        sides = [
            replicate_upsample(BRC(1, name=f"side_{name}", **bn)(src, train), self.image_size)
            for name, src in zip(SIDE_MAP_ORDER, sources)
        ]
        z = jnp.concatenate(sides, axis=-1)

        # Heads (conv -> BN, no ReLU): tanh metric features and two-class logits.
        features = Conv(FEATURE_DIM, 3, 1, 1, self.dtype, self.conv, name="metric_conv")(z)
        features = jnp.tanh(batch_norm(features, train, self.bn_momentum, self.bn_epsilon, self.dtype, "metric_bn"))
        logits = Conv(2, 3, 1, 1, self.dtype, self.conv, name="logit_conv")(z)
        logits = batch_norm(logits, train, self.bn_momentum, self.bn_epsilon, self.dtype, "logit_bn")
        return {"features": features.astype(jnp.float32), "logits": logits.astype(jnp.float32)}


def init_variables(model: MEnet, seed: int = 0):
    """Parameters and BatchNorm statistics with the distributions of `model.init`, drawn with numpy.

    `model.init` is the reference, but XLA compiles its ~150 random draws for 10-40 s on a CPU; this builds the
    same tree (from `jax.eval_shape`) in milliseconds: xavier-uniform kernels, zero biases and shifts, unit scales,
    zero means and unit variances.
    """
    shapes = parameter_shapes(model)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [getattr(k, "key", str(k)) for k in path]
        if names[-1] == "kernel":
            bound = xavier_bound(leaf.shape, transpose=names[-2].startswith("ConvTranspose"))
            return jnp.asarray(rng.uniform(-bound, bound, leaf.shape).astype(leaf.dtype))
        fill = 1.0 if names[-1] in ("scale", "var") else 0.0
        return jnp.full(leaf.shape, fill, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def count_parameters(tree) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


def parameter_shapes(model: MEnet):
    """Shapes of all variables without allocating them (for the paper-size model, 0.74 GB of float32)."""
    dummy = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)


def forward_flops(model: MEnet, variables_shapes=None) -> float:
    """Forward FLOPs of one image in evaluation mode, from XLA's cost analysis of the lowered program."""
    variables_shapes = variables_shapes or parameter_shapes(model)
    dummy = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.float32)
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables_shapes, dummy)
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost["flops"])


def describe(config: Config) -> str:
    """The network of `config` in three lines: its settings, parameter count and forward FLOPs per image."""
    model = MEnet.from_config(config)
    shapes = parameter_shapes(model)
    return "\n".join(
        [
            f"config: image_size={config.image_size} width={config.width} batch_size={config.batch_size} "
            f"dtype={config.dtype} loss={config.loss}",
            f"parameters: {count_parameters(shapes['params'])}",
            f"forward FLOPs per image: {forward_flops(model, shapes):.4g}",
        ]
    )
