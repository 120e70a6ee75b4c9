"""`python -m robustness.certify`: certified robustness of saliency maps by randomized smoothing (SegCertify).

    python -m robustness.certify --data-dir ../shared/data/ECSSD --limit 20 --output certify/menet
    python -m robustness.certify --predictor benchmarks.u2netp_peer:predict --input-size 160 \\
        --data-dir ../shared/data/ECSSD --limit 20 --output certify/u2netp

SegCertify (Fischer, Baader, Vechev, ICML 2021) per image: the base classifier is the saliency map thresholded at
--threshold (salient if map >= threshold); the smoothed classifier gives each pixel the class that the base
classifier gives most often under Gaussian noise N(0, sigma^2 I) added to the whole image. n0 noisy samples guess
each pixel's class (the majority of the n0 base predictions; a tie guesses salient), n further samples count how
often the guess comes out (n_A of n). Each pixel's one-sided binomial test of "p_A <= 1/2" (p-value
P(Bin(n, 1/2) >= n_A)) is corrected for the pixels' multiplicity with Holm's step-down procedure at family-wise
level alpha (the paper's FWER control): the pixels whose tests Holm rejects are certified, the others ABSTAIN
(class -1). A certified pixel's radius is R = sigma * Phi^-1(p_lower), with p_lower the one-sided Clopper-Pearson
lower bound of p_A at the pixel's Holm level alpha / (m - k + 1) (k its rank among the m pixels' sorted p-values;
tied p-values all take the group's first, smallest level, and the bounds are then lowered where needed to be
non-decreasing in the count, so that equal evidence gives equal radii and more evidence never a smaller one; both
only lower bounds): the smoothed classifier keeps that pixel's class for every perturbation of the image with L2
norm below R. Radii are
L2 norms of a perturbation of the whole image on the 0..255 scale of the model's input (R / 255 in [0, 1] units).

A note on the radius: the paper certifies one radius per run (sigma * Phi^-1(tau), a fixed tau > 1/2 tested per
pixel); the per-pixel radius from the Holm-adjusted level gives certified accuracy against radius from one run.
Holm's guarantee covers the decision to certify; bounds at step-down levels are not a textbook simultaneous
confidence statement. `--correction bonferroni` bounds every pixel at level alpha / m instead, which is
simultaneous by the union bound (radii a little smaller, certification a little rarer).

The maps: MEnet (--checkpoint, or the shipped weights; --config PRESET for a fresh network) in float32, --map ce
(default) the salient probability (the raw CE map), --map metric the Eq. 5 map min-max normalised per image, the
form menet_jax.evaluate and robustness.evaluate's normalised scores threshold (the raw metric map, distance / 2,
rarely reaches 0.5). The noise is added to the float image at the network's input size (no clipping: the network
takes any float). A --predictor MODULE:FUNCTION (uint8 (H, W, 3) images -> maps in [0, 1], any size, as
robustness.evaluate's) gets each image resized to --input-size first (required; robustness.evaluate's --noise-at
input convention): the noise goes on that square image, which is then clipped to 0..255 and rounded to uint8 (the
predictor's interface; the rounding is part of the base classifier, so the certificate still holds), and its maps
are resized back to --input-size. Ground truth: the mask at the same size (bilinear, >= 128).

Per image and per dataset: certified pixel accuracy against radius r (the share of pixels certified, correct
against the mask and with radius >= r), the abstain rate, the smoothed accuracy (the n0 guess, not certified),
certified F-beta (beta^2 = 0.3) and MAE of the certified binary map with every abstained pixel counted as wrong
(replaced by the wrong class). Dataset values are means over images with Student-t 95 % intervals over images
(the spread of the images, not of the noise). Noise: `jax.random` keys folded from (--seed, image index, sample
index), so the results depend neither on --batch-size nor on the order of the batches. Forward passes only.

Writes DIR/certify.json (settings, per-dataset summary, per-image rows), DIR/table.md and DIR/certify.png
(certified accuracy against radius, interval band).

The library takes the model as `f(params, images)` (robustness.model): `certify_image(f, params, x, key) ->
CertifiedMap` and `certify_dataset(f, params, source, size=...) -> CertifyResult` (both `to_json()`);
`network_maps(config, map)` is MEnet's f (its variables the params), `predictor_maps(predict, size)` (from
robustness.model) a black box's (params None).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure  # no pyplot: a notebook's backend is left alone
from scipy.stats import beta as beta_dist
from scipy.stats import binom, norm
from tqdm.auto import tqdm

import menet_datasets
from menet_datasets.cli import add_source_arguments, sources_from_args
from menet_jax import api
from menet_jax.api import ConfigError
from robustness.evaluate import interval95, load_predictor
from robustness.model import check_maps, predictor_maps  # predictor_maps: the black-box model, re-exported

BETA2 = 0.3
DEFAULTS = dict(sigma=64.0, n0=16, n=96, alpha=0.001, threshold=0.5, batch_size=16)
# The radius grid in units of sigma: 1.5 sigma is about the largest radius n = 96 samples can certify.
RADIUS_GRID = tuple(np.round(np.linspace(0.0, 1.5, 13), 4))


# ------------------------------------------------------------------------------------------------ statistics
def clopper_pearson_lower(successes, trials: int, level):
    """One-sided Clopper-Pearson lower confidence bound of a binomial proportion at `level` (the error
    probability): the Beta(level; k, n - k + 1) quantile, 0 where k = 0. Elementwise."""
    k = np.asarray(successes, np.float64)
    level = np.broadcast_to(np.asarray(level, np.float64), k.shape)
    out = np.zeros(k.shape)
    some = k > 0
    out[some] = beta_dist.ppf(level[some], k[some], trials - k[some] + 1)
    return out


def binomial_pvalues(successes, trials: int):
    """p-values of the one-sided exact test of "p <= 1/2" against "p > 1/2": P(Bin(n, 1/2) >= k)."""
    return binom.sf(np.asarray(successes) - 1, trials, 0.5)


def holm(pvalues, alpha: float):
    """Holm's step-down procedure: (rejected, levels). Sorted ascending, the k-th p-value (k = 1..m) is compared
    with alpha / (m - k + 1); every hypothesis before the first that fails is rejected. `levels` is each
    hypothesis's own Holm level alpha / (m - rank + 1) (ties keep their order: a stable sort)."""
    p = np.asarray(pvalues, np.float64).ravel()
    m = p.size
    order = np.argsort(p, kind="stable")
    thresholds = alpha / (m - np.arange(m))
    passed = p[order] <= thresholds
    stop = m if passed.all() else int(np.argmin(passed))
    rejected = np.zeros(m, bool)
    rejected[order[:stop]] = True
    levels = np.empty(m)
    levels[order] = thresholds
    shape = np.shape(pvalues)
    return rejected.reshape(shape), levels.reshape(shape)


