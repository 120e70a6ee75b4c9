"""`python -m menet_datasets.prepare NAME --manual-dir DIR [--data-dir OUT]`: build a TFDS dataset from a download.

    python -m menet_datasets.prepare ecssd --manual-dir ../shared/data/ECSSD
    python -m menet_datasets.prepare duts --manual-dir ~/downloads/DUTS --data-dir ~/tfds
    python -m menet_datasets.prepare salient_folder --manual-dir my_masks/ --skip-bad
    python -m menet_datasets.prepare --instructions hku_is

Prints the number of examples per split and what was converted, skipped or ignored. Bad inputs (unreadable or
corrupt files, a mask of another size, an image without a mask) stop the build with a one-line error naming the
file; with --skip-bad they are skipped and listed at the end instead. File names that are not UTF-8 are shown with
their undecodable bytes as \\xNN (and backslashes doubled: ``menet_datasets.folder.printable_name``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ArgumentParser, DataError, MenetError
from .folder import printable_name


def parse_args(argv=None):
    from .builders import BUILDERS  # TensorFlow Datasets (heavy): imported when a command runs, not on import

    parser = ArgumentParser(
        prog="python -m menet_datasets.prepare",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("name", metavar="NAME", help=f"one of: {', '.join(sorted(BUILDERS))}")
    parser.add_argument("--manual-dir", type=Path, metavar="DIR", help="the downloaded, extracted dataset")
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="OUT",
        help="where prepared datasets live (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable files, size mismatches and unmatched images or masks, and list them",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the dataset is prepared")
    parser.add_argument("--instructions", action="store_true", help="print where to download NAME and exit")
    return parser.parse_args(argv)


def report(builder) -> list[str]:
    """Lines describing a prepared dataset: counts per split, conversions, skipped and ignored files."""
    meta = builder.info.metadata
    splits = builder.info.splits
    lines = [f"{builder.name} {builder.version} in {builder.data_dir} (from {meta.get('source', '?')})"]
    lines += [f"  {split:10s} {splits[split].num_examples:6d} examples" for split in sorted(splits)]
    formats = ", ".join(f"{k} {v}" for k, v in sorted(meta.get("image_formats", {}).items()))
    lines.append(
        f"  image formats: {formats}; stored as lossless PNG (not 8-bit RGB JPEG): "
        f"{meta.get('stored_as_png', 0)}; EXIF-rotated to match the mask: {meta.get('exif_rotated', 0)}"
    )
    soft = "kept as mask_soft" if "mask_soft" in builder.info.features else "binarised at 128"
    lines.append(f"  masks not strictly 0/255: {meta.get('non_binary_masks', 0)} ({soft})")
    for key, what in (("ignored", "non-image files ignored"), ("skipped", "bad inputs skipped")):
        items = meta.get(key, [])
        if items:
            lines.append(f"  {what}: {len(items)}")
            lines += [f"    {item}" for item in items]
    return lines


def main(argv=None) -> int:
    from absl import logging as absl_logging  # TFDS's logging, and TFDS itself (heavy): off the --help path

    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS warns that a dataset it is about to build is absent
    from .builders import BUILDERS
    from .tfds_source import prepared_builder

    try:
        args = parse_args(argv)
        if args.name not in BUILDERS:
            raise DataError(f"unknown dataset {args.name!r} (known: {', '.join(sorted(BUILDERS))})")
        if args.instructions:
            print(BUILDERS[args.name].MANUAL_DOWNLOAD_INSTRUCTIONS)
            return 0
        if args.manual_dir is None:
            raise DataError(
                f"--manual-dir DIR is needed (the downloaded {args.name}; "
                f"python -m menet_datasets.prepare {args.name} --instructions says where to get it)"
            )
        if not args.manual_dir.is_dir():
            raise DataError(f"manual dir not found: {args.manual_dir.resolve()}")
        existing = BUILDERS[args.name](data_dir=str(args.data_dir) if args.data_dir else None)
        reused = existing.is_prepared() and not args.force
        builder = prepared_builder(
            args.name, data_dir=args.data_dir, manual_dir=args.manual_dir, skip_bad=args.skip_bad, force=args.force
        )
    except MenetError as error:  # DataError, or a usage error
        print(f"error: {printable_name(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written (TFDS builds in a temporary folder)", file=sys.stderr)
        return 130
    if reused:
        print(f"already prepared (--force rebuilds it): {builder.data_dir}")
    print("\n".join(printable_name(line) for line in report(builder)))  # file names need not be UTF-8
    return 0


def run() -> None:
    """The console script (`menet-prepare`)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
