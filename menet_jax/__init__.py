"""menet-jax: MEnet (Metric Expression Network, Ro-SOS) for robust salient object segmentation in JAX/Flax."""
from menet_jax.config import Config, ConfigError, get_config
from menet_jax.loss import menet_loss
from menet_jax.model import MEnet, count_parameters, parameter_shapes
from menet_jax.saliency import resize_map, saliency_maps

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "get_config", "MEnet", "count_parameters", "parameter_shapes", "menet_loss",
           "saliency_maps", "resize_map"]
