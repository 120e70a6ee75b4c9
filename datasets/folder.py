"""Datasets stored as a folder of images and a folder of masks.

The main layout is ``root/images/<stem>.<ext>`` + ``root/masks/<stem>.<ext>``; the official release layouts
of the benchmarks (see :data:`LAYOUTS`) are recognised too.

Policy for real-world files (the same for a folder read as it is and for a prepared TFDS dataset):

- greyscale, CMYK, RGBA (alpha dropped), palette and 16-bit images are converted to 8-bit RGB;
- masks: luminance (never alpha), 16-bit scaled to 8 bit, palette masks with coloured entries read as
  "any non-black colour is foreground"; binarised at 128 (the soft 8-bit version is kept where asked for);
- EXIF orientation: masks are drawn over the stored pixels in every benchmark, so the raw pixel order is kept,
  except when only the rotated image has the mask's size (orientations 5-8), then the rotation is applied;
- a mask of another size, an image without a mask or a mask without an image, an unreadable, corrupt or
  truncated file: a one-line :class:`DataError` naming the file (``menet_datasets.prepare --skip-bad`` skips and
  lists them instead);
- hidden files and files without an image extension are ignored (and counted by :func:`scan`);
- an entry with an image extension that cannot be read as a file (a dangling symlink, a symlink loop, a pipe, a
  socket or a device, one whose metadata cannot be read) is an unreadable file as above: a one-line
  :class:`DataError` naming it (``--skip-bad``: skipped and listed), since skipping it would quietly score or train
  on a smaller dataset than the folder shows; such an entry *without* an image extension would be ignored anyway,
  so it is skipped with a one-line ``warning:`` on stderr naming it and why (a symlink loop there made the whole
  listing fail). Folders inside the image or mask folder are ignored whatever their name (nothing is read
  recursively, so a folder symlink that loops is never followed), and an image or mask folder that is itself a
  dangling or looping symlink is named in the error that no layout was found;
- file names need not be UTF-8 (Linux allows any bytes): Python gives an undecodable byte as a lone surrogate
  (``os.fsdecode``), which every file operation takes back; text outputs show such a name with
  :func:`printable_name` (``caf\\xe9``) and :func:`original_name` gives the name back.
"""

from __future__ import annotations

