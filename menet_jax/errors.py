"""Every error menet-jax reports as one line: the `MenetError` family.

`menet_jax.cli.run` turns any `MenetError` into `error: <message>` on stderr and exit code 2; a notebook can catch
`MenetError` to catch them all. This module is the bottom of the package: every layer may import it.
"""

from __future__ import annotations

from menet_datasets.errors import DataError, MenetError, UsageError

__all__ = [
    "MenetError",
    "DataError",
    "UsageError",
    "SettingsError",
    "ConfigError",
    "OutputError",
    "WeightsError",
    "ExportError",
    "WorkdirError",
    "DistributedError",
    "TrainingDiverged",
]


class SettingsError(MenetError, ValueError):
    """An environment variable with a value that is not allowed (`runtime.settings`)."""


class ConfigError(MenetError, ValueError):
    """A bad preset name, config key or value, or a config file that cannot be read."""


class OutputError(MenetError):
    """An output path that cannot be written, or whose writing would destroy something the user owns."""


class WeightsError(MenetError):
    """Trained weights that cannot be used: missing, damaged, a checksum mismatch, not fitting the network, or
    non-finite."""


class ExportError(MenetError):
    """An ONNX or StableHLO export that cannot be written, read or run."""


class WorkdirError(MenetError, RuntimeError):
    """A training workdir that cannot be used as asked (in use by another run, no intact checkpoint, other shapes)."""


class DistributedError(MenetError, RuntimeError):
    """A multi-process run that cannot start as asked (bad flags, no coordinator)."""


class TrainingDiverged(MenetError, FloatingPointError):
    """The loss or the train state became non-finite; nothing past the last good checkpoint was saved."""
