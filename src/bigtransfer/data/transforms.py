"""Input pipelines on torchvision.transforms.v2: the HyperRule's (squash resize, crop, flip) and training recipes'."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import BitError

BIT_MEAN = (0.5, 0.5, 0.5)  # official BiT weights read inputs in [-1, 1]
BIT_STD = (0.5, 0.5, 0.5)

Floats = Sequence[float]


def normalization(model_or_cfg: Any = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a model expects, from its ``pretrained_cfg`` (a dict) or a ``ModelConfig``; BiT's by default."""
    pc = getattr(model_or_cfg, "pretrained_cfg", model_or_cfg)  # a model's pretrained config, not a run config
    if isinstance(pc, Mapping):
        mean, std = pc.get("mean"), pc.get("std")
    else:
        mean, std = getattr(pc, "mean", None), getattr(pc, "std", None)
    return tuple(mean or BIT_MEAN), tuple(std or BIT_STD)


class Unwrap:
    """The image as a plain tensor: the v2 transforms after it treat a lone tensor as the image, with less dispatch."""

    def __call__(self, image: Any) -> Any:
        return image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else image

    def __repr__(self) -> str:
        return "Unwrap()"


class ToNormalized(v2.Normalize):
    """uint8 image to float32 in [0, 1], then ``(x - mean) / std``, as a plain tensor: ``v2.ToDtype``, ``v2.Normalize``
    and ``v2.ToPureTensor`` in one step, with the same kernels (so the same numbers) and less per-image dispatch."""

    def forward(self, image: Any) -> torch.Tensor:
        x = image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else F.pil_to_tensor(image)
        return F.normalize(F.to_dtype(x, torch.float32, scale=True), self.mean, self.std)


def _pipeline(steps: list[Any], mean: Floats, std: Floats) -> v2.Compose:
    """``steps`` on the image as a plain tensor, then to normalised float32."""
    return v2.Compose([Unwrap(), *steps, ToNormalized(list(mean), list(std))])


def hyperrule_train(precrop: int, crop: int, mean: Floats = BIT_MEAN, std: Floats = BIT_STD, flip: bool = True,
                    randaugment: tuple[int, int] | None = None) -> v2.Compose:
    """Squash-resize to (precrop, precrop), random crop, horizontal flip (unless ``flip=False``), normalise;
    ``randaugment=(num_ops, magnitude)`` adds RandAugment after the flip (the MindSpore CIFAR-10 recipe)."""
    steps: list[Any] = [v2.Resize((precrop, precrop), antialias=True), v2.RandomCrop(crop)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(v2.RandAugment(num_ops=int(randaugment[0]), magnitude=int(randaugment[1])))
    return _pipeline(steps, mean, std)


def hyperrule_eval(crop: int, mean: Floats = BIT_MEAN, std: Floats = BIT_STD) -> v2.Compose:
    """Squash-resize to (crop, crop) and normalise, as the HyperRule evaluates."""
    return _pipeline([v2.Resize((crop, crop), antialias=True)], mean, std)


def train_recipe(size: int, mean: Floats = BIT_MEAN, std: Floats = BIT_STD, *,
                 scale: tuple[float, float] = (0.08, 1.0), hflip: float = 0.5, color_jitter: float | None = 0.4,
                 randaugment: tuple[int, int] | None = None) -> v2.Compose:
    """RandomResizedCrop, flip, then RandAugment (num_ops, magnitude) or else (as in mindcv) colour jitter, and
    normalise."""
    steps: list[Any] = [v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if randaugment:
        steps.append(v2.RandAugment(num_ops=int(randaugment[0]), magnitude=int(randaugment[1])))
    elif color_jitter:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return _pipeline(steps, mean, std)


def eval_recipe(resize: int, crop: int, mean: Floats = BIT_MEAN, std: Floats = BIT_STD) -> v2.Compose:
    """Resize the shorter side to ``resize``, centre-crop ``crop``, normalise (ImageNet-style validation)."""
    return _pipeline([v2.Resize(resize, antialias=True), v2.CenterCrop(crop)], mean, std)


def hyperrule_transforms(hp: Any, mean: Floats = BIT_MEAN, std: Floats = BIT_STD,
                         flip: bool = True) -> tuple[v2.Compose, v2.Compose]:
    """(train, eval) pipelines for HyperRule parameters ``hp`` (anything with ``precrop`` and ``crop``)."""
    return hyperrule_train(hp.precrop, hp.crop, mean, std, flip), hyperrule_eval(hp.crop, mean, std)


def attribute_view(cfg: Any) -> Any:
    """A run config read by attribute: a RunConfig (or any object with its settings) as is, a mapping wrapped."""
    return SimpleNamespace(**cfg) if isinstance(cfg, Mapping) else cfg


def build_transforms(cfg: Any) -> tuple[v2.Compose, v2.Compose]:
    """(train, eval) pipelines as a resolved run config says (a RunConfig, or a mapping of its settings)."""
    c = attribute_view(cfg)
    mean, std = tuple(c.mean), tuple(c.std)
    ra = tuple(c.randaugment) if getattr(c, "randaugment", None) else None
    if c.transforms == "hyperrule":
        train = hyperrule_train(c.precrop, c.crop, mean, std, flip=c.flip, randaugment=ra)
        return train, hyperrule_eval(c.eval_crop, mean, std)
    if c.transforms == "recipe":
        train = train_recipe(c.crop, mean, std, scale=tuple(c.scale), hflip=0.5 if c.flip else 0.0,
                             color_jitter=c.color_jitter, randaugment=ra)
        return train, eval_recipe(getattr(c, "eval_resize", None) or c.eval_crop, c.eval_crop, mean, std)
    raise BitError(f"unknown transforms '{c.transforms}': use hyperrule or recipe")
