"""Hugging Face transformers ``BitForImageClassification`` state dicts.

The transformers layout is timm's renamed, with a Linear classifier:

=========================================  ===============================================
transformers                               ours
=========================================  ===============================================
bit.embedder.convolution.weight            root.conv.weight
bit.encoder.stages.S.layers.J.norm{1,2,3}  body.block{S+1}.unit{J+1:02d}.gn{1,2,3}
bit.encoder.stages.S.layers.J.conv{1,2,3}  body.block{S+1}.unit{J+1:02d}.conv{1,2,3}
bit.encoder.stages.S.layers.0.downsample   body.block{S+1}.unit01.downsample
  .conv.weight                               .weight
bit.norm.{weight,bias}                     head.gn.{weight,bias}
classifier.1.weight (K, C)                 head.conv.weight (K, C, 1, 1)
classifier.1.bias                          head.conv.bias
=========================================  ===============================================

A ``BitModel`` (no classifier) saves the same keys without the ``bit.`` prefix; those load too. A Hugging Face folder
holds the weights, ``config.json`` (a ``BitConfig``) and ``preprocessor_config.json`` (a ``BitImageProcessor``).

transformers uses GroupNorm eps 1e-5, like timm, and weight-standardization eps 1e-8 (BitConfig has no field for it),
where our models default to the official 1e-10. On the same weights the logits still agree within 1e-4 of the largest
logit (measured 1e-5 to 6e-5 for R50x1 and R101x1 with random weights; a model built with ``ws_eps=1e-8`` agrees to
about 1e-6). The exported config pads symmetrically (``global_padding`` null), as our models do.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .common import atomic_write, load_into, writable_dir, write_error
from .st import write_safetensors
from .timm import from_timm_key, to_timm_key

_HF_UNIT = re.compile(r"bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)$")
_TIMM_UNIT = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)$")
_FIXED = {"stem.conv.weight": "bit.embedder.convolution.weight", "norm.weight": "bit.norm.weight",
          "norm.bias": "bit.norm.bias", "head.fc.weight": "classifier.1.weight", "head.fc.bias": "classifier.1.bias"}
_FIXED_BACK = {v: k for k, v in _FIXED.items()}
BASE_PREFIXES = ("embedder.", "encoder.", "norm.")  # keys of a bare BitModel

log = logging.getLogger("bigtransfer")
CONFIG_NAME = "config.json"
PROCESSOR_NAME = "preprocessor_config.json"
WEIGHTS_NAME = "model.safetensors"
# what transformers reads from a folder, in its order of preference (a sharded index lists its shard files)
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TRANSFORMERS_WS_EPS = 1e-8  # hard-wired in every transformers WeightStandardizedConv2d of BiT
PIL_BILINEAR = 2  # PIL.Image.BILINEAR: torchvision's default resize interpolation, which our transforms use
GN_GROUPS = 32


def is_hf_key(key: str) -> bool:
    """True for a key in the transformers layout (with or without the ``bit.`` prefix)."""
    return key.startswith(("bit.", "classifier.")) or key.startswith(BASE_PREFIXES[:2])


def from_hf_key(key: str) -> str:
    """Our name for a transformers ``BitForImageClassification`` key."""
    if key.startswith(BASE_PREFIXES):
        key = "bit." + key
    if key in _FIXED_BACK:
        return from_timm_key(_FIXED_BACK[key])
    m = _HF_UNIT.match(key)
    if not m:
        raise KeyError(key)
    return from_timm_key(f"stages.{m.group(1)}.blocks.{m.group(2)}.{m.group(3)}")


def to_hf_key(key: str) -> str:
    """The transformers name of one of our keys."""
    timm_key = to_timm_key(key)
    if timm_key in _FIXED:
        return _FIXED[timm_key]
    m = _TIMM_UNIT.match(timm_key)
    return f"bit.encoder.stages.{m.group(1)}.layers.{m.group(2)}.{m.group(3)}"


def hf_to_state_dict(state: Mapping[str, torch.Tensor], source: str = "transformers state dict") -> dict:
    """Rename a transformers BiT state dict to our keys; the Linear classifier becomes a 1x1 conv."""
    out = {}
    for k, v in state.items():
        try:
            ours = from_hf_key(k)
        except KeyError:
            raise CheckpointError(f"{source}: key '{k}' is not a transformers BitForImageClassification key; "
                                  f"check the file's format") from None
        if ours == "head.conv.weight" and v.ndim == 2:
            v = v.reshape(*v.shape, 1, 1)
        out[ours] = v
    return out


def state_dict_to_hf(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names, the classifier as a Linear ``(K, C)`` weight."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    out = {}
    for k, v in state.items():
        v = v.detach().clone()
        if k == "head.conv.weight":
            v = v.reshape(v.shape[0], v.shape[1])
        out[to_hf_key(k)] = v
    return out


def load_hf_state(model: nn.Module, state: Mapping[str, torch.Tensor],
                  source: str = "transformers state dict") -> nn.Module:
    """Load a transformers ``BitForImageClassification`` (or ``BitModel``) state dict into ``model``."""
    load_into(model, hf_to_state_dict(state, source), source)
    return model


def hf_config(block_units: Sequence[int], width_factor: float, num_classes: int | None,
              classes: Sequence[str] | None = None) -> dict:
    """A transformers ``BitConfig`` (as ``config.json``) for our architecture; no ``num_classes``: a bare BitModel."""
    widths = [int(256 * width_factor) * 2**i for i in range(len(block_units))]
    config = {"architectures": ["BitForImageClassification" if num_classes else "BitModel"], "model_type": "bit",
              "num_channels": 3, "embedding_size": int(64 * width_factor), "hidden_sizes": widths,
              "depths": [int(u) for u in block_units], "layer_type": "preactivation", "hidden_act": "relu",
              "global_padding": None, "num_groups": GN_GROUPS, "drop_path_rate": 0.0,
              "embedding_dynamic_padding": False, "output_stride": 32, "width_factor": 1}
    if num_classes:
        fits = classes is not None and len(classes) == num_classes
        labels = [str(c) for c in classes] if fits else [f"LABEL_{i}" for i in range(num_classes)]
        config["id2label"] = {str(i): name for i, name in enumerate(labels)}
        config["label2id"] = {name: i for i, name in enumerate(labels)}
    return config


def hf_preprocessor_config(transforms: str, eval_crop: int, eval_resize: int | None,
                           mean: Sequence[float], std: Sequence[float]) -> dict:
    """A ``BitImageProcessor`` config that reproduces our evaluation transform: HyperRule's squash resize, or the
    recipe's resize and centre crop (one pixel off ours where a margin is 3 mod 4: transformers truncates, we round)."""
    crop = {"height": int(eval_crop), "width": int(eval_crop)}
    if transforms == "hyperrule":
        size, center = dict(crop), False
    elif transforms == "recipe":
        size, center = {"shortest_edge": int(eval_resize or eval_crop)}, True
    else:
        raise CheckpointError(f"unknown transforms '{transforms}': use hyperrule or recipe")
    return {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": size, "resample": PIL_BILINEAR,
            "do_center_crop": center, "crop_size": crop, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": [float(v) for v in mean], "image_std": [float(v) for v in std],
            "do_convert_rgb": True}


