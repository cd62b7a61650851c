"""The IDX array format of MNIST and Fashion-MNIST, plain or gzip-compressed."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

# type code -> big-endian dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


MAX_GZIP_RATIO = 1032  # deflate expands data by at most about 1032:1
CHUNK = 1 << 24


def read_idx(path: str | Path) -> np.ndarray:
    """The array of IDX file ``path`` (``.gz`` decompressed) in native byte order; the header's shape is checked
    against the file's size and a ``.gz`` read in chunks up to it only, so a damaged file cannot exhaust memory."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                head = f.read(4)
                header = _check_magic(path, head)
                shape, dtype, expected = _layout(path, head + f.read(header - 4), header)
                if expected > path.stat().st_size * MAX_GZIP_RATIO:
                    raise DataError(f"{path}: the header announces {expected} data bytes for shape {shape}, more "
                                    f"than a {path.stat().st_size}-byte .gz can hold; the file is corrupt")
                data = _read_at_most(f, expected + 1)
        else:
            raw = path.read_bytes()
            header = _check_magic(path, raw[:4])
            shape, dtype, expected = _layout(path, raw, header)
            data = memoryview(raw)[header:]
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}); the file is corrupt or truncated") from None
    if len(data) != expected:
        raise DataError(f"{path}: holds {len(data)} data bytes, the header announces {expected} for shape "
                        f"{shape}; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _check_magic(path: Path, head: bytes) -> int:
    """The header length, after checking the magic number."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    return 4 + 4 * head[3]


def _layout(path: Path, raw: bytes, header: int) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data bytes) the header announces; exact integers, so no product can overflow."""
    if len(raw) < header:
        raise DataError(f"{path}: truncated header; download the file again")
    shape = struct.unpack(f">{raw[3]}I", raw[4:header])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    return shape, dtype, math.prod(shape) * dtype.itemsize


def _read_at_most(f, limit: int) -> bytes:
    chunks, got = [], 0
    while got < limit:
        chunk = f.read(min(CHUNK, limit - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
