"""Saliency maps of image files written as image files: grey maps, binary masks or RGBA cut-outs (the library of
`python -m menet_jax.predict`). Works with any predictor (`Predictor`, `OnnxPredictor`); imports no JAX."""

from __future__ import annotations

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from menet_jax.io.images import load_photo
from menet_jax.io.outputs import check_distinct, check_file, save_image


def render(image: np.ndarray, saliency: np.ndarray, *, threshold: float | None = None, cutout: bool = False):
    """The output picture: the map as 8-bit grey, a 0/255 mask with `threshold`, or an RGBA cut-out."""
    alpha = (saliency >= threshold) if threshold is not None else saliency
    alpha = np.round(np.asarray(alpha, np.float32) * 255).astype(np.uint8)
    if cutout:
        return Image.fromarray(np.dstack([image, alpha]), mode="RGBA")
    return Image.fromarray(alpha, mode="L")


def check_outputs(inputs, outputs, *, cutout=False) -> list[str]:
    """The outputs' Pillow formats, after refusing any output that cannot be written, would overwrite an input or
    would be written twice."""
    formats = [check_file(out, "RGBA" if cutout else "L") for out in outputs]
    check_distinct(inputs, outputs)
    return formats


def predict_files(predictor, inputs, outputs, *, map_name="metric", threshold=None, cutout=False, progress=True) -> int:
    """Predict each input file and write the matching output (format from its extension); returns the number
    written. The outputs are checked first (`io.outputs`), so a bad path fails before any prediction."""
    formats = check_outputs(inputs, outputs, cutout=cutout)
    # The bar is closed (its line ended) before an error propagates to be printed.
    with tqdm(total=len(inputs), desc="predict", unit="img", disable=not progress) as bar:
        for start in range(0, len(inputs), predictor.batch_size):
            paths = inputs[start : start + predictor.batch_size]
            images = [load_photo(p) for p in paths]
            chunk = zip(
                images,
                predictor(images),
                outputs[start : start + predictor.batch_size],
                formats[start : start + predictor.batch_size],
            )
            for image, maps, out, fmt in chunk:
                save_image(render(image, maps[map_name], threshold=threshold, cutout=cutout), out, fmt)
            bar.update(len(paths))
    return len(inputs)
