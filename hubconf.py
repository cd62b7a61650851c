"""torch.hub entry points: ``torch.hub.load("<owner>/bigtransfer", "BiT-M-R50x1", pretrained=True)``.

Every registered model answers to its own name and to that name as an identifier (``BiT_M_R50x1``);
``create_model(name, ...)`` takes any name ``bigtransfer.create_model`` does, timm names included.
"""

import importlib.util as _importlib_util
import os as _os
import re as _re
import sys as _sys

dependencies = ["torch", "numpy", "safetensors", "tqdm", "huggingface_hub"]

if _importlib_util.find_spec("bigtransfer") is None:  # a clone that is not installed
    _sys.path.append(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src"))

from bigtransfer.hub import create_model as _create_model  # noqa: E402
from bigtransfer.models import get_config as _get_config  # noqa: E402
from bigtransfer.models import list_models as _list_models  # noqa: E402


def create_model(name: str, pretrained: bool = False, **kwargs):
    """Any model name (ours or timm's) with ``bigtransfer.create_model``'s keywords: num_classes, weights, ..."""
    return _create_model(name, pretrained=pretrained, **kwargs)


def _identifier(name: str) -> str:
    return _re.sub(r"\W", "_", name)


def _entry(name: str):
    def entry(pretrained: bool = False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    cfg = _get_config(name)
    entry.__name__ = entry.__qualname__ = _identifier(name)
    entry.__doc__ = (f"{name}: {cfg.description} ({cfg.arch}, {cfg.num_classes} classes, {cfg.input_size}px).\n\n"
                     f"Keywords as for bigtransfer.create_model: pretrained, num_classes, weights=FILE, device.")
    return entry


_ENTRIES = {name: _entry(name) for name in _list_models()}
globals().update({_identifier(name): entry for name, entry in _ENTRIES.items()})


def __getattr__(name: str):
    if name in _ENTRIES:  # names that are not identifiers, e.g. "BiT-M-R50x1"
        return _ENTRIES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_ENTRIES))
