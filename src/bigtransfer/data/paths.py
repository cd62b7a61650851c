"""Image files as a data set for batched inference: ``ds[i]`` is ``(transform(image), i)``, decoded in workers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import DataError
from .imagefolder import decode_image


def read_image(path: str | Path) -> tv_tensors.Image:
    """``path`` as a CHW uint8 image; an unreadable file is one ``DataError`` naming it and the fix."""
    try:
        hwc = decode_image(Path(path))
    except DataError as e:  # the caller chose these files: the fix comes first, skipping last
        reason = str(e).split("; delete or replace it")[0]
        raise DataError(f"{reason}; replace the file, leave it out or pass --skip-corrupt") from None
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))))


class ImagePaths(Dataset):
    """Image files by path; ``ds[i]`` is ``(transform(image), i)``, or ``(None, i)`` for an unreadable file when
    ``skip_corrupt`` (otherwise it raises a one-line ``DataError``)."""

    def __init__(self, paths: Sequence[str | Path], transform: Callable | None = None,
                 skip_corrupt: bool = False) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int]:
        try:
            image = read_image(self.paths[index])
        except DataError:
            if self.skip_corrupt:
                return None, index
            raise
        return (self.transform(image) if self.transform is not None else image), index


class IndexedImages(Dataset):
    """A data set with ``load_image(i)`` (``data.ImageDataset``) as ``(transform(image), i)`` items."""

    def __init__(self, dataset, transform: Callable | None = None) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.dataset.load_image(index)
        return (self.transform(image) if self.transform is not None else image), index


def collate_indexed(items: list[tuple[torch.Tensor | None, int]]) -> tuple[torch.Tensor | None, list[int], list[int]]:
    """(stacked images or None, their indices, indices of skipped items): a module-level collate for workers."""
    kept = [(x, i) for x, i in items if x is not None]
    skipped = [i for x, i in items if x is None]
    images = torch.stack([torch.as_tensor(x) for x, _ in kept]) if kept else None
    return images, [i for _, i in kept], skipped
