"""The command-line options that choose data, shared by every CLI (train, evaluate, robustness.*).

``--data-dir DIR`` reads a folder of images and masks as it is; ``--dataset NAME`` reads a dataset prepared by
``python -m menet_datasets.prepare`` (built on first use when ``--manual-dir`` says where the download is).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import DataError
from .folder import FolderSource
from .tfds_source import load_source


def add_source_arguments(parser: argparse.ArgumentParser, *, split: str | None = "test") -> None:
    """--data-dir, --dataset, --split, --manual-dir, --tfds-dir; ``split=None`` leaves the split to the caller
    (training: ``train`` when the dataset has one, else its only split)."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data-dir",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="folder with images/ and masks/ (or a DUTS / ECSSD release layout); repeatable",
    )
    group.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME",
        help="a prepared dataset (python -m menet_datasets.prepare NAME); repeatable",
    )
    default = split if split is not None else "train, or the dataset's only split"
    group.add_argument("--split", default=split, help=f"split of --dataset (default: {default})")
    group.add_argument(
        "--manual-dir", type=Path, metavar="DIR", help="the downloaded benchmark, to prepare --dataset on first use"
    )
    group.add_argument(
        "--tfds-dir",
        type=Path,
        metavar="DIR",
        help="where prepared datasets live (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )


def sources_from_args(args: argparse.Namespace, *, required: bool = True) -> list[tuple[str, object]]:
    """[(display name, source)] for every --data-dir and --dataset, in that order; folders are header-checked."""
    sources = []
    for data_dir in args.data_dir:
        folder = FolderSource(data_dir)
        folder.verify()
        sources.append((folder.root.name, folder))
    if args.dataset:
        for name in args.dataset:
            sources.append(
                (
                    name,
                    load_source(
                        name,
                        split=args.split,
                        data_dir=args.tfds_dir,
                        manual_dir=args.manual_dir,
                        progress=not getattr(args, "no_progress", False),
                    ),
                )
            )
    if required and not sources:
        raise DataError("no data given: use --data-dir DIR (images/ + masks/) or --dataset NAME")
    names = [name for name, _ in sources]
    for name in names:
        if names.count(name) > 1:
            raise DataError(f"two data sources are both called {name!r}: results would be mixed up")
    return sources
