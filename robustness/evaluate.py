"""`python -m robustness.evaluate`: saliency quality under AWGN, JPEG, ImageNet-C corruptions or PGD attacks.

AWGN and JPEG give the paper's Table II and Fig. 9.

    python -m robustness.evaluate --checkpoint runs/duts --data-dir ../shared/data/ECSSD --distortion awgn
    python -m robustness.evaluate --predictor mypkg.models:predict --data-dir DIR --distortion jpeg --levels 90 50 10
    python -m robustness.evaluate --checkpoint runs/duts --data-dir DIR --distortion imagenet-c \\
        --corruptions noise,fog --levels 1 3 5 --reference eval/other_model/robustness.json
    python -m robustness.evaluate --checkpoint runs/duts --data-dir DIR --distortion pgd-linf --levels 0 1 2 4 8

Every image is distorted with its own seeded generator (robustness.distortions), given to the model, and the maps
are scored against the untouched ground truth with the project's metrics (maps resized to the GT size and scored
as 8-bit images, as saved maps are; adaptive F-beta, max F-beta, MAE), both raw (the maps as the model gives
them: for MEnet the CE probability and the Eq. 5 distance / 2, its largest value) and after the field's per-image
min-max normalisation ("normalised"; it stretches a flat, noise-damaged map and hides part of the damage).

Where the noise goes (--noise-at): "original" distorts each image at its own size, as the paper corrupts the
benchmark datasets, so the paper's Table II and Fig. 9 compare with this protocol; the model then shrinks the image
to its input size, which averages pixel noise away (a 400 x 300 image at 128 px keeps about 1/7 of the noise
variance). "input" resizes the image to the model's square input size first and distorts that, so every model
sees the stated noise at its own resolution.

Seeds (--seeds, default 3): every level that draws random numbers (AWGN, "random") runs once per seed; the
tables and curves give the mean over seeds. Levels without randomness (variance 0, a fixed JPEG quality) run once.
Every image's adaptive F-beta and MAE are kept (per seed), and their 95 % intervals are paired percentile bootstrap
intervals over the images and the seeds (robustness.bootstrap): with 100 images the image sample, not the noise,
is the main uncertainty. max F-beta is the maximum of the dataset's mean F curve, with no per-image value: its
interval is the Student-t one over the seeds (None with one seed).

Levels: AWGN noise variance on the 0..255 scale (default: 0 and the five ImageNet-C severities, variances 416 ..
9390), JPEG quality (default: the ImageNet-C qualities 25 18 15 10 7, and the clean images); "random" is the
Table II protocol, one random strength per image (ranges in robustness.distortions).

--predictor MODULE:FUNCTION scores any model the same way: FUNCTION(list of uint8 (H, W, 3) images) returns one
map per image (float (H, W) in [0, 1], any size) or one {map name: map} dict per image.

Writes DIR/robustness.json (means, intervals, every seed's and every image's scores; the image names once per
dataset in "images": {dataset: [names]}, beside "datasets"; "timing": the wall time and each stage's busy
seconds), DIR/table.md (Table II layout: F-beta [95 % interval], the share of the first level's F-beta kept
[interval], MAE [interval]), and the Fig. 9 curves DIR/curves.png (F-beta and MAE against the level, normalised
and raw, error bars).

ImageNet-C (--distortion imagenet-c, robustness.corruptions): the 15 corruptions (--corruptions a,b or families
noise, blur, weather, digital) at severities --levels (default 1..5) with the published parameters, each image at
--noise-at's size with its own generator (the same one for every corruption and severity); random corruptions
run once per seed. Frost uses a seeded procedural texture, not ImageNet-C's photos. Writes table.md (adaptive
F-beta and MAE per corruption and severity, their means over severities, the clean scores), robustness.json and
curves.png (F-beta against severity per family). --reference PATH (a previous imagenet-c robustness.json of
another model) adds CE = sum_s (1 - F_s) / the reference's sum and mCE, their mean; without it there is no CE.

PGD (--distortion pgd-linf | pgd-l2, robustness.attacks; --checkpoint only, a --predictor has no gradients):
projected gradient ascent of the per-image binary cross entropy (--pgd-loss mae: MAE) of the attacked map (--map:
ce, the salient probability, default; metric, the normalised Eq. 5 map; both: each attacked on its own) against
the ground truth, in the network's input space (image and mask resized to its input size; the perturbed image
is a float, not re-quantised), clipped to 0..255. Budgets --levels in /255 units (pixel levels; default L-inf 0 1
2 4 8, L2 0 32 64 128 255), --pgd-steps (10), --pgd-step-size (a multiple of the budget, default 2.5 / steps),
--random-start. The table adds the attacked loss at each budget.

APGD (--distortion apgd-linf | apgd-l2, `attacks.apgd`): the same loss, maps, budgets and attack space, with
APGD's own step-size schedule and momentum, --pgd-steps iterations (default 100) from --restarts uniform random
starts (default 3), keeping per image the point of largest loss; each seed draws other starts. Stronger than
10-step PGD, whose kept shares are upper bounds. Its convergence record, the mean F-beta of each image's best
point after 0, 1, 2, 5, 10, 20, 50, 100 ... iterations of every restart, is in robustness.json
("fbeta_per_iteration") and convergence.png: a curve still falling at the end says the attack has not saturated.

Robustness commands run in float32 (the checkpoint's compute dtype is not changed here).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure  # no pyplot: a notebook's backend is left alone
from scipy.stats import t as student_t
from tqdm.auto import tqdm

import menet_datasets
from menet_datasets.cli import add_source_arguments, sources_from_args
from menet_jax import api
from menet_jax.api import ConfigError
from robustness import attacks, bootstrap, corruptions, distortions, model

KEYS = ("adp_f", "max_f", "mae")
CURVE_KEYS = ("precision", "recall")  # the dataset's PR curve over the 256 thresholds (the paper's Fig. 7)
PER_IMAGE_KEYS = ("adp_f", "mae")  # means of per-image values; max_f is the maximum of the dataset's mean F curve
# Busy seconds of each stage of the pipelined loop: reading and preparing the images, distorting them, the model,
# scoring the maps.
TIMING_KEYS = ("read_s", "distort_s", "predict_s", "score_s")
INTERVALS = (
    f"adp_f, mae and kept shares: {bootstrap.METHOD}; max_f (a dataset curve statistic, no per-image value): "
    "Student-t over the seeds, None with one seed"
)
TABLE_NOTE = (
    "In brackets, 95 % intervals: percentile bootstrap over the images (paired between levels) and the noise "
    "seeds; kept = % of the first level's F-beta."
)
ATTACKS = {f"{method}-{norm}": norm for method in ("pgd", "apgd", "square") for norm in ("linf", "l2")}  # kind -> norm
KINDS = (*distortions.KINDS, "imagenet-c", *ATTACKS)
UNITS = {"awgn": "variance", "jpeg": "quality"} | {
    kind: ("L-inf" if norm == "linf" else "L2") + " budget (/255)" for kind, norm in ATTACKS.items()
}
DEFAULT_STEPS = {"pgd": 10, "apgd": 100}
SQUARE_QUERIES = 1000
ENSEMBLE = ("bce", "cospgd")  # --pgd-loss ensemble: each attack with each loss, per image the worst


def load_predictor(spec: str):
    """MODULE:FUNCTION -> the callable (one-line ConfigError when it cannot be found)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--predictor must be MODULE:FUNCTION, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"--predictor {spec}: cannot import {module_name} ({error})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--predictor {spec}: {module_name} has no callable {attr!r}")
    return fn


