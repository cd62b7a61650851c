"""Format detection by content, reading any checkpoint into our key names, and conversion between formats."""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from .common import atomic_write, load_into
from .hf import hf_to_state_dict, state_dict_to_hf
from .mindspore import looks_like_ckpt, mindcv_to_state_dict, read_mindcv, state_dict_to_mindcv, write_ckpt
from .npz import _to_tf_layout, npz_key, npz_to_state_dict, read_npz
from .st import is_safetensors, read_safetensors, write_safetensors
from .timm import timm_to_state_dict, to_timm_key

log = logging.getLogger("bigtransfer")

TARGETS = ("npz", "safetensors", "timm", "hf", "ckpt")
_EXTENSIONS = {".npz": "npz", ".ckpt": "ckpt", ".safetensors": "safetensors"}
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")
_UNIT = re.compile(r"body\.block(\d+)\.unit(\d+)\.")


@dataclass
class Loaded:
    """A checkpoint read into our key names, with what was learnt about it on the way."""

    state: dict[str, torch.Tensor]
    file_format: str  # npz | safetensors | mindspore | torch
    layout: str  # ours | timm | hf | mindcv | npz
    metadata: dict[str, str] = field(default_factory=dict)


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
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return "npz"
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


def _read_torch(path: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # not a refused class: a damaged pickle stream
            raise CheckpointError(f"{path}: corrupt or truncated torch checkpoint (the pickle stream is damaged); "
                                  f"re-download or re-save it") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(f"{path}: holds Python objects besides tensors{what}, which are refused for safety; "
                              f"re-save it as a plain state dict of tensors or as safetensors") from None
    except Exception as e:  # torch.load reports a damaged file with many exception types
        raise CheckpointError(f"{path}: corrupt or truncated torch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''}); re-download or re-save it") from None
    for _ in range(2):  # unwrap {"state_dict": {...}} and the like
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def to_ours(tensors: Mapping[str, torch.Tensor], layout: str, source: str, ema: bool = False) -> dict:
    """Rename a state dict of a known layout to our keys."""
    if layout == "ours":
        return dict(tensors)
    if layout == "timm":
        return timm_to_state_dict(tensors, source)
    if layout == "hf":
        return hf_to_state_dict(tensors, source)
    if layout == "mindcv":
        return mindcv_to_state_dict(tensors, ema=ema, source=source)
    raise CheckpointError(f"{source}: official .npz arrays inside another container are not supported; "
                          f"save them as an .npz")


def read_checkpoint(path: str | os.PathLike, *, ema: bool = False) -> Loaded:
    """Read any supported weights file into our key names (architecture-agnostic, nothing unpickled)."""
    path = str(path)
    fmt = detect_format(path)
    if fmt == "npz":
        arrays = read_npz(path)
        bad = next((k for k in arrays if not k.startswith("resnet/")), None)
        if bad is not None:
            raise CheckpointError(f"{path}: array '{bad}' is not in the official BiT layout (resnet/...)")
        template = _template_for_npz(arrays, path)
        state = {k: torch.from_numpy(np.ascontiguousarray(v))
                 for k, v in npz_to_state_dict(arrays, template, path).items()}
        return Loaded(state, fmt, "npz")
    if fmt == "mindspore":
        return Loaded(read_mindcv(path, ema=ema), fmt, "mindcv")
    if fmt == "safetensors":
        tensors, meta = read_safetensors(path)
    else:
        tensors, meta = _read_torch(path), {}
    layout = detect_layout(tensors)
    return Loaded(to_ours(tensors, layout, path, ema=ema), fmt, layout, meta)


def _template_for_npz(arrays: Mapping[str, np.ndarray], source: str) -> nn.Module:
    """A model on the meta device whose key names cover the arrays of an official ``.npz``."""
    from ..models import ResNetV2

    units = {}
    for k in arrays:
        m = re.match(r"resnet/block(\d+)/unit(\d+)/", k)
        if m:
            b, u = int(m.group(1)), int(m.group(2))
            units[b] = max(units.get(b, 0), u)
    root = arrays.get("resnet/root_block/standardized_conv2d/kernel")
    if root is None or not units:
        raise CheckpointError(f"{source}: not a BiT ResNetV2 .npz (no root block or units)")
    head = arrays.get("resnet/head/conv2d/bias")
    with torch.device("meta"):
        return ResNetV2([units[b] for b in sorted(units)], root.shape[-1] / 64,
                        num_classes=int(head.shape[0]) if head is not None else 1)


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


def arch_name(block_units, width_factor: float) -> str | None:
    """The registered architecture name (``R50x1`` ...) with these units and width, if any."""
    from ..models import ARCHS

    for name, (units, wf) in ARCHS.items():
        if tuple(units) == tuple(block_units) and float(wf) == float(width_factor):
            return name
    return None


def model_for(loaded: Loaded, model_name: str | None = None, source: str = "checkpoint") -> nn.Module:
    """A model that fits ``loaded`` (by ``model_name`` when given, else inferred), with its weights loaded."""
    from ..models import ResNetV2, create_model, get_config

    arch = infer_architecture(loaded.state, source)
    k = arch["num_classes"]
    if model_name is None:
        model_name = loaded.metadata.get("model") or None
        if model_name:
            try:
                get_config(model_name)
            except KeyError:
                model_name = None
    if model_name:
        cfg = get_config(model_name)
        if tuple(cfg.block_units) != arch["block_units"] or float(cfg.width_factor) != arch["width_factor"]:
            found = arch_name(arch["block_units"], arch["width_factor"]) or \
                f"units {arch['block_units']}, width {arch['width_factor']:g}"
            raise CheckpointError(f"{source}: the weights are {found}, not {cfg.arch} as model '{cfg.name}' "
                                  f"needs; pick a model of the matching architecture or leave --model out")
        model = create_model(cfg.name, num_classes=k or cfg.num_classes)
    else:
        wf = arch["width_factor"]
        model = ResNetV2(arch["block_units"], int(wf) if float(wf).is_integer() else wf, num_classes=k or 1000)
        model.pretrained_cfg = {"name": "", "arch": arch_name(arch["block_units"], wf) or "",
                                "num_classes": model.num_classes}
    load_into(model, loaded.state, source)
    return apply_input_stats(model, loaded)


def apply_input_stats(model: nn.Module, loaded: Loaded) -> nn.Module:
    """Record the input mean/std the weights expect: ImageNet's for mindcv, else what our metadata says."""
    if loaded.layout == "mindcv":
        from ..models.registry import IMAGENET_MEAN, IMAGENET_STD

        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif loaded.metadata.get("mean") and loaded.metadata.get("std"):
        try:
            mean = tuple(float(v) for v in loaded.metadata["mean"].split(","))
            std = tuple(float(v) for v in loaded.metadata["std"].split(","))
        except ValueError:
            return model
    else:
        return model
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), "mean": mean, "std": std}
    return model


