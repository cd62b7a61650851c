"""Checkpoint formats, one module per ecosystem, all loading into the same model."""

from __future__ import annotations

import os

from torch import nn

from ..errors import CheckpointError
from .common import atomic_write, load_into
from .npz import is_npz, load_npz, read_npz, save_npz
from .st import load_safetensors, read_safetensors, save_safetensors


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, ema: bool = False,
                    adopt_head: bool = False) -> nn.Module:
    """Load weights of any supported format into ``model``, detecting the format from the content.

    Official ``.npz``; safetensors in our, timm or transformers layout; MindSpore ``.ckpt`` (mindcv; ``ema``
    takes its EMA copy); a torch state dict in any of those layouts (read with ``weights_only=True``); a folder:
    a Hugging Face one (``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``; its input mean/std
    are taken from ``preprocessor_config.json``) or one holding a single weights file.
    With ``adopt_head`` the checkpoint's head (size and values) replaces the model's.
    """
    from .convert import apply_input_stats, detect_format, read_checkpoint, weights_in_folder
    from .hf import is_hf_folder
    from .mindspore import load_mindspore

    if os.path.isdir(path):
        if is_hf_folder(path):
            loaded = read_checkpoint(path, ema=ema)
            load_into(model, loaded.state, str(path), adopt_head=adopt_head)
            return apply_input_stats(model, loaded)
        path = weights_in_folder(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file; check the path")
    fmt = detect_format(path)
    if fmt == "npz":
        return load_npz(model, path, adopt_head=adopt_head)
    if fmt == "mindspore":
        return load_mindspore(model, path, ema=ema, adopt_head=adopt_head)
    loaded = read_checkpoint(path, ema=ema)
    load_into(model, loaded.state, str(path), adopt_head=adopt_head)
    return apply_input_stats(model, loaded)


def load_pretrained(model: nn.Module, cfg, path: str | os.PathLike | None = None, *,
                    adopt_head: bool = False) -> nn.Module:
    """Load ``cfg``'s pretrained weights (from ``path`` when given, else the download cache)."""
    if path is None:
        from .download import fetch_pretrained

        path = fetch_pretrained(cfg)
    return load_checkpoint(model, path, adopt_head=adopt_head)


__all__ = ["load_checkpoint", "load_pretrained", "load_npz", "save_npz", "read_npz", "load_into", "atomic_write",
           "save_safetensors", "load_safetensors", "read_safetensors", "is_npz"]
