"""`import datasets` run from the checkout root finds this folder before site-packages: hand the name on.

The folder installs as `menet_datasets`; the top-level name `datasets` belongs to HuggingFace's package, so a
user's `import datasets` in the checkout gets that one when it is installed, and a one-line ImportError when not.
"""

import importlib.machinery
import importlib.util
import os
import sys


def installed_datasets():
    """The `datasets` package found on sys.path without the checkout root, imported in place of this folder."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec("datasets", path)
    if spec is None:
        raise ImportError(
            f"{root}/datasets is menet-jax's data package, installed as menet_datasets: import that "
            "name (`import datasets` is left to HuggingFace datasets, which is not installed)"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules["datasets"] = module
    spec.loader.exec_module(module)
    return module
