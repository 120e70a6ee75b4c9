"""Train-step and inference speed of MEnet against the PyTorch peer, measured in one run; GPU throughput report.

    python benchmarks/train_step.py --size 128 --width 8 --batch 5
    python benchmarks/train_step.py --size 224 --width 32 --batch 5            # the paper configuration
    python benchmarks/train_step.py --size 224 --width 32 --batch 5 --memory   # + largest batch in 24 GiB
    python benchmarks/train_step.py --size 128 --width 8 --batch 5 --dtype bfloat16   # bf16, f32 and the peer
    python benchmarks/train_step.py --gpu-report                               # batch 5..64, f32 and bf16

The peer is ../shared/bench/torch_menet.py (MEnet in eager PyTorch), imported and stepped in this process,
alternating with our step, so both medians see the same machine load. The last line is the train-step ratio
(our median / the peer's). --impl plain (the config's `conv`) times the plain lax convolutions instead of the
CPU fast paths.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import sys
import time
from pathlib import Path

GIB = 2**30
PEER = Path(
    os.environ.get("MENET_TORCH_PEER", Path(__file__).resolve().parents[2] / "shared" / "bench" / "torch_menet.py")
)

# Dense peak TFLOP/s (no sparsity) by device_kind substring: (bf16, f32 without TF32). Vendor datasheets.
PEAK_TFLOPS = {
    "H200": (989.0, 67.0),
    "H100 PCIe": (756.0, 51.0),
    "H100": (989.0, 67.0),  # SXM
    "A100": (312.0, 19.5),
    "L40S": (362.0, 91.6),
    "L4": (121.0, 30.3),
    "A10G": (70.0, 31.2),
    "A10": (125.0, 31.2),
    "V100": (125.0, 15.7),  # bf16 unsupported: the fp16 tensor-core peak
    "T4": (65.0, 8.1),  # likewise fp16
    "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0),
    "TPU v5e": (197.0, 197.0),
    "TPU v5p": (459.0, 459.0),
}


def chip_peak(device_kind: str):
    """(bf16, f32) dense peak TFLOP/s of a known chip, or None (CPUs and unlisted chips)."""
    for name, peak in PEAK_TFLOPS.items():
        if name.lower() in device_kind.lower():
            return peak
    return None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after two warm-up steps) of each side")
    parser.add_argument(
        "--impl",
        choices=("auto", "mixed", "fast", "plain"),
        help="convolution formulation (the config's conv field; default auto)",
    )
    parser.add_argument("--no-peer", action="store_true", help="time our side only")
    parser.add_argument("--no-inference", action="store_true", help="skip the evaluation-mode forward comparison")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also estimate the largest batch whose train step fits in 24 GiB (one more compile)",
    )
    parser.add_argument(
        "--gpu-report",
        action="store_true",
        help="images/s, TFLOP/s and fraction of the chip's peak for --batches, f32 and bf16",
    )
    parser.add_argument("--batches", default="5,8,16,32,64", help="batch sizes of --gpu-report")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------- our side
CONV = "auto"  # the convolution formulation of every network built here (--impl)


def paper_config(size: int, width: int, batch: int, dtype: str):
    from menet_jax.core.config import get_config

    return get_config(
        "paper", [f"image_size={size}", f"width={width}", f"batch_size={batch}", f"dtype={dtype}", f"conv={CONV}"]
    )


def eval_forward_for(config):
    """The jitted evaluation-mode forward pass (a factory for `compilation.compile_programs`)."""
    import jax

    from menet_jax.core.model import MEnet
    from menet_jax.runtime.xla import compiler_options

    model = MEnet.from_config(config)
    return jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=compiler_options())


def build(size: int, width: int, batch: int, dtype: str):
    """Model, optimiser, mesh, replicated state, sharded random batch and the jitted (donating) train step."""
    import numpy as np

    from menet_jax.core.model import MEnet
    from menet_jax.training.distributed import data_mesh, replicate, shard_batch
    from menet_jax.training.state import create_state, make_optimizer
    from menet_jax.training.step import make_train_step

    config = paper_config(size, width, batch, dtype)
    model, tx, mesh = MEnet.from_config(config), make_optimizer(config), data_mesh()
    state = replicate(create_state(model, tx, config.seed), mesh)
    rng = np.random.default_rng(0)
    batch_arrays = shard_batch(
        {
            "image": rng.integers(0, 256, (batch, size, size, 3)).astype(np.uint8),
            "mask": (rng.random((batch, size, size)) > 0.7).astype(np.uint8),
        },
        mesh,
    )
    return model, state, batch_arrays, make_train_step(model, tx, config, mesh)


def compile_step(step, state, batch):
    started = time.perf_counter()
    compiled = step.compile(state, batch)
    return compiled, time.perf_counter() - started


def xla_peak_bytes(step):
    """Peak of XLA's buffers in a compiled `TrainStep`, the larger of its two programs: arguments + outputs - donated
    aliases + temporaries (None if unknown)."""
    try:
        return max(
            m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
            for m in (step.gradients.memory_analysis(), step.update.memory_analysis())
        )
    except Exception:  # not every backend implements it
        return None


def step_flops(step):
    """FLOPs of a compiled `TrainStep` (both programs) from XLA's cost analysis (None if unknown)."""
    try:
        costs = [program.cost_analysis() for program in (step.gradients, step.update)]
        return sum(float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]) for cost in costs)
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------------- the peer
def load_peer():
    """The torch_menet module, or None (with the reason printed) when torch or the file is missing."""
    # Steps alternate between the two sides: torch's OpenMP threads must not spin on the cores after the peer's step
    # while ours runs (they took 10-20 % of our step; passive waiting costs the peer about 5 %).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("peer: torch is not installed (pip install -e .[bench]); timing our side only")
        return None
    if not PEER.is_file():
        print(f"peer: {PEER} not found (set MENET_TORCH_PEER); timing our side only")
        return None
    spec = importlib.util.spec_from_file_location("torch_menet", PEER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PeerTrainer:
    """torch_menet's SGD step (as its main()), one call per step."""

    def __init__(self, peer, size, width, batch):
        import torch

        torch.manual_seed(0)
        self.torch, self.peer = torch, peer
        self.net = peer.MEnet(size, width)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-8)
        self.x = torch.rand(batch, 3, size, size) * 255
        self.y = (torch.rand(batch, 1, size, size) > 0.7).long()

    def step(self):
        self.net.train()
        self.opt.zero_grad()
        feat, logits = self.net(self.x)
        loss = self.peer.loss_fn(feat, logits, self.y)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def forward(self, batch):
        self.net.eval()
        with self.torch.no_grad():
            feat, logits = self.net(self.x[:batch])
        return float(feat[0, 0, 0, 0])


