"""Robustness toolkit: distortions and the distorted-evaluation protocol (Table II, Fig. 9), Jacobian statistics
and local norms (Table III, Eq. 12), certified Lipschitz bounds (Eq. 13). The norm estimators and bounds take
any JAX function of an image; see docs/robustness.md."""
from robustness.distortions import awgn, distort, distort_batch, image_rng, jpeg, severity_levels
from robustness.lipschitz import LipschitzError, conv_fft_bound, elementwise_bound, layerwise_bound
from robustness.norms import (directional_estimates, exact_norms, frobenius_hutchinson, jacobian_matrix,
                              power_iteration, spectral_norm)

__all__ = ["LipschitzError", "awgn", "conv_fft_bound", "directional_estimates", "distort", "distort_batch",
           "elementwise_bound", "exact_norms", "frobenius_hutchinson", "image_rng", "jacobian_matrix", "jpeg",
           "layerwise_bound", "power_iteration", "severity_levels", "spectral_norm"]
