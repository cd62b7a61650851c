"""Images whose labels are not read: a plain folder (any depth) or any data set, for distillation's extra stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors

from ..errors import DataError
from .base import ImageDataset
from .imagefolder import check_image, decode_image, image_extensions
from .spec import load_dataset


class UnlabeledFolder(ImageDataset):
    """Every image below ``root`` (sorted paths); each is given label 0 of ``classes``, which nothing reads."""

    def __init__(self, root: str | Path, classes: list[str], skip_corrupt: bool = False) -> None:
        self.root = Path(root).expanduser()
        exts = image_extensions()
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in exts and p.is_file())
        if skip_corrupt:
            self.paths = [p for p in self.paths if check_image(p)]
        if not self.paths:
            raise DataError(f"'{self.root}' holds no images ({', '.join(sorted(exts)[:6])}, ...); "
                            f"give a folder of images or a data spec with --extra-data")
        self.name = f"folder:{self.root.name}"
        super().__init__(classes, np.zeros(len(self.paths), dtype=np.int64))

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.load_image(0).shape[-2:])  # type: ignore[return-value]

    def load_image(self, index: int) -> tv_tensors.Image:
        hwc = decode_image(self.paths[index])
        return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))))


class JoinedImages(ImageDataset):
    """``labelled`` followed by ``extra``; the extra images keep label 0, as only their pixels are used."""

    def __init__(self, labelled: ImageDataset, extra: ImageDataset) -> None:
        self.labelled, self.extra = labelled, extra
        self.name = f"{labelled.name}+{extra.name}"
        targets = np.concatenate([labelled.targets, np.zeros(len(extra), dtype=np.int64)])
        super().__init__(labelled.classes, targets)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.labelled.image_size

    def load_image(self, index: int) -> tv_tensors.Image:
        n = len(self.labelled)
        return self.labelled.load_image(index) if index < n else self.extra.load_image(index - n)


def with_extra_images(labelled: ImageDataset, spec: str, skip_corrupt: bool = False) -> JoinedImages:
    """``labelled`` plus the images of ``spec``: a plain folder of images, or a data spec whose labels are ignored."""
    path = Path(spec).expanduser()
    if path.is_dir():  # a plain folder, with or without class folders: every image below it
        extra: ImageDataset = UnlabeledFolder(path, labelled.classes, skip_corrupt)
    elif ":" not in spec and ("/" in spec or spec.startswith((".", "~"))):
        raise DataError(f"extra data '{spec}': no such folder; give a folder of images or a data spec")
    else:
        extra = load_dataset(spec, "train", skip_corrupt=skip_corrupt)
    return JoinedImages(labelled, extra)
