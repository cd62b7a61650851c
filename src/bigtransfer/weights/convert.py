"""Format detection by content, reading any checkpoint (or a folder holding one) into our key names, and conversion
between formats."""

from __future__ import annotations

import json
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
from .hf import (
    check_hf_config,
    hf_config,
    hf_folder_metadata,
    hf_preprocessor_config,
    hf_to_state_dict,
    hf_weights_files,
    is_hf_folder,
    read_hf_config,
    state_dict_to_hf,
    write_hf_folder,
)
from .mindspore import looks_like_ckpt, mindcv_to_state_dict, read_mindcv, state_dict_to_mindcv, write_ckpt
from .npz import _to_tf_layout, npz_key, npz_to_state_dict, read_npz
from .st import is_safetensors, read_safetensors, write_safetensors
from .timm import timm_to_state_dict, to_timm_key

log = logging.getLogger("bigtransfer")

TARGETS = ("npz", "safetensors", "timm", "hf", "ckpt")
_EXTENSIONS = {".npz": "npz", ".ckpt": "ckpt", ".safetensors": "safetensors"}
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")
_UNIT = re.compile(r"body\.block(\d+)\.unit(\d+)\.")
WEIGHT_SUFFIXES = (".npz", ".safetensors", ".ckpt", ".pth", ".pt", ".bin")
# in a folder, these names are the weights whatever else it holds (a Hugging Face download, a run folder)
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
HF_FILES = ("model.safetensors", "config.json", "preprocessor_config.json")  # what a transformers export writes


@dataclass
class Loaded:
    """A checkpoint read into our key names, with what was learnt about it on the way."""

    state: dict[str, torch.Tensor]
    file_format: str  # npz | safetensors | mindspore | torch
    layout: str  # ours | timm | hf | mindcv | npz
    metadata: dict[str, str] = field(default_factory=dict)


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
    """Read any supported weights file into our key names (architecture-agnostic, nothing unpickled).

    ``path`` may be a folder: a Hugging Face folder (``config.json`` beside ``model.safetensors`` or
    ``pytorch_model.bin``) adds what its configs say (classes from ``id2label``, mean/std and eval size from
    ``preprocessor_config.json``) to the metadata; any other folder is read through its one weights file.
    """
    if Path(path).is_dir():
        return _read_folder(Path(path), ema)
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


def _read_folder(folder: Path, ema: bool) -> Loaded:
    """A folder's weights; for a Hugging Face folder with its ``config.json`` checked and turned into metadata."""
    if not is_hf_folder(folder):
        return read_checkpoint(weights_in_folder(folder), ema=ema)
    config = read_hf_config(folder)
    files = source_files(folder)
    if len(files) == 1:
        loaded = read_checkpoint(files[0], ema=ema)
    else:
        tensors: dict[str, torch.Tensor] = {}
        for file in files:  # the shards of a sharded checkpoint
            safetensors = detect_format(file) == "safetensors"
            tensors.update(read_safetensors(file)[0] if safetensors else _read_torch(str(file)))
        layout = detect_layout(tensors)
        loaded = Loaded(to_ours(tensors, layout, str(folder), ema=ema), detect_format(files[0]), layout)
    if loaded.layout == "hf" and "root.conv.weight" in loaded.state:
        check_hf_config(config, infer_architecture(loaded.state, str(folder)), str(folder))
    loaded.metadata = {**loaded.metadata, **hf_folder_metadata(folder, config)}
    return loaded


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
    """Write our-name ``state`` as ``to`` (npz | safetensors | timm | hf | ckpt), atomically, as one file.

    ``metadata`` goes into safetensors files (ours and transformers'); ``convert`` writes a whole transformers
    folder (with ``config.json``) instead when the destination is not a ``.safetensors`` file.
    """
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
        return write_safetensors(state_dict_to_hf(state), path, metadata)
    if to == "ckpt":
        return write_ckpt(state_dict_to_mindcv(state), path)
    raise CheckpointError(f"unknown target format '{to}'; choose one of {', '.join(TARGETS)}")


def target_from_path(path: str | os.PathLike) -> str | None:
    """The target format implied by a file extension (``.npz``, ``.ckpt``, ``.safetensors``)."""
    return _EXTENSIONS.get(Path(path).suffix.lower())


