"""Data for menet-jax: folder datasets (DUTS, ECSSD, any ``images/`` +
``masks/`` folder), the built-in synthetic scenes, and a deterministic,
threaded input pipeline producing fixed-shape numpy batches."""

from .errors import DataError
from .folder import IMAGE_EXTS, FolderSource, find_pairs, load_image, load_mask
from .pipeline import (
    BatchLoader,
    Subset,
    augment,
    batch_indices,
    eval_batches,
    make_batch,
    resize_pair,
    split,
)
from .synthetic import SyntheticSource

__all__ = [
    "BatchLoader",
    "DataError",
    "FolderSource",
    "IMAGE_EXTS",
    "Subset",
    "SyntheticSource",
    "augment",
    "batch_indices",
    "eval_batches",
    "find_pairs",
    "load_image",
    "load_mask",
    "make_batch",
    "resize_pair",
    "split",
]
