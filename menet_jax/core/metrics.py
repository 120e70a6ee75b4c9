"""Salient-object metrics with the exact definitions of PySODMetrics 1.6.2 (the field's reference).

Two layers:

* ``mae`` and ``adaptive_fbeta``: batched, jittable float32 functions on (N, H, W) maps in [0, 1], used inside the
  training loop for quick validation numbers (about 1e-6 from the reference, float32 accumulation).
* ``image_scores`` / ``SODMetrics``: the evaluation protocol, equal to PySODMetrics within 1e-6 per image and per
  dataset (measured differences: below 1e-14). The prediction must already be at the ground truth's size (the
  caller resizes). Work split:

  - host, numpy float64 (the reference's own operations wherever a result is discontinuous in rounding): input
    scaling and min-max normalisation, the 8-bit quantisation ``uint8(pred * 255)`` of the curves, the adaptive
    threshold ``min(2 * mean, 1)`` (``>=``), the per-image 2 x 256 histograms (OpenCV ``calcHist`` / ``bincount``),
    MAE and the S-measure (block sums, with the reference's exact numpy reductions for the degenerate quadrants whose
    ``alpha == 0 and beta == 0`` branch depends on numpy's rounding, e.g. of the mean of a constant quadrant);
  - host, numpy/OpenCV: the weighted F-measure -- nearest-foreground errors by a direct search reproducing the
    tie-break of scipy's exact EDT feature transform, the 7x7 sigma-5 MATLAB ``fspecial`` Gaussian with zero
    padding (``cv2.sepFilter2D``), exact Euclidean distances (OpenCV ``DIST_MASK_PRECISE``; scipy above 1000 px);
  - JAX (float64 via a local ``jax.enable_x64``, one jitted function, batched over images): everything derived from
    the histograms and the adaptive-threshold counts -- precision, recall and F curves, the E-measure curve, the
    adaptive F-measure and E-measure, including PySODMetrics's special cases for all-zero / all-one ground truth.
    ``curves_from_histograms`` takes a batch (N, 2, 256), so a dataset's curves can be scored in one call.

  Why not more JAX: on the 2-core CPU this project is evaluated on, per-image host work dominates and the exact
  equality needs numpy's own float64 reductions in a few places; the per-pixel passes left are memory-bound.

Curves have 256 entries in ascending threshold order: index ``t`` counts the pixels whose quantised value
``uint8(pred * 255)`` is ``>= t``, i.e. threshold t / 255 (index 0: everything is salient). PySODMetrics stores the
same values in the reverse order (its index i is threshold (255 - i) / 255): ours == theirs[::-1].
"""

from __future__ import annotations

import concurrent.futures
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from scipy.ndimage import distance_transform_edt

from menet_jax.core.saliency import scale_to_unit


def _cv2():
    """OpenCV, imported when the evaluation protocol first needs it, so training does not pay for the import."""
    import cv2  # heavy: imported on first use

    return cv2


BETA2 = 0.3  # beta^2 of the F-measure (paper Eq. 16)
EPS = float(np.spacing(1))  # MATLAB's eps, as PySODMetrics uses it
ALPHA = 0.5  # S-measure's balance of object and region scores


# ----------------------------------------------------------------------------------------------------------------
# Training-time float32 metrics (batched, jittable)


def mae(saliency, gt):
    """Mean absolute error per image."""
    return jnp.mean(jnp.abs(saliency - (gt > 0)), axis=(1, 2))


