"""A folder of images per class (``PATH/train/<class>/*``, ``PATH/val/<class>/*`` or ``PATH/<class>/*``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors
from tqdm import tqdm

from ..errors import DataError
from .base import ImageDataset

log = logging.getLogger("bigtransfer")
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation", "test"), "test": ("test", "val", "validation")}
SIZE_SAMPLE = 64  # images whose header is read to estimate the typical size


def image_extensions() -> set[str]:
    """Lower-case file extensions (with the dot) Pillow can open."""
    return {ext.lower() for ext in Image.registered_extensions()}


def decode_image(path: Path) -> np.ndarray:
    """Read ``path`` as uint8 HWC RGB: EXIF orientation applied; grey, alpha, CMYK, palette, 16-bit converted."""
    try:
        with Image.open(path) as img:
            return _to_rgb(ImageOps.exif_transpose(img))
    except Exception as e:  # Pillow signals bad files with many exception types
        raise DataError(f"cannot read image '{path}': {type(e).__name__}: {' '.join(str(e).split())}; "
                        f"delete or replace it, or pass skip_corrupt=True (--skip-corrupt)") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit grey keeps its full range, 0..65535 scaled down to 0..255 (Pillow would clip); float grey is clipped
        wide = np.asarray(img, dtype={"I": np.int64, "F": np.float64}.get(img.mode, np.uint16)).astype(np.float64)
        grey = np.clip(np.rint(wide if img.mode == "F" else wide / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def check_image(path: Path) -> bool:
    """A cheap integrity check: Pillow's ``verify`` plus, for JPEG, a reduced-size decode that catches truncation."""
    try:
        with Image.open(path) as img:
            fmt = img.format
            img.verify()
        if fmt == "JPEG":
            with Image.open(path) as img:
                img.draft("RGB", (1, 1))
                img.load()
        return True
    except Exception:
        return False


def _scan_classes(folder: Path, extensions: set[str]) -> tuple[list[str], list[Path], list[int]]:
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"'{folder}' has no class folders; lay images out as {folder}/<class>/<image>")
    if len(classes) == 1:
        raise DataError(f"'{folder}' has a single class folder '{classes[0]}'; classification needs at least "
                        f"two classes, one sub-folder per class")
    paths: list[Path] = []
    targets: list[int] = []
    for label, cls in enumerate(tqdm(classes, desc=f"scanning {folder.name}", unit="class", disable=None)):
        files = sorted(Path(top) / f for top, _, names in os.walk(folder / cls, followlinks=True) for f in names
                       if os.path.splitext(f)[1].lower() in extensions and not f.startswith("."))
        if not files:
            raise DataError(f"class folder '{folder / cls}' holds no images; add images or remove the folder")
        paths += files
        targets += [label] * len(files)
    return classes, paths, targets


def resolve_split(root: Path, split: str) -> Path:
    """The folder holding ``split``'s class folders under ``root``."""
    if not root.is_dir():
        raise DataError(f"imagefolder: no such folder '{root}'; pass imagefolder:PATH to a folder of class folders")
    names = {e.name for e in os.scandir(root) if e.is_dir()}
    known = {f for folders in SPLIT_FOLDERS.values() for f in folders} & names
    if split == "all":
        if known:
            raise DataError(f"imagefolder: '{root}' is split into {sorted(known)}; ask for one of them")
        return root
    if split not in SPLIT_FOLDERS:
        raise DataError(f"imagefolder: unknown split '{split}'; use train, val or test")
    for folder in SPLIT_FOLDERS[split]:
        if folder in names:
            return root / folder
    if not known and split == "train":
        return root  # no split folders: the class folders are the training set
    if known:
        raise DataError(f"imagefolder: '{root}' has no '{split}' folder (found {sorted(known)}); "
                        f"add {root}/{SPLIT_FOLDERS[split][0]}/<class>/, choose another split, or hold out part "
                        f"of the train split with --val-split 0.2")
    raise DataError(f"imagefolder: '{root}' has no split folders, only class folders (the 'train' split), so no "
                    f"'{split}' split; hold out part of it for evaluation with --val-split 0.2, or skip evaluation "
                    f"with --eval-split none")


class ImageFolder(ImageDataset):
    """Paths and labels of a class-per-folder tree; images are decoded with Pillow when read."""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 skip_corrupt: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.folder = resolve_split(self.root, split)
        self.name = f"imagefolder:{split}"
        classes, paths, targets = _scan_classes(self.folder, image_extensions())
        self.skipped: list[Path] = []
        if skip_corrupt:
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                ok = list(tqdm(pool.map(check_image, paths, chunksize=64), total=len(paths), desc="checking images",
                               unit="img", disable=None))
            self.skipped = [p for p, good in zip(paths, ok, strict=True) if not good]
            paths = [p for p, good in zip(paths, ok, strict=True) if good]
            targets = [t for t, good in zip(targets, ok, strict=True) if good]
            if self.skipped:
                log.warning("skipped %d unreadable image(s) in %s, e.g. %s", len(self.skipped), self.folder,
                            self.skipped[0])
            if empty := set(range(len(classes))) - set(targets):
                raise DataError(f"class folder '{self.folder / classes[min(empty)]}' holds no readable images")
        self.paths = paths
        super().__init__(classes, np.asarray(targets, dtype=np.int64), transform)

    @cached_property
    def image_size(self) -> tuple[int, int]:
        """Median (H, W) over up to 64 images spread through the set (headers only)."""
        picks = np.unique(np.linspace(0, len(self.paths) - 1, min(SIZE_SAMPLE, len(self.paths))).astype(int))
        sizes = []
        for i in picks:
            try:
                with Image.open(self.paths[i]) as img:
                    sizes.append((img.height, img.width))
            except Exception:
                continue  # an unreadable file is reported when it is read
        if not sizes:
            raise DataError(f"none of the sampled images in '{self.folder}' could be opened")
        h, w = np.median(np.asarray(sizes), axis=0)
        return int(h), int(w)

    def load_image(self, index: int) -> tv_tensors.Image:
        hwc = decode_image(self.paths[index])
        return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))))
