"""menet-jax: MEnet (Metric Expression Network, Ro-SOS) for robust salient object segmentation in JAX/Flax.

The public names are those of `menet_jax.api` (`from menet_jax import Predictor` works too); they are imported on
first use, so importing a JAX-free module of the package (`menet_jax.inference.exported`, the ONNX path of
`predict`) loads no JAX. The layers of the package are described in ARCHITECTURE.md.
"""

import importlib
import importlib.util

__version__ = "0.1.0"


def __getattr__(name):
    # A submodule not imported yet (`from menet_jax import cli`): left to the import system, without loading the
    # API (and JAX) to look for it there.
    if name.startswith("__") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    api = importlib.import_module("menet_jax.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *importlib.import_module("menet_jax.api").__all__])
