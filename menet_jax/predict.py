"""`python -m menet_jax.predict`: saliency maps for any image, with rembg's conventions.

    python -m menet_jax.predict i photo.jpg photo.png                    # one image -> 8-bit saliency map
    python -m menet_jax.predict p photos/ maps/ --checkpoint runs/duts    # a folder (batched)
    python -m menet_jax.predict i photo.jpg mask.png --threshold 0.5      # binary mask (0/255)
    python -m menet_jax.predict i photo.jpg cutout.png --cutout           # RGBA, background removed
    python -m menet_jax.predict i photo.jpg photo.png --backend onnx --checkpoint menet.onnx   # onnxruntime, no JAX

Outputs are at each image's original size: in mode i in the format of OUT's extension (.png, .jpg, .jpeg, .webp,
.tif, .tiff, .bmp; a --cutout needs alpha, so not .jpg / .jpeg: use .png or .webp), in mode p PNGs named after the
inputs' stems. Output paths are checked before the network is loaded: a folder where a file is needed, a file where
a folder is needed, an output that would overwrite an input, two inputs with the same stem (x.jpg, x.png) and an
unwritable destination are one-line errors. Without --checkpoint the weights shipped in the package are used
(menet_jax/weights, checksum verified on load).

`--backend onnx` runs a file written by `python -m menet_jax.export` (given as --checkpoint) with onnxruntime:
that path imports no JAX (`inference.exported.OnnxPredictor`, the image helpers of `io.images`), so it runs
where only numpy, Pillow and onnxruntime are installed (`pip install 'menet-jax[export]'`), in float32.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import menet_datasets
from menet_jax import cli
from menet_jax.errors import ConfigError, DataError
from menet_jax.inference.render import check_outputs, predict_files
from menet_jax.io.outputs import check_folder


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        prog="python -m menet_jax.predict",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("mode", choices=["i", "p"], help="i: one image; p: a folder of images")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help=cli.CHECKPOINT_HELP + "; with --backend onnx, a .onnx file written by python -m menet_jax.export",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="compute dtype (default: the one the weights were trained with; jax backend only)",
    )
    parser.add_argument(
        "--backend",
        default="jax",
        choices=["jax", "onnx"],
        help="jax (default) or onnx: run an exported .onnx --checkpoint with onnxruntime, no JAX",
    )
    parser.add_argument("--map", default="metric", choices=["metric", "ce"], help="metric (Eq. 5) or CE map")
    parser.add_argument("-om", "--only-mask", action="store_true", help="write the map only (the default)")
    parser.add_argument("--threshold", type=float, help="write a binary 0/255 mask: map >= THRESHOLD")
    parser.add_argument(
        "--cutout",
        action="store_true",
        help="write RGBA: the image with the map as alpha (not to .jpg: JPEG has no alpha)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def load_predictor(args, images: int):
    """The network to run: the JAX Predictor, or with --backend onnx an OnnxPredictor (JAX never imported). Its
    batches are padded to `--batch-size` rows, so that is never more than the `images` there are."""
    batch_size = min(args.batch_size, images)
    onnx_file = args.checkpoint is not None and args.checkpoint.suffix.lower() == ".onnx"
    if args.backend == "onnx":
        if args.checkpoint is None or not onnx_file:
            raise ConfigError(
                "--backend onnx needs --checkpoint FILE.onnx (write one with "
                "python -m menet_jax.export [--checkpoint PATH] menet.onnx)"
            )
        if args.dtype not in (None, "float32"):
            raise ConfigError(f"--dtype {args.dtype}: an ONNX export computes in float32")
        from menet_jax.inference.exported import OnnxPredictor  # onnxruntime, not JAX

        return OnnxPredictor(args.checkpoint, batch_size=batch_size)
    if onnx_file:
        raise ConfigError(f"{args.checkpoint}: an ONNX export; run it with --backend onnx")
    # JAX is imported here, on the JAX backend's path only: the ONNX path never loads it.
    from menet_jax.inference.predictor import Predictor
    from menet_jax.runtime.xla import enable_compilation_cache

    enable_compilation_cache()
    return Predictor.load(args.checkpoint, batch_size=batch_size, dtype=args.dtype)


@cli.command(compilation_cache=False)  # load_predictor switches it on for the JAX backend
def main(argv=None) -> int:
    args = parse_args(argv)
    cli.check_minimums(args, batch_size=1)
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    source, target = Path(args.input), Path(args.output)
    if args.mode == "i":
        if not source.is_file():
            raise DataError(f"image not found: {source}")
        inputs, outputs = [source], [target]
    else:
        if not source.is_dir():
            raise DataError(f"folder not found: {source}")
        inputs = sorted(
            p
            for p in source.iterdir()
            if p.suffix.lower() in menet_datasets.IMAGE_EXTS and not p.name.startswith(".") and p.is_file()
        )
        if not inputs:
            raise DataError(f"no images found in {source}")
        check_folder(target)
        outputs = [target / f"{p.stem}.png" for p in inputs]
    check_outputs(inputs, outputs, cutout=args.cutout)  # before the network loads
    predictor = load_predictor(args, len(inputs))
    count = predict_files(
        predictor,
        inputs,
        outputs,
        map_name=args.map,
        threshold=args.threshold,
        cutout=args.cutout,
        progress=not args.no_progress,
    )
    print(f"wrote {count} map{'s' if count != 1 else ''} to {target}")
    return 0


def run() -> None:
    """The console script (`menet-predict`): `main` as the process's command."""
    cli.start(main)


if __name__ == "__main__":
    run()
