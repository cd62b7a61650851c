"""The official BiT ``.npz`` checkpoint layout (TensorFlow scopes, HWIO kernels)."""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format
from torch import nn

from ..errors import CheckpointError
from ..models import ResNetV2
from .common import atomic_write

_UNIT = re.compile(r"body\.block(\d)\.unit(\d\d)\.(\w+?)\.(weight|bias)$")
_GN = {"weight": "gamma", "bias": "beta"}
_SCOPE = {"gn1": "a", "conv1": "a", "gn2": "b", "conv2": "b", "gn3": "c", "conv3": "c"}
_FIXED = {"root.conv.weight": "resnet/root_block/standardized_conv2d/kernel",
          "head.gn.weight": "resnet/group_norm/gamma", "head.gn.bias": "resnet/group_norm/beta",
          "head.conv.weight": "resnet/head/conv2d/kernel", "head.conv.bias": "resnet/head/conv2d/bias"}


def npz_key(key: str) -> str:
    """The official ``.npz`` name of one of our state-dict keys."""
    if key in _FIXED:
        return _FIXED[key]
    m = _UNIT.match(key)
    if not m:
        raise KeyError(key)
    block, unit, mod, kind = m.groups()
    scope = f"resnet/block{block}/unit{unit}"
    if mod == "downsample":
        return f"{scope}/a/proj/standardized_conv2d/kernel"
    if mod.startswith("gn"):
        return f"{scope}/{_SCOPE[mod]}/group_norm/{_GN[kind]}"
    return f"{scope}/{_SCOPE[mod]}/standardized_conv2d/kernel"


def _tf_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[2], shape[3], shape[1], shape[0]) if len(shape) == 4 else shape


