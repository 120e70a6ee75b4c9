"""How far a few SGD steps move under tiny perturbations: the noise floor against which the fast CPU formulations
are judged.

    python benchmarks/sensitivity.py                  # plain lax under 1e-7 .. 5e-6 perturbations of the init
    python benchmarks/sensitivity.py --fast           # also the fast formulations against plain (long compile)

The tiny config at 64 px on random batches (the sharding test's setting), 3 SGD steps from the same initialisation.
For each variant: the relative norm of its parameter update after 1, 2 and 3 steps against plain lax's. Relative
perturbations of the initial parameters by one float32 ulp (about 1e-7) already move the update after two steps
by about 1 %: the run is chaotic there (1:1 hard mining and BatchNorm over a few pixels per channel at the bottleneck
turn rounding into different selections and scales), so a formulation that rounds differently (the fast paths:
other summation orders, one gradient equal to 5e-6) cannot be expected closer than that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def updates(impl: str, batches, perturbation: float = 0.0, seed: int = 1):
    """The parameter updates after each step, as flat float32 vectors."""
    import jax

    from menet_jax.core.config import get_config
    from menet_jax.core.model import MEnet
    from menet_jax.training.distributed import data_mesh, replicate, shard_batch
    from menet_jax.training.state import create_state, make_optimizer
    from menet_jax.training.step import make_train_step

    config = get_config("tiny", ["image_size=64", f"conv={impl}"])
    model, tx, mesh = MEnet.from_config(config), make_optimizer(config), data_mesh()
    step = _steps.setdefault(impl, make_train_step(model, tx, config, mesh))
    state = create_state(model, tx, 0)
    if perturbation:
        rng = np.random.default_rng(seed)
        state = state.replace(
            params=jax.tree_util.tree_map(
                lambda x: x * (1 + perturbation * rng.standard_normal(x.shape)).astype(np.float32), state.params
            )
        )
    state = replicate(state, mesh)
    start = [np.asarray(x) for x in jax.tree_util.tree_leaves(state.params)]
    out = []
    for batch in batches:
        state, _ = step(state, shard_batch(batch, mesh))
        out.append(
            np.concatenate(
                [(np.asarray(x) - s).ravel() for x, s in zip(jax.tree_util.tree_leaves(state.params), start)]
            )
        )
    return out


_steps = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="also compare the fast formulations (compiles minutes)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batches = [
        {
            "image": rng.integers(0, 256, (4, 64, 64, 3)).astype(np.uint8),
            "mask": (rng.random((4, 64, 64)) > 0.6).astype(np.uint8),
        }
        for _ in range(args.steps)
    ]
    reference = updates("plain", batches)
    rows = [
        (f"plain, init x (1 + {eps:g} N(0,1)), seed {seed}", updates("plain", batches, eps, seed))
        for eps in (1e-7, 1e-6, 5e-6)
        for seed in (1, 2)
    ]
    if args.fast:
        rows.append(("fast formulations, same init", updates("fast", batches)))
    header = "relative update difference to plain lax after step " + " ".join(f"{k + 1:>9d}" for k in range(args.steps))
    print(header)
    for label, ups in rows:
        diffs = [np.linalg.norm(u - r) / np.linalg.norm(r) for u, r in zip(ups, reference)]
        print(f"{label:52s} " + " ".join(f"{d:9.2e}" for d in diffs))


if __name__ == "__main__":
    main()
