"""bigtransfer: Big Transfer (BiT) in PyTorch."""

from .errors import BitError

__version__ = "0.1.0"
__all__ = ["BitError", "ModelConfig", "ResNetV2", "create_model", "get_config", "list_models", "__version__",
           "data", "engine", "hyperrule", "weights"]
_SUBMODULES = {"data", "engine", "hub", "hyperrule", "models", "weights", "recipes"}
_MODEL_NAMES = {"ModelConfig", "ResNetV2", "get_config", "list_models"}


def __getattr__(name: str):
    # the models (PyTorch) and bt.data, bt.hyperrule, ... load on first use, so `import bigtransfer` stays light
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _MODEL_NAMES:
        return getattr(importlib.import_module(".models", __name__), name)
    if name == "create_model":
        return importlib.import_module(".hub", __name__).create_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES | _MODEL_NAMES | {"create_model"})
