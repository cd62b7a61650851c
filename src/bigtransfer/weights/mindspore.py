"""MindSpore ``.ckpt`` files (mindcv's ``bit_resnet*``), read and written without MindSpore or protobuf.

A ``.ckpt`` is the protobuf message ``Checkpoint { repeated Value value = 1; }`` with
``Value { string tag = 1; oneof { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }`` and
``TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3; }``.
MindSpore appends one message per parameter and splits a large parameter into consecutive values with
the same tag (each carrying the full dims); a scalar has ``dims == [0]``. Contents are raw little-endian.

mindcv names (conv weights OIHW, the classifier a 1x1 conv with bias):
``conv1.weight``; ``layer{b}.{j}.gn{1,2,3}.{gamma,beta}``; ``layer{b}.{j}.conv{1,2,3}.weight``;
``layer{b}.0.down_sample.0.weight``; ``gn.{gamma,beta}``; ``classifier.{weight,bias}``.
Training checkpoints also hold optimizer slots (``moments.*``, ``learning_rate``, ``global_step`` ...)
which are skipped, and, with EMA, a copy of every parameter under an ``ema.`` prefix.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from .common import atomic_write

log = logging.getLogger("bigtransfer")

# tensor_type strings MindSpore writes, as little-endian numpy dtypes (BFloat16 is read as raw uint16).
DTYPES: dict[str, str] = {"Float32": "<f4", "Float16": "<f2", "Float64": "<f8", "BFloat16": "<u2",
                          "Int8": "i1", "UInt8": "u1", "Int16": "<i2", "UInt16": "<u2", "Int32": "<i4",
                          "UInt32": "<u4", "Int64": "<i8", "UInt64": "<u8", "Bool": "?"}
EMA_PREFIX = "ema."
MINDCV_PARAM = re.compile(r"(conv1\.weight|layer\d+\.\d+\.(gn[123]\.(gamma|beta)|conv[123]\.weight|"
                          r"down_sample\.0\.weight)|gn\.(gamma|beta)|classifier\.(weight|bias))$")


class _Corrupt(Exception):
    pass


# --- protobuf wire format -------------------------------------------------------------------------

def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Corrupt("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt("varint longer than 10 bytes")


def _fields(buf, pos: int, end: int) -> Iterator[tuple[int, int, object]]:
    """Yield ``(field, wire_type, value)``; a length-delimited value is ``(start, stop)``."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Corrupt("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if n > end - pos:
                raise _Corrupt(f"a field claims {n} bytes but only {end - pos} remain")
            value = (pos, pos + n)
            pos += n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if n > end - pos:
                raise _Corrupt("truncated fixed-width field")
            value = bytes(buf[pos:pos + n])
            pos += n
        else:
            raise _Corrupt(f"unsupported wire type {wire}")
        yield field, wire, value


@dataclass
class Record:
    """One tensor of a ``.ckpt``: its tag, dims, MindSpore type string and where its content lies in ``buf``."""

    tag: str
    dims: tuple[int, ...]
    dtype: str
    buf: object
    spans: list[tuple[int, int]]

    @property
    def nbytes(self) -> int:
        return sum(b - a for a, b in self.spans)

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        """The content as a fresh (copied) array, so nothing keeps ``buf`` exported."""
        if len(self.spans) == 1:
            return np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.spans[0][0]).copy()
        joined = b"".join(bytes(self.buf[a:b]) for a, b in self.spans)
        return np.frombuffer(joined, dtype=dtype, count=count).copy()


def _tensor(buf, start: int, stop: int) -> tuple[tuple[int, ...], str, tuple[int, int]]:
    dims: list[int] = []
    dtype = ""
    content = (start, start)
    for field, wire, value in _fields(buf, start, stop):
        if field == 1 and wire == 0:
            dims.append(value)
        elif field == 1 and wire == 2:  # packed dims
            pos, end = value
            while pos < end:
                d, pos = _varint(buf, pos, end)
                dims.append(d)
        elif field == 2 and wire == 2:
            dtype = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
        elif field == 3 and wire == 2:
            content = value
    if any(d >= 1 << 62 for d in dims):
        raise _Corrupt("negative or absurd dimension")
    return tuple(dims), dtype, content


