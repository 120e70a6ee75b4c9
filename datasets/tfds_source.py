"""Prepared TFDS datasets as sources of the input pipeline (same interface as FolderSource).

``load_source("ecssd", split="test", data_dir=None, manual_dir=None)`` opens a dataset prepared by
``python -m menet_datasets.prepare`` (building it first when ``manual_dir`` is given and it is not prepared yet).
"""

from __future__ import annotations

import io
import operator
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError
from .folder import find_layout

_IMAGES = ("image", "mask", "mask_soft")


def _builders() -> dict:
    from .builders import BUILDERS  # they import TensorFlow Datasets (heavy): on first use

    return BUILDERS


def _builder_class(name: str):
    builders = _builders()
    if name not in builders:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(sorted(builders))})")
    return builders[name]


def prepared_builder(
    name: str, *, data_dir=None, manual_dir=None, skip_bad: bool = False, force: bool = False, progress: bool = True
):
    """The builder of dataset ``name`` in ``data_dir`` (default: $TFDS_DATA_DIR or ~/tensorflow_datasets),
    prepared from ``manual_dir`` if it is not yet (or again, with ``force``); ``progress=False`` silences TFDS's
    own progress bars (a process-wide TFDS setting)."""
    import tensorflow_datasets as tfds  # heavy: imported on first use

    if not progress:
        tfds.display_progress_bar(False)
    builder = _builder_class(name)(
        data_dir=str(data_dir) if data_dir else None, file_format="array_record", skip_bad=skip_bad
    )
    if builder.is_prepared() and not force:
        source = builder.info.metadata.get("source")
        # TFDS reads MANUAL/<name> instead of MANUAL when that folder exists.
        given = (Path(manual_dir).resolve(), (Path(manual_dir) / name).resolve()) if manual_dir is not None else ()
        if given and source and Path(source) not in given:
            raise DataError(
                f"{builder.data_dir}: {name} was prepared from {source}, not {Path(manual_dir).resolve()}"
                f" (use another --tfds-dir, or --force to rebuild)"
            )
        return builder
    if manual_dir is None:
        raise DataError(
            f"dataset {name} is not prepared in {builder.data_dir_root}: run "
            f"python -m menet_datasets.prepare {name} --manual-dir DIR (DIR: the downloaded {name})"
        )
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise DataError(
            f"manual dir not found: {manual_dir} (the downloaded {name}, see "
            f"python -m menet_datasets.prepare --instructions {name})"
        )
    if not any(manual_dir.iterdir()):
        find_layout(manual_dir)  # raises the one-line error naming the folders searched
    mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD if force else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir), download_mode=mode)
    )
    return builder


class TFDSSource:
    """One split of a prepared dataset: ``source[i]`` is ``{"image": uint8 (H, W, 3), "mask": uint8 (H, W) 0/255,
    "name": stem}`` (plus ``"mask_soft"`` (H, W) where the dataset has soft masks), index order = stem order.

    Images are decoded here with PIL from the stored bytes (the original JPEG or a lossless PNG), so a prepared
    dataset gives exactly the arrays of a FolderSource over the same files. Reads are thread-safe.
    """

    def __init__(self, builder, split: str):
        import tensorflow_datasets as tfds  # heavy: imported on first use

        splits = sorted(builder.info.splits)
        if split not in splits:
            raise DataError(f"dataset {builder.name} has no split {split!r} (splits: {', '.join(splits)})")
        self.dataset, self.split = builder.name, split
        self.root = Path(builder.data_dir)
        self._names = list(builder.info.metadata.get("names", {}).get(split, []))
        skip = {key: tfds.decode.SkipDecoding() for key in _IMAGES if key in builder.info.features}
        self._records = builder.as_data_source(split=split, decoders=skip)
        if len(self._names) != len(self._records):
            raise DataError(
                f"{self.root}: metadata lists {len(self._names)} names for {len(self._records)} "
                f"{split} examples (rebuild with python -m menet_datasets.prepare {builder.name} --force)"
            )

    def __len__(self) -> int:
        return len(self._records)

    @property
    def names(self) -> list[str]:
        """The stems, in index order, without reading any example."""
        return list(self._names)

    def __getitem__(self, i) -> dict:
        i = operator.index(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} examples")
        record = self._records[i % n]
        example = {
            "image": _decode(record["image"], 3),
            "mask": _decode(record["mask"], 1)[:, :, 0],
            "name": _text(record["name"]),
        }
        if "mask_soft" in record:
            example["mask_soft"] = _decode(record["mask_soft"], 1)[:, :, 0]
        return example

    def __repr__(self) -> str:
        return f"TFDSSource({self.dataset!r}, split={self.split!r}, {len(self)} examples)"


def _text(value) -> str:
    """A stored name as the str Python gives the file (``os.fsdecode``: an undecodable byte as a lone surrogate)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _decode(data: bytes, channels: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] != channels:
        raise DataError(f"stored image has {arr.shape[2]} channels, expected {channels}")
    return arr


def load_source(name: str, *, split: str | None, data_dir=None, manual_dir=None, progress: bool = True) -> TFDSSource:
    """The ``split`` of prepared dataset ``name`` (built from ``manual_dir`` first if needed); ``split=None``:
    :func:`default_train_split`."""
    builder = prepared_builder(name, data_dir=data_dir, manual_dir=manual_dir, progress=progress)
    return TFDSSource(builder, default_train_split(builder) if split is None else split)


def default_train_split(builder) -> str:
    """``train`` when the dataset has one, else its only split (ECSSD and the other test sets)."""
    splits = sorted(builder.info.splits)
    if "train" in splits:
        return "train"
    if len(splits) == 1:
        return splits[0]
    raise DataError(
        f"dataset {builder.name} has no train split and several others ({', '.join(splits)}): choose one with --split"
    )