def write_checkpoint(state: Mapping[str, torch.Tensor], path: str | os.PathLike, to: str,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write our-name ``state`` as ``to`` (npz | safetensors | timm | hf | ckpt), atomically."""
    state = {k: v.detach().float() for k, v in state.items()}
    if to == "npz":
        arrays = {npz_key(k): np.ascontiguousarray(_to_tf_layout(v.numpy())) for k, v in state.items()}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        return atomic_write(path, write)
    if to == "safetensors":
        return write_safetensors(state, path, metadata)
    if to == "timm":
        return write_safetensors({to_timm_key(k): v for k, v in state.items()}, path)
    if to == "hf":
        return write_safetensors(state_dict_to_hf(state), path)
    if to == "ckpt":
        return write_ckpt(state_dict_to_mindcv(state), path)
    raise CheckpointError(f"unknown target format '{to}'; choose one of {', '.join(TARGETS)}")


def target_from_path(path: str | os.PathLike) -> str | None:
    """The target format implied by a file extension (``.npz``, ``.ckpt``, ``.safetensors``)."""
    return _EXTENSIONS.get(Path(path).suffix.lower())


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str | None = None, *,
            model_name: str | None = None, ema: bool = False, overwrite: bool = False) -> tuple[Path, nn.Module]:
    """Convert ``src`` (any supported format) to ``dst`` in format ``to``; returns the path and the model.

    The weights are loaded into a model first (strict names and shapes), so a file that would not load
    is never written; the head is kept only when the source has one.
    """
    from .st import model_metadata

    to = to or target_from_path(dst)
    if to not in TARGETS:
        raise CheckpointError(f"cannot tell the target format of {dst}; pass --to with one of {', '.join(TARGETS)}")
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} exists; pass --overwrite to replace it")
    if Path(src).resolve() == dst.resolve():
        raise CheckpointError(f"{dst} is the source file; write to another path")
    loaded = read_checkpoint(src, ema=ema)
    model = model_for(loaded, model_name, str(src))
    state = model.state_dict()
    if "head.conv.weight" not in loaded.state:
        state = {k: v for k, v in state.items() if not k.startswith("head.conv.")}
    write_checkpoint(state, dst, to, model_metadata(model, model_name) if to == "safetensors" else None)
    return dst, model


__all__ = ["detect_format", "detect_layout", "read_checkpoint", "infer_architecture", "model_for", "apply_input_stats",
           "write_checkpoint", "convert", "arch_name", "target_from_path", "Loaded", "TARGETS"]
