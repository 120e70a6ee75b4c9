"""`python -m menet_jax.export`: the evaluation forward pass, both maps, as an ONNX model or a StableHLO artifact.

    python -m menet_jax.export menet.onnx                                   # the shipped weights, ONNX
    python -m menet_jax.export --checkpoint runs/duts menet.onnx            # a training workdir (or a .npz)
    python -m menet_jax.export menet.stablehlo                              # a serialized jax.export artifact
    python -m menet_jax.export --check menet.onnx                           # load and run an exported file

OUT is the one file written; the format comes from its extension (.onnx, .stablehlo), or from --format for any
other name. The network is always named with --checkpoint, as in the other commands: a second positional path (the
old `[CHECKPOINT] OUT` form, where forgetting OUT made the weights the output) is refused.

Both files compute `Predictor`'s maps at the network's input size: input `images`, float32 (N, S, S, 3) RGB
values 0..255 (NHWC, S the config's image_size, N free), outputs `metric` (Eq. 5) and `ce`, float32 (N, S, S) in
[0, 1], min-max normalised per image; images are resized to S x S and the maps back outside the file
(`menet_jax.inference.export` has the details). Both record their SHA-256, checked on load (--check,
`predict --backend onnx`): a damaged file is refused. `predict --backend onnx` runs an ONNX file without JAX.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from menet_jax import cli
from menet_jax.errors import ConfigError
from menet_jax.inference.export import FORMATS, export
from menet_jax.inference.exported import OnnxPredictor, load

EXTENSIONS = {".onnx": "onnx", ".stablehlo": "stablehlo"}


def _format(out: Path, fmt: str | None) -> str:
    """The format to write: OUT's extension's, or --format's where the extension names none; a --format that
    contradicts the extension is refused (`inference.exported.load` reads .onnx as ONNX, .stablehlo as StableHLO)."""
    implied = EXTENSIONS.get(out.suffix.lower())
    if fmt is None and implied is None:
        raise ConfigError(
            f"{out}: unknown export extension {out.suffix or '(none)'!r}; name it .onnx or .stablehlo, "
            "or give --format onnx|stablehlo"
        )
    if fmt is not None and implied is not None and fmt != implied:
        raise ConfigError(f"{out}: --format {fmt}, but {out.suffix} names {implied}; name it .{fmt}")
    return fmt or implied


@cli.command
def main(argv=None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m menet_jax.export",
        usage="%(prog)s [-h] [--checkpoint CHECKPOINT] [--format {onnx,stablehlo}] [--overwrite] [--check] OUT",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    # nargs="+" rather than one positional: the old two-path form gets a one-line error showing the new one, not
    # argparse's "unrecognized arguments".
    parser.add_argument(
        "out",
        nargs="+",
        metavar="OUT",
        help="the file to write (.onnx or .stablehlo); with --check, the exported file to load and run",
    )
    cli.add_checkpoint_argument(parser)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="onnx or stablehlo (default: from OUT's extension, .onnx or .stablehlo; needed for any other name)",
    )
    parser.add_argument("--check", action="store_true", help="load an exported file and run it on one blank image")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    if len(args.out) == 2 and not args.check and args.checkpoint is None:
        first, out = args.out
        raise ConfigError(
            f"give the network with --checkpoint: python -m menet_jax.export --checkpoint {first} {out} "
            "(one positional path, the file to write)"
        )
    if len(args.out) > 1:
        raise ConfigError(
            "--check takes one exported file"
            if args.check
            else f"give one OUT file, the file to write (got {len(args.out)} paths; the network is --checkpoint)"
        )
    out = Path(args.out[0])
    if args.check:
        if args.checkpoint is not None:
            raise ConfigError(f"--check runs the exported file {out}; it takes no --checkpoint")
        runner = load(out)
        size = runner.image_size
        blank = np.zeros((1, size, size, 3), np.float32)
        maps = runner.forward(blank) if isinstance(runner, OnnxPredictor) else runner(blank)
        print(
            f"{out}: input [N, {size}, {size}, 3] float32, outputs "
            + ", ".join(f"{k} {list(v.shape)}" for k, v in maps.items())
        )
        return 0
    if args.checkpoint is None and out.suffix.lower() == ".npz":
        raise ConfigError(
            f"{out}: a weights file is not an export format; give the network with --checkpoint and the file to "
            f"write, e.g. python -m menet_jax.export --checkpoint {out} {out.with_suffix('.onnx')}"
        )
    fmt = _format(out, args.format)
    path = export(args.checkpoint, out, fmt, overwrite=args.overwrite)
    print(f"{path}: {fmt}, {path.stat().st_size / 1e6:.1f} MB")
    return 0


def run() -> None:
    """The console script (`menet-export`): `main` as the process's command."""
    cli.start(main)


if __name__ == "__main__":
    run()
