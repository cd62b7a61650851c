"""Load a state dict in our own key names into a model, with strict, readable checks."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from ..errors import BitError, CheckpointError, file_error_line

log = logging.getLogger("bigtransfer")
HEAD_KEYS = ("head.conv.weight", "head.conv.bias")


def _shape(t) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor | np.ndarray], source: str, *,
              adopt_head: bool = False) -> list[str]:
    """Copy ``state`` (our key names, every body key with the model's shape) into ``model``; returns the keys loaded.
    With ``adopt_head`` the model's head is resized to the checkpoint's; else one of another size stays a zero head."""
    if adopt_head and "head.conv.weight" in state and hasattr(model, "reset_classifier"):
        n = _shape(state["head.conv.weight"])[0]
        if n != model.num_classes:
            model.reset_classifier(n)
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
        log.info("%s: a new zero-initialised head of %d classes replaces the checkpoint's head of %s classes",
                 source, _shape(own["head.conv.bias"])[0], got)
    return loaded


def write_error(err: BaseException, path: str | os.PathLike | None = None, fix: str | None = None,
                error: type[BitError] = BitError) -> BitError:
    """A one-line ``error`` for a failed write of ``path`` (default: the OSError's filename), with the fix."""
    return error(file_error_line(err, path, "write", fix))


def writable_dir(path: str | os.PathLike, fix: str | None = None, error: type[BitError] = BitError) -> Path:
    """Create folder ``path`` with its parents; a failure raises a one-line ``error`` naming it and the fix."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, path, fix, error) from None
    return path


def file_mode() -> int:
    """The mode a new file gets from any other tool: 0o666 less the umask (read without changing it if possible)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_file(path: Path) -> Path:
    """Create an empty, unique temporary file next to ``path``."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)``, fsync and rename onto ``path`` (mode 0o666 less the umask): a crash or full disk
    never leaves half a file; a failed write removes the temporary file and raises CheckpointError."""
    path = Path(path)
    writable_dir(path.parent, error=CheckpointError)
    tmp = None
    try:
        tmp = _temp_file(path)
        write(str(tmp))
        os.chmod(tmp, file_mode())  # some writers (safetensors) replace the file with a private one
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        # full disk, read-only folder, torch/safetensors I/O: one line naming the file
        if isinstance(e, (OSError, RuntimeError, SafetensorError)) and not isinstance(e, BitError):
            raise write_error(e, path, error=CheckpointError) from None
        raise
    return path