def iter_records(buf) -> Iterator[Record]:
    """Records of a ``.ckpt`` buffer with MindSpore's split parameters joined back together."""
    pending: Record | None = None
    for field, wire, value in _fields(buf, 0, len(buf)):
        if field != 1 or wire != 2:
            raise _Corrupt(f"unexpected top-level field {field} (wire type {wire})")
        tag, tensor = None, None
        for f2, w2, v2 in _fields(buf, *value):
            if f2 == 1 and w2 == 2:
                try:
                    tag = bytes(buf[v2[0]:v2[1]]).decode("utf-8")
                except UnicodeDecodeError:
                    raise _Corrupt("a tag is not UTF-8") from None
            elif f2 == 2 and w2 == 2:
                tensor = _tensor(buf, *v2)
            # field 3 (maptensor) and unknown fields are skipped
        if tag is None:
            raise _Corrupt("a value without a tag")
        if tensor is None:
            continue
        dims, dtype, span = tensor
        if pending is not None and tag == pending.tag:
            pending = Record(tag, dims, dtype, buf, pending.spans + [span])
            continue
        if pending is not None:
            yield pending
        pending = Record(tag, dims, dtype, buf, [span])
    if pending is not None:
        yield pending


def looks_like_ckpt(path: str | os.PathLike) -> bool:
    """A cheap content check: the file starts with a ``Value`` whose first field is a readable tag."""
    with open(path, "rb") as f:
        head = f.read(512)
    try:
        if head[0] != 0x0A:  # field 1, length-delimited: a Value
            return False
        n, pos = _varint(head, 1, len(head))
        if head[pos] != 0x0A:  # its field 1: the tag string
            return False
        tag_len, pos = _varint(head, pos + 1, len(head))
        tag = head[pos:pos + tag_len].decode("utf-8")
    except (_Corrupt, IndexError, UnicodeDecodeError):
        return False
    return 0 < tag_len <= 1024 and tag.isprintable() and n > tag_len


# --- reading ---------------------------------------------------------------------------------------

def _to_tensor(rec: Record, source: str) -> torch.Tensor:
    if rec.dtype not in DTYPES:
        raise CheckpointError(f"{source}: tensor '{rec.tag}' has unsupported type '{rec.dtype}'")
    dt = np.dtype(DTYPES[rec.dtype])
    scalar = rec.dims in ((), (0,))
    count = 1 if scalar else math.prod(rec.dims)
    if count * dt.itemsize != rec.nbytes:  # checked before anything is allocated
        raise CheckpointError(f"{source}: tensor '{rec.tag}' claims shape {list(rec.dims)} of {rec.dtype} "
                              f"({count * dt.itemsize} bytes) but holds {rec.nbytes} bytes; "
                              f"the file is corrupt or truncated, re-download it")
    t = torch.from_numpy(rec.array(dt, count))
    if rec.dtype == "BFloat16":
        t = t.view(torch.bfloat16)
    return t.reshape(() if scalar else rec.dims)


