"""Gradient time of single 3x3 convolutions at the paper configuration's shapes: plain lax compiled with XLA's
default options and with a train step's `menet_jax.runtime.xla.compiler_options(training=True)` (convolutions on XLA's
own kernels, not YNNPACK), and the fast form with those options: the measurements behind the CPU default "mixed"
(`layers._fast_pays_off`).

    python benchmarks/conv_layers.py [--batch 5] [--repeats 3]

Each case is the jitted gradient of sum(conv(x, w)^2) with respect to both inputs; the best of --repeats runs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.core.layers import _fast_pays_off, conv2d
from menet_jax.runtime.xla import compiler_options

# (input size, C_in, C_out, stride): MEnet's 3x3 convolutions at 224 px, width 32
CASES = [
    (224, 32, 32, 1),
    (224, 32, 64, 2),
    (112, 64, 64, 1),
    (112, 64, 128, 2),
    (56, 128, 128, 1),
    (28, 256, 256, 1),
    (14, 512, 512, 1),
    (14, 512, 1024, 2),
    (7, 1024, 1024, 1),
    (224, 3, 32, 1),
    (224, 13, 16, 1),
    (224, 32, 1, 1),
]


def gradient_seconds(size, cin, cout, stride, impl, batch, repeats, options) -> float:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.random((3, 3, cin, cout)) * 0.01, jnp.float32)
    grad = jax.jit(
        jax.grad(lambda x, w: jnp.sum(conv2d(x, w, stride=stride, padding=1, impl=impl) ** 2), argnums=(0, 1)),
        compiler_options=options,
    )
    jax.block_until_ready(grad(x, w))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(grad(x, w))
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"3x3 conv gradient, batch {args.batch}, seconds ({jax.default_backend()})")
    print(f"{'case':<22} {'XLA default':>11} {'plain':>7} {'fast':>7} {'fast/plain':>10}  mixed uses")
    options = compiler_options(training=True)
    for size, cin, cout, stride in CASES:
        default, plain, fast = (
            gradient_seconds(size, cin, cout, stride, impl, args.batch, args.repeats, opts)
            for impl, opts in (("plain", {}), ("plain", options), ("fast", options))
        )
        pads = ((1, 1), (1, 1))
        chosen = "fast" if _fast_pays_off((args.batch, size, size, cin), (3, 3, cin, cout), pads, stride) else "plain"
        print(
            f"{size}px {cin}->{cout} s{stride}".ljust(22)
            + f" {default:11.3f} {plain:7.3f} {fast:7.3f} {fast / plain:10.2f}  {chosen}",
            flush=True,
        )


if __name__ == "__main__":
    main()
