"""Which weights file a folder stands for: a Hugging Face folder's, a run folder's, or its only one."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError
from .hf import hf_weights_files, is_hf_folder

WEIGHT_SUFFIXES = (".npz", ".safetensors", ".ckpt", ".pth", ".pt", ".bin")
# in a folder, these names are the weights whatever else it holds (a Hugging Face download, a run folder)
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def weights_in_folder(folder: str | os.PathLike) -> Path:
    """The one weights file of ``folder``: ``model.safetensors``, ``pytorch_model.bin``, or its only weights file."""
    folder = Path(folder)
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES and p.is_file())
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(p.name for p in found[:5]) + (", ..." if len(found) > 5 else "")
        raise CheckpointError(f"folder '{folder}' holds {len(found)} weights files ({names}); give one of them")
    raise CheckpointError(f"folder '{folder}' holds no weights file (looked for {', '.join(WEIGHT_NAMES)} and "
                          f"*{', *'.join(WEIGHT_SUFFIXES)}); give the weights file")


def source_files(path: str | os.PathLike) -> list[Path]:
    """The weights files that reading ``path`` opens: the file itself, or those of a folder."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    return (hf_weights_files(path) if is_hf_folder(path) else None) or [weights_in_folder(path)]


__all__ = ["weights_in_folder", "source_files", "WEIGHT_SUFFIXES", "WEIGHT_NAMES"]
