"""Image distortions of the robustness protocol: additive white Gaussian noise and JPEG compression.

Images are uint8 RGB (H, W, 3) arrays, as the datasets give them; every distortion returns uint8 again, so a
distorted image is exactly what a camera or a file would hand to a model.

* AWGN: x + n, n ~ N(0, sigma^2) per pixel and channel on the 0..255 scale, rounded and clipped to 0..255.
  Give either `sigma` or `variance` (= sigma^2), both on the 0..255 scale (the paper's Fig. 9 sweeps the
  variance). The ImageNet-C presets are sigma = .08 .. .38 on the [0, 1] scale, i.e. 255 x that here.
* JPEG: a Pillow encode/decode round trip at `quality` with fixed 4:2:0 chroma subsampling (Pillow's default
  changes with the quality setting otherwise, which would mix two effects).

Randomness: every image gets its own `np.random.Generator`, seeded from (base seed, image index, image name), so
an image's noise does not depend on batch composition, order or what else is evaluated.

"Random strength" (the paper's Table II distorts "with random strengths" and does not say which): here one
strength per image, uniform over the ImageNet-C severity range: AWGN sigma ~ U(0.08, 0.38) x 255, JPEG quality
uniform on the integers 7..25.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

KINDS = ("awgn", "jpeg")
# ImageNet-C (Hendrycks & Dietterich 2019) severities 1..5: gaussian_noise sigma on [0, 1], jpeg quality.
IMAGENET_C = {"awgn": (0.08, 0.12, 0.18, 0.26, 0.38), "jpeg": (25, 18, 15, 10, 7)}
RANDOM_RANGES = {"awgn": (0.08, 0.38), "jpeg": (7, 25)}  # sigma on [0, 1] / JPEG quality, inclusive
JPEG_SUBSAMPLING = 2  # Pillow's code for 4:2:0


def severity_levels(kind: str) -> list[float]:
    """The five ImageNet-C severities as levels of this module: AWGN variance on 0..255, JPEG quality."""
    _check_kind(kind)
    if kind == "awgn":
        return [float((s * 255.0) ** 2) for s in IMAGENET_C["awgn"]]
    return [float(q) for q in IMAGENET_C["jpeg"]]


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"unknown distortion {kind!r} (one of {', '.join(KINDS)})")


def image_rng(base_seed: int, index: int, name: str = "") -> np.random.Generator:
    """The generator of one image: a stable hash of (seed, index, name), independent of batching."""
    digest = hashlib.sha256(f"{int(base_seed)}/{int(index)}/{name}".encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], np.uint32))


def awgn(image, rng: np.random.Generator, *, sigma: float | None = None, variance: float | None = None):
    """Additive white Gaussian noise on the 0..255 scale, rounded and clipped to uint8."""
    if (sigma is None) == (variance is None):
        raise ValueError("give exactly one of sigma and variance")
    sigma = float(np.sqrt(variance)) if sigma is None else float(sigma)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    image = np.asarray(image)
    if sigma == 0:
        return image.astype(np.uint8, copy=True)
    noisy = image.astype(np.float64) + rng.normal(0.0, sigma, image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def jpeg(image, quality: int):
    """JPEG encode/decode round trip at `quality` (1..95 in Pillow's sense), 4:2:0 chroma subsampling."""
    quality = int(round(quality))
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(
        buffer, format="JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING
    )
    buffer.seek(0)
    with Image.open(buffer) as img:
        return np.asarray(img.convert("RGB"))


def random_level(kind: str, rng: np.random.Generator) -> float:
    """One random strength (see the module docstring): AWGN variance on 0..255, or JPEG quality."""
    _check_kind(kind)
    lo, hi = RANDOM_RANGES[kind]
    if kind == "awgn":
        return float((rng.uniform(lo, hi) * 255.0) ** 2)
    return float(rng.integers(lo, hi + 1))


def is_random(kind: str, level) -> bool:
    """Whether `level` draws random numbers (noise or a random strength): only those need several seeds."""
    _check_kind(kind)
    return level == "random" or (kind == "awgn" and float(level) > 0)


def to_input_size(image, size: int) -> np.ndarray:
    """The image as a network of input `size` sees it (square, bilinear, as `menet_jax.api.Predictor`
    resizes): distorting this instead of the original puts the noise at the network's own resolution."""
    image = np.asarray(image, np.uint8)
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def distort(image, kind: str, level, rng: np.random.Generator):
    """One image at `level` (AWGN variance on 0..255 / JPEG quality; "random" draws one from `rng` first).

    Returns (distorted uint8 image, the level used)."""
    _check_kind(kind)
    if level == "random":
        level = random_level(kind, rng)
    level = float(level)
    if kind == "awgn":
        return awgn(image, rng, variance=level), level
    return jpeg(image, level), level


def distort_batch(images, kind: str, level, *, seed: int = 0, indices=None, names=None):
    """A list of images, each with its own generator from (seed, dataset index, name). Returns (images, levels)."""
    indices = range(len(images)) if indices is None else indices
    names = [""] * len(images) if names is None else names
    out, levels = [], []
    for image, index, name in zip(images, indices, names):
        distorted, used = distort(image, kind, level, image_rng(seed, index, name))
        out.append(distorted)
        levels.append(used)
    return out, levels
