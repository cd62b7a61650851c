"""Fill every value a recipe leaves open from the data set and the model: the fully resolved run config."""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import replace

from .. import hyperrule
from ..errors import BitError
from .distributed import launched_as_main

HYPERRULE_BATCH = hyperrule.REFERENCE_BATCH
MIN_RESOLUTION = 32  # the network's total stride: the stem divides by 4, three stride-2 stages by 8 more
log = logging.getLogger("bigtransfer")


OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw")
SCHEDULES = ("hyperrule", "multistep", "exponential", "constant", "cosine")


def resolve(cfg: dict, n_train: int, image_size: tuple[int, int], num_classes: int, model_cfg: dict) -> dict:
    """A copy of ``cfg`` with resolution, schedule, MixUp, lr, steps and normalisation made explicit."""
    cfg = dict(cfg)
    _check_early(cfg)
    batch = int(cfg["batch_size"])
    split = int(cfg["batch_split"])
    if batch < 1 or split < 1 or batch % split:
        raise BitError(f"batch_size {batch} must be a positive multiple of batch_split {split}")
    cfg["num_classes"] = int(cfg.get("num_classes") or num_classes)
    if cfg["hyperrule"]:
        hp = hyperrule.for_dataset(n_train, image_size, batch_size=batch, resolution_rule=cfg["resolution_rule"])
        defaults = {"precrop": hp.precrop, "crop": hp.crop, "mixup": hp.mixup_alpha, "lr": hyperrule.BASE_LR,
                    "lr_batch": HYPERRULE_BATCH}
        if cfg["schedule"] == "hyperrule":
            total = hp.total_steps
            if cfg.get("steps") is not None or cfg.get("epochs") is not None:
                # an explicit length keeps the HyperRule's shape: warmup and decays at the same fractions
                given = cfg["steps"] or math.ceil(float(cfg["epochs"]) * n_train / batch)
                hp = replace(hp, warmup_steps=round(hp.warmup_steps * given / total),
                             decay_steps=tuple(round(b * given / total) for b in hp.decay_steps), total_steps=given)
            defaults.update(warmup_steps=hp.warmup_steps, decay_steps=list(hp.decay_steps), steps=hp.total_steps)
        for key, value in defaults.items():
            if cfg.get(key) is None:
                cfg[key] = value
    if cfg.get("crop") is None:
        cfg["crop"] = int(model_cfg.get("input_size") or 224)
    if cfg.get("precrop") is None:
        cfg["precrop"] = cfg["crop"]
    cfg["eval_crop"] = cfg.get("eval_crop") or cfg["crop"]
    if cfg.get("lr") is None:
        raise BitError("no learning rate: set 'lr' in the recipe or pass --lr")
    if cfg.get("steps") is None:
        if cfg.get("epochs") is None:
            raise BitError("no training length: set 'steps' or 'epochs' (or enable the HyperRule)")
        cfg["steps"] = max(1, math.ceil(float(cfg["epochs"]) * n_train / batch))
    cfg["steps_per_epoch"] = n_train / batch
    if cfg["schedule"] == "hyperrule" and cfg.get("decay_steps") is None:
        raise BitError("schedule 'hyperrule' needs decay_steps (or hyperrule: true)")
    cfg["mixup"] = float(cfg.get("mixup") or 0.0)
    cfg["mean"] = list(cfg.get("mean") or model_cfg.get("mean") or (0.5, 0.5, 0.5))
    cfg["std"] = list(cfg.get("std") or model_cfg.get("std") or (0.5, 0.5, 0.5))
    cfg["n_train"] = n_train
    _check(cfg, model_cfg)
    return cfg


def _number(cfg: dict, key: str, low: float, strict: bool = True, integer: bool = False) -> None:
    """``cfg[key]`` is a number above ``low`` (or at least ``low`` when not ``strict``), else one clear error."""
    value = cfg[key]
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (not integer or float(value).is_integer())
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f"above {low:g}" if strict else f"of at least {low:g}"
        raise BitError(f"{key} must be {kind} {bound}, got {value!r}; fix it in the recipe or with --set {key}=...")


def _check_early(cfg: dict) -> None:
    """The values the resolution below computes with."""
    for key in ("batch_size", "batch_split"):
        _number(cfg, key, 0, integer=True)
    for key in ("steps", "epochs"):
        if cfg.get(key) is not None:
            _number(cfg, key, 0, integer=key == "steps")
    if cfg.get("mixup") is not None:
        _number(cfg, "mixup", 0, strict=False)


def _choice(cfg: dict, key: str, allowed: tuple[str, ...]) -> None:
    if str(cfg[key]).lower() not in allowed:
        raise BitError(f"unknown {key} '{cfg[key]}': use {' | '.join(allowed)} (--set {key}=...)")


def _triple(cfg: dict, key: str) -> None:
    value = cfg[key]
    if not (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise BitError(f"{key} must be three numbers, one per RGB channel, e.g. --set {key}=[0.5,0.5,0.5]; "
                       f"got {value!r}")
    if key == "std" and min(value) <= 0:
        raise BitError(f"std must be positive for every channel, got {value!r}")


def _check(cfg: dict, model_cfg: dict) -> None:
    """Refuse settings the run would fail on later (or train on silently wrong), each with one clear line."""
    _number(cfg, "lr", 0)
    _number(cfg, "workers", 0, strict=False, integer=True)
    _number(cfg, "rmsprop_init", 0, strict=False)
    _number(cfg, "temperature", 0)
    _choice(cfg, "optimizer", OPTIMIZERS)
    _choice(cfg, "schedule", SCHEDULES)
    for key in ("crop", "eval_crop", "precrop"):
        _number(cfg, key, 0, integer=True)
        if cfg[key] < MIN_RESOLUTION:
            raise BitError(f"{key} {cfg[key]} px is below the network's minimum of {MIN_RESOLUTION} px (its total "
                           f"stride); use --set {key}={MIN_RESOLUTION} or more")
    if cfg["transforms"] == "hyperrule" and cfg["precrop"] < cfg["crop"]:
        raise BitError(f"precrop {cfg['precrop']} px is smaller than crop {cfg['crop']} px; the random crop is taken "
                       f"from the precrop-sized image, so set precrop >= crop")
    ra = cfg.get("randaugment")
    if ra and not (isinstance(ra, (list, tuple)) and len(ra) == 2
                   and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in ra)):
        raise BitError(f"randaugment must be [num_ops, magnitude], e.g. --set randaugment=[2,9]; got {ra!r}")
    _triple(cfg, "mean")
    _triple(cfg, "std")
    want_mean, want_std = model_cfg.get("mean"), model_cfg.get("std")
    # under torchrun, said once rather than once per process
    if launched_as_main() and (cfg.get("pretrained") or cfg.get("weights")) and want_mean and want_std and not (
            _close(cfg["mean"], want_mean) and _close(cfg["std"], want_std)):
        log.warning("warning: mean %s / std %s differ from the mean %s / std %s the weights of %s were trained with; "
                    "the network sees shifted inputs (drop --set mean/std to use the weights' own)",
                    _fmt(cfg["mean"]), _fmt(cfg["std"]), _fmt(want_mean), _fmt(want_std), cfg.get("model"))


def _close(a, b) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= 1e-6 for x, y in zip(a, b, strict=True))


def _fmt(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"
