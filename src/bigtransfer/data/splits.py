"""A run's data: the train set and the set it is scored on, as a run config names them."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import BitError
from .base import ImageDataset
from .fewshot import fewshot_split, holdout_split, rest_check
from .spec import load_dataset
from .transforms import attribute_view

log = logging.getLogger("bigtransfer")


def load_run_data(cfg: Any) -> tuple[ImageDataset, ImageDataset | None]:
    """(train set, eval set or None) as a checked run config (a RunConfig) names them; few-shot when ``shots`` is set.

    With ``val_split`` the eval set is a seeded, class-stratified hold-out of the train split and ``eval_split`` is
    not read; ``shots`` then samples from the part that is kept.
    """
    c = attribute_view(cfg)
    if not c.data:
        raise BitError("no data: pass --data NAME:PATH (e.g. imagefolder:/data/pets, cifar10:/data/cifar)")
    train = load_dataset(c.data, c.train_split, skip_corrupt=c.skip_corrupt)
    held = None
    if c.val_split is not None:
        train, held = holdout_split(train, c.val_split, c.seed)
    split = c.eval_split or "none"
    rest = None
    if c.shots is not None:
        train, rest = _few_shot(train, c.shots, c.seed, check_rest=held is None and split == "rest")
    if held is not None:
        return train, held
    if split == "none":
        return train, None
    if split == "rest":
        if rest is None:
            raise BitError("eval_split 'rest' needs shots (the rest of a few-shot split)")
        return train, rest
    return train, load_dataset(c.data, split, skip_corrupt=c.skip_corrupt)


def _few_shot(train: ImageDataset, shots: int, seed: int, check_rest: bool):
    if check_rest:
        empty = rest_check(train, shots, flag="shots")
        if empty:
            log.warning("k=%d per class leaves no image of class %s to evaluate on (eval_split rest); balanced "
                        "accuracy averages the other classes", shots, ", ".join(f"'{c}'" for c in empty[:5]))
    return fewshot_split(train, shots, seed)
