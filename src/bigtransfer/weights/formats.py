"""The reader table and the writer table: every weights format, read into our key names and written from them."""

from __future__ import annotations

import contextlib
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD
from .folders import source_files, weights_in_folder
from .hf import check_hf_config, hf_folder_metadata, hf_to_state_dict, is_hf_folder, read_hf_config, state_dict_to_hf
from .mindspore import looks_like_ckpt, mindcv_to_state_dict, read_mindcv, write_mindcv
from .npz import npz_state, write_npz
from .st import is_safetensors, read_safetensors, write_safetensors
from .timm import timm_to_state_dict, to_timm_key
from .torchfile import read_torch

InputStats = dict  # what a checkpoint declares about its inputs: "mean" and "std" (a .ckpt adds "weights_format")
_UNIT = re.compile(r"body\.block(\d+)\.unit(\d+)\.")


@dataclass
class Loaded:
    """A checkpoint read into our key names, with what was learnt about it on the way."""

    state: dict[str, torch.Tensor]
    file_format: str  # npz | safetensors | mindspore | torch
    layout: str  # ours | timm | hf | mindcv | npz
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = ""  # what messages name: the weights file, or the Hugging Face folder

    @property
    def input_stats(self) -> InputStats | None:
        """The input mean/std the weights expect: ImageNet's for mindcv, else what the metadata says, else None."""
        if self.layout == "mindcv":
            stats = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
            return {**stats, "weights_format": "mindspore"} if self.file_format == "mindspore" else stats
        if self.metadata.get("mean") and self.metadata.get("std"):
            with contextlib.suppress(ValueError):
                return {key: tuple(float(v) for v in self.metadata[key].split(",")) for key in ("mean", "std")}
        return None


def detect_format(path: str | os.PathLike) -> str:
    """The container of a weights file from its content: ``npz``, ``safetensors``, ``mindspore`` or ``torch``."""
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file; check the path")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            # A damaged zip: name it by its extension so the matching reader reports the damage.
            return "torch" if Path(path).suffix in (".pth", ".pt", ".bin") else "npz"
        return "torch" if any(n.endswith("data.pkl") for n in names) else "npz"
    if is_safetensors(path):
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch"  # the pre-zip torch.save format: a bare pickle stream (read weights-only)
    if looks_like_ckpt(path):
        return "mindspore"
    raise CheckpointError(f"{path}: unrecognised checkpoint format; expected an official BiT .npz, "
                          f"safetensors (ours, timm or transformers), a MindSpore .ckpt or a torch state dict")


def detect_layout(keys) -> str:
    """Whose key names a state dict uses: ``ours``, ``timm``, ``hf``, ``mindcv`` or ``npz``."""
    keys = set(keys)
    if "root.conv.weight" in keys or any(k.startswith("body.block") for k in keys):
        return "ours"
    if "stem.conv.weight" in keys or any(k.startswith("stages.") for k in keys):
        return "timm"
    if any(k.startswith(("bit.", "embedder.", "encoder.stages.")) for k in keys):
        return "hf"
    if "conv1.weight" in keys or any(re.match(r"(ema\.)?layer\d+\.\d+\.", k) for k in keys):
        return "mindcv"
    if any(k.startswith("resnet/") for k in keys):
        return "npz"
    first = next(iter(sorted(keys)), "none")
    raise CheckpointError(f"state dict with key '{first}' is not a BiT layout we know (ours, timm, "
                          f"transformers, mindcv or official npz)")


_RENAMES: dict[str, Callable[[Mapping[str, torch.Tensor], str, bool], dict]] = {
    "ours": lambda tensors, source, ema: dict(tensors),
    "timm": lambda tensors, source, ema: timm_to_state_dict(tensors, source),
    "hf": lambda tensors, source, ema: hf_to_state_dict(tensors, source),
    "mindcv": lambda tensors, source, ema: mindcv_to_state_dict(tensors, ema=ema, source=source),
}


def to_ours(tensors: Mapping[str, torch.Tensor], layout: str, source: str, ema: bool = False) -> dict:
    """Rename a state dict of a known layout to our keys."""
    if layout not in _RENAMES:
        raise CheckpointError(f"{source}: official .npz arrays inside another container are not supported; "
                              f"save them as an .npz")
    return _RENAMES[layout](tensors, source, ema)


def _renamed(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], fmt: str, source: str,
             ema: bool) -> Loaded:
    layout = detect_layout(tensors)
    return Loaded(to_ours(tensors, layout, source, ema=ema), fmt, layout, dict(metadata), source)


