"""Where the CLIs write: output paths checked before any work starts, and writes that fail with one line.

A run that loads a network and predicts a folder for minutes must not then fail on a path it could have refused at
the start, nor overwrite the photos it read, nor end in a traceback when the disk is full. Imports no JAX.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import secrets
import stat
import tempfile
from pathlib import Path

from PIL import Image

from menet_jax.errors import OutputError

# The extensions the CLIs write: the ones the data loaders and `evaluate --predictions` read back.
WRITABLE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


@functools.lru_cache(maxsize=None)
def _can_save(suffix: str, mode: str) -> bool:
    """Pillow writes `mode` in the format of `suffix` (tried on a 1x1 image: JPEG has no alpha, ...)."""
    try:
        Image.new(mode, (1, 1)).save(io.BytesIO(), format=Image.registered_extensions()[suffix])
    except (KeyError, OSError, ValueError):
        return False
    return True


def image_format(path: Path, mode: str) -> str:
    """The Pillow format that writes `path`, or an OutputError listing the extensions that can hold `mode`."""
    suffix = path.suffix.lower()
    if suffix in WRITABLE_EXTS and _can_save(suffix, mode):
        return Image.registered_extensions()[suffix]
    usable = ", ".join(ext for ext in WRITABLE_EXTS if _can_save(ext, mode))
    problem = (
        f"{suffix} cannot hold {mode} images"
        if suffix in WRITABLE_EXTS
        else f"unknown image extension {suffix!r}"
        if suffix
        else "no image extension"
    )
    raise OutputError(f"{path}: {problem}; use one of {usable}")


def _start_folder(path: Path) -> Path:
    """The existing folder that `path` (and any missing parents) would be created in."""
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{path}: {ancestor} is a file, not a folder")
    return ancestor


def _probe(folder: Path, path: Path) -> None:
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise OutputError(f"{path}: cannot write in {folder} ({error.strerror or error})") from None


def check_file(path, mode: str = "L") -> str:
    """Refuse now an image output that cannot be written; returns its Pillow format."""
    fmt = image_format(Path(path), mode)
    check_output_file(path, example="map.png")
    return fmt


def check_folder(path) -> None:
    """Refuse now an output folder that is a file, sits under a file or cannot be written in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file, not a folder")
    _probe(path if path.is_dir() else _start_folder(path), path)


def _identity(path: Path):
    """What makes two paths one file: (device, inode) for an existing file, so hard links and symlinks are caught;
    the resolved path for one that does not exist yet."""
    try:
        stat = path.stat()
    except OSError:
        return path.resolve()
    return (stat.st_dev, stat.st_ino)


def check_distinct(inputs, outputs) -> None:
    """Refuse outputs that would overwrite an input (the same file under any name: a symlink or a hard link of it),
    or two inputs that would write the same output."""
    sources = {_identity(Path(p)): p for p in inputs}
    written = {}
    for source, out in zip(inputs, outputs):
        same = sources.get(_identity(Path(out)))
        if same is not None:
            raise OutputError(f"{out}: is the input image {same}; it would be overwritten")
        key = Path(out).resolve()
        if key in written:
            raise OutputError(f"{out}: both {written[key]} and {source} would be written there (same stem); rename one")
        written[key] = source


# What a training run owns in its workdir: another command's output must never replace them.
WORKDIR_OWNED = ("config.json", "metrics.jsonl", ".lock", "curves.png")
WORKDIR_OWNED_FOLDERS = ("checkpoints", "damaged")