def alternate(sides, steps, warmup=2):
    """Median seconds of each callable in `sides` (None: not timed), run in turn after `warmup` calls each (the
    first steps of each side still grow the shared heap: page faults that later steps do not pay)."""
    timed = [side for side in sides if side is not None]
    for _ in range(warmup):
        for side in timed:
            side()
    seconds = {id(side): [] for side in timed}
    for _ in range(steps):
        for side in timed:
            started = time.perf_counter()
            side()
            seconds[id(side)].append(time.perf_counter() - started)
    return [statistics.median(seconds[id(side)]) if side is not None else None for side in sides]


def fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


# -------------------------------------------------------------------------------------------------------- modes
def train_and_inference(args):
    """Our train step and inference against the peer's; with --dtype bfloat16 our float32 step too, all three
    alternating in one run."""
    import jax

    from menet_jax.core.layers import conv_impl
    from menet_jax.runtime.compilation import compile_programs
    from menet_jax.runtime.xla import compiler_options
    from menet_jax.training.step import TrainStep, train_step_jobs

    peer = None if args.no_peer else load_peer()
    dtypes = [args.dtype] + (["float32"] if args.dtype != "float32" else [])
    ours = {}
    for dtype in dtypes:
        config = paper_config(args.size, args.width, args.batch, dtype)
        _, state, batch, _ = build(args.size, args.width, args.batch, dtype)
        # As `training.loop.train` does: compiled in a child process on CPU (menet_jax/runtime/compilation.py;
        # MENET_COMPILE=here compiles in this process), the train step alone first for its compile time, then the
        # forward passes.
        step_program = compile_programs(train_step_jobs(config, state, batch))
        side = {
            "state": state,
            "batch": batch,
            "step": TrainStep(*step_program.programs),
            "compile_s": step_program.seconds,
            "where": step_program.where,
        }
        side["xla_peak"] = xla_peak_bytes(side["step"])
        if not args.no_inference:
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            side["forwards"] = dict(
                zip(
                    (args.batch, 1),
                    compile_programs(
                        [(eval_forward_for, (config,), (variables, batch["image"][:b])) for b in (args.batch, 1)]
                    ).programs,
                )
            )

        def run(side=side):
            side["state"], metrics = side["step"](side["state"], side["batch"])
            return float(metrics["loss"])

        side["run"] = run
        run()
        ours[dtype] = side
    rss_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the peer allocates anything
    peer_trainer = PeerTrainer(peer, args.size, args.width, args.batch) if peer else None
    *ours_s, peer_s = alternate([ours[d]["run"] for d in dtypes] + [peer_trainer and peer_trainer.step], args.steps)

    first = ours[dtypes[0]]
    print(
        f"\ndevice: {jax.devices()[0].device_kind} ({jax.default_backend()}, {os.cpu_count()} CPUs), "
        f"convolutions: {conv_impl(CONV)}, "
        f"XLA options (gradient program): {compiler_options(training=True) or 'default'}, "
        f"jax {jax.__version__}, "
        f"compiled {'in a child process' if first['where'] == 'child' else 'in this process'}"
    )
    print(
        f"{'train step':30s} {'ours s':>8s} {'peer s':>8s} {'ratio':>6s} {'img/s':>7s} {'compile s':>9s} "
        f"{'XLA peak GiB':>12s} {'RSS GiB':>8s}"
    )
    for dtype, seconds in zip(dtypes, ours_s):
        side = ours[dtype]
        print(
            f"{f'{args.size}px w{args.width} b{args.batch} {dtype}':30s} {seconds:8.3f} {fmt(peer_s, '8.3f'):>8s} "
            f"{fmt(peer_s and seconds / peer_s, '6.2f'):>6s} {args.batch / seconds:7.2f} {side['compile_s']:9.1f} "
            f"{fmt(side['xla_peak'] and side['xla_peak'] / GIB, '12.2f'):>12s} {rss_ours / GIB:8.2f}"
        )

    if not args.no_inference:
        print(f"{'inference (eval forward)':30s} {'ours s':>8s} {'peer s':>8s} {'ratio':>6s} {'img/s':>7s}")
        for b in (args.batch, 1):
            runs = []
            for dtype in dtypes:
                side = ours[dtype]
                variables = {"params": side["state"].params, "batch_stats": side["state"].batch_stats}
                images = side["batch"]["image"][:b]
                runs.append(lambda f=side["forwards"][b], v=variables, x=images: float(f(v, x)["logits"][0, 0, 0, 0]))
            *f_ours, f_peer = alternate(runs + [peer_trainer and (lambda: peer_trainer.forward(b))], args.steps)
            for dtype, seconds in zip(dtypes, f_ours):
                print(
                    f"{f'{args.size}px w{args.width} b{b} {dtype}':30s} {seconds:8.3f} {fmt(f_peer, '8.3f'):>8s} "
                    f"{fmt(f_peer and seconds / f_peer, '6.2f'):>6s} {b / seconds:7.2f}"
                )

    if args.memory:
        memory_report(args, first["xla_peak"])
    for dtype, seconds in zip(dtypes, ours_s):
        print(f"train step ratio (ours {dtype} / peer): {fmt(peer_s and seconds / peer_s, '.2f')}")
    if len(dtypes) > 1:
        print(f"train step ratio ({dtypes[0]} / float32): {ours_s[0] / ours_s[1]:.2f}")


