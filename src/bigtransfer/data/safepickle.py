"""A pickle reader that rebuilds plain containers and numpy arrays only: no other class or function can be loaded."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy >= 2 moved the implementation; the old name is what CIFAR's files refer to
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

from ..errors import DataError

# The only globals an ndarray pickle needs (protocols 0-4), under both numpy 1.x and 2.x module names.
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
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
        data = path.read_bytes()
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "refused" in str(e):
            raise DataError(f"{path}: {e}; the file is not a plain data pickle and was not loaded") from None
        raise DataError(f"{path}: corrupt or truncated pickle ({e}); download the data set again") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as e:
        raise DataError(f"{path}: corrupt or truncated pickle ({type(e).__name__}: {e}); "
                        f"download the data set again") from None
