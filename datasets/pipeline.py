"""Deterministic input pipeline: splits, resizing, augmentation and batching.

A *source* is any object with ``__len__`` and ``__getitem__`` returning
``{"image": uint8 (H, W, 3), "mask": uint8 (H, W) 0/255, "name": str}``
(:class:`~menet_datasets.folder.FolderSource`, :class:`~menet_datasets.tfds_source.TFDSSource`,
:class:`~menet_datasets.synthetic.SyntheticSource`, :class:`Subset`, :class:`CachedSource`).

Every batch is a pure function of ``(source, seed, step)``: the example
indices come from :func:`batch_indices` and example ``j`` of step ``step`` is
augmented with ``np.random.default_rng([seed, AUGMENT_STREAM, step, j])``, so training can be
resumed at any step and see exactly the same data.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import operator
import threading

import numpy as np
from PIL import Image

from .errors import DataError

# Distinct seed-sequence prefixes, so that the shuffling and augmentation streams never coincide.
SHUFFLE_STREAM, AUGMENT_STREAM = 1, 2


# --------------------------------------------------------------------------- subsets


class Subset:
    """The examples ``indices`` of ``source``, in that order."""

    def __init__(self, source, indices):
        n = len(source)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"subset indices out of range for a source of {n} examples")
        self.source = source
        self.indices = idx

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i) -> dict:
        i = operator.index(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} examples")
        return self.source[int(self.indices[i])]

    def __repr__(self) -> str:
        return f"Subset({self.source!r}, {len(self)} examples)"


def split(source, n_val: int, seed: int = 0) -> tuple[Subset, Subset]:
    """Seeded random hold-out: ``(train, val)`` with ``len(val) == n_val``.

    Both subsets keep the source order; the split depends only on
    ``(len(source), n_val, seed)``.
    """
    n = len(source)
    n_val = operator.index(n_val)
    if n_val < 0:
        raise ValueError(f"n_val must be >= 0, got {n_val}")
    if n_val >= n:
        raise DataError(f"cannot hold out {n_val} validation examples from a dataset of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    val = np.sort(perm[:n_val])
    train = np.sort(perm[n_val:])
    return Subset(source, train), Subset(source, val)


class CachedSource:
    """Every example of ``source`` decoded once (on ``workers`` threads) and kept in memory as uint8 arrays.

    Decoding a JPEG costs more than cropping, resizing and flipping it, so this is the way to feed an accelerator
    that consumes hundreds of images a second: with ``max_side`` the examples are also pre-resized (bilinear,
    aspect ratio kept) so that their longer side is at most ``max_side`` (e.g. 256 for 224-pixel training),
    which shrinks memory and resize time; augmentation then crops the pre-resized image. Without ``max_side``
    batches are exactly those of ``source``. Memory: ``nbytes`` (about 0.5 MB a 400 x 300 pair at full size).
    """

    def __init__(self, source, *, max_side: int | None = None, workers: int = 2):
        self.names = list(getattr(source, "names", []))
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            self.items = list(pool.map(lambda i: self._load(source, i, max_side), range(len(source))))
        if not self.names:
            self.names = [item["name"] for item in self.items]
        self.nbytes = sum(item["image"].nbytes + item["mask"].nbytes for item in self.items)

    @staticmethod
    def _load(source, i: int, max_side: int | None) -> dict:
        ex = source[i]
        image, mask = ex["image"], ex["mask"]
        h, w = mask.shape
        if max_side is not None and max(h, w) > max_side:
            scale = max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            mask = np.where(
                np.asarray(Image.fromarray(mask).resize(size, Image.BILINEAR)) >= 128, np.uint8(255), np.uint8(0)
            )
        return {"image": image, "mask": mask, "name": ex["name"]}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i) -> dict:
        return self.items[operator.index(i)]

    def __repr__(self) -> str:
        return f"CachedSource({len(self)} examples, {self.nbytes / 2**20:.0f} MiB)"


# --------------------------------------------------------------------------- resizing / augmentation


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if mask.dtype != np.uint8 or mask.shape != image.shape[:2]:
        raise ValueError(f"mask must be uint8 {image.shape[:2]}, got {mask.dtype} {mask.shape}")


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int):
    """Resize to ``size`` x ``size`` (bilinear, aspect ratio not kept).

    Returns ``(uint8 (size, size, 3) image, uint8 (size, size) mask in {0, 1})``;
    the 0/255 mask is thresholded at 128 after resizing.
    """
    _check_pair(image, mask)
    size = operator.index(size)
    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.BILINEAR))
    return np.ascontiguousarray(image), (mask >= 128).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _crop_ratios(crop_min: float) -> np.ndarray:
    return np.round(np.arange(crop_min, 1.0001, 0.01), 2)


def augment(image: np.ndarray, mask: np.ndarray, size: int, rng, crop_min: float = 0.9):
    """The paper's augmentation: random crop of ratio r in {crop_min, ..., 1.00}
    (step 0.01, same r for both axes) at a random position, bilinear resize to
    ``size`` x ``size``, horizontal flip with probability 0.5.

    Returns the same as :func:`resize_pair`.
    """
    _check_pair(image, mask)
    if not 0.0 < crop_min <= 1.0:
        raise ValueError(f"crop_min must be in (0, 1], got {crop_min}")
    h, w = mask.shape
    r = float(rng.choice(_crop_ratios(float(crop_min))))
    # The epsilon guards against r * h landing just below an integer (0.29 * 100).
    ch = max(1, int(r * h + 1e-9))
    cw = max(1, int(r * w + 1e-9))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    flip = bool(rng.random() < 0.5)
    image, mask = resize_pair(image[y0 : y0 + ch, x0 : x0 + cw], mask[y0 : y0 + ch, x0 : x0 + cw], size)
    if flip:
        image = np.ascontiguousarray(image[:, ::-1])
        mask = np.ascontiguousarray(mask[:, ::-1])
    return image, mask


# --------------------------------------------------------------------------- batching


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = np.random.default_rng([seed, SHUFFLE_STREAM, epoch]).permutation(n)
    perm.setflags(write=False)
    return perm


def batch_indices(step: int, batch_size: int, n: int, seed: int, shuffle: bool) -> np.ndarray:
    """Example indices (int64, shape (batch_size,)) of training step ``step``.

    Without shuffling the examples are read sequentially, wrapping around:
    ``(step * batch_size + arange(batch_size)) % n``. With shuffling, position
    ``p = step * batch_size + j`` is example ``perm_e[p % n]`` where
    ``e = p // n`` and ``perm_e`` is the permutation seeded by ``(seed, SHUFFLE_STREAM, e)``.
    """
    step, batch_size, n = operator.index(step), operator.index(batch_size), operator.index(n)
    if step < 0 or batch_size <= 0 or n <= 0:
        raise ValueError(f"need step >= 0, batch_size > 0, n > 0 (got {step}, {batch_size}, {n})")
    pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
    if not shuffle:
        return pos % n
    epochs, offsets = pos // n, pos % n
    out = np.empty(batch_size, np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = _epoch_permutation(int(seed), int(e), n)[offsets[sel]]
    return out


def make_batch(
    source,
    step: int,
    *,
    batch_size: int,
    size: int,
    seed: int,
    shuffle: bool = True,
    augment: bool = True,
    crop_min: float = 0.9,
    rows: tuple[int, int] | None = None,
) -> dict:
    """The training batch of ``step``: ``{"image": uint8 (B, size, size, 3),
    "mask": uint8 (B, size, size) in {0, 1}}``. Deterministic in
    ``(source, step, batch_size, size, seed, shuffle, augment, crop_min)``.

    ``rows=(start, stop)`` builds only those rows of the batch (one process's share in a multi-process run),
    equal to ``make_batch(...)[key][start:stop]``; the other examples are not read.
    """
    idx = batch_indices(step, batch_size, len(source), seed, shuffle)
    start, stop = (0, batch_size) if rows is None else (operator.index(rows[0]), operator.index(rows[1]))
    if not 0 <= start < stop <= batch_size:
        raise ValueError(f"rows must satisfy 0 <= start < stop <= batch_size={batch_size}, got {rows}")
    images = np.empty((stop - start, size, size, 3), np.uint8)
    masks = np.empty((stop - start, size, size), np.uint8)
    for j in range(start, stop):
        ex = source[int(idx[j])]
        if augment:
            rng = np.random.default_rng([seed, AUGMENT_STREAM, step, j])
            images[j - start], masks[j - start] = _augment(ex["image"], ex["mask"], size, rng, crop_min)
        else:
            images[j - start], masks[j - start] = resize_pair(ex["image"], ex["mask"], size)
    return {"image": images, "mask": masks}


_augment = augment  # make_batch's ``augment`` flag shadows the function


class BatchLoader:
    """Iterate ``(step, make_batch(source, step, ...))`` for ``num_steps`` steps
    from ``start_step``, building up to ``prefetch`` batches ahead on
    ``workers`` threads (only the batches' ``rows``, when given: see :func:`make_batch`).

    Errors raised while building a batch are re-raised by ``next()``. Use as a
    context manager (or call :meth:`close`) to stop the threads early.
    """

    def __init__(
        self,
        source,
        start_step: int,
        num_steps: int,
        *,
        batch_size: int,
        size: int,
        seed: int,
        shuffle: bool,
        augment: bool,
        crop_min: float = 0.9,
        workers: int = 2,
        prefetch: int = 4,
        rows: tuple[int, int] | None = None,
    ):
        if num_steps < 0 or start_step < 0:
            raise ValueError(f"need start_step >= 0 and num_steps >= 0 (got {start_step}, {num_steps})")
        if workers < 1 or prefetch < 1:
            raise ValueError(f"need workers >= 1 and prefetch >= 1 (got {workers}, {prefetch})")
        if len(source) == 0:
            raise DataError("cannot build training batches from an empty dataset")
        self._make = functools.partial(
            make_batch,
            source,
            batch_size=batch_size,
            size=size,
            seed=seed,
            shuffle=shuffle,
            augment=augment,
            crop_min=crop_min,
            rows=rows,
        )
        self.start_step = start_step
        self.num_steps = num_steps
        self._next_submit = start_step
        self._stop = start_step + num_steps
        self._pending: collections.deque = collections.deque()
        self._prefetch = prefetch
        self._lock = threading.Lock()
        self._closed = False
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="BatchLoader")
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self._prefetch and self._next_submit < self._stop:
            step = self._next_submit
            self._pending.append((step, self._executor.submit(self._make, step)))
            self._next_submit += 1

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            if self._closed or not self._pending:
                self.close()
                raise StopIteration
            step, future = self._pending.popleft()
            self._fill()
        try:
            batch = future.result()
        except BaseException:
            self.close()
            raise
        return step, batch

    def close(self) -> None:
        """Cancel pending batches and join the worker threads (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def eval_batches(source, *, batch_size: int, size: int):
    """Yield fixed-shape evaluation batches ``{"image", "mask", "valid"}`` in order.

    No augmentation (just :func:`resize_pair`). The last batch is padded by
    repeating the last example, with ``valid`` False on the padding.
    """
    n = len(source)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        images = np.empty((batch_size, size, size, 3), np.uint8)
        masks = np.empty((batch_size, size, size), np.uint8)
        for j in range(count):
            ex = source[start + j]
            images[j], masks[j] = resize_pair(ex["image"], ex["mask"], size)
        images[count:] = images[count - 1]
        masks[count:] = masks[count - 1]
        yield {"image": images, "mask": masks, "valid": np.arange(batch_size) < count}
