"""Checkpoint formats, one module per ecosystem, all loading into the same model."""

from __future__ import annotations

import os

from torch import nn

from ..errors import CheckpointError
from .common import atomic_write, load_into
from .npz import is_npz, load_npz, read_npz, save_npz


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights of any supported format into ``model``, detecting the format from the content."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file; check the path")
    if is_npz(path):
        return load_npz(model, path)
    raise CheckpointError(f"{path}: unrecognised checkpoint format; expected an official BiT .npz")


def load_pretrained(model: nn.Module, cfg, path: str | os.PathLike | None = None) -> nn.Module:
    """Load ``cfg``'s pretrained weights (from ``path`` when given, else the download cache)."""
    if path is not None:
        return load_checkpoint(model, path)
    from .download import fetch_pretrained

    return load_checkpoint(model, fetch_pretrained(cfg))


__all__ = ["load_checkpoint", "load_pretrained", "load_npz", "save_npz", "read_npz", "load_into", "atomic_write"]
