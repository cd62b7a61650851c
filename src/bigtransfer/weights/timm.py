"""timm ``resnetv2_*_bit`` state dicts: the key map to and from our names."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from .common import load_into

_TIMM_UNIT = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(norm\d|conv\d|downsample\.conv)\.(weight|bias)$")
_OUR_UNIT = re.compile(r"body\.block(\d)\.unit(\d\d)\.(gn\d|conv\d|downsample)\.(weight|bias)$")
_FIXED = {"stem.conv.weight": "root.conv.weight", "norm.weight": "head.gn.weight", "norm.bias": "head.gn.bias",
          "head.fc.weight": "head.conv.weight", "head.fc.bias": "head.conv.bias"}
_FIXED_BACK = {v: k for k, v in _FIXED.items()}


def _rename(key: str, fixed: Mapping[str, str], unit: re.Pattern, spell: Callable[..., str]) -> str:
    """``fixed[key]``, else ``spell`` of the groups of ``unit``'s match; a key matching neither is a KeyError."""
    if key in fixed:
        return fixed[key]
    m = unit.match(key)
    if not m:
        raise KeyError(key)
    return spell(*m.groups())


def _our_unit(stage: str, block: str, mod: str, kind: str) -> str:
    mod = "downsample" if mod == "downsample.conv" else mod.replace("norm", "gn")
    return f"body.block{int(stage) + 1}.unit{int(block) + 1:02d}.{mod}.{kind}"


def _timm_unit(block: str, unit: str, mod: str, kind: str) -> str:
    mod = "downsample.conv" if mod == "downsample" else mod.replace("gn", "norm")
    return f"stages.{int(block) - 1}.blocks.{int(unit) - 1}.{mod}.{kind}"


def from_timm_key(key: str) -> str:
    """Our name for a timm ``resnetv2_*_bit`` key."""
    return _rename(key, _FIXED, _TIMM_UNIT, _our_unit)


def to_timm_key(key: str) -> str:
    """The timm name of one of our keys."""
    return _rename(key, _FIXED_BACK, _OUR_UNIT, _timm_unit)


def timm_to_state_dict(state: Mapping[str, torch.Tensor], source: str = "timm state dict") -> dict:
    """Rename a timm state dict to our keys; an unknown key is reported by name."""
    out = {}
    for k, v in state.items():
        try:
            out[from_timm_key(k)] = v
        except KeyError:
            raise CheckpointError(f"{source}: key '{k}' is not a timm resnetv2_*_bit key; "
                                  f"check the file's format") from None
    return out


def state_dict_to_timm(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under timm's names."""
    return {to_timm_key(k): v.detach().clone() for k, v in model.state_dict().items()}


def load_timm_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "timm state dict") -> nn.Module:
    """Load a timm ``resnetv2_*_bit`` state dict into ``model``."""
    load_into(model, timm_to_state_dict(state, source), source)
    return model
