"""Load a state dict in our own key names into a model, with strict, readable checks."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError

log = logging.getLogger("bigtransfer")
HEAD_KEYS = ("head.conv.weight", "head.conv.bias")


def _shape(t) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor | np.ndarray], source: str) -> list[str]:
    """Copy ``state`` (our key names) into ``model``; returns the keys loaded.

    Every body key must be present with the model's shape. The head is loaded only when its size
    matches the model's; otherwise the model keeps its zero-initialised head and a notice is logged.
    """
    own = model.state_dict()
    extra = sorted(set(state) - set(own))
    if extra:
        raise CheckpointError(f"{source}: unexpected key '{extra[0]}' ({len(extra)} extra); "
                              f"the checkpoint is for another architecture, pick the matching model name")
    body_missing = [k for k in own if k not in state and k not in HEAD_KEYS]
    if body_missing:
        k = body_missing[0]
        raise CheckpointError(f"{source}: missing key '{k}' with shape {_shape(own[k])} "
                              f"({len(body_missing)} missing); the file is incomplete or for another model")
    for k, v in state.items():
        if k in HEAD_KEYS:
            continue
        if _shape(v) != _shape(own[k]):
            raise CheckpointError(f"{source}: key '{k}' has shape {_shape(v)}, expected {_shape(own[k])}; "
                                  f"the checkpoint is for another architecture or width")
        floating = v.is_floating_point() if isinstance(v, torch.Tensor) else np.issubdtype(v.dtype, np.floating)
        if not floating:
            raise CheckpointError(f"{source}: key '{k}' has dtype {v.dtype}, expected floating point")
    head_ok = all(k in state and _shape(state[k]) == _shape(own[k]) for k in HEAD_KEYS)
    loaded = [k for k in state if k not in HEAD_KEYS or head_ok]
    with torch.no_grad():
        for k in loaded:
            v = state[k]
            t = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            own[k].copy_(t.to(own[k].dtype))
    if not head_ok and any(k in state for k in HEAD_KEYS):
        got = _shape(state["head.conv.weight"])[0] if "head.conv.weight" in state else "?"
        log.info("%s: head has %s classes, model has %d; keeping the new zero-initialised head",
                    source, got, _shape(own["head.conv.bias"])[0])
    return loaded


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path``, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
