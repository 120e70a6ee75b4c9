"""Data for menet-jax (installed as ``menet_datasets``): folder datasets (DUTS, ECSSD, any ``images/`` +
``masks/`` folder), TFDS datasets prepared from the benchmarks' downloads
(``python -m menet_datasets.prepare``), the built-in synthetic scenes, and a
deterministic, threaded input pipeline producing fixed-shape numpy batches."""

import sys as _sys

if __name__ == "datasets":  # imported by the folder's name from the checkout root, not as menet_datasets
    from ._by_folder_name import installed_datasets

    _sys.modules[__name__] = installed_datasets()
else:
    from .errors import DataError
    from .folder import (
        IMAGE_EXTS,
        READ_ERRORS,
        FolderSource,
        find_pairs,
        list_images,
        load_image,
        load_mask,
        load_pair,
        open_image,
    )
    from .pipeline import (
        BatchLoader,
        CachedSource,
        Subset,
        augment,
        batch_indices,
        eval_batches,
        make_batch,
        resize_pair,
        split,
    )
    from .synthetic import SyntheticSource
    from .tfds_source import TFDSSource, load_source  # TensorFlow Datasets is imported on first use

__all__ = [
    "BatchLoader",
    "CachedSource",
    "DataError",
    "FolderSource",
    "IMAGE_EXTS",
    "READ_ERRORS",
    "Subset",
    "SyntheticSource",
    "TFDSSource",
    "augment",
    "batch_indices",
    "eval_batches",
    "find_pairs",
    "list_images",
    "load_image",
    "load_mask",
    "load_pair",
    "load_source",
    "make_batch",
    "open_image",
    "resize_pair",
    "split",
]
