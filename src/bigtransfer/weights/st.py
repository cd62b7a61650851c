"""Safetensors files: our own layout (our key names plus metadata) and safe reading of any layout."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .common import atomic_write

FORMAT_TAG = "bigtransfer"
MAX_HEADER = 100_000_000  # the safetensors reader's own limit on the JSON header


def is_safetensors(path: str | os.PathLike) -> bool:
    """True when the file starts with a safetensors header (u64 length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= n <= MAX_HEADER  # a header longer than the file is reported as truncation


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; a damaged file is one clear error."""
    from safetensors import safe_open

    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file; check the path")
    _check_header(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except Exception as e:  # the Rust reader raises its own error types
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else e!r}); re-download or re-export it") from None
    return tensors, meta


def _check_header(path: str) -> None:
    """Validate the header and that every tensor lies inside the file, before reading any data."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes); re-download or re-export it")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise CheckpointError(f"{path}: safetensors header claims {n} bytes but the file has {size}; "
                                  f"the file is truncated or not safetensors")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors header ({e}); the file is corrupt") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object; the file is corrupt")
    data = size - 8 - n
    for k, v in header.items():
        if k == "__metadata__":
            continue
        offsets = v.get("data_offsets") if isinstance(v, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(f"{path}: tensor '{k}' has no valid data offsets; the file is corrupt")
        if not 0 <= offsets[0] <= offsets[1] <= data:
            raise CheckpointError(f"{path}: tensor '{k}' lies past the end of the data ({offsets[1]} > {data} "
                                  f"bytes); the file is truncated, re-download or re-export it")


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (contiguous CPU copies) to ``path`` atomically."""
    from safetensors.torch import save_file

    data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}}
    return atomic_write(path, lambda tmp: save_file(data, tmp, metadata=meta))


def model_metadata(model: nn.Module, name: str | None = None) -> dict[str, str]:
    """What our safetensors files record about the architecture."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = name or cfg.get("name") or ""
    meta = {"bigtransfer": FORMAT_TAG, "model": name, "num_classes": str(model.num_classes)}
    if hasattr(model, "block_units"):
        meta["block_units"] = ",".join(str(u) for u in model.block_units)
        meta["width_factor"] = str(model.width_factor)
    if cfg.get("mean"):
        meta["mean"] = ",".join(str(v) for v in cfg["mean"])
        meta["std"] = ",".join(str(v) for v in cfg["std"])
    return meta


def save_safetensors(model: nn.Module, path: str | os.PathLike, name: str | None = None) -> Path:
    """Write ``model`` in our own layout (our key names) with its model name and head size as metadata."""
    from .loading import save_model

    return save_model(model, path, "safetensors", model_metadata(model, name))


def load_safetensors(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a safetensors file of any supported layout (ours, timm, Hugging Face) into ``model``."""
    from .loading import load_checkpoint

    return load_checkpoint(model, path)


__all__ = ["is_safetensors", "read_safetensors", "write_safetensors", "save_safetensors", "load_safetensors",
           "model_metadata"]
