"""Robustness toolkit: distortions and the distorted-evaluation protocol (Table II, Fig. 9), the ImageNet-C
corruptions, PGD, APGD and Square attacks, paired bootstrap intervals over images, Jacobian statistics and local
norms (Table III, Eq. 12), certified Lipschitz bounds (Eq. 13) and certification by randomized smoothing. Every
analysis takes any model as `(f, params, x)`, with `f(params, x)` mapping images on the 0..255 scale to maps, and
returns dataclasses with a `to_json()` (robustness.model states the convention); see docs/robustness.md and
docs/api.md.

Names are imported lazily, so `python -m robustness.lipschitz` (and the other CLIs) run their module only once.
"""

import importlib

_EXPORTS = {
    "attacks": ("AttackResult", "SquareResult", "apgd", "pgd", "random_start", "square"),
    "bootstrap": ("Interval", "difference_interval", "kept_difference_interval", "kept_interval", "mean_interval"),
    "certify": ("CertifiedMap", "CertifyResult", "certify_dataset", "certify_image"),
    "corruptions": ("corrupt",),
    "distortions": ("awgn", "distort", "distort_batch", "image_rng", "jpeg", "severity_levels"),
    "jacobian": ("ImageAnalysis", "analyse_image"),
    "lipschitz": ("LipschitzBound", "LipschitzError", "conv_fft_bound", "elementwise_bound", "layerwise_bound"),
    "model": ("as_predictor", "check_maps", "check_model", "predictor_maps"),
    "norms": (
        "DirectionalEstimate",
        "NormEstimate",
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
