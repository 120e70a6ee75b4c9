"""Training curves from WORKDIR/metrics.jsonl, as one PNG: loss terms, learning rate, validation MAE and F-beta.

`python -m menet_jax.train` writes the figure at the end of every run; `python -m menet_jax.curves WORKDIR` redraws it.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

from menet_jax.errors import WorkdirError
from menet_jax.io.outputs import save_figure


def read_log(workdir) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) of a workdir's metrics.jsonl, in step order."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        raise WorkdirError(f"{path}: no training log (not a training workdir?)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return ([r for r in records if r["split"] == "train"], [r for r in records if r["split"] == "validation"])


def plot_training(workdir, output=None) -> Path:
    """Write the curves of `workdir` to `output` (default WORKDIR/curves.png) and return its path."""
    train_log, val_log = read_log(workdir)
    if not train_log:
        raise WorkdirError(f"{workdir}/metrics.jsonl has no training records yet")
    output = Path(output) if output is not None else Path(workdir) / "curves.png"
    steps = [r["step"] for r in train_log]
    fig = Figure(figsize=(16, 3.5))
    axes = fig.subplots(1, 4)
    for key in ("loss", "metric", "ce"):
        axes[0].plot(steps, [r[key] for r in train_log], label=key, lw=0.8)
    axes[0].set(title="training loss", xlabel="step")
    axes[1].semilogy(steps, [r["lr"] for r in train_log])
    axes[1].set(title="learning rate", xlabel="step")
    val_steps = [r["step"] for r in val_log]
    for name in ("metric", "ce"):
        axes[2].plot(val_steps, [r[f"{name}/mae"] for r in val_log], "o-", label=f"{name} map")
        axes[3].plot(val_steps, [r[f"{name}/adp_f"] for r in val_log], "o-", label=f"{name} map")
    axes[2].set(title="validation MAE", xlabel="step")
    axes[3].set(title="validation adaptive F-beta", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    for ax in (axes[0], axes[2], axes[3]):
        ax.legend()
    fig.tight_layout()
    save_figure(fig, output, dpi=80)  # atomically: a viewer refreshing it never shows half a figure
    return output