def is_hf_folder(path: str | os.PathLike) -> bool:
    """True for a folder with a ``config.json`` (a Hugging Face model folder, e.g. a hub download)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file()


def hf_weights_files(folder: str | os.PathLike) -> list[Path] | None:
    """The weights files transformers would read from ``folder`` (the shards of a sharded index), or None."""
    folder = Path(folder)
    for name in HF_WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        index = _read_json(path)
        shards = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(shards, dict) or not shards:
            raise CheckpointError(f"{path}: no weight_map; the index is damaged, re-download the folder")
        files = [folder / f for f in sorted(set(map(str, shards.values())))]
        missing = next((f for f in files if not f.is_file()), None)
        if missing is not None:
            raise CheckpointError(f"{path}: shard '{missing.name}' is missing; re-download the folder")
        return files
    return None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({type(e).__name__}: {str(e).splitlines()[0]}); "
                              f"fix or re-download it") from None


def read_hf_config(folder: str | os.PathLike) -> dict:
    """The ``config.json`` of a folder, checked to describe a BiT ResNetV2 that our models compute exactly."""
    path = Path(folder) / CONFIG_NAME
    config = _read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a JSON object; fix or re-download it")
    model_type = config.get("model_type")
    if model_type is not None and model_type != "bit":
        raise CheckpointError(f"{path}: model_type '{model_type}' is not a BiT model ('bit'); only BiT ResNetV2 "
                              f"folders can be read")
    wanted = {"layer_type": "preactivation", "hidden_act": "relu", "num_groups": GN_GROUPS, "output_stride": 32}
    for key, want in wanted.items():
        got = config.get(key, want)
        if got != want:
            raise CheckpointError(f"{path}: {key} {got!r} is not BiT's pre-activation ResNetV2 ({key} {want!r}); "
                                  f"only BiT folders can be read")
    padding = config.get("global_padding")
    if isinstance(padding, str) and padding.upper() == "VALID":
        raise CheckpointError(f"{path}: global_padding 'VALID' (no padding) is not BiT's; only folders with "
                              f"global_padding null or 'same' can be read")
    if padding is not None or config.get("embedding_dynamic_padding"):
        log.warning("%s: global_padding %r pads like TensorFlow ('same'); these models pad symmetrically, so their "
                    "outputs can differ slightly from transformers'", path, padding)
    return config


def _labels(config: dict, source: str) -> list[str] | None:
    """``id2label`` as a list of names (None when absent or only transformers' ``LABEL_i`` defaults)."""
    id2label = config.get("id2label")
    if not id2label:
        return None
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except (AttributeError, TypeError, ValueError):
        raise CheckpointError(f"{source}: id2label must map 0..N-1 to names; fix the config") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise CheckpointError(f"{source}: id2label keys are not 0..{len(by_index) - 1}; fix the config")
    names = [by_index[i] for i in range(len(by_index))]
    return None if names == [f"LABEL_{i}" for i in range(len(names))] else names


def _floats(value) -> str | None:
    values = [value] * 3 if isinstance(value, (int, float)) else value
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        return None
    return ",".join(str(float(v)) for v in values)


def _processor_inputs(processor: dict) -> dict[str, str]:
    """Our evaluation settings (transforms, eval_crop, eval_resize, mean, std) that a BitImageProcessor implies."""
    out = {}
    for key, ours in (("image_mean", "mean"), ("image_std", "std")):
        if key in processor and _floats(processor[key]):
            out[ours] = _floats(processor[key])
    size = processor.get("size", {"shortest_edge": 224})
    size = {"shortest_edge": size} if isinstance(size, int) else size if isinstance(size, dict) else {}
    crop = processor.get("crop_size", {"height": 224, "width": 224})
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop if isinstance(crop, dict) else {}
    square = crop.get("height") if crop.get("height") == crop.get("width") else None
    if not processor.get("do_center_crop", True):
        if size.get("height") and size.get("height") == size.get("width"):
            out.update(transforms="hyperrule", eval_crop=str(int(size["height"])))
    elif square and size.get("shortest_edge"):
        out.update(transforms="recipe", eval_crop=str(int(square)), eval_resize=str(int(size["shortest_edge"])))
    elif square:
        out["eval_crop"] = str(int(square))
    return out


def hf_folder_metadata(folder: str | os.PathLike, config: dict) -> dict[str, str]:
    """What a folder's configs tell about its model, as our checkpoint metadata (classes as JSON, mean/std ...)."""
    folder = Path(folder)
    meta: dict[str, str] = {}
    names = _labels(config, str(folder / CONFIG_NAME))
    if names is not None:
        meta["classes"] = json.dumps(names)
    if config.get("id2label"):
        meta["num_classes"] = str(len(config["id2label"]))
    processor = folder / PROCESSOR_NAME
    if processor.is_file():
        found = _read_json(processor)
        if isinstance(found, dict):
            meta.update(_processor_inputs(found))
    return meta


def check_hf_config(config: dict, arch: Mapping, source: str) -> None:
    """Refuse a ``config.json`` whose architecture or label count disagrees with the weights beside it."""
    units, wf, k = tuple(arch["block_units"]), float(arch["width_factor"]), arch.get("num_classes")
    fix = "the folder mixes two models; re-download or re-export it"
    depths = config.get("depths")
    if depths is not None and tuple(depths) != units:
        raise CheckpointError(f"{source}: config.json has depths {list(depths)} but the weights have "
                              f"{list(units)}; {fix}")
    widths = [int(256 * wf) * 2**i for i in range(len(units))]
    hidden = config.get("hidden_sizes")
    if hidden is not None and config.get("width_factor", 1) == 1 and list(hidden) != widths:
        raise CheckpointError(f"{source}: config.json has hidden_sizes {list(hidden)} but the weights have "
                              f"{widths}; {fix}")
    labels = config.get("id2label")
    if labels and k is not None and len(labels) != k:
        raise CheckpointError(f"{source}: config.json has {len(labels)} labels but the classifier has {k} "
                              f"outputs; {fix}")


def write_hf_folder(state: Mapping[str, torch.Tensor], folder: str | os.PathLike, config: Mapping,
                    processor: Mapping, metadata: Mapping[str, str] | None = None) -> Path:
    """Write our-name ``state`` as a folder transformers loads (weights, ``config.json``, preprocessor config), staged
    next to ``folder`` so a failure leaves it as it was; without a head the weights are a bare ``BitModel``'s."""
    folder = Path(folder)
    tensors = state_dict_to_hf(state)
    if not any(k.startswith("classifier.") for k in tensors):
        tensors = {k[len("bit."):]: v for k, v in tensors.items()}
    writable_dir(folder.parent, error=CheckpointError)
    stage = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
    try:
        write_safetensors(tensors, stage / WEIGHTS_NAME, metadata)
        for name, content in ((PROCESSOR_NAME, processor), (CONFIG_NAME, config)):
            text = json.dumps(content, indent=2, sort_keys=True) + "\n"
            atomic_write(stage / name, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
        if not folder.exists():
            os.replace(stage, folder)
        else:
            for name in (WEIGHTS_NAME, PROCESSOR_NAME, CONFIG_NAME):
                os.replace(stage / name, folder / name)
    except OSError as e:
        raise write_error(e, folder, error=CheckpointError) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return folder


__all__ = ["from_hf_key", "to_hf_key", "hf_to_state_dict", "state_dict_to_hf", "load_hf_state", "is_hf_key",
           "hf_config", "hf_preprocessor_config", "is_hf_folder", "hf_weights_files", "read_hf_config",
           "hf_folder_metadata", "check_hf_config", "write_hf_folder", "TRANSFORMERS_WS_EPS"]
