"""Seeded paired bootstrap of mean scores over images (and noise seeds): percentile 95 % intervals.

Pure NumPy (no JAX), so a notebook can import it. Scores are arrays shaped (seeds, images); a level without
randomness has one seed. One resample draws image indices with replacement (the same draw for every quantity of
one statistic: the pairing) and, independently for each array, seed indices with replacement; an array's
resampled value is the mean over the resampled (seed, image) grid. Draws are multinomial counts, so that B
resamples are one matrix product: stat_b = v_b^T S w_b with v_b, w_b the seed and image counts over their totals.

    from robustness import bootstrap
    bootstrap.mean_interval(scores)                     # Interval(estimate, low, high)
    bootstrap.kept_interval(clean, distorted)           # mean(distorted) / mean(clean)
    bootstrap.kept_difference_interval(clean_a, distorted_a, clean_b, distorted_b)

Arrays draw their seeds independently, unless `paired_seeds`: then every array with several seeds takes the same
seed draw (they must have as many seeds). That is right when the runs used the same seeds, hence the same noise on
each image (robustness.distortions keys the noise by seed, image index and name): a run compared with itself then
differs by exactly 0 with a zero-width interval, as it does at one seed.

Point estimates are the statistic on the full sample; low and high the 2.5 and 97.5 percentiles of the B
resampled statistics (B = 2000, seed 0 by default: the same inputs give the same interval). Images are the
dominant uncertainty with 100 images and a few seeds; the seeds' share is included where there are several.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
METHOD = (
    f"percentile bootstrap {100 * CONFIDENCE:.0f} %, {RESAMPLES} resamples of the images (paired) and of the "
    f"seeds, seed {SEED}"
)


class PairingError(ValueError):
    """Two runs scored on different images: a paired difference has no meaning."""


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95 % interval; low / high None where there is none (scores without per-image
    values)."""

    estimate: float
    low: float | None = None
    high: float | None = None

    def scaled(self, factor: float) -> Interval:
        """The same interval in other units (a share as percent: factor 100)."""
        return Interval(
            self.estimate * factor,
            None if self.low is None else self.low * factor,
            None if self.high is None else self.high * factor,
        )

    @property
    def bounds(self) -> list[float] | None:
        """[low, high] (the form of robustness.json's "interval"), None without an interval."""
        return None if self.low is None or self.high is None else [self.low, self.high]

    def excludes(self, value: float = 0.0) -> bool:
        """Whether the interval lies wholly on one side of `value` (False without an interval)."""
        return self.bounds is not None and (self.low > value or self.high < value)

    def text(self, fmt: str = ".4f", unit: str = "", missing: str = " [n/a]") -> str:
        """E.g. "0.7510 [0.7420, 0.7600]"; `missing` in place of the brackets without an interval; "-" for no
        number (the share of a zero clean score)."""
        if not math.isfinite(self.estimate):
            return "-"
        if self.bounds is None:
            return f"{self.estimate:{fmt}}{unit}{missing}"
        return f"{self.estimate:{fmt}}{unit} [{self.low:{fmt}}, {self.high:{fmt}}]"

    def to_json(self) -> dict:
        """{"estimate", "low", "high"}: non-finite values (a zero clean score) as None."""
        clean = lambda v: None if v is None or not math.isfinite(v) else float(v)
        return {"estimate": clean(self.estimate), "low": clean(self.low), "high": clean(self.high)}


