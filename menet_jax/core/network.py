"""MEnet as a function: the one place where variables and images become maps.

`network_function(config, output=...)` gives `f(variables, images, key=None)`; every consumer builds on it:
`predict_function` (jitted, what `inference.Predictor`, training's validation and the compile-in-child factory
run), the ONNX/StableHLO export, and every robustness analysis through `menet_jax.api` (Jacobian norms,
Lipschitz bounds, attacks). Close over the variables (`functools.partial(f, variables)`) for an `f(images)`.

Outputs (`OUTPUTS`):
  maps            {"metric", "ce"}: both saliency maps in [0, 1] (`saliency.saliency_maps`: normalised per image,
                  or raw with `normalize=False`)
  metric, ce      one of those maps
  salient_prob    the logit head's softmax probability of "salient" (the raw CE map)
  metric_distance the Eq. 5 distance of each normalised feature to the background mean (0..2; the raw metric map
                  is half of it)
  heads           {"features", "logits"}: the network's two heads as `MEnet.apply` returns them
  features, logits

Images are (N, S, S, 3) on the 0..255 scale (S = config.image_size). BatchNorm uses the running statistics unless
`batch_stats="batch"` (each batch's own statistics, as the authors' robustness script ran the network; the updated
statistics are dropped). The convolution formulation and the compute dtype are the config's (`Config.conv`,
`Config.dtype`): replace them (`dataclasses.replace`) for another runtime or an analysis.
"""

from __future__ import annotations

import jax

from menet_jax.core.config import Config
from menet_jax.core.model import MEnet
from menet_jax.core.saliency import metric_distance, saliency_maps, salient_probability
from menet_jax.runtime.xla import compiler_options

OUTPUTS = ("maps", "metric", "ce", "salient_prob", "metric_distance", "heads", "features", "logits")


def network_function(
    config: Config,
    *,
    output: str = "maps",
    normalize: bool = True,
    background: str = "eq5",
    batch_stats: str = "running",
):
    """`f(variables, images, key=None)` -> the chosen `output` of `config`'s network (module docstring). `key` is
    needed only for the authors' random border background (`background="border"`)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if batch_stats not in ("running", "batch"):
        raise ValueError(f"batch_stats must be running or batch, got {batch_stats!r}")
    model = MEnet.from_config(config)

    def f(variables, images, key=None):
        if batch_stats == "batch":
            heads, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
        else:
            heads = model.apply(variables, images, train=False)
        if output in ("heads", "features", "logits"):
            return heads if output == "heads" else heads[output]
        if output == "salient_prob":
            return salient_probability(heads["logits"])
        if output == "metric_distance":
            return metric_distance(
                heads["features"], salient_probability(heads["logits"]), background=background, key=key
            )
        maps = saliency_maps(heads, background=background, key=key, normalize=normalize)
        return maps if output == "maps" else maps[output]

    return f


def predict_function(config: Config, *, background: str = "eq5", normalize: bool = True):
    """Jitted `(variables, images, key=None)` -> {"metric", "ce"} maps at the network's resolution."""
    return jax.jit(
        network_function(config, background=background, normalize=normalize), compiler_options=compiler_options()
    )
