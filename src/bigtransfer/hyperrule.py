"""The BiT-HyperRule as data: resolution, schedule, MixUp and learning rate from a data set's size and image size."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from numbers import Integral
from typing import Any

from .errors import BitError

REFERENCE_BATCH = 512
BASE_LR = 0.003
MOMENTUM = 0.9
SMALL_AREA = 96 * 96  # images smaller than this (by area) count as small
RESOLUTIONS = {"code": ((160, 128), (512, 480)), "paper": ((160, 128), (448, 384))}
SCHEDULES = ((20_000, (100, 200, 300, 400, 500)),
             (500_000, (500, 3000, 6000, 9000, 10_000)),
             (None, (500, 6000, 12_000, 18_000, 20_000)))
MIXUP_MIN_EXAMPLES = 20_000
MIXUP_ALPHA = 0.1


@dataclass(frozen=True)
class HyperParams:
    """Everything the HyperRule decides for one fine-tuning run; ``lr_at`` gives the schedule."""

    precrop: int
    crop: int
    warmup_steps: int
    decay_steps: tuple[int, ...]  # lr is divided by 10 once a step passes each of these
    total_steps: int
    mixup_alpha: float  # 0.0 means no MixUp
    base_lr: float = BASE_LR
    batch_size: int = REFERENCE_BATCH
    momentum: float = MOMENTUM

    def lr_at(self, step: int) -> float | None:
        """Learning rate for optimizer step ``step`` (0-based), or None once training is over."""
        if step < self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        if step >= self.total_steps:
            return None
        # A boundary b divides the lr from step b + 1 on: the official rule compares with `b < step`.
        return self.base_lr / 10 ** sum(1 for b in self.decay_steps if b < step)

    def rescaled(self, batch_size: int) -> HyperParams:
        """The same rule for another batch size: schedule lengths x old/new, learning rate x new/old."""
        if batch_size < 1:
            raise BitError(f"batch size must be at least 1, got {batch_size}")
        factor = self.batch_size / batch_size

        def steps(n: int) -> int:
            return max(1, math.floor(n * factor + 0.5))

        return replace(self, warmup_steps=steps(self.warmup_steps),
                       decay_steps=tuple(steps(b) for b in self.decay_steps),
                       total_steps=steps(self.total_steps), base_lr=self.base_lr / factor, batch_size=batch_size)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values, for run configs."""
        d = asdict(self)
        d["decay_steps"] = list(self.decay_steps)
        return d


def _hw(image_size: tuple[int, int] | int) -> tuple[int, int]:
    if isinstance(image_size, Integral):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def resolution(image_size: tuple[int, int] | int, rule: str = "code") -> tuple[int, int]:
    """(precrop, crop) for images of ``image_size`` (H, W): released code 512/480, paper 448/384 for large ones."""
    if rule not in RESOLUTIONS:
        raise BitError(f"unknown resolution rule '{rule}': use 'code' (512/480) or 'paper' (448/384)")
    h, w = _hw(image_size)
    small, large = RESOLUTIONS[rule]
    return small if h * w < SMALL_AREA else large


def schedule(n_train: int) -> tuple[int, ...]:
    """(warmup end, decay boundaries..., total steps) at batch 512 for a training set of ``n_train`` examples."""
    for limit, supports in SCHEDULES:
        if limit is None or n_train < limit:
            return supports
    raise AssertionError("unreachable")


def mixup_alpha(n_train: int) -> float:
    """MixUp's Beta(alpha, alpha) parameter; 0.0 (no MixUp) below 20k examples."""
    return MIXUP_ALPHA if n_train >= MIXUP_MIN_EXAMPLES else 0.0


def for_dataset(n_train: int, image_size: tuple[int, int] | int, batch_size: int = REFERENCE_BATCH,
                resolution_rule: str = "code") -> HyperParams:
    """The HyperRule's choices for ``n_train`` training images of ``image_size`` at ``batch_size``."""
    if n_train < 1:
        raise BitError(f"the training set is empty (n_train={n_train}); check the data path and split")
    precrop, crop = resolution(image_size, resolution_rule)
    supports = schedule(n_train)
    hp = HyperParams(precrop=precrop, crop=crop, warmup_steps=supports[0], decay_steps=tuple(supports[1:-1]),
                     total_steps=supports[-1], mixup_alpha=mixup_alpha(n_train))
    return hp if batch_size == REFERENCE_BATCH else hp.rescaled(batch_size)
