"""Checkpoint formats, one module per ecosystem, all loading into the same model.

``formats.READERS`` (format -> reader) and ``formats.WRITERS`` (format -> writer) are the only dispatch: every
load, save and convert entry point below goes through them.
"""

from __future__ import annotations

from .common import atomic_write, load_into
from .formats import READERS, TARGETS, WRITERS, read_checkpoint, write_checkpoint
from .loading import apply_input_stats, load_checkpoint, load_pretrained, load_state, save_model
from .mindspore import load_mindspore, save_mindspore
from .npz import is_npz, load_npz, read_npz, save_npz
from .st import load_safetensors, read_safetensors, save_safetensors

__all__ = ["load_checkpoint", "load_pretrained", "load_npz", "save_npz", "read_npz", "load_into", "atomic_write",
           "save_safetensors", "load_safetensors", "read_safetensors", "is_npz", "load_mindspore", "save_mindspore",
           "load_state", "apply_input_stats", "save_model", "read_checkpoint", "write_checkpoint", "READERS",
           "WRITERS", "TARGETS"]
