"""`python -m menet_jax.export`: the evaluation forward pass, both maps, as an ONNX model or a StableHLO artifact.

    python -m menet_jax.export menet.onnx                                   # the shipped weights, ONNX
    python -m menet_jax.export runs/duts menet.onnx                         # a training workdir (or a .npz)
    python -m menet_jax.export menet.stablehlo --format stablehlo           # a serialized jax.export artifact
    python -m menet_jax.export --check menet.onnx                           # load and run an exported file

Both files compute `Predictor`'s maps at the network's input size: input `images`, float32 (N, S, S, 3) RGB
values 0..255 (NHWC, S the config's image_size, N free), outputs `metric` (Eq. 5) and `ce`, float32 (N, S, S) in
[0, 1], min-max normalised per image; images are resized to S x S and the maps back outside the file
(`menet_jax.inference.export` has the details). `predict --backend onnx` runs an ONNX file without JAX.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from menet_jax import cli
from menet_jax.errors import ConfigError
from menet_jax.inference.export import FORMATS, export
from menet_jax.inference.exported import OnnxPredictor, load


@cli.command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m menet_jax.export",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="[CHECKPOINT] OUT",
        help="training workdir or weights .npz (default: the shipped weights), and the file to "
        "write; with --check, the one exported file to load and run",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="onnx or stablehlo (default: from OUT's extension, .onnx -> onnx, anything else -> stablehlo)",
    )
    parser.add_argument("--check", action="store_true", help="load an exported file and run it on one blank image")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    if args.check:
        if len(args.paths) != 1:
            parser.error("--check takes one exported file")
        runner = load(args.paths[0])
        size = runner.image_size
        blank = np.zeros((1, size, size, 3), np.float32)
        maps = runner.forward(blank) if isinstance(runner, OnnxPredictor) else runner(blank)
        print(
            f"{args.paths[0]}: input [N, {size}, {size}, 3] float32, outputs "
            + ", ".join(f"{k} {list(v.shape)}" for k, v in maps.items())
        )
        return 0
    if len(args.paths) > 2:
        parser.error("give at most CHECKPOINT and OUT")
    checkpoint, out = (None, args.paths[0]) if len(args.paths) == 1 else args.paths
    if checkpoint is None and Path(out).suffix.lower() == ".npz":
        raise ConfigError(
            f"{out}: a weights file is not an export format; give the network and the file to write, "
            f"e.g. python -m menet_jax.export {out} {Path(out).with_suffix('.onnx')}"
        )
    fmt = args.format or ("onnx" if Path(out).suffix.lower() == ".onnx" else "stablehlo")
    path = export(checkpoint, out, fmt, overwrite=args.overwrite)
    print(f"{path}: {fmt}, {path.stat().st_size / 1e6:.1f} MB")
    return 0


def run() -> None:
    """The console script (`menet-export`): `main` as the process's command."""
    cli.start(main)


if __name__ == "__main__":
    run()
