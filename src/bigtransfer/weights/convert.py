"""Conversion between formats: any checkpoint (or a folder holding one) to any target, through a model that checks
it; plus what a transformers export records (class names, evaluation inputs)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ..errors import CheckpointError
from ..models import get_config
from ..models.registry import arch_name
from .folders import WEIGHT_NAMES, WEIGHT_SUFFIXES, source_files, weights_in_folder
from .formats import (
    TARGETS,
    Loaded,
    detect_format,
    detect_layout,
    infer_architecture,
    read_checkpoint,
    write_checkpoint,
)
from .formats import to_ours as to_ours  # a 0.1 name; the reader table lives in formats
from .hf import hf_config, hf_preprocessor_config, write_hf_folder
from .loading import apply_input_stats, model_for
from .st import model_metadata

_EXTENSIONS = {".npz": "npz", ".ckpt": "ckpt", ".safetensors": "safetensors"}
HF_FILES = ("model.safetensors", "config.json", "preprocessor_config.json")  # what a transformers export writes


def target_from_path(path: str | os.PathLike) -> str | None:
    """The target format implied by a file extension (``.npz``, ``.ckpt``, ``.safetensors``)."""
    return _EXTENSIONS.get(Path(path).suffix.lower())


def is_folder_target(dst: str | os.PathLike, to: str | None) -> bool:
    """True when ``convert`` writes ``dst`` as a transformers folder: ``to`` is hf and ``dst`` no .safetensors file."""
    return to == "hf" and Path(dst).suffix.lower() != ".safetensors"


def check_destination(dst: str | os.PathLike, to: str | None, overwrite: bool = False) -> str:
    """The target format of ``dst``, after the checks that need no source (run them before a download)."""
    to = to or target_from_path(dst)
    if to not in TARGETS:
        raise CheckpointError(f"cannot tell the target format of {dst}; pass --to with one of {', '.join(TARGETS)}")
    dst = Path(dst)
    if not is_folder_target(dst, to):
        if dst.exists() and not overwrite:
            raise CheckpointError(f"{dst} exists; pass --overwrite to replace it")
    elif dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst} is a file; --to hf writes a folder (model.safetensors, config.json, "
                              f"preprocessor_config.json): give a folder name, or a .safetensors name for the "
                              f"weights alone")
    elif dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise CheckpointError(f"folder {dst} is not empty; pass --overwrite to replace its model files, or give a "
                              f"new folder")
    return to


def _check_not_source(src: str | os.PathLike, dst: Path, folder: bool) -> None:
    """``dst`` (a file, or a transformers folder) must not be or hold the weights being read."""
    if folder:
        ours = {(dst / name).resolve() for name in HF_FILES}
        if Path(src).resolve() == dst.resolve() or any(f.resolve() in ours for f in source_files(src)):
            raise CheckpointError(f"{dst} holds the source weights; write to another folder")
    elif any(f.resolve() == dst.resolve() for f in source_files(src)):
        raise CheckpointError(f"{dst} is the source file; write to another path")


def classes_for(loaded: Loaded, src: str | os.PathLike, num_classes: int) -> list[str] | None:
    """The class names of a checkpoint: its metadata's, else a ``classes.json`` beside it; None unless they fit."""
    names = None
    if loaded.metadata.get("classes"):
        with contextlib.suppress(json.JSONDecodeError):
            names = json.loads(loaded.metadata["classes"])
    else:
        beside = (Path(src) if Path(src).is_dir() else Path(src).parent) / "classes.json"
        if beside.is_file():
            with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
                names = json.loads(beside.read_text(encoding="utf-8"))
    ok = isinstance(names, list) and len(names) == num_classes and all(isinstance(n, str) for n in names)
    return names if ok else None


