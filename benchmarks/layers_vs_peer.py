"""Forward + backward time of every convolution shape of the paper configuration, ours against PyTorch's, one layer
at a time: where the train step's gap to the peer is (and is not).

    python benchmarks/layers_vs_peer.py [--batch 5] [--repeats 5] [--forward] [names ...]

Ours is the jitted vjp of `conv2d` / `conv_transpose2d` (the CPU default formulation, a train step's
`compiler_options`), the peer's an nn.Conv2d / nn.ConvTranspose2d (bias-free) forward and backward on NCHW tensors;
best of --repeats each. `--forward` times the forward pass alone, as inference runs it (inference's
`compiler_options`; the peer under `torch.no_grad()`). The total weights each shape by how often the network has it.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see train_step.load_peer)

import jax
import numpy as np

from menet_jax.core.layers import conv2d, conv_transpose2d
from menet_jax.runtime.xla import compiler_options

# name, input size, C_in, C_out, kernel, stride, padding, transposed, how many in the network (224 px, width 32)
LAYERS = [
    ("stem", 224, 3, 32, 3, 1, 1, False, 1),
    ("c224", 224, 32, 32, 3, 1, 1, False, 7),
    ("down224", 224, 32, 64, 3, 2, 1, False, 1),
    ("short224", 224, 32, 64, 1, 2, 0, False, 1),
    ("c112", 112, 64, 64, 3, 1, 1, False, 6),
    ("down112", 112, 64, 128, 3, 2, 1, False, 1),
    ("c56", 56, 128, 128, 3, 1, 1, False, 6),
    ("down56", 56, 128, 256, 3, 2, 1, False, 1),
    ("c28", 28, 256, 256, 3, 1, 1, False, 6),
    ("down28", 28, 256, 512, 3, 2, 1, False, 1),
    ("c14", 14, 512, 512, 3, 1, 1, False, 6),
    ("down14", 14, 512, 1024, 3, 2, 1, False, 1),
    ("c7", 7, 1024, 1024, 3, 1, 1, False, 3),
    ("bottleneck", 7, 1024, 1024, 7, 1, 0, False, 1),
    ("bottleneck_up", 1, 1024, 1024, 7, 1, 0, True, 1),
    ("up4", 7, 2048, 512, 4, 2, 1, True, 1),
    ("up4_short", 7, 2048, 512, 2, 2, 0, True, 1),
    ("up3", 14, 1024, 256, 4, 2, 1, True, 1),
    ("up3_short", 14, 1024, 256, 2, 2, 0, True, 1),
    ("up2", 28, 512, 128, 4, 2, 1, True, 1),
    ("up2_short", 28, 512, 128, 2, 2, 0, True, 1),
    ("up1", 56, 256, 64, 4, 2, 1, True, 1),
    ("up1_short", 56, 256, 64, 2, 2, 0, True, 1),
    ("up0", 112, 128, 32, 4, 2, 1, True, 1),
    ("up0_short", 112, 128, 32, 2, 2, 0, True, 1),
    ("head", 224, 13, 16, 3, 1, 1, False, 1),
    ("side224", 224, 32, 1, 3, 1, 1, False, 2),
]


def best_of(run, repeats):
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only these layers (default: all)")
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--forward", action="store_true", help="the forward pass alone (inference)")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    options = compiler_options(training=not args.forward)
    what = "forward" if args.forward else "forward + backward"
    print(f"convolution {what}, batch {args.batch}, seconds ({jax.default_backend()})")
    print(f"{'layer':14s} {'ours':>7s} {'peer':>7s} {'ratio':>6s}  count")
    ours_total = peer_total = 0.0
    for name, size, cin, cout, k, stride, pad, transposed, count in LAYERS:
        if args.names and name not in args.names:
            continue
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.batch, size, size, cin)).astype(np.float32)
        w = (rng.standard_normal((k, k, cin, cout)) * 0.01).astype(np.float32)
        layer = conv_transpose2d if transposed else conv2d
        fn = lambda x, w: layer(x, w, stride=stride, padding=pad)  # noqa: E731
        g = rng.standard_normal(jax.eval_shape(fn, x, w).shape).astype(np.float32)
        if args.forward:
            program = jax.jit(fn, compiler_options=options)
            ours = best_of(lambda: jax.block_until_ready(program(x, w)), args.repeats)
        else:
            vjp = jax.jit(lambda x, w, g: jax.vjp(fn, x, w)[1](g), compiler_options=options)
            ours = best_of(lambda: jax.block_until_ready(vjp(x, w, g)), args.repeats)

        module = (torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d)(cin, cout, k, stride, pad, bias=False)
        xt = torch.tensor(x.transpose(0, 3, 1, 2)).requires_grad_()
        gt = torch.tensor(g.transpose(0, 3, 1, 2))

        def peer_forward():
            with torch.no_grad():
                module(xt)

        def peer_step():
            xt.grad = None
            module.zero_grad()
            module(xt).backward(gt)

        peer = best_of(peer_forward if args.forward else peer_step, args.repeats)
        ours_total, peer_total = ours_total + count * ours, peer_total + count * peer
        print(f"{name:14s} {ours:7.3f} {peer:7.3f} {ours / peer:6.2f}  x{count}", flush=True)
    print(f"{'total':14s} {ours_total:7.3f} {peer_total:7.3f} {ours_total / peer_total:6.2f}")


if __name__ == "__main__":
    from menet_jax.runtime.host_memory import reexec_with_reused_memory

    reexec_with_reused_memory()
    main()
