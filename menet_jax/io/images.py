"""Images in and out of the network's size, shared by every runtime (JAX, ONNX): this module imports no JAX, so
`predict --backend onnx` runs with onnxruntime, numpy and Pillow alone."""

from __future__ import annotations

import numpy as np
from PIL import Image

import menet_datasets

MAPS = ("metric", "ce")  # the two maps every predictor gives: Eq. 5 metric map, logit head's salient probability


def load_photo(path) -> np.ndarray:
    """Any image file as uint8 RGB (H, W, 3), upright (EXIF orientation applied, for every bit depth), 16-bit and
    float photos scaled to 8 bit (not truncated), alpha dropped; an unreadable file is a one-line DataError."""
    return menet_datasets.load_image(path, upright=True)


def resize_input(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 (H, W, 3) image resized to the network's size x size (bilinear, as the authors did)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_to(saliency: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float map (H, W) to (height, width), values kept in [0, 1]."""
    if saliency.shape == (height, width):
        return saliency
    resized = Image.fromarray(np.asarray(saliency, np.float32), mode="F").resize((width, height), Image.BILINEAR)
    return np.clip(np.asarray(resized), 0.0, 1.0)
