"""The common data set interface: class names, integer targets, uint8 RGB images and an optional transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import DataError


class ImageDataset(Dataset):
    """Base class: ``ds[i]`` is ``(transform(image), label)``, the image a 3-channel uint8 CHW ``tv_tensors.Image``."""

    name: str = "dataset"

    def __init__(self, classes: Sequence[str], targets: np.ndarray, transform: Callable | None = None) -> None:
        self.classes = list(classes)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform
        if len(self.targets) and (self.targets.min() < 0 or self.targets.max() >= len(self.classes)):
            bad = int(self.targets.max() if self.targets.max() >= len(self.classes) else self.targets.min())
            raise DataError(f"{self.name}: label {bad} is outside the {len(self.classes)} classes; "
                            f"the files are corrupt or belong to another data set")

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """Typical (H, W) of the images, for the HyperRule's resolution choice."""
        raise NotImplementedError

    def load_image(self, index: int) -> tv_tensors.Image:
        """The untransformed image ``index`` as a uint8 CHW RGB tensor."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {len(self)} images, {self.num_classes} classes)"


class ArrayDataset(ImageDataset):
    """An in-memory set: one uint8 NHWC array (C = 1 or 3; grey images are repeated to RGB on access)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, classes: Sequence[str], name: str = "arrays",
                 transform: Callable | None = None) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise DataError(f"{name}: images must be a uint8 array (N, H, W, 1 or 3), got {images.dtype} "
                            f"{tuple(images.shape)}")
        if len(images) != len(targets):
            raise DataError(f"{name}: {len(images)} images but {len(targets)} labels; the files are truncated")
        self.name = name
        super().__init__(classes, targets, transform)
        self.images = images

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def load_image(self, index: int) -> tv_tensors.Image:
        chw = torch.from_numpy(np.ascontiguousarray(self.images[index].transpose(2, 0, 1)))
        if chw.shape[0] == 1:
            chw = chw.expand(3, -1, -1).contiguous()
        return tv_tensors.Image(chw)


class SubsetDataset(ImageDataset):
    """A view of ``parent`` at ``indices`` with the parent's classes and its own transform."""

    def __init__(self, parent: ImageDataset, indices: np.ndarray, transform: Callable | None = None) -> None:
        self.parent = parent
        self.indices = np.asarray(indices, dtype=np.int64)
        self.name = parent.name
        super().__init__(parent.classes, parent.targets[self.indices],
                         transform if transform is not None else parent.transform)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.parent.image_size

    def load_image(self, index: int) -> tv_tensors.Image:
        return self.parent.load_image(int(self.indices[index]))


def concat_datasets(datasets: Sequence[ArrayDataset], name: str | None = None) -> ArrayDataset:
    """One in-memory set holding every class of each input (labels offset; clashing class names prefixed)."""
    if not datasets:
        raise DataError("concat_datasets needs at least one data set")
    sizes = {d.image_size for d in datasets}
    if len(sizes) > 1:
        raise DataError(f"cannot join data sets with different image sizes {sorted(sizes)}; resize them first")
    channels = max(d.images.shape[-1] for d in datasets)
    names = [c for d in datasets for c in d.classes]
    clash = len(set(names)) < len(names)
    classes = [f"{d.name}/{c}" if clash else c for d in datasets for c in d.classes]
    offsets = np.cumsum([0] + [d.num_classes for d in datasets])
    targets = np.concatenate([d.targets + offset for d, offset in zip(datasets, offsets, strict=False)])
    images = np.concatenate([np.repeat(d.images, channels // d.images.shape[-1], axis=-1) for d in datasets])
    return ArrayDataset(images, targets, classes, name or "+".join(d.name for d in datasets))