def as_scores(scores) -> np.ndarray:
    """(seeds, images) float64; one (images,) row is one seed."""
    a = np.asarray(scores, np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or not a.size:
        raise ValueError(f"scores must be shaped (seeds, images) and non-empty, got shape {a.shape}")
    return a


def counts(indices, size: int) -> np.ndarray:
    """(B, k) drawn indices -> (B, size) how often each index was drawn."""
    indices = np.asarray(indices, np.int64)
    rows = np.arange(indices.shape[0])[:, None] * size
    return np.bincount((indices + rows).ravel(), minlength=indices.shape[0] * size).reshape(-1, size)


@functools.lru_cache(maxsize=2)
def image_counts(n_images: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n_images) multinomial counts of one image draw with replacement per row. Cached: every
    statistic with the same seed and image count uses the same image draws."""
    rng = np.random.default_rng([seed, 0])
    drawn = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=resamples).astype(np.float64)
    drawn.flags.writeable = False
    return drawn


def resampled_means(scores, image_counts, seed_counts) -> np.ndarray:
    """(B,) means of `scores` (seeds, images) over each resampled grid, from count weights (B, images) and
    (B, seeds). Shifted by one score: a constant array resamples to exactly itself."""
    s = as_scores(scores)
    w = np.asarray(image_counts, np.float64)
    v = np.asarray(seed_counts, np.float64)
    shift = s.flat[0]
    return shift + np.einsum("bi,bi->b", v @ (s - shift), w) / (v.sum(1) * w.sum(1))


def full_mean(scores) -> float:
    """The full-sample mean, computed like `resampled_means` (all counts 1), so that equal inputs give bitwise
    equal estimates."""
    s = as_scores(scores)
    return float(resampled_means(s, np.ones((1, s.shape[1])), np.ones((1, s.shape[0])))[0])


def bootstrap(arrays, statistic, *, paired_seeds=False, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """Interval of `statistic(*means)` where means[k] is the mean of arrays[k] (each (seeds, images), the same
    images in the same order): every array shares a resample's image draw; each draws its own seeds, or with
    `paired_seeds` all take one seed draw."""
    arrays = [as_scores(a) for a in arrays]
    n = arrays[0].shape[1]
    if any(a.shape[1] != n for a in arrays):
        raise ValueError(f"paired scores need the same images, got {', '.join(str(a.shape[1]) for a in arrays)}")
    w = image_counts(n, resamples, seed)
    rng = np.random.default_rng([seed, 1])
    seeds = {a.shape[0] for a in arrays} - {1}
    if paired_seeds and len(seeds) > 1:
        raise ValueError(f"paired seeds need as many seeds in every array, got {', '.join(map(str, sorted(seeds)))}")
    shared = {k: rng.multinomial(k, np.full(k, 1.0 / k), size=resamples) for k in seeds} if paired_seeds else {}
    means = []
    for a in arrays:
        k = a.shape[0]
        v = np.ones((resamples, 1)) if k == 1 else shared.get(k)
        if v is None:
            v = rng.multinomial(k, np.full(k, 1.0 / k), size=resamples)
        means.append(resampled_means(a, w, v))
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = float(statistic(*[np.float64(full_mean(a)) for a in arrays]))  # NumPy: x / 0 is not an error
        stats = np.asarray(statistic(*means), np.float64)
    if not np.isfinite(stats).all():  # a zero clean score in some resample: no interval
        return Interval(estimate)
    low, high = np.percentile(stats, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return Interval(estimate, float(low), float(high))


def mean_interval(scores, **kw) -> Interval:
    """The mean score over images (and seeds)."""
    return bootstrap([scores], lambda m: m, **kw)


def kept_interval(clean, distorted, **kw) -> Interval:
    """The kept share mean(distorted) / mean(clean), both resampled with the same image draw."""
    return bootstrap([clean, distorted], lambda c, d: d / c, **kw)


def _mean_kept(weights):
    """statistic(clean, *levels): the weighted mean of the levels' kept shares."""
    weights = np.asarray(weights, np.float64) / np.sum(weights)
    return lambda c, *ds: sum(w * d for w, d in zip(weights, ds)) / c


def mean_kept_interval(clean, levels, weights=None, **kw) -> Interval:
    """The mean of several distorted levels' kept shares of `clean` (ImageNet-C: a corruption's severities);
    `weights` (default equal) for a mean of means, e.g. over corruptions with different numbers of severities."""
    return bootstrap([clean, *levels], _mean_kept(np.ones(len(levels)) if weights is None else weights), **kw)


def difference_interval(a, b, **kw) -> Interval:
    """mean(a) - mean(b): two runs' scores paired over images (seeds: see `bootstrap`)."""
    return bootstrap([a, b], lambda x, y: x - y, **kw)


def kept_difference_interval(clean_a, distorted_a, clean_b, distorted_b, **kw) -> Interval:
    """kept share of run a - kept share of run b, paired over images."""
    return bootstrap([clean_a, distorted_a, clean_b, distorted_b], lambda ca, da, cb, db: da / ca - db / cb, **kw)


def mean_kept_difference_interval(clean_a, levels_a, clean_b, levels_b, weights_a=None, weights_b=None, **kw):
    """`mean_kept_interval`'s statistic of run a minus run b's, paired over images."""
    stat_a = _mean_kept(np.ones(len(levels_a)) if weights_a is None else weights_a)
    stat_b = _mean_kept(np.ones(len(levels_b)) if weights_b is None else weights_b)
    k = 1 + len(levels_a)
    return bootstrap(
        [clean_a, *levels_a, clean_b, *levels_b], lambda *means: stat_a(*means[:k]) - stat_b(*means[k:]), **kw
    )


def check_paired(names_a, names_b, label_a: str = "a", label_b: str = "b") -> None:
    """A one-line PairingError unless the two runs scored the same images in the same order."""
    names_a, names_b = list(names_a), list(names_b)
    if names_a == names_b:
        return
    if len(names_a) != len(names_b):
        detail = f"{len(names_a)} vs {len(names_b)} images"
    else:
        i = next(i for i, (x, y) in enumerate(zip(names_a, names_b)) if x != y)
        detail = f"image {i} is {names_a[i]!r} vs {names_b[i]!r}"
    raise PairingError(
        f"{label_a} and {label_b} were scored on different images ({detail}): paired intervals need the same "
        "images in the same order"
    )
