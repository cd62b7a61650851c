"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (or any folder of its IDX files)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import DataError
from .base import ArrayDataset
from .idx import read_idx

log = logging.getLogger("bigtransfer")
PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
PACKAGE_SUBDIR = Path("usr/share/datasets/fashion-mnist")  # where the files sit inside the .deb
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def default_cache_dir() -> Path:
    """``$BIGTRANSFER_CACHE`` or ``$XDG_CACHE_HOME/bigtransfer`` (default ``~/.cache/bigtransfer``)."""
    if os.environ.get("BIGTRANSFER_CACHE"):
        return Path(os.environ["BIGTRANSFER_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "bigtransfer"


def _find(folder: Path, stem: str) -> Path | None:
    return next((folder / n for n in (stem + ".gz", stem) if (folder / n).is_file()), None)


def _complete(folder: Path) -> bool:
    return all(_find(folder, stem) for pair in FILES.values() for stem in pair)


def _run(cmd: list[str], cwd: Path | None = None) -> bool:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (OSError, subprocess.TimeoutExpired) as e:
        log.info("%s failed: %s", " ".join(cmd), e)
        return False
    if done.returncode:
        log.info("%s failed: %s", " ".join(cmd), (done.stderr or done.stdout).strip()[-300:])
    return done.returncode == 0


def ensure_fashion_mnist(cache_dir: str | Path | None = None) -> Path:
    """The folder holding Fashion-MNIST's IDX files: the system copy, else installed (as root) or unpacked here."""
    if _complete(SYSTEM_DIR):
        return SYSTEM_DIR
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir() / "datasets"
    unpacked = cache / "fashion-mnist" / PACKAGE_SUBDIR
    if _complete(unpacked):
        return unpacked
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        log.info("installing %s with apt-get", PACKAGE)
        if _run(["apt-get", "install", "-y", PACKAGE]) and _complete(SYSTEM_DIR):
            return SYSTEM_DIR
    if shutil.which("apt-get") and shutil.which("dpkg-deb"):
        log.info("downloading %s into %s", PACKAGE, cache)
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            tmp_dir = Path(tmp)
            if _run(["apt-get", "download", PACKAGE], cwd=tmp_dir):
                debs = sorted(tmp_dir.glob(f"{PACKAGE}_*.deb"))
                staging = tmp_dir / "root"
                unpacked_ok = debs and _run(["dpkg-deb", "-x", str(debs[-1]), str(staging)])
                if unpacked_ok and _complete(staging / PACKAGE_SUBDIR):
                    target = cache / "fashion-mnist"
                    if target.exists():
                        shutil.rmtree(target)
                    staging.rename(target)  # whole tree at once, so a half-unpacked copy is never seen
                    return unpacked
    raise DataError(f"Fashion-MNIST is not available: install it with 'sudo apt-get install {PACKAGE}' or pass "
                    f"fashion-mnist:PATH to a folder holding {FILES['train'][0]}.gz and the other IDX files")


def load_fashion_mnist(root: str | Path | None = None, split: str = "train", transform: Callable | None = None,
                       cache_dir: str | Path | None = None) -> ArrayDataset:
    """Fashion-MNIST ``split`` (train: 60k, test: 10k) as 28x28 grey images, from ``root`` or the system package."""
    split = {"val": "test"}.get(split, split)
    if split not in FILES:
        raise DataError(f"fashion-mnist has the splits 'train' and 'test', not '{split}'")
    folder = Path(root).expanduser() if root else ensure_fashion_mnist(cache_dir)
    if not folder.is_dir():
        raise DataError(f"fashion-mnist: no such folder '{folder}'; pass the folder holding the IDX files")
    images_stem, labels_stem = FILES[split]
    images_file, labels_file = _find(folder, images_stem), _find(folder, labels_stem)
    if images_file is None or labels_file is None:
        missing = images_stem if images_file is None else labels_stem
        raise DataError(f"fashion-mnist: '{folder}' has no {missing}(.gz); point at the folder holding the IDX files")
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or images.dtype.kind != "u" or labels.ndim != 1:
        raise DataError(f"{images_file}: expected uint8 images (N, H, W) and labels (N,), got {images.shape} "
                        f"and {labels.shape}")
    return ArrayDataset(images[..., None], labels.astype("int64"), CLASSES, f"fashion-mnist:{split}", transform)
