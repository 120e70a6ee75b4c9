"""`python -m menet_jax.curves WORKDIR`: redraw a training run's curves (WORKDIR/curves.png, or --output).

python -m menet_jax.curves runs/duts128            # writes runs/duts128/curves.png
"""

from __future__ import annotations

from pathlib import Path

from menet_jax import cli
from menet_jax.errors import OutputError
from menet_jax.io.outputs import check_output_file
from menet_jax.training.curves import plot_training

FIGURE_EXTS = (".png", ".pdf", ".svg")


@cli.command(compilation_cache=False)
def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m menet_jax.curves", description=__doc__.split("\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--output", type=Path, help="PNG path (default: WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    out = args.output
    if out is not None:
        if out.suffix.lower() not in FIGURE_EXTS:
            raise OutputError(f"{out}: curves are drawn as {', '.join(FIGURE_EXTS)}; name it {out.stem}.png")
        if out.resolve() != (args.workdir / "curves.png").resolve():  # the run's own figure is curves' to redraw
            check_output_file(out, reads=[args.workdir / "metrics.jsonl"], example="curves.png")
    print(f"wrote {plot_training(args.workdir, out)}")
    return 0


def run() -> None:
    """The console script (`menet-curves`): `main` as the process's command."""
    cli.start(main)


if __name__ == "__main__":
    run()