def registry_classes(model_name: str | None, num_classes: int) -> list[str] | None:
    """The class names of a registered model's pretrained head (downloaded once), when the head is that size."""
    try:
        cfg = get_config(model_name) if model_name else None
    except KeyError:
        return None
    if cfg is None or not cfg.labels or cfg.num_classes != num_classes:
        return None
    from .download import fetch_labels

    names = fetch_labels(cfg.labels)
    return names if names is not None and len(names) == num_classes else None


def eval_inputs(model: nn.Module, loaded: Loaded) -> dict:
    """How inputs are prepared for ``model`` at evaluation (transforms, eval_crop, eval_resize, mean, std): the
    checkpoint metadata's, else a HyperRule squash, for MindSpore weights a resize 256 (for 224) and centre crop."""
    from ..data.transforms import normalization

    meta = loaded.metadata
    mean, std = normalization(model)
    size = int(meta.get("eval_crop") or (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or 224)
    transforms = meta.get("transforms") or ("recipe" if loaded.layout == "mindcv" else "hyperrule")
    resize = meta.get("eval_resize")
    if resize:
        resize = int(resize)
    elif transforms == "recipe" and loaded.layout == "mindcv":
        resize = round(size * 256 / 224)
    return {"transforms": transforms, "eval_crop": size, "eval_resize": resize or None, "mean": mean, "std": std}


def export_metadata(model: nn.Module, inputs: Mapping, classes: list[str] | None,
                    model_name: str | None = None) -> dict[str, str]:
    """Safetensors metadata for a transformers export, so the file alone still names its model, classes and inputs."""
    pc = getattr(model, "pretrained_cfg", None) or {}
    meta = {"model": model_name or pc.get("name") or "", "num_classes": str(model.num_classes),
            "transforms": str(inputs["transforms"]), "eval_crop": str(inputs["eval_crop"]),
            "mean": ",".join(str(float(v)) for v in inputs["mean"]),
            "std": ",".join(str(float(v)) for v in inputs["std"])}
    if inputs.get("eval_resize"):
        meta["eval_resize"] = str(inputs["eval_resize"])
    if classes is not None:
        meta["classes"] = json.dumps(classes)
    return meta


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str | None = None, *,
            model_name: str | None = None, ema: bool = False, overwrite: bool = False) -> tuple[Path, nn.Module]:
    """Convert ``src`` (any format, or a folder holding one) to ``dst`` as ``to`` through a model that checks it;
    returns the path and the model. ``to="hf"`` writes a transformers folder unless ``dst`` is a .safetensors file."""
    to = check_destination(dst, to, overwrite)
    dst = Path(dst)
    folder = is_folder_target(dst, to)
    _check_not_source(src, dst, folder)
    loaded = read_checkpoint(src, ema=ema)
    model = model_for(loaded, model_name, str(src))
    state = model.state_dict()
    head = "head.conv.weight" in loaded.state
    if not head:
        state = {k: v for k, v in state.items() if not k.startswith("head.conv.")}
    if to != "hf":
        write_checkpoint(state, dst, to, model_metadata(model, model_name) if to == "safetensors" else None)
        return dst, model
    inputs = eval_inputs(model, loaded)
    classes = (classes_for(loaded, src, model.num_classes) or registry_classes(model_name, model.num_classes)
               if head else None)
    meta = export_metadata(model, inputs, classes, model_name)
    if not folder:
        write_checkpoint(state, dst, "hf", meta)
        return dst, model
    config = hf_config(model.block_units, model.width_factor, model.num_classes if head else None, classes)
    write_hf_folder(state, dst, config, hf_preprocessor_config(**inputs), meta)
    return dst, model


__all__ = ["detect_format", "detect_layout", "read_checkpoint", "infer_architecture", "model_for", "apply_input_stats",
           "write_checkpoint", "convert", "arch_name", "target_from_path", "Loaded", "TARGETS", "weights_in_folder",
           "source_files", "is_folder_target", "check_destination", "classes_for", "registry_classes", "eval_inputs",
           "export_metadata", "WEIGHT_SUFFIXES", "WEIGHT_NAMES", "HF_FILES"]