def is_folder_target(dst: str | os.PathLike, to: str | None) -> bool:
    """True when ``convert`` writes ``dst`` as a transformers folder: ``to`` is hf and ``dst`` no .safetensors file."""
    return to == "hf" and Path(dst).suffix.lower() != ".safetensors"


def _check_folder_target(src: str | os.PathLike, dst: Path, overwrite: bool) -> None:
    """A transformers folder may be new or empty; a non-empty one needs ``overwrite``, and never holds the source."""
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst} is a file; --to hf writes a folder (model.safetensors, config.json, "
                              f"preprocessor_config.json): give a folder name, or a .safetensors name for the "
                              f"weights alone")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise CheckpointError(f"folder {dst} is not empty; pass --overwrite to replace its model files, or give a "
                              f"new folder")
    ours = {(dst / name).resolve() for name in HF_FILES}
    if Path(src).resolve() == dst.resolve() or any(f.resolve() in ours for f in source_files(src)):
        raise CheckpointError(f"{dst} holds the source weights; write to another folder")


def classes_for(loaded: Loaded, src: str | os.PathLike, num_classes: int) -> list[str] | None:
    """The class names of a checkpoint: its metadata's, else a ``classes.json`` beside it; None unless they fit."""
    names = None
    if loaded.metadata.get("classes"):
        try:
            names = json.loads(loaded.metadata["classes"])
        except json.JSONDecodeError:
            names = None
    else:
        beside = (Path(src) if Path(src).is_dir() else Path(src).parent) / "classes.json"
        if beside.is_file():
            try:
                names = json.loads(beside.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                names = None
    ok = isinstance(names, list) and len(names) == num_classes and all(isinstance(n, str) for n in names)
    return names if ok else None


def registry_classes(model_name: str | None, num_classes: int) -> list[str] | None:
    """The class names of a registered model's pretrained head (downloaded once), when the head is that size."""
    from ..models import get_config

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
    """How inputs are prepared for ``model`` at evaluation: transforms, eval_crop, eval_resize, mean, std.

    From the checkpoint's metadata (a run's final weights record them), else the model's input size with the
    HyperRule's squash resize; MindSpore weights get the ImageNet-style resize 256 (for 224) and centre crop.
    """
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
    """Convert ``src`` (any supported format, or a folder holding one) to ``dst`` in format ``to``.

    Returns the path and the model. The weights are loaded into a model first (strict names and shapes), so a file
    that would not load is never written; the head is kept only when the source has one. With ``to="hf"`` and a
    ``dst`` that is not a ``.safetensors`` file, ``dst`` becomes a folder that transformers' ``from_pretrained``
    loads: ``model.safetensors``, ``config.json`` (architecture, ``id2label`` from the run's classes) and
    ``preprocessor_config.json`` (a ``BitImageProcessor`` giving our evaluation transform's tensor).
    """
    from .st import model_metadata

    to = to or target_from_path(dst)
    if to not in TARGETS:
        raise CheckpointError(f"cannot tell the target format of {dst}; pass --to with one of {', '.join(TARGETS)}")
    dst = Path(dst)
    folder = is_folder_target(dst, to)
    if folder:
        _check_folder_target(src, dst, overwrite)
    else:
        if dst.exists() and not overwrite:
            raise CheckpointError(f"{dst} exists; pass --overwrite to replace it")
        if any(f.resolve() == dst.resolve() for f in source_files(src)):
            raise CheckpointError(f"{dst} is the source file; write to another path")
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
    processor = hf_preprocessor_config(inputs["transforms"], inputs["eval_crop"], inputs["eval_resize"],
                                       inputs["mean"], inputs["std"])
    write_hf_folder(state, dst, config, processor, meta)
    return dst, model


__all__ = ["detect_format", "detect_layout", "read_checkpoint", "infer_architecture", "model_for", "apply_input_stats",
           "write_checkpoint", "convert", "arch_name", "target_from_path", "Loaded", "TARGETS", "weights_in_folder",
           "source_files", "is_folder_target", "classes_for", "registry_classes", "eval_inputs", "export_metadata"]