def read_ckpt(path: str | os.PathLike, keep: Callable[[str], bool] | None = None,
              tags: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a MindSpore ``.ckpt`` by tag; ``keep(tag)`` chooses which to materialize, ``tags`` collects every
    tag seen. The whole file is parsed either way, so a corrupt file always fails."""
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file; check the path")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file; re-download it")
    out: dict[str, torch.Tensor] = {}
    error = None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            for rec in iter_records(mm):
                if tags is not None:
                    tags.append(rec.tag)
                if rec.dtype in ("str", "random_op") or (keep is not None and not keep(rec.tag)):
                    continue
                out[rec.tag] = _to_tensor(rec, path)
        except _Corrupt as e:
            error = str(e)  # raised outside the ``with`` so the mmap closes cleanly
    if error is not None:
        raise CheckpointError(f"{path}: corrupt or truncated MindSpore checkpoint ({error}); re-download it")
    if not out and keep is None:
        raise CheckpointError(f"{path}: the MindSpore checkpoint holds no tensors")
    return out


_GN_FROM_MINDCV = {"gamma": "weight", "beta": "bias"}
_GN_TO_MINDCV = {v: k for k, v in _GN_FROM_MINDCV.items()}


def _unit_rest(rest: str, downsample: tuple[str, str], gn_names: Mapping[str, str]) -> str:
    """The name of a unit's parameter after its ``layer{b}.{j}.`` / ``body.block{b}.unit{j}.`` prefix, renamed."""
    if rest == downsample[0]:
        return downsample[1]
    if rest.startswith("gn"):
        mod, kind = rest.split(".")
        return f"{mod}.{gn_names[kind]}"
    return rest


def from_mindcv_key(key: str) -> str:
    """Our name for a mindcv ``bit_resnet*`` parameter name."""
    if key == "conv1.weight":
        return "root.conv.weight"
    if key.startswith("gn."):
        return "head.gn." + _GN_FROM_MINDCV[key[3:]]
    if key.startswith("classifier."):
        return "head.conv." + key[len("classifier."):]
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", key)
    if not m:
        raise KeyError(key)
    rest = _unit_rest(m.group(3), ("down_sample.0.weight", "downsample.weight"), _GN_FROM_MINDCV)
    return f"body.block{int(m.group(1))}.unit{int(m.group(2)) + 1:02d}.{rest}"


def to_mindcv_key(key: str) -> str:
    """The mindcv name of one of our keys."""
    if key == "root.conv.weight":
        return "conv1.weight"
    if key.startswith("head.gn."):
        return "gn." + _GN_TO_MINDCV[key.rsplit(".", 1)[1]]
    if key.startswith("head.conv."):
        return "classifier." + key.rsplit(".", 1)[1]
    m = re.fullmatch(r"body\.block(\d+)\.unit(\d+)\.(.+)", key)
    if not m:
        raise KeyError(key)
    rest = _unit_rest(m.group(3), ("downsample.weight", "down_sample.0.weight"), _GN_TO_MINDCV)
    return f"layer{int(m.group(1))}.{int(m.group(2)) - 1}.{rest}"


def mindcv_to_state_dict(tensors: Mapping[str, torch.Tensor], ema: bool = False,
                         source: str = "MindSpore checkpoint") -> dict[str, torch.Tensor]:
    """Model parameters of a mindcv checkpoint under our names, optimizer slots skipped; ``ema=True`` takes the
    ``ema.``-prefixed copy that mindcv keeps when training with EMA."""
    prefix = EMA_PREFIX if ema else ""
    picked = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if ema and not picked:
        raise CheckpointError(f"{source}: no EMA weights ('{EMA_PREFIX}*' tensors) in this checkpoint; "
                              f"load it without ema")
    state, skipped = {}, []
    for k, v in picked.items():
        if not MINDCV_PARAM.match(k):
            skipped.append(k)
            continue
        if not v.is_floating_point():
            raise CheckpointError(f"{source}: parameter '{k}' has dtype {v.dtype}, expected floating point")
        ours = from_mindcv_key(k)
        if ours == "head.conv.weight" and v.ndim == 2:  # a Dense classifier (K, C)
            v = v.reshape(*v.shape, 1, 1)
        state[ours] = v.float() if v.dtype == torch.bfloat16 else v
    if not state:
        first = next(iter(tensors), "none")
        raise CheckpointError(f"{source}: holds no mindcv BiT parameters (first tag '{first}'); "
                              f"the checkpoint is for another model")
    if skipped:
        log.debug("%s: skipped %d non-parameter tensors (optimizer state, EMA, counters), e.g. '%s'",
                  source, len(skipped), skipped[0])
    return state


def read_mindcv(path: str | os.PathLike, ema: bool = False) -> dict[str, torch.Tensor]:
    """A mindcv ``.ckpt`` as a state dict in our key names (optimizer slots are never materialized)."""
    tags: list[str] = []
    prefix = EMA_PREFIX if ema else ""
    tensors = read_ckpt(path, keep=lambda tag: tag.startswith(prefix) and bool(MINDCV_PARAM.match(tag[len(prefix):])),
                        tags=tags)
    if not tensors and not ema:  # without EMA weights, mindcv_to_state_dict says so
        first = tags[0] if tags else "none"
        raise CheckpointError(f"{path}: holds no mindcv BiT parameters (first tag '{first}'); "
                              f"the checkpoint is for another model")
    return mindcv_to_state_dict(tensors, ema=ema, source=str(path))


def load_mindspore(model: nn.Module, path: str | os.PathLike, ema: bool = False, *,
                   adopt_head: bool = False) -> nn.Module:
    """Load a mindcv ``.ckpt`` into ``model``; its inputs then take ImageNet mean/std, as mindcv trains."""
    from .loading import load_checkpoint

    return load_checkpoint(model, path, fmt="mindspore", ema=ema, adopt_head=adopt_head)


# --- writing ---------------------------------------------------------------------------------------

def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _enc_field(field: int, payload: bytes) -> bytes:
    return _enc_varint(field << 3 | 2) + _enc_varint(len(payload)) + payload


_NP_TO_MS = {np.dtype("float32"): "Float32", np.dtype("float16"): "Float16", np.dtype("float64"): "Float64",
             np.dtype("int32"): "Int32", np.dtype("int64"): "Int64", np.dtype("int8"): "Int8",
             np.dtype("uint8"): "UInt8", np.dtype("int16"): "Int16", np.dtype("bool"): "Bool"}


def encode_value(tag: str, array: np.ndarray) -> bytes:
    """One ``Checkpoint`` message holding one tensor, as MindSpore appends them."""
    array = np.asarray(array)
    if array.dtype not in _NP_TO_MS:
        raise CheckpointError(f"cannot write '{tag}' with dtype {array.dtype} to a MindSpore checkpoint")
    dims = list(array.shape) or [0]
    tensor = b"".join(_enc_varint(1 << 3 | 0) + _enc_varint(d) for d in dims)  # unpacked, as proto2 writes
    tensor += _enc_field(2, _NP_TO_MS[array.dtype].encode())
    tensor += _enc_field(3, np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())
    value = _enc_field(1, tag.encode("utf-8")) + _enc_field(2, tensor)
    return _enc_field(1, value)


def write_ckpt(tensors: Mapping[str, np.ndarray | torch.Tensor], path: str | os.PathLike) -> Path:
    """Write tensors by tag as a MindSpore ``.ckpt``, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            for tag, v in tensors.items():
                if isinstance(v, torch.Tensor):
                    v = (v.float() if v.dtype == torch.bfloat16 else v).detach().cpu().numpy()
                f.write(encode_value(tag, v))

    return atomic_write(path, write)


def state_dict_to_mindcv(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our weights under mindcv's names (the classifier stays a 1x1 conv, as mindcv builds it)."""
    return {to_mindcv_key(k): v.detach() for k, v in state.items()}


def write_mindcv(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write our-name tensors as a mindcv-layout MindSpore ``.ckpt`` (float32), atomically."""
    return write_ckpt({k: v.float() for k, v in state_dict_to_mindcv(state).items()}, path)


def save_mindspore(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` as a mindcv-layout MindSpore ``.ckpt`` (float32)."""
    from .loading import save_model

    return save_model(model, path, "ckpt")


__all__ = ["read_ckpt", "read_mindcv", "load_mindspore", "save_mindspore", "write_ckpt", "write_mindcv", "encode_value",
           "from_mindcv_key", "to_mindcv_key", "mindcv_to_state_dict", "state_dict_to_mindcv", "looks_like_ckpt",
           "iter_records", "Record", "DTYPES"]