import dataclasses
import errno
import operator
import os
import re
import stat
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: What Pillow raises on a file it cannot decode: unreadable, corrupt, truncated, or over its decompression-bomb
#: limit (``Image.MAX_IMAGE_PIXELS``; between one and two times the limit it only warns).
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a release keeps its images and masks (folders relative to the dataset root).

    When both are the same folder (MSRA10K's ``Imgs/``), images and masks are told apart by extension.
    """

    name: str
    images: str
    masks: str
    image_exts: tuple = IMAGE_EXTS
    mask_exts: tuple = IMAGE_EXTS

    def describe(self) -> str:
        if self.images == self.masks:
            return f"{self.images}/ (*{'/'.join(self.image_exts)} images + *{'/'.join(self.mask_exts)} masks)"
        return f"{self.images}/ + {self.masks}/"


#: Layouts tried in order by :func:`find_pairs`.
LAYOUTS = (
    Layout("plain", "images", "masks"),
    Layout("DUTS-TR", "DUTS-TR-Image", "DUTS-TR-Mask"),
    Layout("DUTS-TE", "DUTS-TE-Image", "DUTS-TE-Mask"),
    Layout("ECSSD", "images", "ground_truth_mask"),
    Layout("HKU-IS", "imgs", "gt"),
    Layout("DUT-OMRON", "DUT-OMRON-image", "pixelwiseGT-new-PNG"),
    Layout("PASCAL-S", "imgs/pascal", "masks/pascal"),
    Layout("MSRA10K", "Imgs", "Imgs", (".jpg", ".jpeg"), (".png",)),
    Layout("image/mask", "image", "mask"),
)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def printable_name(name: str) -> str:
    """A file name (or a path) as text that any UTF-8 reader takes, for CSV, JSON, Markdown and the console: each
    byte that is not UTF-8 (which Python gives as the lone surrogate ``\\udcNN``, see :func:`os.fsdecode`) as
    ``\\xNN`` and each backslash doubled, so that :func:`original_name` gives the name back exactly. A UTF-8 name
    without a backslash (nearly all) is unchanged."""
    return "".join(
        f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else "\\\\" if c == "\\" else c for c in name
    )


_ESCAPE = re.compile(r"\\(\\|x[89a-fA-F][0-9a-fA-F])")


def original_name(text: str) -> str:
    """The file name that :func:`printable_name` wrote as ``text``, as Python names the file (``os.fsencode`` of it
    gives the name's bytes)."""
    return _ESCAPE.sub(lambda m: "\\" if m[1] == "\\" else chr(0xDC00 + int(m[1][1:], 16)), text)


def _warn_skipped(path: Path, why: str) -> None:
    print(f"warning: {printable_name(str(path))}: {why}; skipped", file=sys.stderr)


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file ("" for a folder, which the listings ignore), or None for a regular
    file."""
    try:
        mode = path.stat().st_mode  # follows symlinks
    except OSError as error:
        if path.is_symlink() and error.errno == errno.ELOOP:
            return "a symlink loop"
        if path.is_symlink() and error.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"a dangling symlink (to {os.readlink(path)}, which does not exist)"
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return ""
    if not stat.S_ISREG(mode):
        return "not a regular file (a pipe, a socket or a device)"
    return None


def list_images(
    folder: Path, exts=IMAGE_EXTS, ignored: list | None = None, bad: list | None = None, *, warn: bool = True
) -> dict[str, Path]:
    """Visible files of ``folder`` with one of ``exts``, keyed by stem (no recursion); the other visible files
    are appended to ``ignored``. Two files of one stem (x.jpg, x.png) are a :class:`DataError`: one would be lost.

    An entry with one of ``exts`` that cannot be read as a file (a dangling symlink, a symlink loop, a pipe...) is a
    :class:`DataError` naming it, or with ``bad`` appended to it as ``(path, one-line reason)``; one without an image
    extension is skipped with a ``warning:`` line (``warn=False``: silently, for a folder listed twice)."""
    files: dict[str, Path] = {}
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as error:
        raise DataError(f"{folder}: cannot list the folder ({error.strerror or error})") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = folder / entry.name
        problem = _unreadable(path)
        if path.suffix.lower() not in exts or problem is not None:
            if problem is None and ignored is not None and path.suffix.lower() not in IMAGE_EXTS:
                ignored.append(path)
            elif problem and path.suffix.lower() in exts:
                message = f"{path}: {problem}"
                if bad is None:
                    raise DataError(message)
                bad.append((path, message))
            elif problem and warn and path.suffix.lower() not in IMAGE_EXTS:
                _warn_skipped(path, problem)
            continue
        if path.stem in files:
            raise DataError(f"{path}: another file with the same stem exists: {files[path.stem]}")
        files[path.stem] = path
    return files


def _is_dir(path: Path) -> bool:
    """``path.is_dir()`` that is False, not an error, where the path cannot be looked at (no permission)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _single_subfolder(root: Path) -> Path | None:
    """The one visible folder of ``root`` if it holds nothing else but files (an archive's top folder)."""
    try:
        children = list(root.iterdir())
    except OSError as error:
        raise DataError(f"{root}: cannot list the folder ({error.strerror or error})") from None
    folders = [p for p in children if _is_dir(p) and not p.name.startswith((".", "__MACOSX"))]
    return folders[0] if len(folders) == 1 else None


def find_layout(root, layouts=LAYOUTS) -> tuple[Layout, Path, Path]:
    """The first of ``layouts`` present in ``root``, or else in its only subfolder (the top folder of an
    extracted archive, e.g. MSRA10K_Imgs_GT/): (layout, image folder, mask folder)."""
    root = Path(root)
    if not _is_dir(root):
        raise DataError(f"dataset folder not found: {root}")
    for base in (root, _single_subfolder(root)):
        for layout in layouts if base is not None else ():
            if _is_dir(base / layout.images) and _is_dir(base / layout.masks):
                return layout, base / layout.images, base / layout.masks
    first, rest = layouts[0], "; ".join(layout.describe() for layout in layouts[1:])
    searched = f"{root / first.images} + {root / first.masks}" + (f"; and under it {rest}" if rest else "")
    for layout in layouts:  # an image or mask folder that is a broken symlink: named, not only "not found"
        for folder in (root / layout.images, root / layout.masks):
            why = folder.is_symlink() and _unreadable(folder)
            if why:
                raise DataError(f"{folder}: {why}; no image/mask folder pair found in {root}")
    raise DataError(f"{root}: no image/mask folder pair found (searched {searched})")


@dataclasses.dataclass
class Scan:
    """What a dataset folder holds: matched pairs (sorted by stem), unmatched or unreadable files and ignored
    files."""

    layout: Layout
    root: Path  # the folder the layout was found in
    pairs: list
    orphans: list  # [(path, one-line reason)]: unreadable entries first, then unmatched files
    ignored: list  # files without an image extension


def scan(root, layouts=LAYOUTS) -> Scan:
    """Match images and masks by stem, recording (not raising on) images without masks, masks without images and
    entries that cannot be read as files (a dangling symlink, a symlink loop...; their pair is not listed again as
    unmatched)."""
    layout, image_dir, mask_dir = find_layout(root, layouts)
    ignored: list = []
    bad: list = []
    same = image_dir == mask_dir
    images = list_images(image_dir, layout.image_exts, ignored, bad)
    masks = list_images(mask_dir, layout.mask_exts, None if same else ignored, bad, warn=not same)
    if not images and not bad:
        raise DataError(f"no images found in {image_dir}")
    unreadable = {path.stem for path, _ in bad}
    orphans = list(bad)
    orphans += [
        (path, f"{path}: no mask with the same stem in {mask_dir}")
        for stem, path in images.items()
        if stem not in masks and stem not in unreadable
    ]
    orphans += [
        (path, f"{path}: no image with the same stem in {image_dir}")
        for stem, path in masks.items()
        if stem not in images and stem not in unreadable
    ]
    pairs = [(images[stem], masks[stem]) for stem in sorted(images) if stem in masks]
    root = image_dir.parents[len(Path(layout.images).parts) - 1]
    return Scan(layout, root, pairs, orphans, ignored)


def find_pairs(root, layouts=LAYOUTS) -> list[tuple[Path, Path]]:
    """Return the (image path, mask path) pairs of a dataset folder, sorted by stem.

    Images and masks are matched by file stem. Every image needs a mask and
    every mask an image; hidden files and files with other extensions are
    ignored. Raises :class:`DataError` on any problem.
    """
    found = scan(root, layouts)
    if found.orphans:
        raise DataError(
            found.orphans[0][1]
            + (f" (and {len(found.orphans) - 1} more unmatched or unreadable files)" if len(found.orphans) > 1 else "")
        )
    return found.pairs


def open_image(path: Path, what: str = "image") -> Image.Image:
    """The decoded image; any failure to read it is a one-line :class:`DataError` naming the file as `what`."""
    try:
        img = Image.open(path)
        img.load()
    except READ_ERRORS as exc:
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


def load_image(path, *, upright: bool = False) -> np.ndarray:
    """Read an image as a uint8 ``(H, W, 3)`` RGB array: 16-bit, integer and float images scaled to 8 bit, alpha
    dropped. Raw pixel order by default (no EXIF rotation: see :func:`load_pair`); ``upright`` applies the EXIF
    orientation, as a photo viewer shows the photo (what ``predict`` reads), for every bit depth."""
    path = Path(path)
    img = open_image(path, "image")
    if upright:
        try:
            img = ImageOps.exif_transpose(img)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read image ({_one_line(exc)})") from exc
    return _image_array(img, path)


def _image_array(img: Image.Image, path: Path) -> np.ndarray:
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


def _palette_is_grey(img: Image.Image) -> bool:
    colours = np.asarray(img.getpalette() or [], np.int64).reshape(-1, 3)
    return bool((colours == colours[:, :1]).all())


def _mask_grey(img: Image.Image, path: Path) -> np.ndarray:
    try:
        grey = _to_8bit_grey(img)
        if grey is not None:
            return grey
        if img.mode == "P" and not _palette_is_grey(img):
            # Class-coloured palette masks (dark red on black, as in VOC): any non-black entry is foreground.
            colours = np.asarray(img.getpalette(), np.int64).reshape(-1, 3)
            on = np.zeros(256, np.uint8)
            on[: len(colours)] = np.where(colours.any(axis=1), 255, 0)
            return on[np.asarray(img, dtype=np.uint8)]
        if img.mode != "L":
            img = img.convert("L")
        return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read mask ({_one_line(exc)})") from exc


def load_mask_grey(path) -> np.ndarray:
    """Read a mask as it is, in 8 bit: uint8 ``(H, W)`` (soft masks keep their grey levels)."""
    path = Path(path)
    return _mask_grey(open_image(path, "mask"), path)


def binarise(grey: np.ndarray) -> np.ndarray:
    """The field's protocol: grey >= 128 is foreground (255), the rest background (0). A mask whose values are only
    0 and 1 is a binary mask stored as 0/1 (as numpy code often saves them), not an all-background one: its 1 is
    foreground (a warning says so, once)."""
    if grey.size and grey.max() == 1:
        warnings.warn("masks with the values 0 and 1 only are read as binary masks (1 = foreground)", stacklevel=2)
        return np.where(grey == 1, np.uint8(255), np.uint8(0))
    return np.where(grey >= 128, np.uint8(255), np.uint8(0))


def load_mask(path) -> np.ndarray:
    """Read a mask as a uint8 ``(H, W)`` array of 0/255 (greyscale >= 128 -> 255).

    Colour masks use their luminance (never the alpha channel); 16-bit masks
    are scaled to 8 bit before thresholding.
    """
    return binarise(load_mask_grey(path))


EXIF_ORIENTATION = 0x0112


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except (OSError, ValueError, SyntaxError, TypeError):
        return 1


def _use_exif_rotation(orientation: int, image_size, mask_size) -> bool:
    """True when only the EXIF-rotated image has the mask's size (a transposing orientation, 5-8)."""
    (w, h), (mw, mh) = image_size, mask_size
    return orientation in (5, 6, 7, 8) and (w, h) != (mw, mh) and (h, w) == (mw, mh)


def _size_mismatch(image_path, mask_path, image_size, mask_size) -> DataError:
    (iw, ih), (mw, mh) = image_size, mask_size
    return DataError(f"{mask_path}: mask is {mw}x{mh} but image {image_path} is {iw}x{ih}")


@dataclasses.dataclass
class Pair:
    """One decoded example with what the TFDS builders need to store it without loss."""

    image: np.ndarray  # uint8 (H, W, 3)
    mask_grey: np.ndarray  # uint8 (H, W), as stored (soft masks keep their grey levels)
    image_format: str  # the file's format as PIL names it: JPEG, PNG, BMP, ...
    image_mode: str  # the file's PIL mode: RGB, L, CMYK, P, RGBA, I;16, ...
    exif_rotated: bool  # the EXIF rotation was applied (see the module docstring)

    @property
    def mask(self) -> np.ndarray:
        return binarise(self.mask_grey)

    @property
    def stored_as_is(self) -> bool:
        """The file is an 8-bit RGB JPEG used without rotation: its bytes decode to exactly ``image``, so a
        prepared dataset keeps them (no recompression); anything else is stored as a lossless PNG of ``image``."""
        return self.image_format == "JPEG" and self.image_mode == "RGB" and not self.exif_rotated


def load_pair(image_path, mask_path) -> Pair:
    """Read an image and its mask, resolving EXIF orientation against the mask and checking their sizes."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    img = open_image(image_path, "image")
    mask_grey = load_mask_grey(mask_path)
    mask_size = (mask_grey.shape[1], mask_grey.shape[0])
    rotated = _use_exif_rotation(_orientation(img), img.size, mask_size)
    image_format, image_mode = img.format or image_path.suffix.lstrip(".").upper(), img.mode
    if rotated:
        img = ImageOps.exif_transpose(img)
    if img.size != mask_size:
        raise _size_mismatch(image_path, mask_path, img.size, mask_size)
    return Pair(_image_array(img, image_path), mask_grey, image_format, image_mode, rotated)


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
        pair = load_pair(image_path, mask_path)
        return {"image": pair.image, "mask": pair.mask, "name": image_path.stem}

    def verify(self) -> None:
        """Read every image and mask header (no decoding, about 1 ms a pair), so that unreadable files and size
        mismatches fail before a run starts rather than in the middle of it."""
        for image_path, mask_path in self.pairs:
            sizes, orientation = [], 1
            for path, what in ((image_path, "image"), (mask_path, "mask")):
                try:
                    with Image.open(path) as img:
                        sizes.append(img.size)
                        if what == "image":
                            orientation = _orientation(img)
                except READ_ERRORS as exc:
                    raise DataError(f"{path}: cannot read {what} ({_one_line(exc) or type(exc).__name__})") from exc
            if sizes[0] != sizes[1] and not _use_exif_rotation(orientation, *sizes):
                raise _size_mismatch(image_path, mask_path, *sizes)

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r}, {len(self)} examples)"