def _read_hf_folder(path: str, ema: bool, template: nn.Module | None) -> Loaded:
    """A Hugging Face folder's weights, its ``config.json`` checked against them and turned into metadata."""
    config = read_hf_config(path)
    files = source_files(path)
    if len(files) == 1:
        loaded = read_checkpoint(files[0], ema=ema, template=template)
    else:
        tensors: dict[str, torch.Tensor] = {}
        for file in files:  # the shards of a sharded checkpoint
            tensors.update(read_safetensors(file)[0] if detect_format(file) == "safetensors" else read_torch(str(file)))
        loaded = _renamed(tensors, {}, detect_format(files[0]), path, ema)
    if loaded.layout == "hf" and "root.conv.weight" in loaded.state:
        check_hf_config(config, infer_architecture(loaded.state, path), path)
    loaded.metadata = {**loaded.metadata, **hf_folder_metadata(path, config)}
    loaded.source = path
    return loaded


Reader = Callable[[str, bool, "nn.Module | None"], Loaded]
# format -> reader(path, ema, template): the model to read an official .npz for, or None to infer it
READERS: dict[str, Reader] = {
    "npz": lambda path, ema, template: Loaded(npz_state(path, template), "npz", "npz", source=path),
    "safetensors": lambda path, ema, template: _renamed(*read_safetensors(path), "safetensors", path, ema),
    "torch": lambda path, ema, template: _renamed(read_torch(path), {}, "torch", path, ema),
    "mindspore": lambda path, ema, template: Loaded(read_mindcv(path, ema=ema), "mindspore", "mindcv", source=path),
    "hf-folder": _read_hf_folder,
}


def resolve(path: str | os.PathLike) -> tuple[str, str]:
    """What reading ``path`` opens (a Hugging Face folder or the one weights file of a folder) and its format."""
    if os.path.isdir(path):
        if is_hf_folder(path):
            return str(path), "hf-folder"
        path = weights_in_folder(path)
    return str(path), detect_format(path)


def read_checkpoint(path: str | os.PathLike, *, ema: bool = False, fmt: str | None = None,
                    template: nn.Module | None = None) -> Loaded:
    """Read any supported weights file, or a folder holding one, into our key names (nothing unpickled); ``fmt``
    skips detection, a Hugging Face folder's configs become metadata, an official .npz is checked on ``template``."""
    path, fmt = resolve(path) if fmt is None else (str(path), fmt)
    if fmt not in READERS:
        raise CheckpointError(f"unknown weights format '{fmt}'; choose one of {', '.join(READERS)}")
    return READERS[fmt](path, ema, template)


def infer_architecture(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """Block units, width factor and head size from our-name keys and shapes."""
    root = state.get("root.conv.weight")
    if root is None or root.ndim != 4:
        raise CheckpointError(f"{source}: no stem convolution (root.conv.weight); not a BiT ResNetV2 checkpoint")
    units: dict[int, int] = {}
    for k in state:
        m = _UNIT.match(k)
        if m:
            b, u = int(m.group(1)), int(m.group(2))
            units[b] = max(units.get(b, 0), u)
    if sorted(units) != list(range(1, len(units) + 1)) or not units:
        raise CheckpointError(f"{source}: stages {sorted(units)} are not numbered 1..N; the file is incomplete")
    head = state.get("head.conv.weight")
    return {"block_units": tuple(units[b] for b in sorted(units)), "width_factor": root.shape[0] / 64,
            "num_classes": int(head.shape[0]) if head is not None else None}


Writer = Callable[[Mapping[str, torch.Tensor], "str | os.PathLike", "Mapping[str, str] | None"], Path]
# format -> writer(our-name state, path, metadata): one file, written atomically; metadata goes into safetensors
WRITERS: dict[str, Writer] = {
    "npz": lambda state, path, metadata=None: write_npz(state, path),
    "safetensors": write_safetensors,
    "timm": lambda state, path, metadata=None: write_safetensors({to_timm_key(k): v for k, v in state.items()},
                                                                 path),
    "hf": lambda state, path, metadata=None: write_safetensors(state_dict_to_hf(state), path, metadata),
    "ckpt": lambda state, path, metadata=None: write_mindcv(state, path),
}
TARGETS = tuple(WRITERS)


def writer(to: str) -> Writer:
    """The writer of target format ``to``."""
    if to not in WRITERS:
        raise CheckpointError(f"unknown target format '{to}'; choose one of {', '.join(TARGETS)}")
    return WRITERS[to]


def write_checkpoint(state: Mapping[str, torch.Tensor], path: str | os.PathLike, to: str,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write our-name ``state`` as ``to`` (npz | safetensors | timm | hf | ckpt), in float32, atomically, as one file;
    ``metadata`` goes into safetensors files (ours and transformers')."""
    return writer(to)({k: v.detach().float() for k, v in state.items()}, path, metadata)


__all__ = ["READERS", "WRITERS", "TARGETS", "Loaded", "InputStats", "detect_format", "detect_layout", "to_ours",
           "resolve", "read_checkpoint", "infer_architecture", "writer", "write_checkpoint"]