def adaptive_fbeta(saliency, gt, beta2: float = BETA2):
    """F-beta at the adaptive threshold min(2 x mean saliency, 1) (paper Eq. 15), binarised with >=."""
    truth = gt > 0
    threshold = jnp.minimum(2.0 * jnp.mean(saliency, axis=(1, 2), keepdims=True), 1.0)
    predicted = saliency >= threshold
    hits = jnp.sum(predicted & truth, axis=(1, 2)).astype(jnp.float32)
    precision = hits / jnp.maximum(jnp.sum(predicted, axis=(1, 2)), 1)
    recall = hits / jnp.maximum(jnp.sum(truth, axis=(1, 2)), 1)
    f = (1 + beta2) * precision * recall / jnp.where(hits > 0, beta2 * precision + recall, 1.0)
    return jnp.where(hits > 0, f, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation protocol (PySODMetrics definitions)


def to_8bit(saliency) -> np.ndarray:
    """A map in [0, 1] as the 8-bit image that saving it as PNG gives (``round(255 x map)``), the form in which the
    field scores maps (PySODMetrics reads saved PNGs) and in which `evaluate` scores ours: scoring the saved maps gives
    the same numbers, and ours compare fairly with other methods' PNGs. It matters for the adaptive F and E: their
    threshold ``min(2 x mean, 1)`` is 1 for a normalised map whose mean exceeds 0.5, which on floats only the exact
    maximum reaches (F near 0) and on 8-bit maps every pixel that rounds to 255. For the shipped weights on ECSSD
    (4 such maps in the first 200): adaptive F .7033 on floats, .7197 on 8-bit maps."""
    return np.round(np.clip(np.asarray(saliency, np.float64), 0.0, 1.0) * 255).astype(np.uint8)


def prepare(pred, gt, normalize: bool = True):
    """(pred float64 in [0, 1], gt bool) as PySODMetrics prepares them.

    pred: uint8 0..255 (divided by 255) or float in [0, 1] (taken as is, in float64). With ``normalize``, min-max
    normalised per image when max != min. gt: bool (kept), integer 0..255 (``gt > 128``, as PySODMetrics binarises
    uint8 ground truth: 128 itself is background), or float on a [0, 1] scale (``gt > 128 / 255``).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be the same (H, W); resize first")
    if pred.dtype == np.uint8:
        p = pred / 255
        if normalize:  # min/max of pred / 255 are those of pred, divided by 255 (monotone): cheaper on uint8
            lo, hi = pred.min() / 255, pred.max() / 255
            if hi != lo:  # in place: the same operations as (p - lo) / (hi - lo)
                p -= lo
                p /= hi - lo
            normalize = False
    elif np.issubdtype(pred.dtype, np.floating):
        p = pred.astype(np.float64, copy=False)
        if not (p.min() >= 0 and p.max() <= 1):
            raise ValueError("a float prediction must lie in [0, 1]")
    else:
        raise TypeError(f"prediction must be uint8 or float, got {pred.dtype}")
    if normalize:  # as PySODMetrics: stretched unless max == min (eps 0)
        p = scale_to_unit(p, eps=0.0)
    if gt.dtype == bool:
        g = gt
    elif np.issubdtype(gt.dtype, np.integer):
        g = gt > 128
    else:
        g = gt > 128 / 255
    return p, g


def _s_object(x):
    mean = np.mean(x)
    std = np.std(x, ddof=1) if x.size > 1 else 0
    return 2 * mean / (np.power(mean, 2) + 1 + std + EPS)


def _ssim(pred, gt):
    n = pred.size
    x, y = np.mean(pred), np.mean(gt)
    dx, dy = pred - x, gt - y
    sigma_x = np.sum(dx**2) / (n - 1 + EPS)
    sigma_y = np.sum(dy**2) / (n - 1 + EPS)
    sigma_xy = np.sum(dx * dy) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def _s_measure_reference(p, g, alpha: float = ALPHA) -> float:
    """The S-measure with numpy's reductions on the same (sub-)arrays as the reference: bit-for-bit its branches."""
    y = np.mean(g)
    if y == 0:
        return float(1 - np.mean(p))
    if y == 1:
        return float(np.mean(p))
    obj = _s_object(p[g]) * y + _s_object((1 - p)[~g]) * (1 - y)
    h, w = g.shape
    cy, cx = _centroid(g)
    area = h * w
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    gf = g.astype(np.float64)
    region = (
        _ssim(p[0:cy, 0:cx], gf[0:cy, 0:cx]) * w_lt
        + _ssim(p[0:cy, cx:w], gf[0:cy, cx:w]) * w_rt
        + _ssim(p[cy:h, 0:cx], gf[cy:h, 0:cx]) * w_lb
        + _ssim(p[cy:h, cx:w], gf[cy:h, cx:w]) * w_rb
    )
    return float(np.maximum(0, obj * alpha + region * (1 - alpha)))


def _dot(a, b) -> float:
    """Dot product of two 1-D float64 arrays without BLAS: a threaded BLAS dot wakes its threads on every call,
    which costs milliseconds per image on a busy machine and competes with the scoring threads."""
    return float(np.einsum("i,i->", a, b))


def _centroid(g):
    """The reference's split point: argwhere(gt).mean(axis=0).round() + 1. The integer sums are exact, then one
    division and numpy's half-to-even rounding, so the result is the same."""
    n = np.count_nonzero(g)
    rows, cols = np.count_nonzero(g, axis=1), np.count_nonzero(g, axis=0)
    cy = np.round(float(np.dot(rows, np.arange(rows.size))) / n)
    cx = np.round(float(np.dot(cols, np.arange(cols.size))) / n)
    return int(cy) + 1, int(cx) + 1


_TINY = 1e-9  # below this a (co)variance is recomputed the reference's way (its zero tests depend on rounding)


def _s_object_from_sums(n, s, ss, exact):
    """s_object of n values with sum s and sum of squares ss; ``exact()`` gives the values when the variance is
    too small for the one-pass formula (cancellation) or n < 2."""
    mean = s / n
    var = (ss - s * mean) / (n - 1) if n > 1 else 0.0
    if n < 2 or var < 1e-6:
        return _s_object(exact())
    return 2 * mean / (mean**2 + 1 + np.sqrt(var) + EPS)


def s_measure(p, g, alpha: float = ALPHA) -> float:
    """Structure measure (Fan et al. 2017, alpha 0.5) of a prepared pair, host numpy in float64.

    Fast path: block sums (sum, sum of squares, cross sum) per region, which differ from the reference's two-pass
    means by ~1e-16. Where the reference's result depends on exact zeros (a quadrant whose ground truth is
    constant, a near-constant prediction, an empty quadrant, a tiny variance) that part is recomputed with the same
    numpy reductions on the same sub-arrays as PySODMetrics, so its branches are taken identically.
    """
    h, w = g.shape
    size = g.size
    n_fg = int(np.count_nonzero(g))
    if n_fg == 0 or n_fg == size:
        return _s_measure_reference(p, g, alpha)
    y = np.mean(g)
    pg = p * g
    pp = p * p
    cy, cx = _centroid(g)
    # per-quadrant sums from column sums of the top / bottom blocks
    sums = {}
    for name, arr in (("x", p), ("xx", pp), ("xy", pg)):
        top, bottom = arr[:cy].sum(axis=0), arr[cy:].sum(axis=0)
        sums[name] = ((top[:cx].sum(), top[cx:].sum()), (bottom[:cx].sum(), bottom[cx:].sum()))
    top, bottom = np.count_nonzero(g[:cy], axis=0), np.count_nonzero(g[cy:], axis=0)
    sums["y"] = ((int(top[:cx].sum()), int(top[cx:].sum())), (int(bottom[:cx].sum()), int(bottom[cx:].sum())))
    s_all = sums["x"][0][0] + sums["x"][0][1] + sums["x"][1][0] + sums["x"][1][1]
    ss_all = sums["xx"][0][0] + sums["xx"][0][1] + sums["xx"][1][0] + sums["xx"][1][1]
    s_fg = sums["xy"][0][0] + sums["xy"][0][1] + sums["xy"][1][0] + sums["xy"][1][1]
    flat = pg.ravel()
    ss_fg = _dot(flat, flat)  # p^2 on the foreground
    n_bg = size - n_fg
    s_bg, ss_bg = s_all - s_fg, ss_all - ss_fg  # of p on the background
    # background values are 1 - p: sum n_bg - s_bg, sum of squares n_bg - 2 s_bg + ss_bg
    obj = _s_object_from_sums(n_fg, s_fg, ss_fg, lambda: p[g]) * y + _s_object_from_sums(
        n_bg, n_bg - s_bg, n_bg - 2 * s_bg + ss_bg, lambda: (1 - p)[~g]
    ) * (1 - y)

    area = h * w
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    weights = ((w_lt, w_rt), (w_lb, 1 - w_lt - w_rt - w_lb))
    bounds = ((0, cy), (cy, h)), ((0, cx), (cx, w))
    gf = None
    region = 0.0
    for i in range(2):
        for j in range(2):
            (r0, r1), (c0, c1) = bounds[0][i], bounds[1][j]
            n = (r1 - r0) * (c1 - c0)
            sx, sxx, sxy, sy = sums["x"][i][j], sums["xx"][i][j], sums["xy"][i][j], sums["y"][i][j]
            if n > 1 and 0 < sy < n:
                x, yq = sx / n, sy / n
                sigma_x = (sxx - sx * x) / (n - 1 + EPS)
                if sigma_x > _TINY and x > _TINY:
                    sigma_y = (sy - sy * yq) / (n - 1 + EPS)
                    sigma_xy = (sxy - sx * yq) / (n - 1 + EPS)
                    a = 4 * x * yq * sigma_xy
                    b = (x**2 + yq**2) * (sigma_x + sigma_y)
                    region += (a / (b + EPS)) * weights[i][j]
                    continue
            if gf is None:
                gf = g.astype(np.float64)
            region += _ssim(p[r0:r1, c0:c1], gf[r0:r1, c0:c1]) * weights[i][j]
    return float(np.maximum(0, obj * alpha + region * (1 - alpha)))


def _matlab_gaussian(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``: exp(-(x^2 + y^2) / (2 sigma^2)), tiny taps zeroed, sum 1."""
    r = (size - 1) / 2
    t = np.arange(-r, r + 1)
    k = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma**2))
    k[k < np.finfo(np.float64).eps * k.max()] = 0
    return k / k.sum()


_GAUSS = _matlab_gaussian()
_GAUSS1 = _GAUSS.sum(
    axis=0
)  # its separable factor: no tap is zeroed at 7x7 sigma 5, so _GAUSS = outer(_GAUSS1, _GAUSS1)
_LOG_HALF_FIFTH = np.log(0.5) / 5


_B_TABLE = np.zeros(0)


def _importance(d2: np.ndarray) -> np.ndarray:
    """B = 2 - exp(log(0.5) / 5 * distance) from exact integer squared distances, through a cached table (the same
    float64 operations as the reference on the same values)."""
    global _B_TABLE
    table = _B_TABLE  # a local reference: safe when scoring threads grow it at once
    top = int(d2.max(initial=0))
    if top >= table.size:
        table = 2 - np.exp(_LOG_HALF_FIFTH * np.sqrt(np.arange(max(top + 1, 2 * table.size), dtype=np.float64)))
        _B_TABLE = table
    return table.take(d2)  # take: faster than fancy indexing here


# Offsets (dy, dx) within the 7x7 window's reach of a foreground pixel's nearest neighbour (dy^2 + dx^2 <= 18), in
# the order the nearest foreground pixel is chosen: distance, then smallest column, then smallest row -- the tie-break
# of scipy's exact feature transform (``distance_transform_edt(..., return_indices=True)``), which PySODMetrics uses.
_OFFSETS = sorted(
    ((dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if 0 < dy * dy + dx * dx <= 18),
    key=lambda o: (o[0] ** 2 + o[1] ** 2, o[1], o[0]),
)
_PAD = 4
_SQUARE7 = np.ones((7, 7), np.uint8)


_OFFSET_DY = np.array([o[0] for o in _OFFSETS])
_OFFSET_DX = np.array([o[1] for o in _OFFSETS])
_D2 = _OFFSET_DY**2 + _OFFSET_DX**2
_CHUNKS = [
    (0, int(np.searchsorted(_D2, 2, "right"))),
    (int(np.searchsorted(_D2, 2, "right")), int(np.searchsorted(_D2, 8, "right"))),
    (int(np.searchsorted(_D2, 8, "right")), len(_OFFSETS)),
]


_GROUP_DY = np.zeros((19, 8), np.intp)  # per squared distance: its offsets in tie-break order, padded by repeats
_GROUP_DX = np.zeros((19, 8), np.intp)
for _d2 in np.unique(_D2):
    _members = [o for o in _OFFSETS if o[0] ** 2 + o[1] ** 2 == _d2]
    _members += [_members[-1]] * (8 - len(_members))
    _GROUP_DY[_d2], _GROUP_DX[_d2] = [o[0] for o in _members], [o[1] for o in _members]


def _band_errors(e, g, d2=None):
    """Et of the reference on the background pixels within 3 pixels (Chebyshev) of the foreground -- the only ones
    the 7x7 filter reads for foreground outputs: the error of each one's nearest foreground pixel (ties: smallest
    column, then smallest row, as scipy). With ``d2`` (exact squared distances to the foreground) only the offsets
    at that distance are tried; without, offsets in priority order a few distance groups at a time (each chunk ends
    at a group boundary, so the first hit in a chunk is the nearest). Other pixels keep e."""
    cv2 = _cv2()
    h, w = g.shape
    band = cv2.dilate(g.view(np.uint8), _SQUARE7, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool) & ~g
    gp = np.zeros((h + 2 * _PAD, w + 2 * _PAD), bool)
    gp[_PAD : _PAD + h, _PAD : _PAD + w] = g
    wp = gp.shape[1]
    gflat = gp.ravel()
    by, bx = np.nonzero(band)
    choice_dy, choice_dx = np.zeros(by.size, np.intp), np.zeros(by.size, np.intp)
    todo = np.arange(by.size)
    pending = (by + _PAD) * wp + (bx + _PAD)
    if d2 is not None:
        group = np.minimum(d2[by, bx], 18)
        dy, dx = _GROUP_DY[group], _GROUP_DX[group]
        hits = gflat[pending[:, None] + dy * wp + dx]
        first = np.argmax(hits, axis=1)
        rows = np.arange(first.size)
        found = hits[rows, first]
        choice_dy[found], choice_dx[found] = dy[rows, first][found], dx[rows, first][found]
        todo, pending = todo[~found], pending[~found]  # none are left when d2 is exact
    for lo, hi in _CHUNKS:
        if not todo.size:
            break
        hits = gflat[pending[:, None] + (_OFFSET_DY[lo:hi] * wp + _OFFSET_DX[lo:hi])[None, :]]
        first = np.argmax(hits, axis=1)
        found = hits[np.arange(first.size), first]
        choice_dy[todo[found]] = _OFFSET_DY[lo + first[found]]
        choice_dx[todo[found]] = _OFFSET_DX[lo + first[found]]
        todo, pending = todo[~found], pending[~found]
    et = e.copy()
    et[by, bx] = e[by + choice_dy, bx + choice_dx]
    return et


def weighted_f(p, g, beta2: float = 1.0, e=None) -> float:
    """Weighted F-measure (Margolin et al. 2014, beta^2 = 1) as PySODMetrics computes it; 0 for an empty GT.

    Host-side (numpy/OpenCV), equal to the reference's full-image computation:

    * Et (the error a background pixel inherits from its nearest foreground pixel) matters only where the 7x7 filter
      reads it for a foreground output, i.e. within 3 pixels of the foreground, where the nearest foreground pixel is
      at most sqrt(18) away: a direct search over those offsets, ordered by distance, then column, then row, which
      reproduces the tie-break of scipy's exact EDT feature transform (checked against it on random masks in
      tests/test_metrics.py);
    * the 7x7 sigma-5 MATLAB Gaussian (separable) with zero padding, by OpenCV;
    * the distances of the importance weights come from OpenCV's exact Euclidean transform (``DIST_MASK_PRECISE``,
      float32), rounded back to the exact integer squared distance (exact below about 1000 pixels; larger images
      use scipy's ``distance_transform_edt``).
    """
    cv2 = _cv2()
    if not g.any():
        return 0.0
    bg = ~g
    h, w = g.shape
    if e is None:
        e = np.where(g, 1 - p, p)  # |pred - gt|, bit for bit
    if bg.any():
        rows, cols = np.nonzero(g.any(axis=1))[0], np.nonzero(g.any(axis=0))[0]
        r0, r1 = max(rows[0] - 3, 0), min(rows[-1] + 4, h)
        c0, c1 = max(cols[0] - 3, 0), min(cols[-1] + 4, w)
        gc, ec = g[r0:r1, c0:c1], e[r0:r1, c0:c1]  # every pixel the foreground's 7x7 windows read
        if max(h, w) <= 1000:
            d = cv2.distanceTransform(bg.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            np.square(d, out=d)  # float32: |d^2 - k| < 0.4 for the k <= 2e6 of sides <= 1000, so rint is exact
            d2 = np.rint(d, out=d).astype(np.int32)
        else:
            _, (fy, fx) = distance_transform_edt(bg, return_indices=True)
            yy, xx = np.indices(g.shape)
            d2 = (fy - yy).astype(np.intp) ** 2 + (fx - xx).astype(np.intp) ** 2
        et = _band_errors(ec, gc, d2[r0:r1, c0:c1])
        ew_all = _dot(e.ravel(), _importance(d2).ravel())  # E * B summed; B = 1 on the foreground
    else:
        gc, ec = g, e
        et, ew_all = ec, None
    ea = cv2.sepFilter2D(et, cv2.CV_64F, _GAUSS1, _GAUSS1, borderType=cv2.BORDER_CONSTANT)
    e_fg = ec[gc]
    fg_err = np.minimum(ea[gc], e_fg)  # MIN_E_EA on the foreground (B = 1 there)
    fp = 0.0 if ew_all is None else max(ew_all - float(np.sum(e_fg)), 0.0)  # sum of E * B on the background
    n_fg = fg_err.size
    tp = n_fg - np.sum(fg_err)
    recall = 1 - np.mean(fg_err)
    precision = tp / (tp + fp + EPS)
    return float((1 + beta2) * recall * precision / (recall + beta2 * precision + EPS))


@functools.partial(jax.jit, static_argnames=("beta2",))
def _curves(hist, adp_counts, n_fg, size, beta2=BETA2):
    """Batched PySODMetrics curves and adaptive scores from (N, 2, 256) histograms (row 0 background, 1 foreground),
    (N, 2) adaptive counts (binarised-and-foreground, binarised-and-background), (N,) foreground and pixel counts."""
    f64 = jnp.float64
    hist = hist.astype(f64)
    n_fg = n_fg.astype(f64)[:, None]
    size = size.astype(f64)[:, None]
    # pixels >= threshold t, for t = 0..255 (ascending): reversed cumulative sums of the histograms
    fg_w = jnp.cumsum(hist[:, 1, ::-1], axis=1)[:, ::-1]
    bg_w = jnp.cumsum(hist[:, 0, ::-1], axis=1)[:, ::-1]
    ps = fg_w + bg_w
    precision = fg_w / jnp.where(ps == 0, 1.0, ps)
    recall = fg_w / jnp.maximum(n_fg, 1.0)
    num = (1 + beta2) * precision * recall
    f_curve = num / jnp.where(num == 0, 1.0, beta2 * precision + recall)

    def emeasure(fg_fg, fg_bg):
        pred_fg = fg_fg + fg_bg
        pred_bg = size - pred_fg
        bg_fg = n_fg - fg_fg
        bg_bg = pred_bg - bg_fg
        mp, mg = pred_fg / size, n_fg / size
        parts = ((fg_fg, 1 - mp, 1 - mg), (fg_bg, 1 - mp, -mg), (bg_fg, -mp, 1 - mg), (bg_bg, -mp, -mg))
        total = 0.0
        for numel, a, b in parts:
            align = 2 * (a * b) / (a**2 + b**2 + EPS)
            total = total + ((align + 1) ** 2 / 4) * numel
        total = jnp.where(n_fg == 0, pred_bg, jnp.where(n_fg == size, pred_fg, total))
        return total / (size - 1 + EPS)

    e_curve = emeasure(fg_w, bg_w)
    a_fg, a_bg = adp_counts[:, 0:1].astype(f64), adp_counts[:, 1:2].astype(f64)
    adp_e = emeasure(a_fg, a_bg)[:, 0]
    pre = a_fg / jnp.maximum(a_fg + a_bg, 1.0)
    rec = a_fg / jnp.maximum(n_fg, 1.0)
    adp_f = jnp.where(a_fg > 0, (1 + beta2) * pre * rec / jnp.where(a_fg > 0, beta2 * pre + rec, 1.0), 0.0)[:, 0]
    return precision, recall, f_curve, e_curve, adp_f, adp_e


def curves_from_histograms(hist, adp_counts, n_fg, size):
    """JAX (float64) batch of curves: returns numpy (precision, recall, f_curve, e_curve) each (N, 256) and
    (adp_f, adp_e) each (N,). See ``_curves`` for the inputs (integer counts)."""
    with jax.enable_x64(True):
        out = _curves(
            np.asarray(hist, np.int64),
            np.asarray(adp_counts, np.int64),
            np.asarray(n_fg, np.int64),
            np.asarray(size, np.int64),
        )
        return tuple(np.asarray(o) for o in out)


def _pixel_stats(p, g, e):
    """Host part of the per-image work: histograms (2, 256) of the quantised map on the background / foreground,
    adaptive counts (2,), MAE."""
    cv2 = _cv2()
    q = (p * 255).astype(np.uint8)  # PySODMetrics's quantisation (truncation)
    fg_mask = g.view(np.uint8)
    hist = np.empty((2, 256), np.int64)
    hist[1] = cv2.calcHist([q], [0], fg_mask, [256], [0, 256])[:, 0]  # exact counts (float32 below 2^24)
    hist[0] = cv2.calcHist([q], [0], None, [256], [0, 256])[:, 0] - hist[1]
    threshold = min(2 * p.mean(), 1)  # same numpy mean as the reference: >= is exact
    binary = p >= threshold
    fg_fg = np.count_nonzero(binary & g)
    adp = np.array([fg_fg, np.count_nonzero(binary) - fg_fg])
    return hist, adp, float(np.mean(e))  # e = |p - gt| bit for bit: the reference's MAE


def _host_scores(pred, gt, normalize: bool, structure: bool = True):
    """The per-image host work: histograms and counts for the curves, and the scalar metrics (without the
    S-measure and weighted F-measure unless `structure`)."""
    p, g = prepare(pred, gt, normalize)
    if g.size >= 2**24:
        raise ValueError("images above 16 M pixels are not supported (float32 histogram counts)")
    e = p.copy()  # |p - gt|: p on the background, 1 - p on the foreground
    np.subtract(1, p, out=e, where=g)
    hist, adp, mae_value = _pixel_stats(p, g, e)
    scalars = {"mae": mae_value}
    if structure:
        scalars.update(s_measure=s_measure(p, g), w_f=weighted_f(p, g, e=e))
    return hist, adp, np.count_nonzero(g), g.size, scalars


@functools.cache
def _host_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Threads for the per-image host work: its large numpy / OpenCV operations release the GIL, so images are
    scored on all cores."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="sod-metrics")


def batch_scores(preds, gts, *, normalize: bool = True, structure: bool = True) -> list[dict]:
    """``image_scores`` of many images, with their curves computed in one batched JAX call (padded to a power of
    two, so that a dataset compiles a handful of shapes) instead of one call per image, and the host work of the
    images spread over the cores. ``structure=False`` leaves out the S-measure and the weighted F-measure (most of
    the host time)."""
    pairs = list(zip(preds, gts, strict=True))
    if len(pairs) > 1:
        host = list(_host_pool().map(lambda pair: _host_scores(*pair, normalize, structure), pairs))
    else:
        host = [_host_scores(*pair, normalize, structure) for pair in pairs]
    if not host:
        return []
    n = len(host)
    padded = 1 << (n - 1).bit_length()
    hist, adp, n_fg, size = (np.stack([h[k] for h in host] + [host[-1][k]] * (padded - n)) for k in range(4))
    precision, recall, f_curve, e_curve, adp_f, adp_e = curves_from_histograms(hist, adp, n_fg, size)
    return [
        {
            **h[4],
            "adp_f": float(adp_f[i]),
            "adp_e": float(adp_e[i]),
            "precision": precision[i],
            "recall": recall[i],
            "f_curve": f_curve[i],
            "e_curve": e_curve[i],
        }
        for i, h in enumerate(host)
    ]


def image_scores(pred, gt, *, normalize: bool = True) -> dict:
    """All metrics of one image, equal to PySODMetrics's per-image values (within 1e-6; in practice ~1e-15).

    pred: (H, W) uint8 0..255 (divided by 255) or float in [0, 1]; gt: (H, W) bool or uint8 0..255 (``> 128``).
    ``normalize``: per-image min-max normalisation of the prediction (PySODMetrics's default).
    Returns floats ``mae, adp_f, adp_e, s_measure, w_f`` and (256,) numpy arrays ``precision, recall, f_curve,
    e_curve`` (index t: threshold t / 255 on the quantised map; PySODMetrics's arrays reversed).
    """
    return batch_scores([pred], [gt], normalize=normalize)[0]


class SODMetrics:
    """Dataset accumulator: ``step(pred, gt)`` per image, ``results()`` for the dataset (means over images, as
    PySODMetrics: maxF / meanF = max / mean of the dataset-mean F curve, maxE / meanE likewise on the E curve).
    ``structure=False``: no S-measure or weighted F-measure (absent from the results), for protocols that report
    neither and score many maps (the robustness suites)."""

    _STRUCTURE = ("s_measure", "w_f")
    _CURVES = ("precision", "recall", "f_curve", "e_curve")

    def __init__(self, normalize: bool = True, structure: bool = True):
        self.normalize, self.structure = normalize, structure
        scalars = ("mae", "adp_f", "adp_e") + (self._STRUCTURE if structure else ())
        self._values = {k: [] for k in scalars + self._CURVES}

    def step(self, pred, gt) -> dict:
        return self.step_batch([pred], [gt])[0]

    def step_batch(self, preds, gts) -> list[dict]:
        """Several images at once (faster: one curve computation for all); returns their per-image scores."""
        batch = batch_scores(preds, gts, normalize=self.normalize, structure=self.structure)
        for scores in batch:
            for k, v in self._values.items():
                v.append(scores[k])
        return batch

    def __len__(self) -> int:
        return len(self._values["mae"])

    def results(self) -> dict:
        if not len(self):
            raise ValueError("no image was scored")
        mean = {k: np.mean(np.array(v, dtype=np.float64), axis=0) for k, v in self._values.items()}
        f_curve, e_curve = mean["f_curve"], mean["e_curve"]
        scores = {
            "n_images": len(self),
            "mae": float(mean["mae"]),
            "adp_f": float(mean["adp_f"]),
            "mean_f": float(f_curve.mean()),
            "max_f": float(f_curve.max()),
            "s_measure": float(mean["s_measure"]) if self.structure else None,
            "adp_e": float(mean["adp_e"]),
            "mean_e": float(e_curve.mean()),
            "max_e": float(e_curve.max()),
            "w_f": float(mean["w_f"]) if self.structure else None,
            "precision": mean["precision"],
            "recall": mean["recall"],
            "f_curve": f_curve,
        }
        return {k: v for k, v in scores.items() if v is not None}