def tied_levels(pvalues, alpha: float):
    """Holm's levels for the bounds, every group of tied p-values given its first (smallest) level: Holm's own
    levels depend on where a stable sort puts ties, so pixels with the same count would get different radii."""
    p = np.asarray(pvalues, np.float64).ravel()
    ordered = np.sort(p)
    first_rank = np.searchsorted(ordered, p, side="left")
    return (alpha / (p.size - first_rank)).reshape(np.shape(pvalues))


def monotone_in_counts(p_lower, counts):
    """The bounds lowered where needed so that more agreeing samples never give a smaller bound: a later Holm rank
    has a larger level, and a pixel of n - 1 agreeing samples near the end of the order could otherwise get a larger
    radius than the unanimous ones (it only lowers bounds, so it keeps any guarantee)."""
    flat = np.asarray(p_lower, np.float64).ravel()
    order = np.argsort(-np.asarray(counts).ravel(), kind="stable")
    out = np.empty_like(flat)
    out[order] = np.minimum.accumulate(flat[order])
    return out.reshape(np.shape(p_lower))


# --------------------------------------------------------------------------------------------- certification
@dataclasses.dataclass
class CertifiedMap:
    """One image's certificate: `classes` (H, W) int8, 1 salient, 0 background, -1 abstain; `p_lower` (H, W) the
    Clopper-Pearson lower bound of the guessed class's probability (0 where abstained); `radius` (H, W) the
    certified L2 radius on the 0..255 scale (0 where abstained); `guess` the n0 samples' majority class;
    `counts` how often of n the guessed class came out."""

    classes: np.ndarray
    p_lower: np.ndarray
    radius: np.ndarray
    guess: np.ndarray
    counts: np.ndarray

    @property
    def certified(self) -> np.ndarray:
        return self.classes >= 0

    def to_json(self) -> dict:
        """The per-pixel arrays as nested lists (classes, guess and counts integers)."""
        return {
            "classes": np.asarray(self.classes).astype(int).tolist(),
            "p_lower": np.asarray(self.p_lower, np.float64).tolist(),
            "radius": np.asarray(self.radius, np.float64).tolist(),
            "guess": np.asarray(self.guess).astype(int).tolist(),
            "counts": np.asarray(self.counts).astype(int).tolist(),
        }


