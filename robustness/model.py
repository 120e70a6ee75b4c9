"""The one calling convention of every analysis in robustness/: a model is a function `f(params, x)`.

* `params`: any pytree (Flax variables, a dict of arrays), or None for a model that holds its own weights (a black
  box: `certify.predictor_maps`). Analyses differentiate with respect to `x` only; `params` are constants.
* `x`: float32 images (N, H, W, 3) on the 0..255 scale (what a camera gives, before any normalisation: the model
  normalises its own input). Budgets, noise levels, radii and norms are all on that scale.
* returns: saliency maps (N, H, W), in [0, 1] where a threshold or a cross entropy reads them (attacks,
  certification, evaluation). The norm estimators and the Lipschitz bounds take any array or pytree output (it is
  flattened), e.g. logits.

Every public analysis takes `(f, params, x, ...)` in that order, as optax and jax_verify take a function:
`norms.spectral_norm(f, params, x)`, `lipschitz.layerwise_bound(f, params, x)`, `jacobian.analyse_image(f, params,
x)`, `attacks.pgd(f, params, x, y, eps=...)`, `certify.certify_image(f, params, image, key)`. They jit `f` as a
static argument and `params` as a traced one, so one compilation serves any weights: define `f` once (a module-level
function or one `lambda` kept in a variable), not anew per call. The Lipschitz bounds are the exception by design:
they read the jaxpr of `x -> f(params, x)` with the weights as constants.

MEnet's adapter is `menet_jax.api.network_function(config, output=...)`, which returns such an `f(variables,
images)`; any Flax module is one with `f = lambda params, x: module.apply(params, x)`. Results are dataclasses with a
`to_json()` (a JSON-ready dict). For the distortions and corruptions (model-free, uint8 -> uint8) and
`robustness.evaluate` (a predictor: list of uint8 images -> maps), `as_predictor(f, params, size)` is the bridge;
`predictor_maps(predict, size)` goes the other way, a black-box predictor as a model `f(None, x)` (forward only: for
certification, not for gradients).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax import api


def check_maps(maps_shape, images_shape) -> None:
    """One-line ConfigError unless a model gave maps (N, H, W) for images (N, H, W, C)."""
    maps_shape, images_shape = tuple(maps_shape), tuple(images_shape)
    if maps_shape != images_shape[:3]:
        raise api.ConfigError(
            f"the model returned maps of shape {maps_shape} for images of shape {images_shape}: "
            f"f(params, x) must map (N, H, W, 3) images to (N, H, W) maps (robustness.model)"
        )


def check_model(f, params, x) -> None:
    """`check_maps` on the shape `f(params, x)` would have (traced, not run)."""
    check_maps(jax.eval_shape(f, params, jax.ShapeDtypeStruct(np.shape(x), jnp.float32)).shape, np.shape(x))


def as_predictor(f, params, size: int, *, batch_size: int = 8):
    """`f(params, x)` as a predictor of `robustness.evaluate`: `predict(list of uint8 (H, W, 3) images)` -> one
    (size, size) map per image. Each image is resized to size x size (bilinear, `api.resize_input`, as MEnet's
    Predictor does); batches are padded to `batch_size` images, so `f` compiles once."""
    check_model(f, params, np.zeros((batch_size, size, size, 3), np.float32))
    forward = jax.jit(f)

    def predict(images):
        x = np.stack([api.resize_input(np.asarray(image, np.uint8), size) for image in images]).astype(np.float32)
        maps = []
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), axis=0)])
            maps += list(np.asarray(forward(params, padded), np.float32)[: len(batch)])
        return maps

    return predict


def predictor_maps(predict, size: int):
    """A black-box predictor (list of uint8 (S, S, 3) images -> one map of any size, or one {name: map} dict with a
    single entry, per image) as the model f(None, float images (B, S, S, 3)) -> (B, S, S): it holds its own weights,
    so params is None. The images are clipped to 0..255 and rounded to uint8 (its interface; a certificate covers
    the rounding, it is part of the classifier), its maps clipped to [0, 1] and resized to S x S (bilinear)."""

    def f(params, images):
        if params is not None:
            raise api.ConfigError("a predictor holds its own weights: call its model with params None")
        batch = np.clip(np.rint(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)
        outputs = list(predict(list(batch)))
        if len(outputs) != len(batch):
            raise api.ConfigError(f"the predictor returned {len(outputs)} maps for {len(batch)} images")
        maps = []
        for m in outputs:
            if isinstance(m, dict):
                if len(m) != 1:
                    raise api.ConfigError(f"the predictor returned {len(m)} maps per image; a model gives one")
                m = next(iter(m.values()))
            m = np.clip(np.asarray(m, np.float32), 0.0, 1.0)
            maps.append(m if m.shape == (size, size) else api.resize_to(m, size, size))
        return np.stack(maps)

    return f
