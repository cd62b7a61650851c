"""A run's data: the train set and the set it is scored on, as a run config names them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..errors import BitError
from .base import ImageDataset
from .fewshot import fewshot_split, holdout_split, rest_check
from .spec import load_dataset

log = logging.getLogger("bigtransfer")


def load_run_data(cfg: Mapping[str, Any]) -> tuple[ImageDataset, ImageDataset | None]:
    """(train set, eval set or None) as the config names them; few-shot when ``shots`` is set.

    With ``val_split`` the eval set is a seeded, class-stratified hold-out of the train split and ``eval_split`` is
    not read; ``shots`` then samples from the part that is kept.
    """
    if not cfg.get("data"):
        raise BitError("no data: pass --data NAME:PATH (e.g. imagefolder:/data/pets, cifar10:/data/cifar)")
    train = load_dataset(cfg["data"], cfg["train_split"], skip_corrupt=cfg["skip_corrupt"])
    held = None
    if cfg.get("val_split") is not None:
        train, held = holdout_split(train, cfg["val_split"], cfg["seed"])
    split = cfg.get("eval_split") or "none"
    rest = None
    if cfg.get("shots") is not None:
        train, rest = _few_shot(train, cfg["shots"], cfg["seed"], check_rest=held is None and split == "rest")
    if held is not None:
        return train, held
    if split == "none":
        return train, None
    if split == "rest":
        if rest is None:
            raise BitError("eval_split 'rest' needs shots (the rest of a few-shot split)")
        return train, rest
    return train, load_dataset(cfg["data"], split, skip_corrupt=cfg["skip_corrupt"])


def _few_shot(train: ImageDataset, shots: Any, seed: Any, check_rest: bool):
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise BitError(f"shots must be a positive number of examples per class, got {shots!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BitError(f"seed must be an integer, got {seed!r}")
    if check_rest:
        empty = rest_check(train, shots, flag="shots")
        if empty:
            log.warning("k=%d per class leaves no image of class %s to evaluate on (eval_split rest); balanced "
                        "accuracy averages the other classes", shots, ", ".join(f"'{c}'" for c in empty[:5]))
    return fewshot_split(train, shots, seed)