# Sample j's noise comes from fold_in(key, j): a sample does not depend on the batch it is drawn in.
_noise = jax.jit(
    lambda key, start, shape, batch: jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(
        jax.vmap(lambda j: jax.random.fold_in(key, j))(start + jnp.arange(batch))
    ),
    static_argnames=("shape", "batch"),
)


def sample_counts(f, params, x, key, *, sigma, count, start, threshold, batch_size):
    """How often each pixel is salient (f(params, .) >= threshold) in samples start .. start + count - 1 of
    x + sigma * noise. Batches are always `batch_size` images (the last one padded, the padding not counted): f
    compiles once."""
    x = jnp.asarray(x, jnp.float32)
    salient = np.zeros(x.shape[:2], np.int64)
    for first in range(start, start + count, batch_size):
        noisy = x[None] + sigma * _noise(key, first, shape=tuple(x.shape), batch=batch_size)
        maps = np.asarray(f(params, noisy))
        check_maps(maps.shape, noisy.shape)
        valid = min(batch_size, start + count - first)
        salient += np.sum(maps[:valid] >= threshold, axis=0)
    return salient


def certify_image(
    f,
    params,
    x,
    key,
    *,
    sigma=DEFAULTS["sigma"],
    n0=DEFAULTS["n0"],
    n=DEFAULTS["n"],
    alpha=DEFAULTS["alpha"],
    threshold=DEFAULTS["threshold"],
    batch_size=DEFAULTS["batch_size"],
    correction="holm",
) -> CertifiedMap:
    """SegCertify of one image x (H, W, C) on the 0..255 scale for the model `f(params, images (B, H, W, C)) -> maps
    (B, H, W) in [0, 1]` (B = batch_size always; `f` should be jitted, as `network_maps`'s is). Samples 0 .. n0 - 1
    guess the classes, samples n0 .. n0 + n - 1 count them (one key, disjoint sample indices: independent). Holm
    (or Bonferroni) at family-wise level alpha over the pixels."""
    check_settings(sigma=sigma, n0=n0, n=n, alpha=alpha, threshold=threshold, batch_size=batch_size)
    if correction not in ("holm", "bonferroni"):
        raise ConfigError(f"correction must be holm or bonferroni, got {correction!r}")
    common = dict(sigma=sigma, threshold=threshold, batch_size=batch_size)
    guess = (2 * sample_counts(f, params, x, key, count=n0, start=0, **common) >= n0).astype(np.int8)
    salient = sample_counts(f, params, x, key, count=n, start=n0, **common)
    counts = np.where(guess == 1, salient, n - salient)
    pvalues = binomial_pvalues(counts, n)
    if correction == "holm":
        certified, _ = holm(pvalues, alpha)
        levels = tied_levels(pvalues, alpha)
    else:
        levels = np.full(pvalues.shape, alpha / pvalues.size)
        certified = pvalues <= levels
    p_lower = monotone_in_counts(np.where(certified, clopper_pearson_lower(counts, n, levels), 0.0), counts)
    # p_lower >= 1/2 wherever the test rejected (the Clopper-Pearson bound and the exact test are dual); the clip
    # only keeps Phi^-1's rounding at exactly 1/2 from going below 0.
    radius = np.where(certified, np.maximum(sigma * norm.ppf(np.maximum(p_lower, 0.5)), 0.0), 0.0)
    classes = np.where(certified, guess, -1).astype(np.int8)
    return CertifiedMap(classes=classes, p_lower=p_lower, radius=radius, guess=guess, counts=counts)


