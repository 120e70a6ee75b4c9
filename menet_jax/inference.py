"""A trained MEnet as a function from images of any size to saliency maps at those sizes.

The network's input size is fixed, so images are resized in (bilinear, as the authors did) and the maps resized
back to each image's original size; batches are padded to one shape, so the network compiles once.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from menet_jax import checkpoint as ckpt
from menet_jax.config import Config, ConfigError
from menet_jax.model import MEnet, parameter_shapes
# The image helpers live in the jax-free `outputs` (shared with `predict --backend onnx`); re-exported here.
from menet_jax.outputs import MAPS, load_photo, resize_input, resize_to  # noqa: F401


def workdir_config(workdir) -> Config:
    """The config a training workdir was trained with (its config.json)."""
    config_file = Path(workdir) / "config.json"
    if not config_file.exists():
        raise ConfigError(f"{workdir}: not a training workdir (no config.json); train one with "
                          f"python -m menet_jax.train --workdir {workdir}")
    try:
        saved = json.loads(config_file.read_text())
        saved["lr_boundaries"] = tuple(saved.get("lr_boundaries", ()))
        return Config(**saved)
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise ConfigError(f"{config_file}: not a config written by train ({' '.join(str(error).split())})") from None


# The --checkpoint option of every CLI that runs a trained network.
CHECKPOINT_HELP = "training workdir (latest checkpoint) or exported weights .npz (default: the shipped weights)"
# The robustness commands' version: Jacobians, bounds and distortion scores are computed in float32.
CHECKPOINT_HELP_FLOAT32 = CHECKPOINT_HELP + "; run in float32 whatever dtype it was trained with"


def check_variables(variables, config: Config, source) -> None:
    """Refuse weights that do not fit `config`'s network or hold NaN / inf (a diverged run): the network would
    fail deep inside flax, or write black maps and exit 0."""
    expected = traverse_util.flatten_dict(parameter_shapes(MEnet.from_config(config)), sep="/")
    got = traverse_util.flatten_dict(dict(variables), sep="/")
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        name, problem = (missing[0], "missing") if missing else (extra[0], "not in the network")
        raise ConfigError(f"{source}: the weights do not fit the config's network ({name} {problem}; "
                          f"{len(missing)} missing, {len(extra)} extra)")
    for name, value in got.items():
        if tuple(np.shape(value)) != tuple(expected[name].shape):
            raise ConfigError(f"{source}: {name} has shape {tuple(np.shape(value))}, the network's is "
                              f"{tuple(expected[name].shape)}")
        bad = np.size(value) - np.count_nonzero(np.isfinite(np.asarray(value)))
        if bad:
            raise ConfigError(f"{source}: {name} has {bad} NaN or infinite values (a diverged run?); "
                              "use an earlier checkpoint")


class Predictor:
    """`predictor(images)` -> one dict {"metric": map, "ce": map} per image, maps float32 in [0, 1] at image size."""

    def __init__(self, variables, config: Config, *, batch_size: int = 8, background: str = "eq5",
                 normalize: bool = True, dtype: str | None = None, source="the weights"):
        """`normalize=False` gives the raw maps (`saliency.saliency_maps`); `dtype` ("float32" or "bfloat16")
        replaces the compute dtype the network was trained with. The weights are checked first
        (`check_variables`, naming them as `source`)."""
        from menet_jax.trainer import make_predict_fn
        check_variables(variables, config, source)
        if dtype is not None:
            config = dataclasses.replace(config, dtype=dtype)
        self.config, self.batch_size = config, batch_size
        self.variables = jax.device_put(variables)
        self._predict = make_predict_fn(MEnet.from_config(config), background=background, normalize=normalize)

    @classmethod
    def from_checkpoint(cls, workdir, step: int | None = None, **kwargs) -> "Predictor":
        """The latest (or given) checkpoint of a training workdir, with the config it was trained with."""
        config = workdir_config(workdir)
        try:
            variables = ckpt.load_variables(workdir, step)
        except FileNotFoundError as error:
            raise ConfigError(str(error)) from None
        return cls(variables, config, source=workdir, **kwargs)

    @classmethod
    def load(cls, checkpoint=None, **kwargs) -> "Predictor":
        """A training workdir, an exported weights file (.npz), or the shipped weights when `checkpoint` is None."""
        if checkpoint is not None and Path(checkpoint).is_dir():
            return cls.from_checkpoint(checkpoint, **kwargs)
        from menet_jax import pretrained
        variables, config, _ = pretrained.load(checkpoint)
        return cls(variables, config, source=checkpoint or pretrained.WEIGHTS_DIR / pretrained.DEFAULT, **kwargs)

    def __call__(self, images):
        """images: a list of uint8 (H, W, 3) arrays of any sizes."""
        size, results = self.config.image_size, []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = np.zeros((self.batch_size, size, size, 3), np.uint8)
            for j, image in enumerate(chunk):
                batch[j] = resize_input(image, size)
            maps = jax.device_get(self._predict(self.variables, batch))
            for j, image in enumerate(chunk):
                h, w = image.shape[:2]
                results.append({name: resize_to(maps[name][j], h, w) for name in MAPS})
        return results
