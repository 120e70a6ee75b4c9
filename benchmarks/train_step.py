"""Time one config's train step: compile time, median step time, images/s, peak host memory.

    python benchmarks/train_step.py --config paper --steps 3
    python benchmarks/train_step.py --config tiny --set image_size=128 --set width=8 --set batch_size=5

Prints a one-row table. The PyTorch peer (../shared/bench/torch_menet.py) is the reference to run in the same
session: `python ../shared/bench/torch_menet.py --size 224 --width 32 --batch 5 --steps 3`.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax
import numpy as np

from menet_jax.config import PRESETS, get_config
from menet_jax.model import MEnet
from menet_jax.trainer import create_state, data_mesh, make_optimizer, make_train_step, replicate, shard_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (compiling) one")
    args = parser.parse_args()
    config = get_config(args.config, args.overrides)

    model, tx, mesh = MEnet.from_config(config), make_optimizer(config), data_mesh()
    state = replicate(create_state(model, tx, config.seed), mesh)
    rng = np.random.default_rng(0)
    b, s = config.batch_size, config.image_size
    batch = shard_batch({"image": rng.integers(0, 256, (b, s, s, 3)).astype(np.uint8),
                         "mask": (rng.random((b, s, s)) > 0.7).astype(np.uint8)}, mesh)
    step = make_train_step(model, tx, config, mesh)

    started = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - started
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20

    print(f"{'config':34s} {'compile s':>9s} {'step s':>8s} {'img/s':>7s} {'peak GiB':>9s}")
    name = f"{args.config} {s}px w{config.width} b{b} {config.dtype}"
    print(f"{name:34s} {compile_s:9.1f} {median:8.3f} {b / median:7.2f} {peak_gib:9.2f}")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; loss {float(metrics['loss']):.4f}")


if __name__ == "__main__":
    main()
