"""Procedurally generated salient-object scenes (the built-in default dataset).

Nothing is downloaded: every example is generated on the fly, in pure numpy,
from ``np.random.default_rng([seed, index])``, so it depends only on the seed,
the index and the image size.

A scene is a cluttered background (smooth low-frequency colour fields, an
optional "horizon" split, stripes / checkers / mottled texture, small
distractor shapes coloured like the background, pixel noise) with one or
sometimes two salient objects (ellipses, rotated rectangles, stars, blobs,
rings; flat, gradient, striped or mottled) whose colour is chosen to contrast
with the background around them. The mask is 255 on the salient objects.
"""

from __future__ import annotations

import functools
import operator

import numpy as np

SHAPES = ("ellipse", "rectangle", "star", "blob", "ring")


@functools.lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights from a coarse grid to n_out pixels."""
    pos = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
    frac = (pos - i0).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    m[rows, i0] = 1.0 - frac
    m[rows, i0 + 1] = frac
    m.setflags(write=False)
    return m


def _smooth_field(rng, h: int, w: int, grid: int, channels: int) -> np.ndarray:
    """(h, w, channels) float32 field in [0, 1]: a bilinearly upsampled random grid."""
    g = rng.random((grid, grid, channels), dtype=np.float32)
    out = _interp_matrix(h, grid) @ g.transpose(2, 0, 1) @ _interp_matrix(w, grid).T
    return out.transpose(1, 2, 0)  # (h, w, c)


@functools.lru_cache(maxsize=16)
def _coords(size: int) -> np.ndarray:
    c = ((np.arange(size) + 0.5) / size).astype(np.float32)
    c.setflags(write=False)
    return c


def _unit(rng, n: int = 3) -> np.ndarray:
    v = rng.standard_normal(n).astype(np.float32)
    return v / (np.linalg.norm(v) + 1e-6)


# --------------------------------------------------------------------------- shapes


def _sample_shape(rng, kind: str, area: float) -> dict:
    """Shape parameters (normalised units, image = unit square) of roughly ``area``."""
    sh = {"kind": kind, "theta": rng.uniform(0.0, np.pi)}
    aspect = float(np.exp(rng.uniform(-0.7, 0.7)))  # long/short axis ratio 0.5 .. 2
    if kind in ("ellipse", "ring"):
        hole = rng.uniform(0.45, 0.7) if kind == "ring" else 0.0
        ab = area / (np.pi * (1.0 - hole**2))
        sh.update(a=np.sqrt(ab * aspect), b=np.sqrt(ab / aspect), hole=hole)
        sh["bound"] = max(sh["a"], sh["b"])
    elif kind == "rectangle":
        ab = area / 4.0
        sh.update(a=np.sqrt(ab * aspect), b=np.sqrt(ab / aspect))
        sh["bound"] = float(np.hypot(sh["a"], sh["b"]))
    else:  # star / blob: a star-shaped region rho <= R f(phi)
        if kind == "star":
            sh.update(points=int(rng.integers(4, 9)), inner=rng.uniform(0.4, 0.65))
        else:
            k = np.arange(2, 6)
            sh.update(
                harm_k=k,
                harm_a=rng.uniform(0.0, 0.28, size=k.size) / np.sqrt(k - 1),
                harm_p=rng.uniform(0.0, 2 * np.pi, size=k.size),
            )
        sh["stretch"] = float(np.sqrt(np.exp(rng.uniform(-0.4, 0.4))))
        phi = np.linspace(0.0, 2 * np.pi, 256, endpoint=False)
        f = _polar_profile(sh, phi)
        sh["R"] = np.sqrt(area / (0.5 * np.mean(f**2) * 2 * np.pi))
        sh["bound"] = sh["R"] * f.max() * max(sh["stretch"], 1.0 / sh["stretch"])
    return sh


def _polar_profile(sh: dict, phi: np.ndarray) -> np.ndarray:
    if sh["kind"] == "star":
        t = phi * (sh["points"] / (2 * np.pi))
        tri = np.abs(2.0 * (t - np.floor(t)) - 1.0)  # 1 at the tips, 0 between them
        return sh["inner"] + (1.0 - sh["inner"]) * tri
    f = np.ones_like(phi)
    for k, a, p in zip(sh["harm_k"], sh["harm_a"], sh["harm_p"]):
        f = f + a * np.cos(k * phi + p)
    return np.maximum(f, 0.35)


def _inside(sh: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance (normalised units), positive inside the shape."""
    kind = sh["kind"]
    if kind in ("ellipse", "ring"):
        a, b = sh["a"], sh["b"]
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        d = 1.0 - rho
        if kind == "ring":
            d = np.minimum(d, rho - sh["hole"])
        return d * min(a, b)
    if kind == "rectangle":
        return np.minimum(sh["a"] - np.abs(u), sh["b"] - np.abs(v))
    us, vs = u / sh["stretch"], v * sh["stretch"]
    rho = np.sqrt(us**2 + vs**2)
    return sh["R"] * _polar_profile(sh, np.arctan2(vs, us)) - rho


