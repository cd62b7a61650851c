"""Torch state dicts saved with ``torch.save``, read with ``weights_only=True`` so nothing but tensors is unpickled."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping

import torch

from ..errors import CheckpointError

_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")


def read_torch(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a torch state dict (unwrapped from ``{"state_dict": ...}`` and DataParallel's ``module.``)."""
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


__all__ = ["read_torch"]
