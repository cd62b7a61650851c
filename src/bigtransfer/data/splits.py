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
    """(train set, eval set or None) as a checked run config names them; ``val_split`` holds out part of the train
    split (``eval_split`` then unread) and ``shots`` samples a few-shot train set from what is kept."""
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
        if held is None and split == "rest" and (empty := rest_check(train, c.shots, flag="shots")):
            log.warning("k=%d per class leaves no image of class %s to evaluate on (eval_split rest); balanced "
                        "accuracy averages the other classes", c.shots, ", ".join(f"'{n}'" for n in empty[:5]))
        train, rest = fewshot_split(train, c.shots, c.seed)
    if held is not None:
        return train, held
    if split == "none":
        return train, None
    if split == "rest":
        if rest is None:
            raise BitError("eval_split 'rest' needs shots (the rest of a few-shot split)")
        return train, rest
    return train, load_dataset(c.data, split, skip_corrupt=c.skip_corrupt)
