"""Weights into a model and out of it: strict loading that reports the input stats a checkpoint declares, and saving
through the writer table."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import build_model, build_network, get_config
from ..models.registry import arch_name
from .common import load_into
from .formats import InputStats, Loaded, infer_architecture, read_checkpoint, writer


def load_state(model: nn.Module, path: str | os.PathLike, fmt: str | None = None, *, ema: bool = False,
               adopt_head: bool = False) -> tuple[dict[str, torch.Tensor], InputStats | None]:
    """Copy a checkpoint's tensors into ``model`` (strict); returns the state read and the input stats it declares,
    leaving ``model.pretrained_cfg`` as it is (:func:`apply_input_stats` records the stats)."""
    loaded = read_checkpoint(path, ema=ema, fmt=fmt, template=model)
    load_into(model, loaded.state, loaded.source, adopt_head=adopt_head)
    return loaded.state, loaded.input_stats


def apply_input_stats(model: nn.Module, stats: InputStats | None) -> nn.Module:
    """Record in ``model.pretrained_cfg`` the input mean/std a checkpoint declares; None changes nothing."""
    if stats:
        model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **stats}
    return model


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, fmt: str | None = None, ema: bool = False,
                    adopt_head: bool = False) -> nn.Module:
    """Load weights of any supported format, or a folder holding them, into ``model`` (format from the content unless
    ``fmt``; ``ema`` takes a mindcv EMA copy); with ``adopt_head`` the checkpoint's head replaces the model's."""
    _, stats = load_state(model, path, fmt, ema=ema, adopt_head=adopt_head)
    return apply_input_stats(model, stats)


def load_pretrained(model: nn.Module, cfg, path: str | os.PathLike | None = None, *,
                    adopt_head: bool = False) -> nn.Module:
    """Load ``cfg``'s pretrained weights (from ``path`` when given, else the download cache)."""
    if path is None:
        from .download import fetch_pretrained

        path = fetch_pretrained(cfg)
    return load_checkpoint(model, path, adopt_head=adopt_head)


def save_model(model: nn.Module, path: str | os.PathLike, to: str, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model``'s weights as format ``to`` (a key of the writer table), atomically."""
    return writer(to)(model.state_dict(), path, metadata)


def model_for(loaded: Loaded, model_name: str | None = None, source: str = "checkpoint") -> nn.Module:
    """A model that fits ``loaded`` (by ``model_name`` when given, else inferred), with its weights loaded."""
    arch = infer_architecture(loaded.state, source)
    k = arch["num_classes"]
    cfg = get_config(model_name) if model_name else None
    if model_name is None and loaded.metadata.get("model"):
        with contextlib.suppress(KeyError):  # a name the registry no longer knows: infer the model instead
            cfg = get_config(loaded.metadata["model"])
    if cfg is not None:
        if tuple(cfg.block_units) != arch["block_units"] or float(cfg.width_factor) != arch["width_factor"]:
            found = arch_name(arch["block_units"], arch["width_factor"]) or \
                f"units {arch['block_units']}, width {arch['width_factor']:g}"
            raise CheckpointError(f"{source}: the weights are {found}, not {cfg.arch} as model '{cfg.name}' "
                                  f"needs; pick a model of the matching architecture or leave --model out")
        model = build_model(cfg.name, num_classes=k or cfg.num_classes)
    else:
        model = build_network(arch["block_units"], arch["width_factor"], k or 1000)
    load_into(model, loaded.state, source)
    return apply_input_stats(model, loaded.input_stats)


__all__ = ["load_state", "apply_input_stats", "load_checkpoint", "load_pretrained", "save_model", "model_for"]