def as_map_dicts(outputs, count):
    """A predictor's result as one {name: map} per image ("map" when it returns bare arrays)."""
    outputs = list(outputs)
    if len(outputs) != count:
        raise ConfigError(f"the predictor returned {len(outputs)} maps for {count} images")
    return [o if isinstance(o, dict) else {"map": np.asarray(o, np.float32)} for o in outputs]


def interval95(values) -> list | None:
    """Student-t 95 % confidence interval of the mean of `values` (None for a single value)."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return None
    half = student_t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return [float(values.mean() - half), float(values.mean() + half)]


def _as_scored(example, m):
    """One image's map as the protocol scores it: {"raw", "normalised" (min-max)} 8-bit maps at the mask's size."""
    h, w = example["mask"].shape
    m = np.clip(np.asarray(m, np.float32), 0.0, 1.0)
    return {mode: api.to_8bit(api.resize_to(v, h, w)) for mode, v in (("raw", m), ("normalised", api.scale_to_unit(m)))}


def _adaptive_f(example, m) -> float:
    """One image's adaptive F-beta of its normalised map, as `_score_maps` scores it."""
    scored = _as_scored(example, m)["normalised"]
    return float(api.SODMetrics(normalize=False, structure=False).step(scored, example["mask"])["adp_f"])


def _score_maps(meters, examples, maps):
    """Adds a batch of images' maps (`maps`: one {name: map} per example) to the meters: resized to the GT size,
    8-bit, raw and min-max normalised, scored in one batch per map and mode. A meter is (api.SODMetrics, {key: the
    per-image values so far})."""
    scored = [{name: _as_scored(example, m) for name, m in by_name.items()} for example, by_name in zip(examples, maps)]
    masks = [example["mask"] for example in examples]
    for name in maps[0] if maps else ():
        for mode in ("raw", "normalised"):
            meter, images = meters.setdefault(mode, {}).setdefault(
                name, (api.SODMetrics(normalize=False, structure=False), {k: [] for k in PER_IMAGE_KEYS})
            )
            for scores in meter.step_batch([s[name][mode] for s in scored], masks):
                for k in PER_IMAGE_KEYS:
                    images[k].append(float(scores[k]))


def _add_seed(per_seed, per_image, meters):
    for mode, by_map in meters.items():
        for name, (meter, images) in by_map.items():
            scores = meter.results()
            for k in KEYS:
                per_seed.setdefault(mode, {}).setdefault(name, {}).setdefault(k, []).append(float(scores[k]))
            for k in CURVE_KEYS:
                per_seed[mode][name].setdefault(k, []).append(np.asarray(scores[k], np.float64))
            for k in PER_IMAGE_KEYS:
                per_image.setdefault(mode, {}).setdefault(name, {}).setdefault(k, []).append(images[k])


def _level_interval(key, seeds, images):
    """adp_f, mae: the bootstrap interval over images and seeds; max_f (a curve statistic with no per-image
    value): the Student-t interval over seeds, None with one seed."""
    if key in PER_IMAGE_KEYS:
        return bootstrap.mean_interval(images[key]).bounds
    return interval95(seeds)


def _summarise(per_seed, per_image, level_seeds, used) -> dict:
    """Mean over seeds, the 95 % intervals, every seed's scores, the per-image scores (rounded to 6 decimals; the
    intervals are computed from these rounded values, so robustness.json reproduces them) and the strengths used,
    for one level."""
    per_image = {
        mode: {name: {k: np.round(v, 6).tolist() for k, v in by_key.items()} for name, by_key in by_map.items()}
        for mode, by_map in per_image.items()
    }
    curves = {  # taken out of per_seed, whose entries are one number per seed
        mode: {
            name: {k: np.round(np.mean(by_key.pop(k), 0), 6).tolist() for k in CURVE_KEYS}
            for name, by_key in by_map.items()
        }
        for mode, by_map in per_seed.items()
    }
    r = {
        mode: {name: {k: float(np.mean(v)) for k, v in by_key.items()} for name, by_key in by_map.items()}
        for mode, by_map in per_seed.items()
    }
    r["interval"] = {
        mode: {
            name: {k: _level_interval(k, v, per_image[mode][name]) for k, v in by_key.items()}
            for name, by_key in by_map.items()
        }
        for mode, by_map in per_seed.items()
    }
    r["per_seed"], r["per_image"], r["pr_curve"], r["seeds"] = per_seed, per_image, curves, level_seeds
    r["levels_used"] = {"mean": float(np.mean(used)), "min": float(np.min(used)), "max": float(np.max(used))}
    return r


