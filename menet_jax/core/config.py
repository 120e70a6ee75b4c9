"""Run configuration: one flat dataclass, three presets, and `key=value` overrides from the command line.

Presets:
  paper  the authors' setting: 224 px, width 32, batch 5, SGD 0.1 divided by 10 at 60k/90k/100k, 110k steps.
         python -m menet_jax.train --config paper --data-dir DIR
  demo   what `python -m menet_jax.train` runs with no arguments: a small MEnet on the generated dataset,
         a few minutes on two CPU cores.
  tiny   the smallest sensible network, for tests and smoke runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
from pathlib import Path
from typing import Tuple

from menet_jax.errors import ConfigError

CONV_FORMULATIONS = ("auto", "mixed", "fast", "plain")


@dataclasses.dataclass(frozen=True)
class Config:
    # network
    image_size: int = 224  # square input side; must be a multiple of 32
    width: int = 32  # channels of the first scale; doubled at each of the 5 downsamplings
    dtype: str = "float32"  # compute dtype: float32 or bfloat16 (parameters and BN statistics stay f32)
    input_scale: str = "raw"  # raw: 0..255 as the authors; normalized: x / 127.5 - 1
    bn_momentum: float = 0.999
    bn_epsilon: float = 1e-5
    conv: str = "auto"  # convolution formulation (core.layers.conv_impl): auto, mixed, fast or plain;
    # the same function in each, computed differently (export uses plain)
    # loss
    loss: str = "official"  # official: the authors' gradient; paper: autodiff of Eq. 3-4 as written;
    # ce: cross entropy only (the CE-only ablation of Table IV)
    ce_weight: float = 1.0  # lambda of Eq. 4 (the official variant has fixed weights, see loss.py)
    # optimiser (Caffe SGD)
    batch_size: int = 5
    steps: int = 110_000
    learning_rate: float = 0.1
    lr_boundaries: Tuple[int, ...] = (60_000, 90_000, 100_000)
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-8
    bias_lr_mult: float = 2.0  # Caffe lr_mult 2 (and decay 0) on conv biases
    # data
    seed: int = 0
    shuffle: bool = False  # the authors read training images in a fixed order
    augment: bool = True  # random 90-100 % crop, resize, horizontal flip
    crop_min: float = 0.9
    input_noise: float = 0.0  # std of Gaussian noise added to each training input, 0..255 scale (0: none); the base
    # network of a smoothed classifier is trained under its certification noise (Cohen et al. 2019)
    val_size: int = 100  # held-out images (from --data-dir, or generated)
    train_size: int = 2000  # generated training images when no --data-dir is given
    # bookkeeping
    log_every: int = 50
    eval_every: int = 5_000
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3

    def __post_init__(self):
        if self.image_size % 32 or self.image_size < 32:
            raise ConfigError(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if self.width < 1:
            raise ConfigError(f"width must be >= 1, got {self.width}")
        for key, allowed in (
            ("dtype", ("float32", "bfloat16")),
            ("input_scale", ("raw", "normalized")),
            ("loss", ("official", "paper", "ce")),
            ("conv", CONV_FORMULATIONS),
        ):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        for key in (
            "batch_size",
            "steps",
            "log_every",
            "eval_every",
            "checkpoint_every",
            "keep_checkpoints",
            "train_size",
            "val_size",
        ):
            if getattr(self, key) < 1:  # 0 would divide by zero after the compile, or delete every checkpoint
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.crop_min <= 1:
            raise ConfigError(f"crop_min must be in (0, 1], got {self.crop_min}")
        # Written so that nan fails every test (every comparison with nan is false) and inf the finite bounds.
        for keys, ok, allowed in (
            (("learning_rate", "lr_decay", "bn_epsilon"), lambda v: 0 < v < math.inf, "> 0 and finite"),
            (
                ("weight_decay", "bias_lr_mult", "ce_weight", "input_noise"),
                lambda v: 0 <= v < math.inf,
                ">= 0 and finite",
            ),
            (("momentum", "bn_momentum"), lambda v: 0 <= v < 1, "in [0, 1)"),
        ):
            for key in keys:
                if not ok(getattr(self, key)):
                    raise ConfigError(f"{key} must be {allowed}, got {getattr(self, key)}")
        if any(b < 1 for b in self.lr_boundaries) or list(self.lr_boundaries) != sorted(self.lr_boundaries):
            raise ConfigError(f"lr_boundaries must be ascending steps >= 1, got {list(self.lr_boundaries)}")

    @classmethod
    def from_dict(cls, values: dict, *, source="the config") -> "Config":
        """A config from the dict `dataclasses.asdict` gives (config.json, an exported weights file's header);
        keys missing from older files take their defaults. A value or key that does not fit is a ConfigError
        naming `source`."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: not a config (a JSON object of config keys)")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config key {unknown[0]!r}")
        values = dict(values)
        if "lr_boundaries" in values:
            try:
                values["lr_boundaries"] = tuple(values["lr_boundaries"])
            except TypeError:
                raise ConfigError(f"{source}: lr_boundaries must be a list of steps") from None
        try:
            return cls(**values)
        except (ConfigError, TypeError) as error:  # TypeError: a value of the wrong type (a string for a size)
            raise ConfigError(f"{source}: {' '.join(str(error).split())}") from None

    @classmethod
    def from_json(cls, path) -> "Config":
        """A config.json written by training (`to_json`)."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path}: not a config written by train ({' '.join(str(error).split())})") from None
        return cls.from_dict(values, source=path)

    def to_json(self, path) -> None:
        """Write the config as JSON, atomically: beside `path`, flushed to disk, then renamed over it, so that a crash
        mid-write leaves the previous config.json whole (a workdir's checkpoints are read with it). The steps of
        `io.outputs.atomic_write`, which this layer cannot import (core is below io)."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(partial, "x", encoding="utf-8") as f:
                f.write(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)


PRESETS = {
    "paper": Config(),
    # Short runs use BatchNorm momentum 0.9: at 0.999 the running statistics of a few hundred steps are still
    # mostly their initial values, and evaluation-mode outputs are meaningless.
    "demo": Config(
        image_size=64,
        width=8,
        batch_size=8,
        steps=900,
        learning_rate=0.05,
        lr_boundaries=(700,),
        bn_momentum=0.9,
        shuffle=True,
        train_size=2000,
        val_size=100,
        log_every=25,
        eval_every=300,
        checkpoint_every=300,
    ),
    "tiny": Config(
        image_size=32,
        width=4,
        batch_size=4,
        steps=40,
        learning_rate=0.05,
        lr_boundaries=(),
        bn_momentum=0.9,
        shuffle=True,
        train_size=64,
        val_size=8,
        log_every=10,
        eval_every=20,
        checkpoint_every=10,
    ),
}


def _parse_value(key: str, text: str, current):
    """Parse `text` to the type of the field's current value."""
    try:
        if isinstance(current, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(current, tuple):
            return tuple(int(v) for v in text.replace(",", " ").split())
        return type(current)(text)
    except ValueError:
        raise ConfigError(f"bad value for {key}: {text!r} (expected {type(current).__name__})") from None


def get_config(name: str = "demo", overrides=()) -> Config:
    """A preset with `key=value` overrides applied (the CLI's `--set`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown config {name!r} (presets: {', '.join(PRESETS)})")
    config = PRESETS[name]
    known = {f.name for f in dataclasses.fields(Config)}
    changes = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if key not in known:
            raise ConfigError(f"unknown config key {key!r} (known: {', '.join(sorted(known))})")
        changes[key] = _parse_value(key, text.strip(), getattr(config, key))
    return dataclasses.replace(config, **changes)