def _place(sh: dict, cy: float, cx: float, size: int):
    """Pixel bounding box and signed distance in pixels of a shape centred at (cy, cx)."""
    bound = sh["bound"]
    y0 = max(0, int(np.floor((cy - bound) * size)) - 1)
    y1 = min(size, int(np.ceil((cy + bound) * size)) + 1)
    x0 = max(0, int(np.floor((cx - bound) * size)) - 1)
    x1 = min(size, int(np.ceil((cx + bound) * size)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    c = _coords(size)
    dy = c[y0:y1, None] - np.float32(cy)
    dx = c[None, x0:x1] - np.float32(cx)
    ct, st = np.float32(np.cos(sh["theta"])), np.float32(np.sin(sh["theta"]))
    u = dx * ct + dy * st
    v = dy * ct - dx * st
    sd = _inside(sh, u, v) * size
    return (slice(y0, y1), slice(x0, x1)), sd.astype(np.float32), dy, dx


# --------------------------------------------------------------------------- textures


def _pattern(rng, dy, dx, size: int, kind: str) -> np.ndarray:
    """A zero-mean pattern in [-1, 1] of shape (h, w) on the given offsets."""
    ang = rng.uniform(0.0, np.pi)
    if kind == "gradient":
        return (dx * np.cos(ang) + dy * np.sin(ang)) * np.float32(2.0 / 0.7)
    if kind == "stripes":
        period = rng.uniform(4.0, 14.0) / size
        t = (dx * np.cos(ang) + dy * np.sin(ang)) / period
        wave = np.sin(np.float32(2 * np.pi) * t + rng.uniform(0, 2 * np.pi))
        return np.sign(wave) if rng.random() < 0.5 else wave
    if kind == "checker":
        period = rng.uniform(5.0, 16.0) / size
        a = (dx * np.cos(ang) + dy * np.sin(ang)) / period
        b = (dy * np.cos(ang) - dx * np.sin(ang)) / period
        return np.sign(np.sin(np.float32(np.pi) * a) * np.sin(np.float32(np.pi) * b))
    # "mottled": medium-frequency smooth noise
    h, w = np.broadcast_shapes(dy.shape, dx.shape)
    grid = int(rng.integers(5, 12))
    return _smooth_field(rng, h, w, grid, 1)[:, :, 0] * 2.0 - 1.0


# --------------------------------------------------------------------------- scene


def _random_colour(rng, n: int, sat_range=(0.3, 1.6)) -> np.ndarray:
    """n random RGB colours (float32 0..255), a mix of vivid and muted ones."""
    rgb = rng.random((n, 3), dtype=np.float32)
    grey = rgb.mean(axis=1, keepdims=True)
    sat = rng.uniform(*sat_range, size=(n, 1)).astype(np.float32)
    return np.clip(grey + (rgb - grey) * sat, 0.0, 1.0) * 255.0


def _background(rng, size: int) -> np.ndarray:
    c = _coords(size)
    c0 = _random_colour(rng, 1, (0.15, 1.1))[0]
    # Low-frequency colour field around c0.
    t = _smooth_field(rng, size, size, int(rng.integers(2, 5)), 2) - 0.5
    d1 = _unit(rng) * rng.uniform(30.0, 110.0)
    d2 = _unit(rng) * rng.uniform(0.0, 60.0)
    bg = c0 + t[:, :, :1] * d1 + t[:, :, 1:] * d2
    if rng.random() < 0.3:  # a soft "horizon" between two regions
        h = rng.uniform(0.3, 0.75)
        slope = rng.uniform(-0.3, 0.3)
        soft = rng.uniform(0.5, 3.0) / size
        w = np.clip((c[:, None] - h - slope * (c[None, :] - 0.5)) / soft + 0.5, 0.0, 1.0)
        bg = bg + w[:, :, None] * (_unit(rng) * rng.uniform(30.0, 90.0))
    kind = rng.choice(["none", "stripes", "checker", "mottled"], p=[0.25, 0.25, 0.2, 0.3])
    if kind != "none":
        pat = _pattern(rng, c[:, None] - 0.5, c[None, :] - 0.5, size, str(kind))
        pat = np.broadcast_to(pat, (size, size))
        amp = rng.uniform(8.0, 28.0) if kind != "mottled" else rng.uniform(15.0, 40.0)
        bg = bg + pat[:, :, None] * (_unit(rng) * amp)
    return bg.astype(np.float32)


def _composite(canvas, region, sd, colour):
    alpha = np.clip(sd + 0.5, 0.0, 1.0)[:, :, None]
    sub = canvas[region]
    sub += alpha * (colour - sub)


def _distractors(rng, canvas: np.ndarray, size: int) -> None:
    for _ in range(int(rng.integers(1, 7))):
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        sh = _sample_shape(rng, kind, float(np.exp(rng.uniform(np.log(0.004), np.log(0.06)))))
        cy, cx = rng.uniform(0.0, 1.0, size=2)
        placed = _place(sh, cy, cx, size)
        if placed is None:
            continue
        region, sd, _, _ = placed
        iy = min(int(cy * size), size - 1)
        ix = min(int(cx * size), size - 1)
        local = canvas[iy, ix]
        colour = local + _unit(rng) * rng.uniform(8.0, 30.0)
        _composite(canvas, region, sd, np.clip(colour, 0, 255))


def _object_colour(rng, canvas, region) -> tuple[np.ndarray, float]:
    """A colour contrasting with the background under (and around) ``region``."""
    ys, xs = region
    size = canvas.shape[0]
    pad = max(2, size // 16)
    y0, y1 = max(0, ys.start - pad), min(size, ys.stop + pad)
    x0, x1 = max(0, xs.start - pad), min(size, xs.stop + pad)
    step = max(1, max(y1 - y0, x1 - x0) // 10)
    samples = canvas[y0:y1:step, x0:x1:step].reshape(-1, 3)
    cands = _random_colour(rng, 32)
    dist = np.sqrt(((cands[:, None, :] - samples[None, :, :]) ** 2).sum(-1))
    k = samples.shape[0] // 20  # 5% quantile: ignore a few outlier pixels
    nearest = np.partition(dist, k, axis=1)[:, k]
    need = rng.uniform(50.0, 95.0)
    ok = np.flatnonzero(nearest >= need)
    pick = ok[int(rng.integers(ok.size))] if ok.size else int(np.argmax(nearest))
    return cands[pick], float(nearest[pick])


def _salient_object(rng, canvas, mask, size: int, area: float, border: bool) -> None:
    kind = SHAPES[int(rng.choice(len(SHAPES), p=[0.25, 0.2, 0.2, 0.25, 0.1]))]
    sh = _sample_shape(rng, kind, area)
    cy, cx = rng.uniform(0.2, 0.8, size=2)
    if border:  # centre the object near one edge so it crosses the border
        r = sh["bound"]
        edge = rng.uniform(-0.1, 0.5) * r
        side = int(rng.integers(4))
        pos = edge if side < 2 else 1.0 - edge
        if side % 2 == 0:
            cy = pos
        else:
            cx = pos
    placed = _place(sh, float(np.clip(cy, 0.0, 1.0)), float(np.clip(cx, 0.0, 1.0)), size)
    if placed is None:
        return
    region, sd, dy, dx = placed
    colour, contrast = _object_colour(rng, canvas, region)
    tex = rng.choice(["flat", "gradient", "stripes", "mottled"], p=[0.3, 0.3, 0.2, 0.2])
    amp = min(contrast * 0.45, 40.0) * rng.uniform(0.4, 1.0)
    if tex == "flat":
        fill = colour
    else:
        pat = _pattern(rng, dy, dx, size, str(tex))
        pat = np.broadcast_to(pat, sd.shape)
        fill = colour + pat[:, :, None] * (_unit(rng) * amp)
    _composite(canvas, region, sd, fill)
    mask[region] |= sd >= 0.0


def make_scene(rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene: (uint8 (size, size, 3) image, uint8 (size, size) 0/255 mask)."""
    canvas = _background(rng, size)
    _distractors(rng, canvas, size)
    mask = np.zeros((size, size), bool)
    total = rng.uniform(0.05, 0.42)
    n_obj = 2 if rng.random() < 0.25 else 1
    shares = [1.0] if n_obj == 1 else [s := rng.uniform(0.35, 0.65), 1.0 - s]
    for share in shares:
        _salient_object(rng, canvas, mask, size, total * share, border=rng.random() < 0.3)
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * rng.uniform(1.5, 6.0)
    canvas += noise
    image = np.clip(canvas + 0.5, 0.0, 255.0).astype(np.uint8)
    return image, np.where(mask, np.uint8(255), np.uint8(0))


class SyntheticSource:
    """``n`` procedurally generated ``size`` x ``size`` salient-object scenes.

    ``source[i]`` is ``{"image", "mask", "name"}`` like a folder dataset and
    depends only on ``(seed, i)`` (and ``size``).
    """

    def __init__(self, n: int, size: int, seed: int = 0):
        n, size, seed = operator.index(n), operator.index(size), operator.index(seed)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if size < 8:
            raise ValueError(f"size must be >= 8, got {size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i) -> dict:
        i = operator.index(i)
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} examples")
        i %= self.n
        image, mask = make_scene(np.random.default_rng([self.seed, i]), self.size)
        return {"image": image, "mask": mask, "name": f"synthetic_{i:06d}"}

    def __repr__(self) -> str:
        return f"SyntheticSource(n={self.n}, size={self.size}, seed={self.seed})"