def memory_report(args, peak_at_batch):
    """Largest batch whose train step fits in 24 GiB: XLA's peak is affine in the batch; fit it from two
    compiled sizes (the measured batch and twice it)."""
    import jax

    other = 2 * args.batch
    _, state, batch, step = build(args.size, args.width, other, args.dtype)
    compiled, _ = compile_step(step, state, batch)
    peak_other = xla_peak_bytes(compiled)
    del state, batch, compiled
    jax.clear_caches()
    if peak_at_batch is None or peak_other is None:
        print("memory: this backend has no memory_analysis")
        return
    per_image = (peak_other - peak_at_batch) / (other - args.batch)
    fixed = peak_at_batch - per_image * args.batch
    largest = int((24 * GIB - fixed) // per_image) if per_image > 0 else None
    print(
        f"memory ({args.size}px w{args.width} {args.dtype}, state donated): "
        f"batch {args.batch} {peak_at_batch / GIB:.2f} GiB, "
        f"batch {other} {peak_other / GIB:.2f} GiB -> {fixed / GIB:.2f} GiB fixed + {per_image / GIB:.3f} GiB/image; "
        f"largest batch in 24 GiB: {largest}"
    )


def gpu_report(args):
    """Throughput against the chip's dense peak: FLOPs per step from XLA's cost analysis of the compiled step."""
    import jax

    kind = jax.devices()[0].device_kind
    peak = chip_peak(kind)
    print(
        f"device: {kind} ({jax.default_backend()}, {jax.device_count()} device(s)); dense peak TFLOP/s "
        + (f"bf16 {peak[0]:g}, f32 {peak[1]:g}" if peak else "unknown for this device")
    )
    print(
        f"{'config':30s} {'step s':>8s} {'img/s':>8s} {'GFLOP/step':>10s} {'TFLOP/s':>8s} {'% peak':>7s} "
        f"{'compile s':>9s} {'XLA peak GiB':>12s}"
    )
    for dtype in ("float32", "bfloat16"):
        for b in (int(v) for v in args.batches.split(",")):
            name = f"{args.size}px w{args.width} b{b} {dtype}"
            try:
                _, state, batch, step = build(args.size, args.width, b, dtype)
                compiled, compile_s = compile_step(step, state, batch)
                holder = {"state": state}

                def run():
                    # The names are bound in this iteration; the `del` below only frees them for the next one.
                    holder["state"], metrics = compiled(holder["state"], batch)  # noqa: F821
                    return float(metrics["loss"])

                (seconds,) = alternate([run], args.steps)
            except Exception as error:  # out of memory at the larger batches: report and go on
                print(f"{name:30s} failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}")
                jax.clear_caches()
                continue
            flops = step_flops(compiled)
            tflops = flops / seconds / 1e12 if flops else None
            chip = peak and (peak[0] if dtype == "bfloat16" else peak[1])
            share = 100 * tflops / chip if (tflops and chip) else None
            xla_peak = xla_peak_bytes(compiled)
            print(
                f"{name:30s} {seconds:8.4f} {b / seconds:8.1f} {fmt(flops and flops / 1e9, '10.1f'):>10s} "
                f"{fmt(tflops, '8.2f'):>8s} {fmt(share, '7.1f'):>7s} {compile_s:9.1f} "
                f"{fmt(xla_peak and xla_peak / GIB, '12.2f'):>12s}"
            )
            del state, batch, compiled
            jax.clear_caches()


def main(argv=None) -> None:
    global CONV
    args = parse_args(argv)
    CONV = args.impl or CONV
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.gpu_report:
        gpu_report(args)
    else:
        train_and_inference(args)


if __name__ == "__main__":
    from menet_jax.runtime.host_memory import reexec_with_reused_memory

    reexec_with_reused_memory()
    main()
