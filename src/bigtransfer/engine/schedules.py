"""Learning-rate schedules as pure functions of the optimizer step, so resuming needs only the step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .config import RunConfig


@dataclass(frozen=True)
class StepSchedule:
    """Linear warmup to ``base_lr`` then ``x gamma`` after each boundary (the BiT-HyperRule shape)."""

    base_lr: float
    warmup: int
    boundaries: Sequence[int]
    total: int
    gamma: float = 0.1
    after: bool = False  # True: the lr drops from step b + 1 on, as the official HyperRule code compares

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.base_lr * step / self.warmup
        return self.base_lr * self.gamma ** sum((step > b) if self.after else (step >= b) for b in self.boundaries)


@dataclass(frozen=True)
class ExponentialSchedule:
    """Linear warmup, then ``x gamma`` every ``every`` steps (the MindSpore BigTransfer recipe)."""

    base_lr: float
    warmup: int
    every: float
    total: int
    gamma: float = 0.98

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.base_lr * step / self.warmup
        return self.base_lr * self.gamma ** int((step - self.warmup) // self.every)


@dataclass(frozen=True)
class CosineSchedule:
    """Linear warmup, then a half cosine from ``base_lr`` down to zero at ``total`` (big_vision's ``cosine``)."""

    base_lr: float
    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.base_lr * step / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(cfg: RunConfig, steps_per_epoch: float,
                   total: int) -> StepSchedule | ExponentialSchedule | CosineSchedule:
    """The schedule a resolved recipe asks for; epoch-based values are converted with ``steps_per_epoch``."""
    lr = cfg.lr * cfg.batch_size / cfg.lr_batch  # linear rescaling to the batch
    kind = cfg.schedule
    warmup = cfg.warmup_steps or round((cfg.warmup_epochs or 0) * steps_per_epoch)
    if kind == "hyperrule":
        return StepSchedule(lr, warmup, cfg.decay_steps, total, 0.1, after=True)
    if kind == "multistep":  # milestones count epochs after the warmup, as mindcv's step decay
        bounds = tuple(warmup + round(m * steps_per_epoch) for m in cfg.milestones)
        return StepSchedule(lr, warmup, bounds, total, cfg.gamma)
    if kind == "exponential":
        every = max(cfg.decay_every_epochs * steps_per_epoch, 1.0)
        return ExponentialSchedule(lr, warmup, every, total, cfg.gamma)
    if kind == "constant":
        return StepSchedule(lr, warmup, (), total)
    if kind == "cosine":
        return CosineSchedule(lr, warmup, total)
    raise ValueError(f"unknown schedule '{kind}'")
