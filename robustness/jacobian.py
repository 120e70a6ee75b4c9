"""`python -m robustness.jacobian`: the paper's Table III done right, local Jacobian norms and Eq. 12 estimates.

    python -m robustness.jacobian --checkpoint runs/duts --data-dir ../shared/data/ECSSD --limit 20
    python -m robustness.jacobian --checkpoint runs/duts --dataset ecssd --manual-dir ../shared/data/ECSSD

For each image (resized to the network's input size, bilinear, values 0..255 as the network takes them), in
evaluation mode (BatchNorm with its running statistics):

* g = d(sum of the chosen output)/d(input) by one vjp; per image max, min, median, mean and variance (unbiased,
  as torch) of |g| over all 3 x S x S entries; the table is their mean over the images (Table III's protocol).
  --output salient_prob (softmax channel 1), metric_map (Eq. 5 distance before the min-max scaling) or logits.
  --authors-objective differentiates the sum of BOTH softmax channels instead, as the authors' script did: that
  sum is the constant S x S, so its gradient is zero and whatever is printed is float round-off.
* ||J(x)||_2 of the output map (not its sum) by power iteration (--power-iterations, --tol; iterations and
  convergence reported) and ||J(x)||_F by Hutchinson (--probes, 95 % interval).
* Eq. 12: E_n ||f(x + t n) - f(x)||^2 / t^2 over unit directions n: Gaussian (--mc-directions of them), AWGN
  residuals (ImageNet-C severity 1, same count) and JPEG residuals (the five ImageNet-C qualities), for each t of
  --t-schedule and in the limit t -> 0 (exact, by jvp), with standard errors.

Writes DIR/jacobian.json (settings, averages, per-image rows) and DIR/gradient_histogram.png (log10 |g| pooled
over the images).

The library: `analyse_image(f, params, x, image=...) -> ImageAnalysis` (its `to_json()` is one row of
jacobian.json) for any model `f(params, x)` (robustness.model); `output_function(config, output)` is MEnet's f.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure  # no pyplot: a notebook's backend is left alone
from tqdm.auto import tqdm

from menet_datasets.cli import add_source_arguments, sources_from_args
from menet_jax import api
from robustness import distortions, norms

OUTPUTS = ("salient_prob", "metric_map", "logits")
STATS = ("max", "min", "median", "mean", "var")


def output_function(config, output: str, *, authors_objective: bool = False, bn_train: bool = False):
    """The differentiated map as a model `f(variables, x)` of a batch of images (N, S, S, 3) on the 0..255 scale:
    `api.network_function`'s, or with `authors_objective` the softmax of the logits (both channels)."""
    # The authors' script never called eval(): BatchNorm used each image's own statistics (bn_train).
    kind = "logits" if authors_objective else {"metric_map": "metric_distance"}.get(output, output)
    network = api.network_function(config, output=kind, batch_stats="batch" if bn_train else "running")
    if not authors_objective:
        return network

    def f(variables, x):
        return jax.nn.softmax(network(variables, x), axis=-1)

    return f


def gradient_stats(g) -> dict:
    """Table III's per-image statistics of |g| (variance unbiased, as torch.var)."""
    a = np.abs(np.asarray(g, np.float64)).ravel()
    return {
        "max": float(a.max()),
        "min": float(a.min()),
        "median": float(np.median(a)),
        "mean": float(a.mean()),
        "var": float(a.var(ddof=1)),
    }


def mc_directions(image, kind, count, seed, index):
    """Unit-norm distortion directions at one image (uint8 at network size): residuals distorted - clean."""
    clean = image.astype(np.float32)
    if kind == "gaussian":
        rng = distortions.image_rng(seed, index, "gaussian")
        return rng.standard_normal((count, *image.shape)).astype(np.float32)
    if kind == "awgn":
        sigma = distortions.IMAGENET_C["awgn"][0] * 255.0
        return np.stack(
            [
                distortions.awgn(image, distortions.image_rng(seed, index, f"awgn{k}"), sigma=sigma).astype(np.float32)
                - clean
                for k in range(count)
            ]
        )
    return np.stack([distortions.jpeg(image, q).astype(np.float32) - clean for q in distortions.IMAGENET_C["jpeg"]])


@functools.partial(jax.jit, static_argnums=0)
def input_gradient(f, params, x):
    """d sum(f(params, x)) / dx, jitted with `f` static (one compilation per model, any weights)."""
    return jax.grad(lambda z: jnp.sum(f(params, z)))(x)