def _evaluate_levels(
    source,
    predict,
    levels,
    distort_batch,
    is_random,
    *,
    seeds,
    prepare,
    batch_size,
    progress,
    desc,
    label,
    timing=None,
    cache=None,
):
    """The protocol's loop for any distortion: `distort_batch(images, level, seed, indices, names)` ->
    (images, strengths), `is_random(level)` says whether the level needs every seed.

    Pipelined on threads: while `predict` runs on one batch, the next is read and distorted and the previous one
    scored (numpy, OpenCV and XLA release the GIL); one worker each, so the meters see the batches in order.
    `timing` (a dict) accumulates each stage's busy seconds (TIMING_KEYS; they overlap, so their sum exceeds the
    wall time). Each example is read and prepared once and kept in `cache` (a dict, index -> (example, prepared
    image); pass the same one to several calls on one source), so the levels do not decode the images again."""

    timing = {} if timing is None else timing
    for key in TIMING_KEYS:
        timing.setdefault(key, 0.0)

    def timed(key, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        timing[key] += time.perf_counter() - start  # one thread per key: no race
        return out

    cache = {} if cache is None else cache

    def read(indices):
        for i in indices:
            if i not in cache:
                e = source[i]  # kept without its original image: the prepared one is what the levels use
                image = np.asarray(prepare(e["image"]))
                image.setflags(write=False)  # shared by every level: a distortion must not write into it
                cache[i] = ({"name": e["name"], "mask": e["mask"]}, image)
        return [cache[i][0] for i in indices], [cache[i][1] for i in indices]

    def load(level, seed, indices):
        examples, clean = timed("read_s", read, indices)
        names = [e["name"] for e in examples]
        return examples, *timed("distort_s", distort_batch, clean, level, seed, indices, names)

    batches = [list(range(s, min(s + batch_size, len(source)))) for s in range(0, len(source), batch_size)]
    results = {}
    with ThreadPoolExecutor(1) as loader, ThreadPoolExecutor(1) as scorer:
        for level in levels:
            level_seeds = list(seeds) if is_random(level) else list(seeds)[:1]
            per_seed, per_image, used = {}, {}, []
            for seed in level_seeds:
                meters, scoring = {}, None
                desc_ = f"{desc} {label} {level} seed {seed}"
                bar = tqdm(total=len(source), desc=desc_, unit="img", disable=not progress)
                loading = loader.submit(load, level, seed, batches[0]) if batches else None
                for b in range(len(batches)):
                    examples, images, strengths = loading.result()
                    if b + 1 < len(batches):
                        loading = loader.submit(load, level, seed, batches[b + 1])
                    used += strengths
                    maps = as_map_dicts(timed("predict_s", predict, images), len(images))
                    if scoring is not None:
                        scoring.result()
                    scoring = scorer.submit(timed, "score_s", _score_maps, meters, examples, maps)
                    bar.update(len(examples))
                if scoring is not None:
                    scoring.result()
                bar.close()
                _add_seed(per_seed, per_image, meters)
            results[str(level)] = _summarise(per_seed, per_image, level_seeds, used)
    return results


def image_names(source) -> list[str]:
    """The names of `source`'s examples in index order, the order of every "per_image" list (without reading
    the images where the source knows its names)."""
    if isinstance(source, menet_datasets.Subset):
        names = image_names(source.source)
        return [names[i] for i in source.indices]
    names = getattr(source, "names", None)
    return list(names) if names is not None else [source[i]["name"] for i in range(len(source))]


def _preparation(noise_at, input_size):
    if noise_at not in ("original", "input"):
        raise ConfigError(f"noise_at must be original or input, got {noise_at!r}")
    if noise_at == "input" and not input_size:
        raise ConfigError("distorting at the input size needs the model's input size (--input-size)")
    return (
        (lambda image: image)
        if noise_at == "original"
        else (lambda image: distortions.to_input_size(image, input_size))
    )


def evaluate_distorted(
    source,
    predict,
    kind,
    levels,
    *,
    seeds=(0,),
    noise_at="original",
    input_size=None,
    batch_size=8,
    progress=True,
    desc="",
    timing=None,
):
    """Scores of `predict` on `source` at each level, as the mean over `seeds` with a 95 % interval.

    {level: {"normalised" | "raw": {map: {adp_f, max_f, mae}}, "interval": {mode: {map: {key: [lo, hi] | None}}},
    "per_seed": {mode: {map: {key: [one value per seed]}}}, "per_image": {mode: {map: {"adp_f" | "mae": [[one
    value per image, in `image_names(source)` order] per seed]}}}, "pr_curve": {mode: {map: {"precision",
    "recall": the dataset's curves over the 256 thresholds, mean over seeds}}}, "seeds": [...], "levels_used":
    {mean, min, max}}}. The per-image values are each image's adaptive F-beta and MAE (rounded to 6 decimals),
    whose mean is the dataset's; max_f has none (the maximum of the mean F curve over thresholds is not a mean
    over images). "interval": the paired bootstrap over images and seeds for adp_f and mae, the Student-t over seeds
    for max_f.
    Levels without randomness (no noise, a fixed JPEG quality) run once. `noise_at="input"` resizes every image
    to the square `input_size` before distorting it. "raw" scores the maps as `predict` returns them,
    "normalised" after a per-image min-max (the field's convention).
    """
    prepare = _preparation(noise_at, input_size)
    return _evaluate_levels(
        source,
        predict,
        levels,
        lambda images, level, seed, indices, names: distortions.distort_batch(
            images, kind, level, seed=seed, indices=indices, names=names
        ),
        lambda level: distortions.is_random(kind, level),
        seeds=seeds,
        prepare=prepare,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
        label=kind,
        timing=timing,
    )


# ------------------------------------------------------------------------------------------------ ImageNet-C
def evaluate_corruptions(
    source,
    predict,
    names,
    severities,
    *,
    seeds=(0,),
    noise_at="original",
    input_size=None,
    batch_size=8,
    progress=True,
    desc="",
    timing=None,
):
    """The ImageNet-C suite: {"clean": level result, corruption: {severity: level result}} (level results as
    `evaluate_distorted`'s). Image i uses `distortions.image_rng(seed, i, name)` for every corruption and
    severity (common random numbers); deterministic corruptions run once, random ones once per seed."""
    prepare = _preparation(noise_at, input_size)
    common = dict(seeds=seeds, prepare=prepare, batch_size=batch_size, progress=progress, desc=desc, timing=timing)
    common["cache"] = {}  # every corruption reads the same prepared images
    results = {
        "clean": _evaluate_levels(
            source,
            predict,
            ["clean"],
            lambda images, level, seed, indices, n: (images, [0.0] * len(images)),
            lambda level: False,
            label="imagenet-c",
            **common,
        )["clean"]
    }
    for name in names:

        def distort_batch(images, severity, seed, indices, image_names, name=name):
            out = [
                corruptions.corrupt(image, name, severity, distortions.image_rng(seed, index, image_name))
                for image, index, image_name in zip(images, indices, image_names)
            ]
            return out, [float(severity)] * len(out)

        results[name] = _evaluate_levels(
            source,
            predict,
            severities,
            distort_batch,
            lambda level, name=name: name in corruptions.RANDOM,
            label=name,
            **common,
        )
    return results


def _reference_map(ref_levels, mode, name):
    """The reference's map matching `name`: the same name, else its only map (a --predictor's "map")."""
    maps = ref_levels[mode]
    if name in maps:
        return name
    return next(iter(maps)) if len(maps) == 1 else None


def corruption_errors(results, reference, mode, name, reference_map=None):
    """CE_c = sum_s (1 - F_s,c) / sum_s (1 - F^ref_s,c) over the severities both evaluated (adaptive F-beta),
    and their mean (mCE); None where the reference lacks the corruption, a severity or a matching map. The
    reference's map: `reference_map`, else the one matching `name`."""
    errors = {}
    for corruption, levels in results.items():
        if corruption == "clean":
            continue
        ref = (reference or {}).get(corruption)
        if not ref or any(s not in ref for s in levels):
            errors[corruption] = None
            continue
        ref_name = reference_map or _reference_map(next(iter(ref.values())), mode, name)
        if ref_name is None:
            errors[corruption] = None
            continue
        ours = sum(1.0 - levels[s][mode][name]["adp_f"] for s in levels)
        theirs = sum(1.0 - ref[s][mode][ref_name]["adp_f"] for s in levels)
        errors[corruption] = ours / theirs if theirs > 0 else None
    known = [v for v in errors.values() if v is not None]
    errors["mCE"] = float(np.mean(known)) if known and len(known) == len(errors) else None
    return errors


def corruption_arrays(results, names, mode, name):
    """(the clean per-image scores, those of every severity of the corruptions `names` in order, weights making
    their weighted mean the mean over the corruptions of the mean over each one's severities)."""
    levels = [per_image_scores(results[c][s], mode, name) for c in names for s in results[c]]
    weights = [1.0 / len(results[c]) for c in names for _ in results[c]]
    return per_image_scores(results["clean"], mode, name), levels, weights


def corruption_kept_interval(results, names, mode, name) -> bootstrap.Interval:
    """The share (%) of the clean adaptive F-beta kept, averaged over the corruptions `names` of the mean over
    each one's severities, with its paired bootstrap interval (none for results without per-image scores)."""
    clean, levels, weights = corruption_arrays(results, names, mode, name)
    if clean is None or any(level is None for level in levels):
        base = results["clean"][mode][name]["adp_f"]
        kept = [np.mean([100.0 * results[c][s][mode][name]["adp_f"] / base for s in results[c]]) for c in names]
        return bootstrap.Interval(float(np.mean(kept)) if base else float("nan"))
    return bootstrap.mean_kept_interval(clean, levels, weights).scaled(100.0)


def format_corruption_table(dataset, results, mode, name, errors=None, reference_label=None) -> str:
    """One row per corruption: adaptive F-beta and MAE per severity and their mean over severities, the share of
    the clean F-beta kept on average over the severities [95 % interval], and CE."""
    corruptions_done = [c for c in results if c != "clean"]
    severities = list(results[corruptions_done[0]]) if corruptions_done else []
    with_ce = errors is not None
    head = (
        f"| {dataset} ({mode} maps, {name}) | family | "
        + " | ".join(f"F s{s}" for s in severities)
        + " | F mean | kept [95 %] | "
        + " | ".join(f"MAE s{s}" for s in severities)
        + " | MAE mean |"
        + (" CE |" if with_ce else "")
    )
    lines = [head, "|---|---|" + "---|" * (2 * len(severities) + 3) + ("---|" if with_ce else "")]
    clean = results["clean"][mode][name]
    blank = " | ".join("" for _ in severities)
    lines.append(
        f"| clean | | {blank} | {clean['adp_f']:.4f} | | {blank} | {clean['mae']:.4f} |" + (" |" if with_ce else "")
    )
    f_means, mae_means = [], []
    for c in corruptions_done:
        f = [results[c][s][mode][name]["adp_f"] for s in severities]
        mae = [results[c][s][mode][name]["mae"] for s in severities]
        f_means.append(np.mean(f))
        mae_means.append(np.mean(mae))
        ce = ""
        if with_ce:
            ce = " - |" if errors.get(c) is None else f" {errors[c]:.3f} |"
        lines.append(
            f"| {c} | {corruptions.FAMILY_OF[c]} | "
            + " | ".join(f"{v:.4f}" for v in f)
            + f" | {f_means[-1]:.4f} | {corruption_kept_interval(results, [c], mode, name).text('.1f', ' %')} | "
            + " | ".join(f"{v:.4f}" for v in mae)
            + f" | {mae_means[-1]:.4f} |"
            + ce
        )
    if corruptions_done:
        mce = ""
        if with_ce:
            mce = " - |" if errors.get("mCE") is None else f" mCE {errors['mCE']:.3f} |"
        kept = corruption_kept_interval(results, corruptions_done, mode, name).text(".1f", " %")
        lines.append(
            f"| mean | | {blank} | {np.mean(f_means):.4f} | {kept} | {blank} | {np.mean(mae_means):.4f} |" + mce
        )
    seeds = max((len(results[c][s]["seeds"]) for c in corruptions_done for s in results[c]), default=1)
    note = (
        f"F-beta: adaptive (beta^2 = 0.3); random corruptions: mean over {seeds} seed(s); bootstrap intervals in "
        f"robustness.json. "
    )
    note += (
        f"CE = sum over severities of (1 - F) / the same for {reference_label}."
        if with_ce
        else "No CE column: no --reference given (CE needs a reference model's robustness.json)."
    )
    return "\n".join(lines) + "\n\n" + note


def plot_corruptions(all_results, output: Path) -> None:
    """Adaptive F-beta (normalised maps) against severity, one panel per corruption family, the clean score as
    a dotted line."""
    done = {c for results in all_results.values() for c in results}
    families = {f: names for f, names in corruptions.FAMILIES.items() if done & set(names)}
    fig = Figure(figsize=(4 * len(families), 4), dpi=120)
    axes = fig.subplots(1, len(families), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (family, names) in zip(axes, families.items()):
        for dataset, results in all_results.items():
            for m in sorted(results["clean"]["normalised"]):
                ax.axhline(results["clean"]["normalised"][m]["adp_f"], ls=":", lw=1, color="grey")
                for c in names:
                    if c in results:
                        sev = list(results[c])
                        ax.plot(
                            [int(s) for s in sev],
                            [results[c][s]["normalised"][m]["adp_f"] for s in sev],
                            "-o",
                            ms=3,
                            label=f"{dataset}/{m}: {c}",
                        )
        ax.set(title=family, xlabel="severity", xticks=list(corruptions.SEVERITIES))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    axes[0].set_ylabel("adaptive F-beta (normalised maps)")
    fig.tight_layout()
    api.save_figure(fig, output / "curves.png")


def load_reference(path):
    """A previous `--distortion imagenet-c` robustness.json: (its datasets' results, its model's name)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"--reference {path}: cannot read it ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict) or data.get("distortion") != "imagenet-c" or "datasets" not in data:
        raise ConfigError(f"--reference {path}: not a robustness.json of --distortion imagenet-c")
    return data["datasets"], data.get("model") or str(path)


# ---------------------------------------------------------------------------------------------- PGD attacks
def evaluate_attack(
    source,
    predictor,
    norm,
    budgets,
    *,
    maps=("ce",),
    seeds=(0,),
    method="pgd",
    restarts=3,
    random_start=False,
    steps=10,
    step_size=None,
    loss="bce",
    queries=SQUARE_QUERIES,
    input_size=None,
    batch_size=8,
    progress=True,
    desc="",
):
    """PGD (`method` "pgd"), APGD ("apgd", `restarts` random starts) or Square Attack ("square", `queries` forward
    passes, no gradient) on each map of `maps` (each attacked separately, scored on the attacked map), at every
    budget (pixel levels, 0..255 scale), in the model's input space. `predictor`: an `api.Predictor` (MEnet), or
    for "square" any black-box predictor (uint8 images -> maps, see --predictor) with `input_size`, attacked on
    whole pixel levels of the uint8 image it takes (its map is "map"). Level results as `evaluate_distorted`'s,
    plus "attack_loss" {map: mean loss over the images at the returned point} and the convergence record: for
    "square", "loss_per_query" {map: the mean over images (and seeds) of the best loss after each query}; for
    "apgd", "fbeta_per_iteration" {"iterations": counts over the restarts one after another (`attacks.apgd_record`
    within each), map: the mean adaptive F-beta (normalised map) of each image's best point so far}; `step_size` a
    multiple of eps per step (default 2.5 / steps)."""
    if isinstance(predictor, api.Predictor):
        size, variables = predictor.config.image_size, predictor.variables
        # The attacked map: "ce" the salient probability (smooth), "metric" the min-max normalised Eq. 5 map (the
        # scored form; differentiable almost everywhere, through the minimum, the maximum and the distance).
        functions = {m: api.network_function(predictor.config, output=m, normalize=m == "metric") for m in maps}
        if method == "square":  # forward passes only, one per query: compiled once
            functions = {m: jax.jit(f, compiler_options=api.compiler_options()) for m, f in functions.items()}

        def scored(m, adv):
            raw = jax.device_get(predictor.predict_batch(variables, adv))[m]
            # The loss of the map the attack saw (the metric map in its normalised form), from the maps already
            # computed: no extra network pass.
            return raw, raw if m == "ce" else api.scale_to_unit(raw * 2.0, 2.0)
    else:
        if method != "square":
            raise ConfigError(f"{method} differentiates the network: a black-box predictor takes only square")
        size, variables, maps = input_size, None, ("map",)
        functions = {"map": model.predictor_maps(predictor, size)}

        def scored(m, adv):
            raw = functions[m](None, adv)
            return raw, raw

    results = {}
    for eps in budgets:
        random_start = random_start or method in ("apgd", "square")
        level_seeds = list(seeds) if random_start and eps > 0 else list(seeds)[:1]
        per_seed, per_image, losses, curves = {}, {}, {m: [] for m in maps}, {m: [] for m in maps}
        wins, f_curves, iterations = {m: {} for m in maps}, {m: [] for m in maps}, None
        for seed in level_seeds:
            meters = {}
            bar = tqdm(
                total=len(source), desc=f"{desc} {method}-{norm} {eps} seed {seed}", unit="img", disable=not progress
            )
            for start in range(0, len(source), batch_size):
                indices = list(range(start, min(start + batch_size, len(source))))
                examples = [source[i] for i in indices]
                pairs = [menet_datasets.resize_pair(e["image"], e["mask"], size) for e in examples]
                pad = [pairs[-1]] * (batch_size - len(pairs))  # one shape: the attack compiles once
                x = np.stack([p[0] for p in pairs + pad]).astype(np.float32)
                y = np.stack([p[1] for p in pairs + pad]).astype(np.float32)
                starts = []
                if random_start and eps > 0 and method != "square":
                    # Each image's own generator: the batch does not change its starts.
                    rngs = [distortions.image_rng(seed, i, e["name"]) for i, e in zip(indices, examples)]
                    starts = [
                        np.concatenate(
                            [attacks.random_start((1, *x.shape[1:]), eps, norm, rng) for rng in rngs]
                            + [np.zeros((len(pad), *x.shape[1:]), np.float32)]
                        )
                        for _ in range(restarts if method == "apgd" else 1)
                    ]
                for m in maps:
                    traced = {}  # APGD: loss -> each image's F-beta at the record's points (points, images)

                    def attack(loss_name, m=m):
                        settings = dict(eps=float(eps), norm=norm, loss=loss_name)
                        if method == "square":
                            # One window per query for the whole batch (the authors' scheme): seeded by the seed
                            # and the batch's first image, so a run is reproducible for a given --batch-size.
                            adv, _, curve = attacks.square(
                                functions[m],
                                variables,
                                x,
                                y,
                                queries=queries,
                                seed=(seed, start),
                                integer=variables is None,
                                **settings,
                            )
                            curves[m].append(curve[:, : len(examples)])
                            return adv
                        if method == "apgd":
                            result = attacks.apgd(
                                functions[m],
                                variables,
                                x,
                                y,
                                starts=starts,
                                steps=steps,
                                record=attacks.apgd_record(steps),
                                **settings,
                            )
                            traced[loss_name] = (
                                result.iterations,
                                [
                                    [_adaptive_f(example, raw[j]) for j, example in enumerate(examples)]
                                    for raw in (scored(m, point)[0] for point in np.asarray(result.trace))
                                ],
                            )
                            return result.images
                        scaled = None if step_size is None else step_size * eps
                        first = starts[0] if starts else None
                        return attacks.pgd(
                            functions[m], variables, x, y, step_size=scaled, start=first, steps=steps, **settings
                        )[0]

                    if eps == 0:
                        adv = x
                    elif loss != "ensemble":
                        adv = attack(loss)
                    else:  # each image's worst: the candidate whose attacked map scores the lowest F-beta
                        candidates = [np.asarray(attack(name)) for name in ENSEMBLE]
                        f_beta = np.array(
                            [
                                [_adaptive_f(example, raw[j]) for j, example in enumerate(examples)]
                                for raw in (scored(m, c)[0] for c in candidates)
                            ]
                        )
                        worst = np.argmin(f_beta, axis=0)  # ties: the first loss
                        for name, count in zip(ENSEMBLE, np.bincount(worst, minlength=len(ENSEMBLE))):
                            wins[m][name] = wins[m].get(name, 0) + int(count)
                        adv = np.array(candidates[0])
                        for j, k in enumerate(worst):
                            adv[j] = candidates[k][j]
                    if traced:  # the ensemble's record: per image and point, the worst over the losses
                        iterations = next(iter(traced.values()))[0]
                        f_curves[m].append(np.min([np.asarray(f) for _, f in traced.values()], axis=0))
                    raw, attacked = scored(m, adv)
                    reported = "bce" if loss == "ensemble" else loss
                    loss_values = np.asarray(attacks.map_loss(jnp.asarray(attacked), jnp.asarray(y), reported))
                    losses[m] += [float(v) for v in loss_values[: len(examples)]]
                    _score_maps(meters, examples, [{m: raw[j]} for j in range(len(examples))])
                bar.update(len(examples))
            bar.close()
            _add_seed(per_seed, per_image, meters)
        r = _summarise(per_seed, per_image, level_seeds, [float(eps)])
        r["attack_loss"] = {m: float(np.mean(v)) for m, v in losses.items()}
        if loss == "ensemble" and eps > 0:
            r["ensemble_worst"] = wins  # per map, how many images each loss gave the worst score
        if method == "square" and eps > 0:
            r["loss_per_query"] = {m: np.round(np.concatenate(v, 1).mean(1), 6).tolist() for m, v in curves.items()}
        if iterations is not None:
            r["fbeta_per_iteration"] = {"iterations": iterations.tolist()} | {
                m: np.round(np.concatenate(v, 1).mean(1), 6).tolist() for m, v in f_curves.items()
            }
        results[str(float(eps))] = r
    return results


def format_attack_losses(name, results, loss) -> str:
    maps = sorted(next(iter(results.values()))["attack_loss"])
    lines = [
        f"| {name}: attacked loss ({loss}, mean per image) | budget (/255) | " + " | ".join(maps) + " |",
        "|---|---|" + "---|" * len(maps),
    ]
    for level, r in results.items():
        lines.append(f"| | {float(level):.6g} | " + " | ".join(f"{r['attack_loss'][m]:.4f}" for m in maps) + " |")
    return "\n".join(lines)


def per_image_scores(level, mode, name, key="adp_f"):
    """A level result's per-image scores (seeds, images) as an array; None for results written before they were
    recorded."""
    values = level.get("per_image", {}).get(mode, {}).get(name, {}).get(key)
    return None if values is None else np.asarray(values, np.float64)


def score_interval(level, mode, name, key) -> bootstrap.Interval:
    """A level's score with its recorded 95 % interval (none where robustness.json has None)."""
    return bootstrap.Interval(level[mode][name][key], *(level["interval"][mode][name][key] or (None, None)))


def kept_share(clean, level, mode, name) -> bootstrap.Interval:
    """The share (%) of the clean level's adaptive F-beta that `level` keeps, with its paired bootstrap interval
    (none without per-image scores, or a zero clean score)."""
    c, d = per_image_scores(clean, mode, name), per_image_scores(level, mode, name)
    if c is None or d is None:
        value, base = level[mode][name]["adp_f"], clean[mode][name]["adp_f"]
        return bootstrap.Interval(100.0 * value / base if base else float("nan"))
    return bootstrap.kept_interval(c, d).scaled(100.0)


def format_table(name, kind, results, mode="normalised") -> str:
    """Table II layout: one row per distortion level; adaptive F-beta [95 % interval], the share of the first
    level's F-beta it keeps [its interval], and MAE [interval], per map. Intervals: paired bootstrap over images
    and seeds (robustness.bootstrap)."""
    first = next(iter(results.values()))
    maps = sorted(first[mode])
    unit = UNITS[kind]
    lines = [
        f"| {name} ({mode} maps) | {kind} {unit} | seeds | "
        + " | ".join(f"F-beta {m} | kept {m}" for m in maps)
        + " | "
        + " | ".join(f"MAE {m}" for m in maps)
        + " |",
        "|---|---|---|" + "---|" * (3 * len(maps)),
    ]
    for level, r in results.items():
        label = f"{float(level):.6g}" if level != "random" else f"random (mean {r['levels_used']['mean']:.4g})"
        cells = [
            f"{score_interval(r, mode, m, 'adp_f').text(missing='')} | "
            + kept_share(first, r, mode, m).text(".1f", " %", missing="")
            for m in maps
        ]
        lines.append(
            f"| | {label} | {len(r['seeds'])} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(score_interval(r, mode, m, "mae").text(missing="") for m in maps)
            + " |"
        )
    return "\n".join(lines)


def error_bars(estimates, intervals):
    """Matplotlib's yerr (2, n) from [lo, hi] intervals (None: no bar), never negative."""
    lo = [v - ci[0] if ci else 0.0 for v, ci in zip(estimates, intervals)]
    hi = [ci[1] - v if ci else 0.0 for v, ci in zip(estimates, intervals)]
    return np.maximum([lo, hi], 0.0)


def plot_curves(all_results, kind, output: Path) -> None:
    """Fig. 9: F-beta and MAE against the level, normalised (solid) and raw (dashed) maps, with the 95 % intervals
    as error bars."""
    fig = Figure(figsize=(10, 4), dpi=120)
    axes = fig.subplots(1, 2)
    for name, results in all_results.items():
        levels = [lv for lv in results if lv != "random"]
        x = [float(lv) for lv in levels]
        for mode, style in (("normalised", "-o"), ("raw", "--s")):
            for m in sorted(results[levels[0]][mode]):
                for ax, key in zip(axes, ("adp_f", "mae")):
                    y = [results[lv][mode][m][key] for lv in levels]
                    ci = [results[lv]["interval"][mode][m][key] for lv in levels]
                    ax.errorbar(x, y, yerr=error_bars(y, ci), fmt=style, ms=3, capsize=2, label=f"{name}/{m} ({mode})")
    label_level_axes(axes, kind, ("adaptive F-beta (beta^2 = 0.3)", "MAE"))
    fig.tight_layout()
    api.save_figure(fig, output / "curves.png")


def label_level_axes(axes, kind, ylabels) -> None:
    """The strength on x (JPEG quality falling to the right), a grid, the legend in the first panel."""
    xlabel = {"awgn": "noise variance (0..255 scale)", "jpeg": "JPEG quality"}.get(kind, UNITS.get(kind, kind))
    for ax, ylabel in zip(axes, ylabels):
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if kind == "jpeg":
            ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)


def plot_convergence(all_results, output: Path, loss: str) -> None:
    """The convergence record of an attack, one line per budget and map: Square Attack's mean best loss against the
    queries, APGD's mean F-beta of the best points so far against the iterations (a curve still moving at the end
    says a longer attack would lower the scores further; APGD's restarts follow one another on the axis)."""
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    for name, results in all_results.items():
        for level, r in results.items():
            for m, curve in r.get("loss_per_query", {}).items():
                ax.plot(np.arange(1, len(curve) + 1), curve, label=f"{name}/{m}, budget {float(level):g}")
            record = dict(r.get("fbeta_per_iteration", {}))
            steps = np.asarray(record.pop("iterations", []))
            for m, curve in record.items():
                ax.plot(steps + 1, curve, "-o", ms=3, label=f"{name}/{m}, budget {float(level):g}")
    ax.set_xscale("log")
    if any("fbeta_per_iteration" in r for results in all_results.values() for r in results.values()):
        ax.set(xlabel="iterations + 1 (restarts one after another)", ylabel="mean adaptive F-beta of the best points")
    else:
        ax.set(xlabel="queries", ylabel=f"mean best {loss} loss over the images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    api.save_figure(fig, output)


def parse_levels(kind, items):
    if kind == "imagenet-c":
        return parse_severities(items)
    if kind in ATTACKS:
        return parse_budgets(kind, items)
    if not items:
        return (
            [0.0, *distortions.severity_levels("awgn"), "random"]
            if kind == "awgn"
            else [100.0, *distortions.severity_levels("jpeg"), "random"]
        )
    levels = []
    for item in items:
        if item == "random":
            levels.append(item)
            continue
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"bad level {item!r}: a number or 'random'") from None
        if kind == "awgn" and not 0 <= value < np.inf or kind == "jpeg" and not (1 <= value <= 100 and value % 1 == 0):
            raise ConfigError(
                f"bad {kind} level {item}: "
                + ("a finite variance >= 0" if kind == "awgn" else "an integer quality 1..100")
            )
        levels.append(value)
    return levels


def parse_severities(items):
    if not items:
        return list(corruptions.SEVERITIES)
    severities = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            value = None
        if value not in corruptions.SEVERITIES:
            raise ConfigError(f"bad imagenet-c severity {item!r}: an integer 1..5")
        if value not in severities:
            severities.append(value)
    return severities


def parse_budgets(kind, items):
    if not items:
        return list(attacks.DEFAULT_BUDGETS[ATTACKS[kind]])
    budgets = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 255 * 1000 or not np.isfinite(value):
            raise ConfigError(f"bad {kind} budget {item!r}: a number >= 0, in /255 units (pixel levels)")
        budgets.append(value)
    return budgets


def parse_args(argv=None):
    parser = api.ArgumentParser(
        prog="python -m robustness.evaluate",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", type=Path, help=api.CHECKPOINT_HELP_FLOAT32)
    model.add_argument("--predictor", help="MODULE:FUNCTION, images -> maps (see above)")
    parser.add_argument("--distortion", choices=KINDS, required=True)
    parser.add_argument(
        "--levels",
        nargs="+",
        help="AWGN variances (0..255 scale) or JPEG qualities, or 'random'; imagenet-c: severities "
        "1..5 (default all); pgd-*: budgets in /255 units (default linf 0 1 2 4 8, l2 0 32 64 "
        "128 255)",
    )
    parser.add_argument(
        "--map",
        choices=["metric", "ce", "both"],
        help="with --checkpoint: the maps scored (default both); pgd-*: the map attacked, each "
        "separately with both (default ce, the salient probability)",
    )
    parser.add_argument(
        "--corruptions",
        help="imagenet-c: comma-separated corruptions or families (noise, blur, weather, digital); default all 15",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        help="imagenet-c: a reference model's robustness.json (from --distortion imagenet-c) for "
        "the corruption error CE; without it the CE column is left out",
    )
    parser.add_argument("--pgd-steps", type=int, help="pgd-* / apgd-*: iterations (default 10 / 100)")
    parser.add_argument(
        "--queries", type=int, help=f"square-*: forward passes per image, the start included (default {SQUARE_QUERIES})"
    )
    parser.add_argument("--restarts", type=int, help="apgd-*: random starts per image and seed (default 3)")
    parser.add_argument(
        "--pgd-step-size", type=float, help="pgd-*: step as a multiple of the budget (default 2.5 / steps)"
    )
    parser.add_argument(
        "--pgd-loss",
        choices=(*attacks.LOSSES, "ensemble"),
        help="the attacks' loss maximised (default bce); ensemble: one attack with each of "
        f"{' and '.join(ENSEMBLE)}, per image the one whose map scores the lowest F-beta",
    )
    parser.add_argument(
        "--random-start",
        action="store_true",
        help="pgd-*: start at a uniform point of the ball (per-image generator; then --seeds apply)",
    )
    parser.add_argument("--output", type=Path, default=Path("robustness_eval"))
    parser.add_argument("--seed", type=int, default=0, help="first base seed of the per-image generators")
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="noise seeds per random level (seed, seed + 1, ...): the mean over them (default 3)",
    )
    parser.add_argument(
        "--noise-at",
        choices=("original", "input"),
        default="original",
        help="distort each image at its own size (original, default) or after resizing it to the "
        "model's input size (input)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        help="the model's square input side, for --noise-at input with --predictor (a checkpoint knows its own)",
    )
    parser.add_argument("--limit", type=int, help="first N images of each source")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-progress", action="store_true")
    add_source_arguments(parser)
    return parser.parse_args(argv)


def check_flags(args):
    """One-line errors for options that do not belong to the chosen --distortion."""
    kind = args.distortion
    if kind != "imagenet-c":
        for flag, value in (("--corruptions", args.corruptions), ("--reference", args.reference)):
            if value is not None:
                raise ConfigError(f"{flag} is for --distortion imagenet-c, not {kind}")
    method = kind.split("-")[0]
    for flag, value, kinds in (
        ("--pgd-steps", args.pgd_steps, [k for k in ATTACKS if not k.startswith("square")]),
        ("--pgd-loss", args.pgd_loss, ATTACKS),
        ("--pgd-step-size", args.pgd_step_size, ("pgd-linf", "pgd-l2")),  # APGD sets its own steps
        ("--random-start", args.random_start or None, ("pgd-linf", "pgd-l2")),  # APGD always starts at random
        ("--restarts", args.restarts, ("apgd-linf", "apgd-l2")),
        ("--queries", args.queries, ("square-linf", "square-l2")),
    ):
        if value is not None and kind not in kinds:
            raise ConfigError(f"{flag} is for --distortion {' / '.join(kinds)}, not {kind}")
    if kind not in ATTACKS:
        return
    if args.predictor is not None and method != "square":
        raise ConfigError(
            f"--distortion {kind} needs --checkpoint: gradient attacks differentiate the MEnet "
            "network, and a --predictor is a black box (attack it with square-linf / square-l2)"
        )
    if args.predictor is not None and args.input_size is None:
        raise ConfigError(f"--distortion {kind} with --predictor needs --input-size, the square size attacked")
    if args.predictor is None and args.input_size is not None:
        raise ConfigError("--input-size is for --predictor (a network is attacked at its own input size)")
    if args.queries is not None and args.queries < 1:
        raise ConfigError(f"--queries must be >= 1, got {args.queries}")
    if method == "square":
        if args.pgd_loss == "ensemble":
            raise ConfigError("--pgd-loss ensemble is for the gradient attacks (pgd-*, apgd-*), not square")
        args.queries = args.queries or SQUARE_QUERIES
        return
    if args.pgd_steps is not None and args.pgd_steps < 1:
        raise ConfigError(f"--pgd-steps must be >= 1, got {args.pgd_steps}")
    if args.restarts is not None and args.restarts < 1:
        raise ConfigError(f"--restarts must be >= 1, got {args.restarts}")
    args.pgd_steps = args.pgd_steps or DEFAULT_STEPS[method]
    if args.pgd_step_size is not None and not args.pgd_step_size > 0:
        raise ConfigError(f"--pgd-step-size must be > 0, got {args.pgd_step_size}")


def _step_size_text(kind, step_size) -> str:
    if kind.startswith("square"):
        return "Square Attack's window schedule (p halved at fixed shares of the queries)"
    if kind.startswith("apgd"):
        return "APGD's schedule (2 x budget, halved at checkpoints)"
    return f"{step_size} x budget" if step_size else "2.5 x budget / steps"


def model_name(args) -> str:
    if args.predictor is not None:
        return args.predictor
    return str(args.checkpoint) if args.checkpoint is not None else "MEnet (shipped weights)"


@api.command
def main(argv=None) -> int:
    args = parse_args(argv)
    kind = args.distortion
    check_flags(args)
    levels = parse_levels(kind, args.levels)
    try:
        names = corruptions.parse_names(args.corruptions) if kind == "imagenet-c" else None
    except ValueError as error:
        raise ConfigError(f"--corruptions: {error}") from None
    reference, reference_model = load_reference(args.reference) if args.reference else (None, None)
    api.check_minimums(args, limit=1, seeds=1, batch_size=1, input_size=1)
    api.check_folder(args.output)  # before the work, not after it
    input_size = args.input_size
    sources = sources_from_args(args)
    predictor = None
    if args.predictor is None:
        # Raw maps (the CE probability and the Eq. 5 distance / 2 as the network gives them); the normalised
        # scores min-max them here, as the network's normalised maps are.
        predictor = api.Predictor.load(args.checkpoint, batch_size=args.batch_size, normalize=False, dtype="float32")
        input_size = predictor.config.image_size
        default = ("ce",) if kind in ATTACKS else ("metric", "ce")
        map_names = default if args.map is None else ("metric", "ce") if args.map == "both" else (args.map,)
        predict = lambda images: [{n: m[n] for n in map_names} for m in predictor(images)]
    else:
        predict, map_names = load_predictor(args.predictor), ("map",)
    all_results, images, timings = {}, {}, {}
    seeds = range(args.seed, args.seed + args.seeds)
    for name, source in sources:
        if args.limit is not None:
            source = menet_datasets.Subset(source, list(range(min(args.limit, len(source)))))
        images[name] = image_names(source)
        common = dict(seeds=seeds, batch_size=args.batch_size, progress=not args.no_progress, desc=name)
        stages, started = {}, time.perf_counter()
        if kind == "imagenet-c":
            all_results[name] = evaluate_corruptions(
                source, predict, names, levels, noise_at=args.noise_at, input_size=input_size, timing=stages, **common
            )
        elif kind in ATTACKS:
            all_results[name] = evaluate_attack(
                source,
                predictor or predict,
                ATTACKS[kind],
                levels,
                maps=map_names,
                method=kind.split("-")[0],
                restarts=args.restarts or 3,
                random_start=args.random_start,
                steps=args.pgd_steps,
                step_size=args.pgd_step_size,
                loss=args.pgd_loss or "bce",
                queries=args.queries,
                input_size=input_size,
                **common,
            )
        else:
            all_results[name] = evaluate_distorted(
                source, predict, kind, levels, noise_at=args.noise_at, input_size=input_size, timing=stages, **common
            )
        timings[name] = {"wall_s": round(time.perf_counter() - started, 1)} | {
            k: round(v, 1) for k, v in stages.items()
        }
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    if kind == "imagenet-c":
        return _write_corruptions(
            args, out, all_results, images, timings, names, levels, input_size, reference, reference_model
        )
    tables = "\n\n".join(
        format_table(name, kind, r, mode) for name, r in all_results.items() for mode in ("normalised", "raw")
    )
    tables += "\n\n" + TABLE_NOTE
    if kind in ATTACKS:
        method, loss = kind.split("-")[0], args.pgd_loss or "bce"
        tables += "\n\n" + "\n\n".join(
            format_attack_losses(name, r, "bce" if loss == "ensemble" else loss) for name, r in all_results.items()
        )
        summary = {
            "distortion": kind,
            "model": model_name(args),
            "levels": [str(float(lv)) for lv in levels],
            "level_unit": "budget in pixel levels of the 0..255 scale (k means k/255 of [0, 1])",
            "norm": ATTACKS[kind],
            "attacked_maps": list(map_names),
            "loss": loss,
            "attack": method,
            "steps": args.queries if method == "square" else args.pgd_steps,
            "step_size": _step_size_text(kind, args.pgd_step_size),
            "random_start": method in ("apgd", "square") or args.random_start,
            "restarts": (args.restarts or 3) if method == "apgd" else 1,
            "seed": args.seed,
            "seeds": args.seeds,
            "attack_space": f"network input ({input_size} px, float, not re-quantised)"
            if args.predictor is None
            else f"the predictor's uint8 input ({input_size} px, whole pixel levels)",
            "input_size": input_size,
            "datasets": all_results,
        }
    else:
        summary = {
            "distortion": kind,
            "levels": [str(lv) for lv in levels],
            "seed": args.seed,
            "seeds": args.seeds,
            "noise_at": args.noise_at,
            "input_size": input_size,
            "level_unit": "noise variance, 0..255 scale" if kind == "awgn" else "JPEG quality",
            "random_ranges": distortions.RANDOM_RANGES[kind],
            "datasets": all_results,
        }
    summary |= {"intervals": INTERVALS, "images": images, "timing": timings}
    api.write_text(out / "table.md", tables + "\n")
    api.write_text(out / "robustness.json", api.json_text(summary))
    written = [out / "robustness.json", out / "table.md"]
    if any(level != "random" for level in levels):  # Fig. 9 needs fixed levels; "random" alone is Table II
        plot_curves(all_results, kind, out)
        written.append(out / "curves.png")
    if kind.startswith(("square", "apgd")):
        plot_convergence(all_results, out / "convergence.png", args.pgd_loss or "bce")
        written.append(out / "convergence.png")
    print(tables)
    print(timing_line(timings))
    print("results: " + ", ".join(map(str, written)))
    return 0


def timing_line(timings) -> str:
    """'time: ECSSD 61.2 s wall (busy: read 2.0 s, distort 4.1 s, predict 40.3 s, score 12.2 s)'; the stages overlap."""
    parts = []
    for dataset, t in timings.items():
        busy = ", ".join(f"{k[:-2]} {t[k]} s" for k in TIMING_KEYS if k in t)
        parts.append(f"{dataset} {t['wall_s']} s wall" + (f" (busy: {busy})" if busy else ""))
    return "time: " + "; ".join(parts)


def _write_corruptions(
    args, out, all_results, images, timings, names, severities, input_size, reference, reference_model
) -> int:
    tables, errors = [], {}
    label = f"{reference_model} ({args.reference})" if reference is not None else None
    for dataset, results in all_results.items():
        for mode in ("normalised", "raw"):
            for m in sorted(results["clean"][mode]):
                ce = None
                if reference is not None:
                    ce = corruption_errors(results, reference.get(dataset), mode, m)
                    errors.setdefault(dataset, {}).setdefault(mode, {})[m] = ce
                tables.append(format_corruption_table(dataset, results, mode, m, ce, label))
    text = "\n\n".join(tables)
    api.write_text(out / "table.md", text + "\n")
    summary = {
        "distortion": "imagenet-c",
        "model": model_name(args),
        "corruptions": names,
        "severities": [str(s) for s in severities],
        "seed": args.seed,
        "seeds": args.seeds,
        "noise_at": args.noise_at,
        "input_size": input_size,
        "parameters": "ImageNet-C (Hendrycks & Dietterich 2019) published severities; see robustness/corruptions.py",
        "frost": "procedural seeded texture (not the ImageNet-C frost photos)",
        "reference": None if reference is None else {"path": str(args.reference), "model": reference_model},
        "corruption_errors": errors if reference is not None else None,
        "datasets": all_results,
        "intervals": INTERVALS,
        "images": images,
        "timing": timings,
    }
    api.write_text(out / "robustness.json", api.json_text(summary))
    plot_corruptions(all_results, out)
    print(text)
    print(timing_line(timings))
    print("results: " + ", ".join(map(str, [out / "robustness.json", out / "table.md", out / "curves.png"])))
    return 0


if __name__ == "__main__":
    api.start(main, reuse_memory=True)