def image_key(seed: int, index: int):
    """The noise key of image `index` (its position in the source): the same for any batch size or --limit."""
    return jax.random.fold_in(jax.random.key(seed), index)


def score_certificate(cert: CertifiedMap, mask, radii) -> dict:
    """One image's scores against its {0, 1} mask at the same size (see the module docstring)."""
    gt = np.asarray(mask).astype(bool)
    correct = cert.certified & (cert.classes == gt)
    accuracy = [float(np.mean(correct & (cert.radius >= r))) for r in radii]
    # Abstained pixels counted as wrong: replaced by the class the mask does not have.
    worst = np.where(cert.certified, cert.classes == 1, ~gt)
    tp = float(np.sum(worst & gt))
    precision = tp / max(float(np.sum(worst)), 1.0)
    recall = tp / max(float(np.sum(gt)), 1.0)
    f = (1 + BETA2) * precision * recall / (BETA2 * precision + recall) if tp > 0 else 0.0
    radius = cert.radius[cert.certified]
    return {
        "certified_accuracy": accuracy,
        "abstain_rate": float(np.mean(~cert.certified)),
        "smoothed_accuracy": float(np.mean(cert.guess == gt)),
        "certified_fbeta": float(f),
        "certified_mae": float(np.mean(worst != gt)),
        "median_radius": float(np.median(radius)) if radius.size else 0.0,
    }


SCALARS = ("abstain_rate", "smoothed_accuracy", "certified_fbeta", "certified_mae", "median_radius")


@dataclasses.dataclass
class CertifyResult:
    """One dataset's certification: the radius grid, per-image rows and their means with 95 % intervals."""

    radii: list
    images: list
    settings: dict

    def summary(self) -> dict:
        acc = np.array([row["certified_accuracy"] for row in self.images], np.float64).reshape(-1, len(self.radii))
        out = {
            "images": len(self.images),
            "certified_accuracy": acc.mean(0).tolist(),
            "certified_accuracy_interval": [interval95(acc[:, j]) for j in range(len(self.radii))],
        }
        for key in SCALARS:
            values = [row[key] for row in self.images]
            out[key] = float(np.mean(values))
            out[f"{key}_interval"] = interval95(values)
        return out

    def to_json(self) -> dict:
        return {"settings": self.settings, "radii": self.radii, "summary": self.summary(), "images": self.images}


def certify_dataset(
    f,
    params,
    source,
    *,
    size: int,
    prepare=None,
    seed=0,
    radii=None,
    progress=True,
    desc="",
    **settings,
) -> CertifyResult:
    """SegCertify of the model f(params, .) on every image of `source` at the square input `size` (image and mask
    resized with `menet_datasets.resize_pair`; `prepare(uint8 image) -> float image` otherwise the identity). Image
    i's noise key is `image_key(seed, i)`. `settings`: certify_image's keywords. `radii` default: RADIUS_GRID x
    sigma."""
    sigma = settings.get("sigma", DEFAULTS["sigma"])
    radii = [float(r) for r in (radii if radii is not None else np.asarray(RADIUS_GRID) * sigma)]
    rows = []
    for i in tqdm(range(len(source)), desc=desc or "certify", unit="img", disable=not progress):
        example = source[i]
        image, mask = menet_datasets.resize_pair(example["image"], example["mask"], size)
        x = np.asarray(image if prepare is None else prepare(image), np.float32)
        cert = certify_image(f, params, x, image_key(seed, i), **settings)
        rows.append({"name": example["name"], "index": i, **score_certificate(cert, mask, radii)})
    return CertifyResult(radii=radii, images=rows, settings={"seed": seed, "size": size, **DEFAULTS, **settings})


