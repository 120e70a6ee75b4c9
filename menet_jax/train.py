"""`python -m menet_jax.train`: train MEnet (with no arguments: the demo config on generated data).

    python -m menet_jax.train                                         # demo, a few minutes on a CPU
    python -m menet_jax.train --config paper --dry-run                # parameter count and FLOPs
    python -m menet_jax.train --config demo --data-dir ../shared/data/DUTS-TR-subset --workdir runs/duts
    python -m menet_jax.train --config tiny --dataset ecssd --manual-dir ../shared/data/ECSSD --steps 5
    python -m menet_jax.train --config paper --data-dir DIR --set batch_size=10 --set shuffle=true

A rerun with the same --workdir resumes from its latest intact checkpoint. Ctrl-C or SIGTERM saves the current
step first (exit 130 or 143); a data error saves it too (exit 2); a diverged run saves nothing past its last
finite state (exit 2).

Several processes (machines) train one run: start the same command on each, with --coordinator HOST:PORT (process
0's address, the same everywhere), --num-processes N and its own --process-id I, or the environment variables
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. --workdir must be one folder that all of them see.

    python -m menet_jax.train --config tiny --coordinator 127.0.0.1:12355 --num-processes 2 --process-id 0 &
    python -m menet_jax.train --config tiny --coordinator 127.0.0.1:12355 --num-processes 2 --process-id 1
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from menet_datasets.cli import add_source_arguments
from menet_jax import cli
from menet_jax.core.config import PRESETS, get_config
from menet_jax.core.model import describe
from menet_jax.errors import DataError
from menet_jax.runtime.xla import enable_compilation_cache
from menet_jax.training.curves import plot_training
from menet_jax.training.distributed import initialize_distributed, is_main_process
from menet_jax.training.loop import train


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        prog="python -m menet_jax.train",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="demo", choices=sorted(PRESETS), help="preset (default: demo)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable), e.g. --set batch_size=10",
    )
    parser.add_argument("--workdir", help="checkpoints, config.json and metrics.jsonl (default: runs/CONFIG)")
    parser.add_argument("--steps", type=int, help="total number of train steps (overrides the config)")
    add_source_arguments(parser, split=None)  # with neither --data-dir nor --dataset: a generated dataset
    parser.add_argument("--dry-run", action="store_true", help="print parameters and FLOPs, then exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("several processes (jax.distributed; each defaults to its JAX_* variable)")
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="process 0's address and a free port, the same for every process (JAX_COORDINATOR_ADDRESS)",
    )
    group.add_argument("--num-processes", type=int, metavar="N", help="how many processes (JAX_NUM_PROCESSES)")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1 (JAX_PROCESS_ID)")
    return parser.parse_args(argv)


@cli.command(compilation_cache=False)  # switched on below, after joining the other processes
def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or f"runs/{args.config}"
    overrides = list(args.overrides) + ([f"steps={args.steps}"] if args.steps is not None else [])
    config = get_config(args.config, overrides)
    if not args.dry_run:
        # Before any other use of JAX: the backend is created with the other processes' devices.
        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    enable_compilation_cache()
    if args.dry_run:
        print(describe(config))
        return 0
    if len(args.data_dir) + len(args.dataset) > 1:
        raise DataError("training uses one data source: give one --data-dir or one --dataset")
    started = time.perf_counter()
    try:
        result = train(
            config,
            workdir,
            data_dir=args.data_dir[0] if args.data_dir else None,
            dataset=args.dataset[0] if args.dataset else None,
            split=args.split,
            manual_dir=args.manual_dir,
            tfds_dir=args.tfds_dir,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt as interrupt:  # training.loop.Interrupted carries the signal and the saved step
        signum, step = getattr(interrupt, "signum", signal.SIGINT), getattr(interrupt, "step", None)
        saved = f" at step {step}, checkpoint saved" if step is not None else ""
        print(f"interrupted{saved}: rerun the same command to resume from {workdir}", file=sys.stderr)
        return 128 + signum
    if not result.validation or not is_main_process():  # nothing to train (the library said why), or process
        return 0  # 0 reports
    print(summary(result, config, time.perf_counter() - started))
    print(f"curves: {plot_training(workdir)}")
    return 0


def summary(result, config, seconds: float) -> str:
    v = result.validation
    resumed = f" (resumed at step {result.start_step})" if result.start_step else ""
    rows = [
        ("metric map (Eq. 5)", "metric"),
        ("CE map (salient prob.)", "ce"),
        ("all-background baseline", "all_background"),
    ]
    lines = [
        f"trained to step {result.final_step}{resumed} in {seconds:.0f} s",
        f"held-out validation, {config.image_size} px:",
        f"  {'':26s} {'MAE':>7s} {'adaptive F-beta':>16s}",
    ]
    lines += [f"  {label:26s} {v[f'{key}/mae']:7.4f} {v[f'{key}/adp_f']:16.4f}" for label, key in rows]
    lines.append(f"checkpoint: {result.checkpoint}")
    return "\n".join(lines)


def run() -> None:
    """The console script (`menet-train`): `main` as the process's command."""
    cli.start(main, reuse_memory=True)


if __name__ == "__main__":
    run()
