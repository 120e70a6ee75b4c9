"""Where the time of one train step goes: every XLA operation of a traced step, grouped by kind and by layer.

    python benchmarks/profile_step.py --size 224 --width 32 --batch 5      # the paper configuration
    python benchmarks/profile_step.py --size 64 --width 8 --batch 5 --top 10 [--impl plain]

Traces one step (after a warm-up) with `jax.profiler`, reads the trace back with `jax.profiler.ProfileData` and
maps each executed operation to the layer it came from through the compiled HLO's `op_name` metadata. The times
are per-thread sums, so on 2 cores they add up to about twice the step's wall time. Needs no TensorBoard.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
from pathlib import Path

# Kind of an executed XLA operation, from its name (first match wins).
KINDS = [
    ("convolution / matmul", r"^(ynn_fusion|convolution|conv_general|dot|custom-call)"),
    ("sort / scatter (mining)", r"^(sort|scatter|gather)"),
    ("slice / pad / copy / transpose", r"(slice|copy|transpose|pad|concatenate|reverse|bitcast_fusion)"),
    ("reduction", r"reduce"),
    ("elementwise fusion", r"fusion"),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=5)
    p.add_argument(
        "--impl", choices=["auto", "mixed", "fast", "plain"], help="convolution formulation (the config's conv field)"
    )
    p.add_argument("--top", type=int, default=20, help="how many single operations to list")
    return p.parse_args(argv)


def op_sources(hlo_text: str) -> dict:
    """Instruction name -> the `op_name`s of its metadata and of the computation it calls (fusions); for a copy
    XLA inserted (no metadata), those of its operands, or the name of the parameter it copies."""
    bodies = {
        m.group(1): m.group(2) for m in re.finditer(r"^(?:ENTRY )?%([\w.\-]+) .*?\{\n(.*?)^\}", hlo_text, re.M | re.S)
    }
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$", hlo_text, re.M)}

    def sources(name, depth=0):
        line = lines.get(name, "")
        called = re.search(r"calls=%([\w.\-]+)", line)
        found = re.findall(r'op_name="([^"]*)"', line + (bodies.get(called.group(1), "") if called else ""))
        if not found and name.startswith("state_params"):
            return [name]
        operands = re.search(r"\w\((%[^)]*)\)", line)
        for operand in re.findall(r"%([\w.\-]+)", operands.group(1)) if operands and depth < 3 else []:
            found = found or sources(operand, depth + 1)
        return found

    return {name: sources(name) for name in lines}


def layer_of(op_names) -> str:
    """The MEnet submodule (E0_block0, D1_up, side_E2, ...) forward or backward, the loss, or the optimizer."""
    for name in op_names:
        found = re.search(r"MEnet\)*/([A-Za-z0-9]+_[A-Za-z0-9_]+?)(?:/|$)", name)
        if found:
            return ("backward " if "transpose(" in name else "forward ") + found.group(1)
    text = " ".join(op_names)
    if "state_params" in text or "state.params" in text:
        return "parameter copies (layouts)"
    if "argsort" in text or "jvp()" in text:
        return "loss and mining"
    return "optimizer and gradient norm" if op_names else "unattributed"


def kind_of(op: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, op)), "other")


def trace_step(args):
    """Executed XLA operations of one traced step: {name: total ns}, and the step's wall time."""
    import jax
    from jax.profiler import ProfileData
    from train_step import build

    _, state, batch, step = build(args.size, args.width, args.batch, "float32")
    started = time.perf_counter()
    compiled = step.compile(state, batch)  # a TrainStep: the gradient and the update program
    print(f"compile {time.perf_counter() - started:.1f} s", flush=True)
    for _ in range(2):  # the first call also touches fresh memory
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as logdir:
        jax.profiler.start_trace(logdir)
        started = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        wall = time.perf_counter() - started
        jax.profiler.stop_trace()
        trace = next(Path(logdir).rglob("*.xplane.pb"))
        data = ProfileData.from_file(str(trace))
    ops = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):  # XLA's worker threads; skip Python and the executor itself
                continue
            for event in line.events:
                if not event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
                    ops[event.name] += event.duration_ns
    return ops, wall, op_sources(compiled.gradients.as_text() + "\n" + compiled.update.as_text())


def table(title, counter, total):
    print(f"\n{title:<44s} {'s':>8s} {'share':>7s}")
    for key, ns in counter.most_common():
        print(f"{key[:44]:<44s} {ns / 1e9:8.3f} {ns / total:7.1%}")


def main(argv=None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import jax
    import train_step

    train_step.CONV = args.impl or train_step.CONV

    from menet_jax.core.layers import conv_impl

    ops, wall, sources = trace_step(args)
    total = sum(ops.values())
    print(
        f"device: {jax.default_backend()} ({os.cpu_count()} CPUs), convolutions: {conv_impl(train_step.CONV)}, "
        f"jax {jax.__version__}"
    )
    print(
        f"{args.size}px w{args.width} b{args.batch}: traced step {wall:.2f} s wall, {total / 1e9:.2f} s of operations "
        f"over all threads, {len(ops)} operations"
    )
    by_kind, by_layer = collections.Counter(), collections.Counter()
    for op, ns in ops.items():
        by_kind[kind_of(op)] += ns
        by_layer[layer_of(sources.get(op, []))] += ns
    table("kind", by_kind, total)
    by_layer_top = collections.Counter(dict(by_layer.most_common(args.top)))
    table(f"layer (top {args.top})", by_layer_top, total)
    print(f"\n{'operation (top %d)' % args.top:<32s} {'s':>8s}  source")
    for op, ns in ops.most_common(args.top):
        names = sources.get(op, [])
        print(f"{op[:32]:<32s} {ns / 1e9:8.3f}  {(names[0] if names else '?')[-90:]}")


if __name__ == "__main__":
    from menet_jax.runtime.host_memory import reexec_with_reused_memory

    reexec_with_reused_memory()
    main()
