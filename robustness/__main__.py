"""`python -m robustness SUBCOMMAND ...` (console script `menet-robustness`): evaluate | compare | jacobian |
lipschitz | certify | report, each with the flags of `python -m robustness.SUBCOMMAND`."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "evaluate": "distortions, corruptions and attacks (Table II, Fig. 9)",
    "compare": "several runs side by side as kept F-beta",
    "jacobian": "local Jacobian norms and Eq. 12 (Table III)",
    "lipschitz": "certified Lipschitz bounds (Eq. 13)",
    "certify": "certified saliency maps by randomized smoothing (SegCertify)",
    "report": "one report from the tools' JSON files",
}
# The commands whose runs last long restart with the malloc settings that reuse freed memory.
LONG_RUNNING = ("evaluate", "jacobian")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        usage = "\n".join(f"  {name:10s} {text}" for name, text in SUBCOMMANDS.items())
        asked = bool(argv) and argv[0] in ("-h", "--help")
        print(
            f"usage: menet-robustness SUBCOMMAND [options]  (SUBCOMMAND --help for its options)\n{usage}",
            file=sys.stdout if asked else sys.stderr,
        )
        return 0 if asked else 2
    # Imported by name: only the chosen subcommand's module (and its dependencies) is loaded.
    module = importlib.import_module(f"robustness.{argv[0]}")
    return module.main(argv[1:])


def run() -> None:
    """The `menet-robustness` console script."""
    from menet_jax.api import start  # JAX is loaded here, not for the usage text

    start(main, reuse_memory=len(sys.argv) > 1 and sys.argv[1] in LONG_RUNNING)


if __name__ == "__main__":
    run()
