"""Datasets stored as a folder of images and a folder of masks.

The main layout is ``root/images/<stem>.<ext>`` + ``root/masks/<stem>.<ext>``;
the official DUTS (``DUTS-TR-Image``/``DUTS-TR-Mask``, ``DUTS-TE-*``) and
ECSSD (``images``/``ground_truth_mask``) layouts are recognised too.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: (image folder, mask folder) names tried in order by :func:`find_pairs`.
LAYOUTS = (
    ("images", "masks"),
    ("DUTS-TR-Image", "DUTS-TR-Mask"),
    ("DUTS-TE-Image", "DUTS-TE-Mask"),
    ("images", "ground_truth_mask"),
)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _list_files(folder: Path) -> dict[str, Path]:
    """Visible image files of ``folder`` keyed by stem (no recursion)."""
    files: dict[str, Path] = {}
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = folder / entry.name
        if path.suffix.lower() not in IMAGE_EXTS or not entry.is_file():
            continue
        if path.stem in files:
            raise DataError(f"{path}: another file with the same stem exists: {files[path.stem]}")
        files[path.stem] = path
    return files


def _find_layout(root: Path) -> tuple[Path, Path]:
    for image_name, mask_name in LAYOUTS:
        if (root / image_name).is_dir() and (root / mask_name).is_dir():
            return root / image_name, root / mask_name
    searched = ", ".join(f"{root / i} + {root / m}" for i, m in LAYOUTS)
    raise DataError(f"{root}: no image/mask folder pair found (searched {searched})")


def find_pairs(root) -> list[tuple[Path, Path]]:
    """Return the (image path, mask path) pairs of a dataset folder, sorted by stem.

    Images and masks are matched by file stem. Every image needs a mask and
    every mask an image; hidden files and files with other extensions are
    ignored. Raises :class:`DataError` on any problem.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    image_dir, mask_dir = _find_layout(root)
    images = _list_files(image_dir)
    masks = _list_files(mask_dir)
    if not images:
        raise DataError(f"no images found in {image_dir}")
    for stem, path in images.items():
        if stem not in masks:
            raise DataError(f"{path}: no mask with the same stem in {mask_dir}")
    for stem, path in masks.items():
        if stem not in images:
            raise DataError(f"{path}: no image with the same stem in {image_dir}")
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def _open(path: Path, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        reason = _one_line(exc) or type(exc).__name__
        raise DataError(f"{path}: cannot read {what} ({reason})") from exc
    return img


def _to_8bit_grey(img: Image.Image) -> np.ndarray | None:
    """Greyscale uint8 array for high-bit-depth single-channel modes, else None."""
    if img.mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.uint32)
        return ((arr * 255 + 32767) // 65535).astype(np.uint8)
    if img.mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if arr.max(initial=0) > 255:  # 16-bit data (e.g. a 16-bit PNG opened as "I")
            arr = (np.clip(arr, 0, 65535) * 255 + 32767) // 65535
        return np.clip(arr, 0, 255).astype(np.uint8)
    if img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        arr = np.nan_to_num(arr)
        if arr.max(initial=0.0) <= 1.0:
            arr = arr * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return None


def load_image(path) -> np.ndarray:
    """Read an image as a uint8 ``(H, W, 3)`` RGB array (raw pixel order, no EXIF rotation)."""
    path = Path(path)
    img = _open(path, "image")
    try:
        grey = _to_8bit_grey(img)
        if grey is not None:
            return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({_one_line(exc)})") from exc
    return np.ascontiguousarray(arr)


def load_mask(path) -> np.ndarray:
    """Read a mask as a uint8 ``(H, W)`` array of 0/255 (greyscale >= 128 -> 255).

    Colour masks use their luminance (never the alpha channel); 16-bit masks
    are scaled to 8 bit before thresholding.
    """
    path = Path(path)
    img = _open(path, "mask")
    try:
        grey = _to_8bit_grey(img)
        if grey is None:
            if img.mode != "L":
                img = img.convert("L")
            grey = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read mask ({_one_line(exc)})") from exc
    return np.where(grey >= 128, np.uint8(255), np.uint8(0))


class FolderSource:
    """A dataset folder as an indexable source of examples.

    ``source[i]`` is ``{"image": uint8 (H, W, 3), "mask": uint8 (H, W) 0/255,
    "name": stem}``. Files are read on access.
    """

    def __init__(self, root):
        self.root = Path(root)
        self.pairs = find_pairs(self.root)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> list[str]:
        """The stems, in index order, without reading any file."""
        return [image.stem for image, _ in self.pairs]

    def __getitem__(self, i) -> dict:
        i = operator.index(i)
        n = len(self.pairs)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} examples")
        image_path, mask_path = self.pairs[i]
        image = load_image(image_path)
        mask = load_mask(mask_path)
        if image.shape[:2] != mask.shape:
            (ih, iw), (mh, mw) = image.shape[:2], mask.shape
            raise DataError(f"{mask_path}: mask is {mw}x{mh} but image {image_path} is {iw}x{ih}")
        return {"image": image, "mask": mask, "name": image_path.stem}

    def verify(self) -> None:
        """Read every image and mask header (no decoding, about 1 ms a pair), so that unreadable files and size
        mismatches fail before a run starts rather than in the middle of it."""
        for image_path, mask_path in self.pairs:
            sizes = []
            for path, what in ((image_path, "image"), (mask_path, "mask")):
                try:
                    with Image.open(path) as img:
                        sizes.append(img.size)
                except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
                    raise DataError(f"{path}: cannot read {what} ({_one_line(exc) or type(exc).__name__})") from exc
            if sizes[0] != sizes[1]:
                (iw, ih), (mw, mh) = sizes
                raise DataError(f"{mask_path}: mask is {mw}x{mh} but image {image_path} is {iw}x{ih}")

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r}, {len(self)} examples)"