MAX_DEFLATE_RATIO = 1032  # deflate expands data by at most about 1032:1


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` without unpickling anything; each member's ``.npy`` header is checked against
    its size first, so a header claiming a huge array is refused before anything is allocated."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file; check the path")
    try:
        _check_members(path)
    except CheckpointError:
        raise
    except Exception as e:  # zipfile and numpy report damage with many types (BadZipFile, zlib.error, TokenError...)
        raise CheckpointError(f"{path}: corrupt or truncated .npz ({type(e).__name__}: {_first_line(e)}); "
                              f"re-download it") from None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise CheckpointError(f"{path}: holds pickled object arrays, which are refused for safety; "
                                  f"use a plain numeric .npz") from None
        raise CheckpointError(f"{path}: not a readable .npz ({_first_line(e)}); re-download or re-export it") from None
    except Exception as e:  # as above; the headers were checked, so this is damaged data
        raise CheckpointError(f"{path}: corrupt or truncated .npz ({type(e).__name__}: {_first_line(e)}); "
                              f"re-download it") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def _check_members(path: str | os.PathLike) -> None:
    """Every member is a ``.npy`` whose announced shape and dtype fit in the member's bytes."""
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            name = info.filename
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise CheckpointError(f"{path}: member '{name}' uses zip compression method {info.compress_type}; "
                                      f"an .npz holds stored or deflated .npy files only")
            if not name.endswith(".npy"):
                raise CheckpointError(f"{path}: member '{name}' is not a .npy array; the file is not a weights .npz")
            ratio_ok = (info.file_size == info.compress_size if info.compress_type == zipfile.ZIP_STORED
                        else info.file_size <= MAX_DEFLATE_RATIO * info.compress_size + 64)
            if not ratio_ok:
                raise CheckpointError(f"{path}: member '{name}' claims {info.file_size} bytes from "
                                      f"{info.compress_size} stored; the zip directory is corrupt")
            with z.open(info) as f:
                version = npy_format.read_magic(f)
                read_header = npy_format.read_array_header_1_0 if version == (1, 0) else \
                    npy_format.read_array_header_2_0
                shape, _, dtype = read_header(f)
                if dtype.hasobject:
                    continue  # np.load refuses these with its own message (no pickles are loaded)
                need = math.prod(shape) * dtype.itemsize
                held = info.file_size - f.tell()
            if need > held:
                raise CheckpointError(f"{path}: array '{name[:-4]}' claims shape {tuple(shape)} of {dtype} "
                                      f"({need} bytes) but holds {held} bytes; the file is corrupt or truncated")


def npz_to_state_dict(arrays: dict[str, np.ndarray], model: nn.Module, source: str = "npz") -> dict:
    """Map official arrays onto our key names; unknown arrays are reported by name."""
    names = {npz_key(k): k for k in model.state_dict()}
    state = {}
    for k, arr in arrays.items():
        if k not in names:
            raise CheckpointError(f"{source}: unexpected array '{k}' for this model "
                                  f"({len(arrays)} arrays, the model has {len(names)}); "
                                  f"pick the model name that matches the file")
        state[names[k]] = arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr  # HWIO -> OIHW
    return state


def npz_template(arrays: Mapping[str, np.ndarray], source: str) -> nn.Module:
    """A model on the meta device whose key names cover the arrays of an official ``.npz``."""
    units: dict[int, int] = {}
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


def check_npz(arrays: Mapping[str, np.ndarray], model: nn.Module, source: str) -> None:
    """Every body array of ``model`` is present with its shape (the head may differ)."""
    wanted = {npz_key(k): _tf_shape(tuple(v.shape)) for k, v in model.state_dict().items()}
    for k, arr in arrays.items():
        if k in wanted and tuple(arr.shape) != wanted[k] and not k.startswith("resnet/head/"):
            raise CheckpointError(f"{source}: array '{k}' has shape {tuple(arr.shape)}, expected {wanted[k]}; "
                                  f"the file is for another architecture or width")
    missing = [k for k in wanted if k not in arrays and not k.startswith("resnet/head/")]
    if missing:
        raise CheckpointError(f"{source}: missing array '{missing[0]}' with shape {wanted[missing[0]]} "
                              f"({len(missing)} missing); the file is incomplete or for another model")


def npz_state(path: str, template: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """An official ``.npz`` as tensors under our names: checked against ``template``, else inferred from its arrays."""
    arrays = read_npz(path)
    bad = next((k for k in arrays if not k.startswith("resnet/")), None)
    if bad is not None:
        hint = "; use 'bit convert' for other formats" if template is not None else ""
        raise CheckpointError(f"{path}: array '{bad}' is not in the official BiT layout (resnet/...){hint}")
    if template is None:
        template = npz_template(arrays, path)
    else:
        check_npz(arrays, template, path)
    state = {}
    for k, arr in npz_to_state_dict(arrays, template, path).items():
        try:
            state[k] = torch.from_numpy(np.ascontiguousarray(arr))
        except (TypeError, ValueError):  # strings, big-endian or other arrays torch cannot hold
            raise CheckpointError(f"{path}: key '{k}' has dtype {arr.dtype}, expected floating point") from None
    return state


def load_npz(model: nn.Module, path: str | os.PathLike, *, adopt_head: bool = False) -> nn.Module:
    """Load an official BiT ``.npz`` into ``model`` (strict; the head as :func:`load_into` says)."""
    from .loading import load_checkpoint

    return load_checkpoint(model, path, fmt="npz", adopt_head=adopt_head)


def npz_arrays(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Our-name tensors as official ``.npz`` arrays (float32, HWIO kernels)."""
    arrays = {}
    for k, v in state.items():
        arr = v.detach().cpu().float().numpy()
        arrays[npz_key(k)] = np.ascontiguousarray(arr.transpose(2, 3, 1, 0) if arr.ndim == 4 else arr)  # OIHW -> HWIO
    return arrays


def state_dict_to_npz(model: nn.Module) -> dict[str, np.ndarray]:
    """Our weights as official ``.npz`` arrays (float32, HWIO kernels)."""
    return npz_arrays(model.state_dict())


def write_npz(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write our-name tensors as an official-layout ``.npz``, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **npz_arrays(state))

    return atomic_write(path, write)


def save_npz(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` as an official-layout ``.npz``, atomically."""
    from .loading import save_model

    return save_model(model, path, "npz")


def is_npz(path: str | os.PathLike) -> bool:
    """True when the file starts like a zip archive (an ``.npz``)."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


__all__ = ["load_npz", "save_npz", "read_npz", "write_npz", "npz_key", "npz_to_state_dict", "npz_state", "npz_arrays",
           "npz_template", "check_npz", "state_dict_to_npz", "is_npz"]