@dataclasses.dataclass(frozen=True)
class ImageAnalysis:
    """What `analyse_image` measures at one image: `gradient` (d sum(f) / dx, x's shape; not in the JSON form),
    `stats` (Table III's statistics of |gradient|), `spectral` and `frobenius` (NormEstimate, None when skipped),
    `eq12` ({direction kind: DirectionalEstimate}, None when skipped)."""

    gradient: np.ndarray
    stats: dict
    spectral: norms.NormEstimate | None = None
    frobenius: norms.NormEstimate | None = None
    eq12: dict | None = None

    def to_json(self) -> dict:
        """The per-image row of jacobian.json (the per-direction values left out)."""
        row = {"stats": self.stats}
        if self.spectral is not None:
            row["spectral"] = self.spectral.to_json()
        if self.frobenius is not None:
            row["frobenius"] = self.frobenius.to_json()
        if self.eq12 is not None:
            row["eq12"] = {kind: est.to_json(per_direction=False) for kind, est in self.eq12.items()}
        return row


def analyse_image(
    f,
    params,
    x,
    *,
    image=None,
    index=0,
    seed=0,
    power_iterations=30,
    tol=1e-3,
    probes=16,
    mc_count=8,
    t_schedule=(100.0, 10.0, 1.0, 0.1),
    grad_fn=None,
) -> ImageAnalysis:
    """Everything this CLI reports for the model f(params, .) at one input x (1, S, S, 3) float32 on 0..255.
    `image`: the same image as uint8 (S, S, 3), needed for the distortion directions of Eq. 12; `grad_fn(params,
    x)`: the gradient of sum(f) (default `input_gradient`; the CLI passes one jitted with MEnet's compiler
    options)."""
    grad = (grad_fn or functools.partial(input_gradient, f))(params, x)
    key = jax.random.fold_in(jax.random.key(seed), index)
    spectral = frobenius = eq12 = None
    if power_iterations:
        spectral = norms.spectral_norm(f, params, x, key=key, iters=power_iterations, tol=tol)
    if probes:
        frobenius = norms.frobenius_hutchinson(f, params, x, key=jax.random.fold_in(key, 1), probes=probes)
    if mc_count and image is not None:
        eq12 = {}
        for kind in ("gaussian", "awgn", "jpeg"):
            d = mc_directions(image, kind, mc_count, seed, index)
            d = d[np.linalg.norm(d.reshape(len(d), -1), axis=1) > 0]  # JPEG can leave a flat image unchanged
            if len(d):
                eq12[kind] = norms.directional_estimates(f, params, x, d[:, None], t_schedule)
    return ImageAnalysis(np.asarray(grad), gradient_stats(grad), spectral, frobenius, eq12)


def _mean(rows, *path):
    values = []
    for row in rows:
        v = row
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
            if v is None:
                break
        if v is not None:
            values.append(v)
    return float(np.mean(values)) if values else None


def summarize(rows) -> dict:
    summary = {"n_images": len(rows), "gradient": {s: _mean(rows, "stats", s) for s in STATS}}
    if rows and "spectral" in rows[0]:
        summary["spectral"] = {
            "mean": _mean(rows, "spectral", "value"),
            "max": float(max(r["spectral"]["value"] for r in rows)),
            "mean_iterations": _mean(rows, "spectral", "iterations"),
            "all_converged": all(r["spectral"]["converged"] for r in rows),
        }
    if rows and "frobenius" in rows[0]:
        summary["frobenius"] = {
            "mean": _mean(rows, "frobenius", "value"),
            "mean_ci_low": _mean(rows, "frobenius", "ci_low"),
            "mean_ci_high": _mean(rows, "frobenius", "ci_high"),
        }
    if rows and "eq12" in rows[0]:
        summary["eq12"] = {}
        for kind in rows[0]["eq12"]:
            kept = [r["eq12"][kind] for r in rows if kind in r.get("eq12", {})]
            summary["eq12"][kind] = {
                "limit": float(np.mean([k["limit"]["mean"] for k in kept])),
                "finite_differences": {
                    str(fd["t"]): float(np.mean([k["finite_differences"][i]["mean"] for k in kept]))
                    for i, fd in enumerate(kept[0]["finite_differences"])
                },
            }
    return summary


def format_table(name, summary, label) -> str:
    g = summary["gradient"]
    lines = [
        f"Table III ({label}, mean over {summary['n_images']} images)",
        f"{'Data':12s}" + "".join(f"{s + '(|g|)':>15s}" for s in STATS),
        f"{name:12s}" + "".join(f"{g[s]:15.4e}" for s in STATS),
    ]
    if "spectral" in summary:
        s = summary["spectral"]
        lines.append(
            f"||J||_2 (power iteration): mean {s['mean']:.4e}, max {s['max']:.4e}, "
            f"{s['mean_iterations']:.1f} iterations on average, all converged: {s['all_converged']}"
        )
    if "frobenius" in summary:
        s = summary["frobenius"]
        lines.append(
            f"||J||_F (Hutchinson): mean {s['mean']:.4e} (mean 95% interval {s['mean_ci_low']:.4e} .. "
            f"{s['mean_ci_high']:.4e})"
        )
    for kind, e in summary.get("eq12", {}).items():
        fd = ", ".join(f"t={t}: {v:.4e}" for t, v in e["finite_differences"].items())
        note = "  (= ||J||_F^2 / d for uniform unit directions, d = input size)" if kind == "gaussian" else ""
        lines.append(
            f"Eq. 12 {kind:8s} E||J n||^2 over unit directions n = {e['limit']:.4e}{note}  (finite differences {fd})"
        )
    return "\n".join(lines)


