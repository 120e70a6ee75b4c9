"""Robustness toolkit: distortions and the distorted-evaluation protocol (Table II, Fig. 9), the ImageNet-C
corruptions and PGD attacks, Jacobian statistics
and local norms (Table III, Eq. 12), certified Lipschitz bounds (Eq. 13). The norm estimators and bounds take
any JAX function of an image; see docs/robustness.md.

Names are imported lazily, so `python -m robustness.lipschitz` (and the other CLIs) run their module only once.
"""

import importlib

_EXPORTS = {
    "attacks": ("pgd", "random_start"),
    "corruptions": ("corrupt",),
    "distortions": ("awgn", "distort", "distort_batch", "image_rng", "jpeg", "severity_levels"),
    "lipschitz": ("LipschitzError", "conv_fft_bound", "elementwise_bound", "layerwise_bound"),
    "norms": (
        "directional_estimates",
        "exact_norms",
        "frobenius_hutchinson",
        "jacobian_matrix",
        "power_iteration",
        "spectral_norm",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"robustness.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'robustness' has no attribute {name!r}")
