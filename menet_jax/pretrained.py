"""`python -m menet_jax.pretrained`: a training workdir's checkpoint as one shippable weights file, or a check of one.

    python -m menet_jax.pretrained export runs/duts192_160w8 menet_jax/weights/menet-duts192-160w8.npz --step 6500
    python -m menet_jax.pretrained verify menet_jax/weights/menet-duts192-160w8.npz

The format (float16 parameters, float32 BatchNorm statistics, the config, a SHA-256 recorded for the shipped file)
is `menet_jax.io.weights`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from menet_jax import cli
from menet_jax.errors import ConfigError, WeightsError
from menet_jax.io import checkpoint, weights
from menet_jax.io.outputs import check_output_file


@cli.command
def main(argv=None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m menet_jax.pretrained",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ex = commands.add_parser("export", help="a training workdir's checkpoint to one .npz file")
    ex.add_argument("workdir", type=Path)
    ex.add_argument("output", type=Path)
    ex.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    ex.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    ve = commands.add_parser("verify", help="print the config and SHA-256 of a weights file")
    ve.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.command == "export":
        if args.output.suffix.lower() != ".npz":  # an .onnx name holding a numpy archive fails far from here
            raise ConfigError(f"{args.output}: weights are a .npz archive; name it {args.output.with_suffix('.npz')}")
        check_output_file(args.output, reads=[args.workdir], overwrite=args.overwrite)  # before the checkpoint is read
        config = checkpoint.workdir_config(args.workdir)
        try:
            step = checkpoint.latest_step(args.workdir) if args.step is None else args.step
            variables = checkpoint.load_variables(args.workdir, step)
        except FileNotFoundError as error:
            raise WeightsError(str(error)) from None
        digest = weights.export(variables, config, args.output, meta={"source": str(args.workdir), "step": step})
        print(f"{args.output}: {args.output.stat().st_size / 1e6:.1f} MB, sha256 {digest}")
    else:
        _, config, meta = weights.load(args.path)
        print(
            f"{args.path}: image_size {config.image_size}, width {config.width}, meta {meta}, "
            f"sha256 {weights.sha256(args.path)}"
        )
    return 0


def run() -> None:
    """The console script (`menet-pretrained`): `main` as the process's command."""
    cli.start(main)


if __name__ == "__main__":
    run()
