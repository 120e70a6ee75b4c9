"""`python -m menet_jax.evaluate`: score MEnet (or any method's saliency maps) with the standard SOD metrics.

    python -m menet_jax.evaluate --checkpoint runs/duts --data-dir ../shared/data/ECSSD --output eval/ecssd
    python -m menet_jax.evaluate --predictions maps/ --data-dir ../shared/data/ECSSD --output eval/other

Protocol (the field's, as PySODMetrics): each map is resized to its ground truth's original size (bilinear) and
scored as the 8-bit image saving it gives (`metrics.to_8bit`), the ground truth is binarised at 128 and never
resized, and maps are min-max normalised per image (--no-normalize to score them as they are).

Saved maps are read as: 8-bit images / 255 (colour ones by luminance), 16-bit ones / 65535, float TIFFs (mode F)
with values in [0, 1] as they are and float maps of any other range min-max rescaled to [0, 1]; a map with NaN or
inf, or two maps of one stem (x.png and x.jpg), is an error.

Writes DIR/results.json, DIR/per_image.csv, DIR/pr_curve.png and DIR/f_curve.png; with --save-maps also the maps,
as DIR/maps/<dataset>/<map>/<stem>.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from menet_datasets.cli import add_source_arguments, sources_from_args
from menet_jax import cli
from menet_jax.errors import OutputError
from menet_jax.evaluation import (
    evaluate_source,
    format_tables,
    load_prediction,
    match_predictions,
    prediction_folder,
    write_outputs,
)
from menet_jax.inference.predictor import Predictor
from menet_jax.io.images import MAPS
from menet_jax.io.outputs import check_folder


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        prog="python -m menet_jax.evaluate",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help=cli.CHECKPOINT_HELP)
    source.add_argument("--predictions", type=Path, help="folder of saliency maps (PNG per stem, any size)")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="compute dtype (default: the one the weights were trained with)",
    )
    parser.add_argument("--map", default="both", choices=["metric", "ce", "both"], help="with --checkpoint")
    parser.add_argument("--output", type=Path, default=Path("eval"), help="results folder (default: eval)")
    parser.add_argument("--save-maps", action="store_true", help="also write the maps as PNGs")
    parser.add_argument("--no-normalize", action="store_true", help="no per-image min-max of the maps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-progress", action="store_true")
    add_source_arguments(parser)
    return parser.parse_args(argv)


@cli.command
def main(argv=None) -> int:
    args = parse_args(argv)
    cli.check_minimums(args, batch_size=1)
    check_folder(args.output)  # before the data is read and the network loaded
    if args.save_maps and args.predictions is not None:
        saved, read = (args.output / "maps").resolve(), args.predictions.resolve()
        if saved == read or read in saved.parents or saved in read.parents:
            raise OutputError(
                f"{args.output / 'maps'}: --save-maps would write over the --predictions it reads ({args.predictions})"
            )
    sources = sources_from_args(args)
    if args.predictions is None:
        predictor = Predictor.load(args.checkpoint, batch_size=args.batch_size, dtype=args.dtype)
        map_names = MAPS if args.map == "both" else (args.map,)
        maps_for = lambda indices, examples: predictor([e["image"] for e in examples])
    else:
        map_names = ("",)
    results, rows = {}, []
    for name, source in sources:
        if args.predictions is not None:
            paths = match_predictions(name, source.names, prediction_folder(args.predictions, name))
            maps_for = lambda indices, examples, paths=paths: [
                {"": load_prediction(paths[i], *e["mask"].shape)} for i, e in zip(indices, examples)
            ]
        scores, source_rows = evaluate_source(
            name,
            source,
            maps_for,
            map_names,
            normalize=not args.no_normalize,
            save_dir=args.output / "maps" if args.save_maps else None,
            progress=not args.no_progress,
            batch_size=args.batch_size,
        )
        for map_name, r in scores.items():  # NAME, or NAME/metric and NAME/ce when both maps are scored
            results[f"{name}/{map_name}" if len(map_names) > 1 else name] = r
        rows += source_rows
    write_outputs(results, rows, args.output)
    print(format_tables(results))
    print(f"results: {args.output / 'results.json'}, per-image scores and PR / F curves in {args.output}")
    return 0


def run() -> None:
    """The console script (`menet-evaluate`): `main` as the process's command."""
    cli.start(main, reuse_memory=True)


if __name__ == "__main__":
    run()
