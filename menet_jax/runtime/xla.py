"""XLA options for MEnet's programs, and the persistent compilation cache."""

from __future__ import annotations

import functools

import jax

from menet_jax.runtime import settings

# XLA's CPU backend hands convolutions to YNNPACK by default ("individual convolution" library fusions). Those run
# on one thread, with a weight gradient several times slower than XLA's Eigen convolution kernels, which use every
# core, so convolutions are kept on XLA's own kernels. The other YNNPACK fusion kinds are kept per kind of program
# (BENCHMARKS.md, "per-program XLA options", has the timings behind each choice):
# - elementwise fusions (ELTWISE) only for the gradient of a train step. There they take XLA's transposing copies
#   out of the BatchNorm backward fusions. In evaluation mode BN is elementwise, and they would swallow whole
#   chains of BN -> ReLU -> conv into one slower YNNPACK call.
# - matrix products and reductions in every program.
_YNN_FUSION_KINDS = {True: ("INDIVIDUAL_DOT", "ELTWISE", "REDUCE"), False: ("INDIVIDUAL_DOT", "REDUCE")}


@functools.cache
def compiler_options(training: bool = False) -> dict:
    """XLA options for jitting MEnet's programs (`jax.jit(f, compiler_options=compiler_options(...))`): on CPU,
    convolutions on XLA's own kernels (the "mixed" convolution rule assumes it) and the YNNPACK fusions that pay
    off for a training step (`training=True`: the network's train-mode backward pass) or for everything else
    (forward passes and evaluation-mode derivatives); none on accelerators, or where this jaxlib's XLA does not know
    the option (it is experimental)."""
    if jax.default_backend() != "cpu":
        return {}
    options = {
        "xla_cpu_experimental_ynn_fusion_type": ",".join(
            f"LIBRARY_FUSION_TYPE_{kind}" for kind in _YNN_FUSION_KINDS[training]
        )
    }
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
    except Exception:  # an unknown option or enum value: XLA's error types differ between jaxlib versions
        return {}
    return options


def enable_compilation_cache() -> None:
    """Persistent XLA cache (JAX_COMPILATION_CACHE_DIR, default ~/.cache/menet_jax/xla): a repeated run skips
    compiling its programs (tens of seconds on a CPU), except a train step compiled in a child (`compilation`)."""
    jax.config.update("jax_compilation_cache_dir", str(settings.compilation_cache_dir()))
