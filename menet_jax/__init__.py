"""menet-jax: MEnet (Metric Expression Network, Ro-SOS) for robust salient object segmentation in JAX/Flax."""
import importlib

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "get_config", "MEnet", "count_parameters", "parameter_shapes", "menet_loss",
           "saliency_maps", "resize_map"]
_HOME = {"Config": "config", "ConfigError": "config", "get_config": "config", "menet_loss": "loss",
         "MEnet": "model", "count_parameters": "model", "parameter_shapes": "model", "saliency_maps": "saliency",
         "resize_map": "saliency"}


def __getattr__(name):
    """The public names, imported on first use: importing a jax-free submodule (`outputs`, the ONNX path of
    `predict`) then loads no JAX."""
    if name in _HOME:
        return getattr(importlib.import_module(f"menet_jax.{_HOME[name]}"), name)
    try:
        return importlib.import_module(f"menet_jax.{name}")         # `menet_jax.model` after `import menet_jax`
    except ModuleNotFoundError as error:
        if error.name != f"menet_jax.{name}":
            raise
        raise AttributeError(f"module 'menet_jax' has no attribute {name!r}") from None
