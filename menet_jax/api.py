"""The public Python API: what a notebook, another project and `robustness/` use of menet-jax.

`robustness` reaches `menet_jax` only through this module (an import-linter contract in setup.cfg), so the
analyses see MEnet as any other Flax model: a config, variables and `network_function(config, output=...)`.
Training lives in `menet_jax.training` (`from menet_jax.training.loop import train`).

    from menet_jax.api import Predictor
    maps = Predictor.load()(images)                     # the shipped weights; one {"metric", "ce"} per image

    from menet_jax.api import load_network, network_function
    variables, config = load_network("runs/duts", dtype="float32")
    f = network_function(config, output="salient_prob")  # f(variables, images) -> (N, S, S)
"""

from menet_jax.cli import (
    CHECKPOINT_HELP,
    CHECKPOINT_HELP_FLOAT32,
    ArgumentParser,
    add_checkpoint_argument,
    check_minimums,
    command,
    start,
)
from menet_jax.core.config import PRESETS, Config, get_config
from menet_jax.core.loss import menet_loss
from menet_jax.core.metrics import SODMetrics, image_scores, to_8bit
from menet_jax.core.model import SIDE_MAP_ORDER, MEnet, count_parameters, describe, init_variables, parameter_shapes
from menet_jax.core.network import OUTPUTS, network_function, predict_function
from menet_jax.core.saliency import metric_distance, resize_map, saliency_maps, salient_probability, scale_to_unit
from menet_jax.errors import ConfigError, DataError, ExportError, MenetError, OutputError, WeightsError, WorkdirError
from menet_jax.inference.predictor import Predictor, load_network
from menet_jax.io.images import MAPS, load_photo, resize_input, resize_to
from menet_jax.io.outputs import check_folder, check_output_file, json_text, save_figure, write_text
from menet_jax.runtime.xla import compiler_options, enable_compilation_cache

__all__ = [
    "CHECKPOINT_HELP",
    "ArgumentParser",
    "CHECKPOINT_HELP_FLOAT32",
    "add_checkpoint_argument",
    "check_minimums",
    "command",
    "start",
    "PRESETS",
    "Config",
    "get_config",
    "menet_loss",
    "SODMetrics",
    "image_scores",
    "to_8bit",
    "SIDE_MAP_ORDER",
    "MEnet",
    "count_parameters",
    "describe",
    "init_variables",
    "parameter_shapes",
    "OUTPUTS",
    "network_function",
    "predict_function",
    "metric_distance",
    "resize_map",
    "saliency_maps",
    "salient_probability",
    "scale_to_unit",
    "ConfigError",
    "DataError",
    "ExportError",
    "MenetError",
    "OutputError",
    "WeightsError",
    "WorkdirError",
    "Predictor",
    "load_network",
    "MAPS",
    "load_photo",
    "resize_input",
    "resize_to",
    "check_folder",
    "check_output_file",
    "save_figure",
    "write_text",
    "json_text",
    "compiler_options",
    "enable_compilation_cache",
]
