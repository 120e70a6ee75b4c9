"""A trained MEnet as a function from images of any size to saliency maps at those sizes, and the one loader of
trained networks (a training workdir, an exported .npz, or the shipped weights).

The network's input size is fixed, so images are resized in (bilinear, as the authors did) and the maps resized
back to each image's original size; batches are padded to one shape, so the network compiles once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from menet_jax.core.config import Config, get_config
from menet_jax.core.model import MEnet, init_variables, parameter_shapes
from menet_jax.core.network import predict_function
from menet_jax.errors import WeightsError
from menet_jax.io import checkpoint, weights
from menet_jax.io.images import MAPS, resize_input, resize_to


def check_variables(variables, config: Config, source) -> None:
    """Refuse weights that do not fit `config`'s network or hold NaN / inf (a diverged run): the network would
    fail deep inside flax, or write black maps and exit 0."""
    expected = traverse_util.flatten_dict(parameter_shapes(MEnet.from_config(config)), sep="/")
    got = traverse_util.flatten_dict(dict(variables), sep="/")
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        name, problem = (missing[0], "missing") if missing else (extra[0], "not in the network")
        raise WeightsError(
            f"{source}: the weights do not fit the config's network ({name} {problem}; "
            f"{len(missing)} missing, {len(extra)} extra)"
        )
    for name, value in got.items():
        if tuple(np.shape(value)) != tuple(expected[name].shape):
            raise WeightsError(
                f"{source}: {name} has shape {tuple(np.shape(value))}, the network's is {tuple(expected[name].shape)}"
            )
        bad = np.size(value) - np.count_nonzero(np.isfinite(np.asarray(value)))
        if bad:
            raise WeightsError(
                f"{source}: {name} has {bad} NaN or infinite values (a diverged run?); use an earlier checkpoint"
            )


def load_network(
    checkpoint_path=None, *, preset: str | None = None, seed: int = 0, step: int | None = None, dtype: str | None = None
):
    """(variables, config) of a network, checked (`check_variables`): a training workdir (its latest intact
    checkpoint, or `step`, with the config it was trained with), an exported weights file (.npz), the shipped
    weights when `checkpoint_path` is None, or with `preset` (a config name) that preset's network with fresh
    weights drawn with `seed`. `dtype` ("float32" or "bfloat16") replaces the compute dtype it was trained with."""
    variables, config, source = _read_network(checkpoint_path, preset=preset, seed=seed, step=step)
    check_variables(variables, config, source)
    if dtype is not None:
        config = dataclasses.replace(config, dtype=dtype)
    return variables, config


def _read_network(checkpoint_path, *, preset=None, seed=0, step=None):
    """(variables, config, how to name them in an error) as `load_network` reads them, not yet checked."""
    if preset is not None:
        config = get_config(preset)
        variables, source = init_variables(MEnet.from_config(config), seed), f"a fresh {preset} network"
    elif checkpoint_path is not None and Path(checkpoint_path).is_dir():
        config = checkpoint.workdir_config(checkpoint_path)
        try:
            variables = checkpoint.load_variables(checkpoint_path, step)
        except FileNotFoundError as error:
            raise WeightsError(str(error)) from None
        source = checkpoint_path
    else:
        variables, config, _ = weights.load(checkpoint_path)
        source = checkpoint_path or weights.WEIGHTS_DIR / weights.DEFAULT
    return variables, config, source


class Predictor:
    """`predictor(images)` -> one dict {"metric": map, "ce": map} per image, maps float32 in [0, 1] at image size."""

    def __init__(
        self,
        variables,
        config: Config,
        *,
        batch_size: int = 8,
        background: str = "eq5",
        normalize: bool = True,
        dtype: str | None = None,
        source="the weights",
    ):
        """`normalize=False` gives the raw maps (`saliency.saliency_maps`); `dtype` ("float32" or "bfloat16")
        replaces the compute dtype the network was trained with. The weights are checked first
        (`check_variables`, naming them as `source`)."""
        check_variables(variables, config, source)
        if dtype is not None:
            config = dataclasses.replace(config, dtype=dtype)
        self.config, self.batch_size = config, batch_size
        self.variables = jax.device_put(variables)
        self.predict_batch = predict_function(config, background=background, normalize=normalize)

    @classmethod
    def load(cls, checkpoint_path=None, *, step: int | None = None, dtype: str | None = None, **kwargs) -> "Predictor":
        """A training workdir, an exported weights file (.npz), or the shipped weights when None (`load_network`;
        the weights are checked once, by the constructor)."""
        variables, config, source = _read_network(checkpoint_path, step=step)
        return cls(variables, config, source=source, dtype=dtype, **kwargs)

    def __call__(self, images):
        """images: a list of uint8 (H, W, 3) arrays of any sizes."""
        size, results = self.config.image_size, []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = np.zeros((self.batch_size, size, size, 3), np.uint8)
            for j, image in enumerate(chunk):
                batch[j] = resize_input(image, size)
            maps = jax.device_get(self.predict_batch(self.variables, batch))
            for j, image in enumerate(chunk):
                h, w = image.shape[:2]
                results.append({name: resize_to(maps[name][j], h, w) for name in MAPS})
        return results