# ----------------------------------------------------------------------------------------------- the models
def network_maps(config, map_name: str):
    """MEnet as the model f(variables, images 0..255 (B, S, S, 3)) -> (B, S, S) maps in [0, 1]: `api.network_function`
    jitted (the variables traced: one compilation for any weights); "ce" the salient probability, "metric" the
    min-max normalised Eq. 5 map (the evaluated form)."""
    if map_name not in ("ce", "metric"):
        raise ConfigError(f"--map must be ce or metric, got {map_name!r}")
    network = api.network_function(config, output="salient_prob" if map_name == "ce" else "metric", normalize=True)
    return jax.jit(network, compiler_options=api.compiler_options())


# ---------------------------------------------------------------------------------------------------- output
def format_table(name, result: CertifyResult, label: str, every: int = 2) -> str:
    s = result.summary()

    def cell(value, interval, digits=3):
        if interval is None:
            return f"{value:.{digits}f}"
        return f"{value:.{digits}f} ± {(interval[1] - interval[0]) / 2:.{digits}f}"

    picked = list(range(0, len(result.radii), every))
    lines = [
        f"| {name}: {label}, {s['images']} images | " + " | ".join(f"r = {result.radii[j]:g}" for j in picked) + " |",
        "|---|" + "---:|" * len(picked),
        "| certified accuracy | "
        + " | ".join(cell(s["certified_accuracy"][j], s["certified_accuracy_interval"][j]) for j in picked)
        + " |",
        "",
        "| abstain rate | smoothed accuracy | certified F-beta | certified MAE | median radius (certified) |",
        "|---:|---:|---:|---:|---:|",
        "| " + " | ".join(cell(s[k], s[f"{k}_interval"], 1 if k == "median_radius" else 3) for k in SCALARS) + " |",
    ]
    return "\n".join(lines)


def plot_certified(results: dict, output: Path, label: str) -> None:
    """Certified pixel accuracy against the radius per dataset, the 95 % interval over images as a band."""
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    for name, result in results.items():
        s = result.summary()
        (line,) = ax.plot(result.radii, s["certified_accuracy"], "-o", ms=3, label=f"{name} ({s['images']} images)")
        ci = [c or (v, v) for c, v in zip(s["certified_accuracy_interval"], s["certified_accuracy"])]
        ax.fill_between(result.radii, [c[0] for c in ci], [c[1] for c in ci], color=line.get_color(), alpha=0.2)
    ax.set(xlabel="L2 radius (0..255 scale, whole image)", ylabel="certified pixel accuracy", ylim=(0, 1))
    ax.set_title(label, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    api.save_figure(fig, output)


# ------------------------------------------------------------------------------------------------------- CLI
def check_settings(*, sigma, n0, n, alpha, threshold, batch_size) -> None:
    """One-line ConfigErrors for settings the procedure cannot use (named as the CLI's flags)."""
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"--sigma must be finite and > 0, got {sigma}")
    for flag, value in (("--n0", n0), ("--n", n), ("--batch-size", batch_size)):
        if not (isinstance(value, (int, np.integer)) and value >= 1):
            raise ConfigError(f"{flag} must be an integer >= 1, got {value}")
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {alpha}")
    if not 0 < threshold < 1:
        raise ConfigError(f"--threshold must be in (0, 1), got {threshold}")


