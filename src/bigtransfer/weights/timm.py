"""timm ``resnetv2_*_bit`` state dicts: the key map to and from our names."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from .common import load_into

_TIMM_UNIT = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(norm\d|conv\d|downsample\.conv)\.(weight|bias)$")
_OUR_UNIT = re.compile(r"body\.block(\d)\.unit(\d\d)\.(gn\d|conv\d|downsample)\.(weight|bias)$")
_FIXED = {"stem.conv.weight": "root.conv.weight", "norm.weight": "head.gn.weight", "norm.bias": "head.gn.bias",
          "head.fc.weight": "head.conv.weight", "head.fc.bias": "head.conv.bias"}
_FIXED_BACK = {v: k for k, v in _FIXED.items()}


def from_timm_key(key: str) -> str:
    """Our name for a timm ``resnetv2_*_bit`` key."""
    if key in _FIXED:
        return _FIXED[key]
    m = _TIMM_UNIT.match(key)
    if not m:
        raise KeyError(key)
    stage, block, mod, kind = m.groups()
    mod = "downsample" if mod == "downsample.conv" else mod.replace("norm", "gn")
    return f"body.block{int(stage) + 1}.unit{int(block) + 1:02d}.{mod}.{kind}"


def to_timm_key(key: str) -> str:
    """The timm name of one of our keys."""
    if key in _FIXED_BACK:
        return _FIXED_BACK[key]
    m = _OUR_UNIT.match(key)
    if not m:
        raise KeyError(key)
    block, unit, mod, kind = m.groups()
    mod = "downsample.conv" if mod == "downsample" else mod.replace("gn", "norm")
    return f"stages.{int(block) - 1}.blocks.{int(unit) - 1}.{mod}.{kind}"


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
