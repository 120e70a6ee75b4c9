"""`python -m menet_jax.curves WORKDIR`: redraw a training run's curves (WORKDIR/curves.png, or --output).

python -m menet_jax.curves runs/duts128            # writes runs/duts128/curves.png
"""

from __future__ import annotations

from pathlib import Path

from menet_jax import cli
from menet_jax.training.curves import plot_training


@cli.command(compilation_cache=False)
def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m menet_jax.curves", description=__doc__.split("\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--output", type=Path, help="PNG path (default: WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    print(f"wrote {plot_training(args.workdir, args.output)}")
    return 0


def run() -> None:
    """The console script (`menet-curves`): `main` as the process's command."""
    cli.start(main)


if __name__ == "__main__":
    run()