def check_output_file(out, *, reads=(), example: str | None = None, overwrite: bool = True) -> None:
    """Refuse now an output file that cannot be written or would destroy something the user owns: a folder (the
    message suggests `example` as a name in it), one of the files the command reads (under any name: symlinks and
    hard links are caught), a file that is not a regular file (a device, a FIFO), what a training workdir's run owns
    (its config.json, logs and checkpoints), or with `overwrite=False` any existing file (weights and exports:
    `--overwrite` replaces them)."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give a file name" + (f" such as {out / example}" if example else ""))
    for source in reads:
        if source is not None and Path(source).is_file() and _identity(out) == _identity(Path(source)):
            raise OutputError(f"{out}: is the input {source}; it would be overwritten")
    if out.exists() and not out.is_file():
        raise OutputError(f"{out}: exists and is not a regular file (a device or a pipe); give a file name")
    resolved = out.resolve()
    for folder in resolved.parents:
        if (folder / "config.json").is_file() and (folder / "checkpoints").is_dir():
            inside = resolved.relative_to(folder).parts
            if inside[0] in WORKDIR_OWNED_FOLDERS or len(inside) == 1 and inside[0] in WORKDIR_OWNED:
                raise OutputError(f"{out}: belongs to the training run in {folder}; write it elsewhere")
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: exists; give --overwrite to replace it")
    # Written beside itself (beside the file a symlink points to) and renamed over it: that folder must take it.
    _probe(_start_folder(resolved if out.exists() else out), out)


@contextlib.contextmanager
def atomic_write(path, mode: str = "w"):
    """Open a file that replaces `path` only once it is complete: every JSON, CSV, Markdown, figure and map the CLIs
    write goes through here. Yields a file object ("w": UTF-8 text, "wb": bytes) on a temporary file beside `path`
    (hidden, so that a folder scan skips it), which is flushed to disk and renamed over `path` when the block ends.
    A reader, or another run writing the same file, never sees a mixed or half-written file; a failure (disk full,
    an exception in the block) leaves no temporary file and any previous file as it was. A failed write is one line
    (OutputError). Text that cannot be encoded (a lone surrogate: the undecodable byte of a file name) is written
    as a backslash escape, not refused after the work."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a whole file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path = path.resolve() if path.is_symlink() else path  # a symlinked output: its file is replaced, not the link
    partial = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = _create_beside(path)
        text = {} if mode == "wb" else {"encoding": "utf-8", "errors": "backslashreplace", "newline": ""}
        with open(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # renamed only once the bytes are on disk: a crash leaves the old file or the new
        os.replace(partial, path)
        partial = None
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({error.strerror or error})") from None
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new file beside `path`, created as `open(path, "w")` would (the umask applies; an existing file's
    permissions are kept): tempfile's files are private (0600), and results must stay readable by whoever could
    read them before."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o666
    # Short enough for a 255-byte file name however long `path`'s is (4 bytes a character at most).
    prefix = f".{path.name if len(os.fsencode(path.name)) <= 200 else path.name[:50]}."
    while True:
        partial = path.parent / f"{prefix}{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
        except FileExistsError:
            continue
        if mode != 0o666:
            os.chmod(fd, mode)  # the umask applied to a kept mode: set it as it was
        return fd, partial


def write_text(path, text: str) -> None:
    """Write a text file (UTF-8) atomically: see :func:`atomic_write`."""
    with atomic_write(path) as f:
        f.write(text)


_NUMBER = r"(?:-?\d[\d.eE+-]*|null|NaN|-?Infinity)"
_NUMBER_LIST = re.compile(rf"\[\s*(?:{_NUMBER}\s*,\s*)*{_NUMBER}\s*\]")


def json_text(value) -> str:
    """`value` as indented JSON with every list of numbers on one line: per-image scores (thousands of numbers per
    level) stay readable and take a third of the space `indent=2` gives them."""
    one_line = lambda m: "[" + ", ".join(x.strip() for x in m.group(0)[1:-1].split(",")) + "]"
    return _NUMBER_LIST.sub(one_line, json.dumps(value, indent=2)) + "\n"


def save_figure(fig, path, **savefig_kwargs) -> None:
    """`fig.savefig(path)` atomically (see :func:`atomic_write`), in the format of the extension."""
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".").lower() or None)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, **savefig_kwargs)


def save_image(image: Image.Image, path, fmt: str | None = None) -> None:
    """`image.save` with missing parents created, written atomically (see :func:`atomic_write`): a failed write
    (disk full, ...) is one line that leaves no partial file and any previous file as it was."""
    path = Path(path)
    fmt = fmt or Image.registered_extensions().get(path.suffix.lower())
    with atomic_write(path, "wb") as f:
        image.save(f, format=fmt)
