"""A pickle reader that rebuilds plain containers and numpy arrays only: no other class or function can be loaded."""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy >= 2 moved the implementation; the old name is what CIFAR's files refer to
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

from ..errors import DataError


def _empty_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for the empty placeholder an ndarray pickle starts from, and nothing bigger:
    ``__setstate__`` then checks the real shape against the bytes present, so no huge allocation is possible."""
    if subtype is not np.ndarray or not isinstance(shape, tuple) or math.prod(shape) != 0:
        raise pickle.UnpicklingError(f"refused to load an array placeholder of shape {shape!r} "
                                     f"(numpy writes an empty one)")
    return _reconstruct(subtype, shape, dtype)


# The only globals an ndarray pickle needs (protocols 0-4), under both numpy 1.x and 2.x module names.
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _empty_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _empty_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global except numpy's array reconstruction, so loading cannot run foreign code."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load global '{module}.{name}'") from None


def load_pickle(path: Path) -> Any:
    """Read ``path`` with :class:`RestrictedUnpickler` (Python 2 strings decoded as latin-1)."""
    try:
        return RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "refused" in str(e):
            raise DataError(f"{path}: {_one_line(e)}; the file is not a plain data pickle and was not loaded") from None
        raise DataError(f"{path}: corrupt or truncated pickle ({_one_line(e)}); download the data set again") from None
    except Exception as e:  # a damaged stream raises many types (EOFError, OverflowError, MemoryError...)
        raise DataError(f"{path}: corrupt or truncated pickle ({type(e).__name__}: {_one_line(e)}); "
                        f"download the data set again") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]
