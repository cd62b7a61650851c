"""Hugging Face transformers ``BitForImageClassification`` state dicts.

The transformers layout is timm's renamed, with a Linear classifier:

=========================================  ===============================================
transformers                               ours
=========================================  ===============================================
bit.embedder.convolution.weight            root.conv.weight
bit.encoder.stages.S.layers.J.norm{1,2,3}  body.block{S+1}.unit{J+1:02d}.gn{1,2,3}
bit.encoder.stages.S.layers.J.conv{1,2,3}  body.block{S+1}.unit{J+1:02d}.conv{1,2,3}
bit.encoder.stages.S.layers.0.downsample   body.block{S+1}.unit01.downsample
  .conv.weight                               .weight
bit.norm.{weight,bias}                     head.gn.{weight,bias}
classifier.1.weight (K, C)                 head.conv.weight (K, C, 1, 1)
classifier.1.bias                          head.conv.bias
=========================================  ===============================================

A ``BitModel`` (no classifier) saves the same keys without the ``bit.`` prefix; those load too.
transformers standardizes weights with eps 1e-8 and uses GroupNorm eps 1e-5, like timm.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from .common import load_into
from .timm import from_timm_key, to_timm_key

_HF_UNIT = re.compile(r"bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)$")
_TIMM_UNIT = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)$")
_FIXED = {"stem.conv.weight": "bit.embedder.convolution.weight", "norm.weight": "bit.norm.weight",
          "norm.bias": "bit.norm.bias", "head.fc.weight": "classifier.1.weight", "head.fc.bias": "classifier.1.bias"}
_FIXED_BACK = {v: k for k, v in _FIXED.items()}
BASE_PREFIXES = ("embedder.", "encoder.", "norm.")  # keys of a bare BitModel


def is_hf_key(key: str) -> bool:
    """True for a key in the transformers layout (with or without the ``bit.`` prefix)."""
    return key.startswith(("bit.", "classifier.")) or key.startswith(BASE_PREFIXES[:2])


def from_hf_key(key: str) -> str:
    """Our name for a transformers ``BitForImageClassification`` key."""
    if key.startswith(BASE_PREFIXES):
        key = "bit." + key
    if key in _FIXED_BACK:
        return from_timm_key(_FIXED_BACK[key])
    m = _HF_UNIT.match(key)
    if not m:
        raise KeyError(key)
    return from_timm_key(f"stages.{m.group(1)}.blocks.{m.group(2)}.{m.group(3)}")


def to_hf_key(key: str) -> str:
    """The transformers name of one of our keys."""
    timm_key = to_timm_key(key)
    if timm_key in _FIXED:
        return _FIXED[timm_key]
    m = _TIMM_UNIT.match(timm_key)
    return f"bit.encoder.stages.{m.group(1)}.layers.{m.group(2)}.{m.group(3)}"


def hf_to_state_dict(state: Mapping[str, torch.Tensor], source: str = "transformers state dict") -> dict:
    """Rename a transformers BiT state dict to our keys; the Linear classifier becomes a 1x1 conv."""
    out = {}
    for k, v in state.items():
        try:
            ours = from_hf_key(k)
        except KeyError:
            raise CheckpointError(f"{source}: key '{k}' is not a transformers BitForImageClassification key; "
                                  f"check the file's format") from None
        if ours == "head.conv.weight" and v.ndim == 2:
            v = v.reshape(*v.shape, 1, 1)
        out[ours] = v
    return out


def state_dict_to_hf(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names, the classifier as a Linear ``(K, C)`` weight."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    out = {}
    for k, v in state.items():
        v = v.detach().clone()
        if k == "head.conv.weight":
            v = v.reshape(v.shape[0], v.shape[1])
        out[to_hf_key(k)] = v
    return out


def load_hf_state(model: nn.Module, state: Mapping[str, torch.Tensor],
                  source: str = "transformers state dict") -> nn.Module:
    """Load a transformers ``BitForImageClassification`` (or ``BitModel``) state dict into ``model``."""
    load_into(model, hf_to_state_dict(state, source), source)
    return model


__all__ = ["from_hf_key", "to_hf_key", "hf_to_state_dict", "state_dict_to_hf", "load_hf_state", "is_hf_key"]
