"""Fill every value a recipe leaves open from the data set and the model: the fully resolved run config."""

from __future__ import annotations

import math
from dataclasses import replace

from .. import hyperrule
from ..errors import BitError

HYPERRULE_BATCH = hyperrule.REFERENCE_BATCH


def resolve(cfg: dict, n_train: int, image_size: tuple[int, int], num_classes: int, model_cfg: dict) -> dict:
    """A copy of ``cfg`` with resolution, schedule, MixUp, lr, steps and normalisation made explicit."""
    cfg = dict(cfg)
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
    return cfg
