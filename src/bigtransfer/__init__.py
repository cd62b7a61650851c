"""bigtransfer: Big Transfer (BiT) in PyTorch."""

import importlib

from .errors import BitError
from .models import ModelConfig, ResNetV2, create_model, get_config, list_models

__version__ = "0.1.0"
__all__ = ["BitError", "ModelConfig", "ResNetV2", "create_model", "get_config", "list_models", "__version__",
           "data", "engine", "hyperrule", "weights"]
_SUBMODULES = {"data", "engine", "hyperrule", "weights", "recipes"}


def __getattr__(name: str):
    # bt.data, bt.hyperrule, ... load on first use, so `import bigtransfer` stays light
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