def parse_args(argv=None):
    parser = api.ArgumentParser(
        prog="python -m robustness.certify",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    api.add_checkpoint_argument(parser, float32=True, preset=True)
    parser.add_argument("--predictor", help="MODULE:FUNCTION, uint8 images -> maps (see above); needs --input-size")
    parser.add_argument("--input-size", type=int, help="with --predictor: the square size the noise is added at")
    parser.add_argument("--map", choices=("ce", "metric"), default="ce", help="MEnet's map certified (default ce)")
    parser.add_argument("--sigma", type=float, default=DEFAULTS["sigma"], help="noise std, 0..255 scale (64)")
    parser.add_argument("--n0", type=int, default=DEFAULTS["n0"], help="samples guessing the classes (16)")
    parser.add_argument("--n", type=int, default=DEFAULTS["n"], help="samples counting them (96)")
    parser.add_argument("--alpha", type=float, default=DEFAULTS["alpha"], help="family-wise error per image (0.001)")
    parser.add_argument("--threshold", type=float, default=DEFAULTS["threshold"], help="map >= it is salient (0.5)")
    parser.add_argument(
        "--correction",
        choices=("holm", "bonferroni"),
        default="holm",
        help="multiplicity correction over the pixels (default holm, as the paper)",
    )
    parser.add_argument("--radii", type=float, nargs="+", help="radii of the accuracy curve (default 0 .. 1.5 sigma)")
    parser.add_argument("--output", type=Path, default=Path("certify"))
    parser.add_argument("--limit", type=int, help="first N images of each source")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="noisy samples per forward")
    parser.add_argument("--no-progress", action="store_true")
    add_source_arguments(parser)
    return parser.parse_args(argv)


@api.command
def main(argv=None) -> int:
    args = parse_args(argv)
    api.check_minimums(args, limit=1, input_size=1)
    check_settings(
        sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, threshold=args.threshold, batch_size=args.batch_size
    )
    if args.radii is not None and not all(0 <= r < np.inf for r in args.radii):
        raise ConfigError(f"--radii must be finite and >= 0, got {' '.join(map(str, args.radii))}")
    if args.predictor is not None and (args.checkpoint is not None or args.config is not None):
        raise ConfigError("--predictor is a model of its own: give it without --checkpoint / --config")
    if args.predictor is not None and args.input_size is None:
        raise ConfigError("--predictor needs --input-size, the square size the noise is added at")
    if args.predictor is None and args.input_size is not None:
        raise ConfigError("--input-size is for --predictor (a network certifies at its own input size)")
    api.check_folder(args.output)  # before the work, not after it
    sources = sources_from_args(args)
    if args.predictor is None:
        params, config = api.load_network(args.checkpoint, preset=args.config, seed=args.seed, dtype="float32")
        f, size = network_maps(config, args.map), config.image_size
        model = f"MEnet {args.config} (fresh)" if args.config else str(args.checkpoint or "MEnet (shipped weights)")
        label = f"{model}, {args.map} map"
    else:
        size = args.input_size
        f, params, model = predictor_maps(load_predictor(args.predictor), size), None, args.predictor
        label = model
    settings = dict(
        sigma=args.sigma,
        n0=args.n0,
        n=args.n,
        alpha=args.alpha,
        threshold=args.threshold,
        batch_size=args.batch_size,
        correction=args.correction,
    )
    results = {}
    for name, source in sources:
        if args.limit is not None:
            source = menet_datasets.Subset(source, list(range(min(args.limit, len(source)))))
        results[name] = certify_dataset(
            f,
            params,
            source,
            size=size,
            seed=args.seed,
            radii=args.radii,
            progress=not args.no_progress,
            desc=name,
            **settings,
        )
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    label = f"{label}, sigma {args.sigma:g}, n0 {args.n0}, n {args.n}, alpha {args.alpha:g}, {args.correction}"
    tables = "\n\n".join(format_table(name, r, label) for name, r in results.items())
    report = {
        "model": model,
        "map": args.map if args.predictor is None else None,
        "input_size": size,
        "noise": "N(0, sigma^2) on the 0..255 input at input_size"
        + (" (network input, float, not clipped)" if args.predictor is None else ", then clipped and rounded"),
        "radius_unit": "L2 norm of a whole-image perturbation, 0..255 scale",
        "abstain_counts_as_wrong": True,
        "interval": "Student-t 95 % over images",
        "datasets": {name: r.to_json() for name, r in results.items()},
    }
    api.write_text(out / "certify.json", json.dumps(report, indent=2) + "\n")
    api.write_text(out / "table.md", tables + "\n")
    plot_certified(results, out / "certify.png", label)
    print(tables)
    print("results: " + ", ".join(str(out / n) for n in ("certify.json", "table.md", "certify.png")))
    return 0


if __name__ == "__main__":
    api.start(main, reuse_memory=True)
