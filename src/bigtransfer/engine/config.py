"""Run configuration: the defaults below are the schema; recipes (YAML) and the command line override them."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import yaml

from ..errors import BitError, UnknownNameError

DEFAULTS: dict[str, Any] = {
    # model and data
    "model": "BiT-M-R50x1",
    "pretrained": True,
    "weights": None,  # a local checkpoint of any supported format instead of downloading
    "num_classes": None,  # from the data set
    "data": None,  # "name:PATH", e.g. imagefolder:/data/pets
    "train_split": "train",
    "eval_split": "test",  # "none" to skip evaluation
    "val_split": None,  # a fraction (0, 1): a seeded, class-stratified hold-out of the train split, evaluated as "val"
    "skip_corrupt": False,
    "shots": None,  # k examples per class (few-shot); the rest of the split is the eval pool when it has no test split
    "seed": 0,
    # the BiT-HyperRule fills every null value it knows from the data set's size and image size
    "hyperrule": True,
    "resolution_rule": "code",  # code: 512/480 | paper: 448/384
    # input pipeline
    "transforms": "hyperrule",  # hyperrule (squash resize, random crop, flip) | recipe (RandomResizedCrop, ...)
    "precrop": None,
    "crop": None,
    "flip": True,
    "scale": [0.08, 1.0],
    "color_jitter": 0.0,
    "randaugment": None,  # [num_ops, magnitude]
    "eval_resize": None,
    "eval_crop": None,
    "mean": None,  # from the model's pretrained config
    "std": None,
    "workers": 2,
    # optimisation
    "batch_size": 512,  # global batch per optimizer step, over all ranks
    "batch_split": 1,  # micro-batches per step (gradient accumulation)
    "steps": None,  # total optimizer steps, or
    "epochs": None,
    "optimizer": "sgd",  # sgd | rmsprop | adam | adamw
    "lr": None,  # base lr at batch lr_batch, rescaled linearly to batch_size
    "lr_batch": 512,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 0.0,
    "weight_decay_filter": "norm_bias",  # none | norm_bias | conv_only
    "rmsprop_rho": 0.9,
    "rmsprop_eps": 1.0,
    "rmsprop_init": 1.0,  # the mean square's start: 1.0 as MindSpore, TF1 and timm | 0.0 as TF2/Keras
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_eps": 1e-8,
    "schedule": "hyperrule",  # hyperrule | multistep | exponential | constant | cosine
    "warmup_steps": None,
    "warmup_epochs": None,
    "decay_steps": None,  # hyperrule boundaries
    "milestones": None,  # multistep: epochs after warmup
    "gamma": 0.1,
    "decay_every_epochs": None,  # exponential
    "mixup": None,  # alpha; null lets the HyperRule decide
    "label_smoothing": 0.0,
    "ema_decay": None,
    "clip_grad_norm": None,
    "head_only": False,  # train the classifier on cached features of the frozen backbone
    "zero_head": True,
    # distillation (bit distill): the student is "model", trained to match the teacher's softmax
    "teacher": None,  # a run folder, a weights file or a model name
    "teacher_weights": None,  # a weights file for a teacher given by model name
    "temperature": 1.0,  # of the KL divergence between the teacher's and the student's softmax
    "extra_data": None,  # more images for the distillation stream (labels unused): a data spec or a plain folder
    # numerics and speed
    "device": "auto",
    "precision": "fp32",  # fp32 | bf16 | fp16
    "channels_last": True,
    "fast_path": True,  # CPU: fused GroupNorm+ReLU kernel and prepacked convolutions (models/fast.py)
    # bookkeeping
    "log_every": 10,
    "eval_every": 0,
    "save_every": 100,
    "keep_checkpoints": 2,
    "tensorboard": True,  # TensorBoard event files in RUN/tensorboard (when the tensorboard package is installed)
    # derived when a run starts, recorded in its config.yaml
    "n_train": None,
    "steps_per_epoch": None,
}

# Keys that do not change what a run computes: a run folder may be resumed with other values.
NON_IDENTITY = {"workers", "log_every", "eval_every", "save_every", "keep_checkpoints", "device", "weights",
                "tensorboard"}


def check_keys(cfg: dict, source: str) -> None:
    for key in cfg:
        if key not in DEFAULTS:
            raise UnknownNameError(f"setting (in {source})", key, DEFAULTS,
                                   "'bit recipes hyperrule' shows every setting")


def merge(base: dict, update: dict, source: str) -> dict:
    """``base`` with ``update`` on top; unknown keys are errors that suggest the closest key."""
    check_keys(update, source)
    out = copy.deepcopy(base)
    out.update(copy.deepcopy(update))
    return out


def parse_overrides(items: list[str] | None) -> dict:
    """``["lr=0.01", "randaugment=[2, 20]"]`` -> a dict, values read as YAML."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise BitError(f"--set expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    check_keys(out, "--set")
    return out


_UNSET = object()


def identity(cfg: dict) -> str:
    """A short hash of what the run computes, to recognise the same run in a folder (one data set, one spelling).

    Settings at their default value are left out, so a setting added later does not change the identity of runs
    (and cached results) made before it.
    """
    from ..data.spec import canonical_spec

    data = {k: v for k, v in sorted(cfg.items()) if k not in NON_IDENTITY and DEFAULTS.get(k, _UNSET) != v}
    if isinstance(data.get("data"), str):
        data["data"] = canonical_spec(data["data"])
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
