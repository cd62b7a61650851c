"""The fully resolved run config: ``resolve`` fills every value a recipe leaves open from the data set and the model,
and checks how the settings fit together (``RunConfig.from_dict`` checked each alone); nothing checks them again."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import hyperrule
from ..errors import BitError
from .config import MIN_RESOLUTION, OPTIMIZERS, SCHEDULES, RunConfig, as_run_config
from .distributed import launched_as_main

HYPERRULE_BATCH = hyperrule.REFERENCE_BATCH
SCHEDULE_NEEDS = {"hyperrule": "decay_steps", "multistep": "milestones", "exponential": "decay_every_epochs"}
log = logging.getLogger("bigtransfer")

__all__ = ["HYPERRULE_BATCH", "MIN_RESOLUTION", "OPTIMIZERS", "SCHEDULES", "resolve"]


def resolve(cfg: RunConfig | Mapping[str, Any], n_train: int, image_size: tuple[int, int], num_classes: int,
            model_cfg: dict) -> RunConfig:
    """``cfg`` with resolution, schedule, MixUp, lr, steps and normalisation made explicit and checked; a plain dict
    is checked first (``RunConfig.from_dict``), so a wrong setting is one clear error here, not later."""
    cfg = as_run_config(cfg)
    batch = cfg.batch_size
    if batch % cfg.batch_split:
        raise BitError(f"batch_size {batch} must be a positive multiple of batch_split {cfg.batch_split}")
    cfg = _fill(cfg, num_classes=num_classes)
    if cfg.hyperrule:
        cfg = _fill(cfg, **_hyperrule_values(cfg, n_train, image_size))
    crop = cfg.crop or int(model_cfg.get("input_size") or 224)
    cfg = _fill(cfg, crop=crop, precrop=crop, eval_crop=crop)
    if cfg.lr is None:
        raise BitError("no learning rate: set 'lr' in the recipe or pass --lr")
    if cfg.steps is None:
        if cfg.epochs is None:
            raise BitError("no training length: set 'steps' or 'epochs' (or enable the HyperRule)")
        cfg = cfg.replace(steps=max(1, math.ceil(float(cfg.epochs) * n_train / batch)))
    cfg = _fill(cfg, mean=list(model_cfg.get("mean") or (0.5, 0.5, 0.5)),
                std=list(model_cfg.get("std") or (0.5, 0.5, 0.5)))
    cfg = cfg.replace(steps_per_epoch=n_train / batch, n_train=n_train, mixup=float(cfg.mixup or 0.0))
    _check(cfg)
    _warn_normalisation(cfg, model_cfg)
    return cfg


def _fill(cfg: RunConfig, **values: Any) -> RunConfig:
    """``cfg`` with ``values`` for the settings it leaves open (None); the ones it sets are kept."""
    return cfg.replace(**{key: value for key, value in values.items() if getattr(cfg, key) is None})


def _hyperrule_values(cfg: RunConfig, n_train: int, image_size: tuple[int, int]) -> dict[str, Any]:
    """What the HyperRule chooses for this data set (``_fill`` keeps the values ``cfg`` sets itself)."""
    hp = hyperrule.for_dataset(n_train, image_size, batch_size=cfg.batch_size, resolution_rule=cfg.resolution_rule)
    values = {"precrop": hp.precrop, "crop": hp.crop, "mixup": hp.mixup_alpha, "lr": hyperrule.BASE_LR,
              "lr_batch": HYPERRULE_BATCH}
    if cfg.schedule == "hyperrule":
        total = hp.total_steps
        if cfg.steps is not None or cfg.epochs is not None:
            # an explicit length keeps the HyperRule's shape: warmup and decays at the same fractions
            given = cfg.steps or math.ceil(float(cfg.epochs) * n_train / cfg.batch_size)
            hp = replace(hp, warmup_steps=round(hp.warmup_steps * given / total),
                         decay_steps=tuple(round(b * given / total) for b in hp.decay_steps), total_steps=given)
        values.update(warmup_steps=hp.warmup_steps, decay_steps=list(hp.decay_steps), steps=hp.total_steps)
    return values


def _check(cfg: RunConfig) -> None:
    """Refuse settings that do not fit together (the run would fail on them later), each with one clear line."""
    if cfg.lr_batch is None:
        raise BitError("no lr_batch (the batch size the lr is given at): set it in the recipe or pass --lr")
    key = SCHEDULE_NEEDS.get(cfg.schedule)
    if key and getattr(cfg, key) is None:
        raise BitError(f"schedule '{cfg.schedule}' needs {key}" + (" (or hyperrule: true)" if key == "decay_steps"
                                                                   else ""))
    if cfg.transforms == "hyperrule" and cfg.precrop < cfg.crop:
        raise BitError(f"precrop {cfg.precrop} px is smaller than crop {cfg.crop} px; the random crop is taken "
                       f"from the precrop-sized image, so set precrop >= crop")


def _warn_normalisation(cfg: RunConfig, model_cfg: dict) -> None:
    """A one-line warning when the run normalises its inputs other than the weights were trained with."""
    want_mean, want_std = model_cfg.get("mean"), model_cfg.get("std")
    # under torchrun, said once rather than once per process
    if launched_as_main() and (cfg.pretrained or cfg.weights) and want_mean and want_std and not (
            _close(cfg.mean, want_mean) and _close(cfg.std, want_std)):
        log.warning("warning: mean %s / std %s differ from the mean %s / std %s the weights of %s were trained with; "
                    "the network sees shifted inputs (drop --set mean/std to use the weights' own)",
                    _fmt(cfg.mean), _fmt(cfg.std), _fmt(want_mean), _fmt(want_std), cfg.model)


def _close(a, b) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= 1e-6 for x, y in zip(a, b, strict=True))


def _fmt(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"