def plot_histogram(grads_log_hist, edges, zeros, output: Path, label: str) -> None:
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    ax.stairs(grads_log_hist, edges, fill=True, alpha=0.7)
    ax.set(
        xlabel="log10 |g|",
        ylabel="entries (all images)",
        yscale="log",
        title=f"d sum({label}) / d input" + (f"  ({zeros} exact zeros)" if zeros else ""),
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    api.save_figure(fig, output)


def parse_args(argv=None):
    parser = api.ArgumentParser(
        prog="python -m robustness.jacobian",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    api.add_checkpoint_argument(parser, float32=True, preset=True)
    parser.add_argument("--output", choices=OUTPUTS, default="salient_prob")
    parser.add_argument(
        "--authors-objective",
        action="store_true",
        help="differentiate the sum of both softmax channels (a constant), as the authors did",
    )
    parser.add_argument("--bn-train-mode", action="store_true", help="BatchNorm with batch statistics (authors)")
    parser.add_argument("--limit", type=int, help="first N images of each source")
    parser.add_argument("--output-dir", type=Path, default=Path("jacobian"))
    parser.add_argument("--power-iterations", type=int, default=30, help="0 to skip ||J||_2")
    parser.add_argument("--tol", type=float, default=1e-3, help="relative change that stops the power iteration")
    parser.add_argument("--probes", type=int, default=16, help="Hutchinson probes (0 to skip ||J||_F)")
    parser.add_argument("--mc-directions", type=int, default=8, help="Eq. 12 directions per kind (0 to skip)")
    parser.add_argument("--t-schedule", type=float, nargs="+", default=[100.0, 10.0, 1.0, 0.1])
    parser.add_argument("--no-progress", action="store_true")
    add_source_arguments(parser)
    return parser.parse_args(argv)


@api.command
def main(argv=None) -> int:
    args = parse_args(argv)
    api.check_minimums(args, limit=1, power_iterations=0, probes=0, mc_directions=0)
    api.check_folder(args.output_dir)  # before the work, not after it
    if not all(0 < t < np.inf for t in args.t_schedule):
        raise api.ConfigError(f"--t-schedule takes step sizes > 0, got {' '.join(map(str, args.t_schedule))}")
    sources = sources_from_args(args)
    # Jacobians and bounds need float32.
    variables, config = api.load_network(args.checkpoint, preset=args.config, seed=args.seed, dtype="float32")
    label = "softmax, both channels (authors)" if args.authors_objective else args.output
    f = output_function(config, args.output, authors_objective=args.authors_objective, bn_train=args.bn_train_mode)
    grad_fn = jax.jit(functools.partial(input_gradient.__wrapped__, f), compiler_options=api.compiler_options())
    size = config.image_size
    edges = np.linspace(-24, 4, 113)
    hist, zeros, report = np.zeros(len(edges) - 1), 0, {}
    for name, source in sources:
        n = len(source) if args.limit is None else min(args.limit, len(source))
        rows = []
        for i in tqdm(range(n), desc=name, unit="img", disable=args.no_progress):
            example = source[i]
            image = api.resize_input(example["image"], size)
            x = jnp.asarray(image[None], jnp.float32)
            analysis = analyse_image(
                f,
                variables,
                x,
                image=image,
                index=i,
                seed=args.seed,
                power_iterations=args.power_iterations,
                tol=args.tol,
                probes=args.probes,
                mc_count=args.mc_directions,
                t_schedule=tuple(args.t_schedule),
                grad_fn=grad_fn,
            )
            a = np.abs(np.asarray(analysis.gradient, np.float64)).ravel()
            zeros += int(np.sum(a == 0))
            hist += np.histogram(np.log10(a[a > 0]), edges)[0]
            rows.append({"name": example["name"], **analysis.to_json()})
        summary = summarize(rows)
        report[name] = {"summary": summary, "images": rows}
        print(format_table(name, summary, label))
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "output": args.output,
        "authors_objective": args.authors_objective,
        "bn_mode": "train" if args.bn_train_mode else "eval",
        "image_size": size,
        "input_scale": "0..255" if config.input_scale == "raw" else "0..255 (network normalises)",
        "power_iterations": args.power_iterations,
        "tol": args.tol,
        "probes": args.probes,
        "mc_directions": args.mc_directions,
        "t_schedule": args.t_schedule,
        "seed": args.seed,
        "config": dataclasses.asdict(config),
    }
    api.write_text(out / "jacobian.json", json.dumps({"settings": settings, "datasets": report}, indent=2) + "\n")
    plot_histogram(hist, edges, zeros, out / "gradient_histogram.png", label)
    print(f"results: {out / 'jacobian.json'}, histogram: {out / 'gradient_histogram.png'}")
    return 0


if __name__ == "__main__":
    api.start(main, reuse_memory=True)
