"""Run configuration: ``RunConfig`` below is the schema, its defaults are ``DEFAULTS``; recipes (YAML) and the
command line override them. ``RunConfig.from_dict`` checks every setting once; the engine reads its attributes."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn

import yaml

from ..data.spec import canonical_spec
from ..errors import BitError, UnknownNameError

MIN_RESOLUTION = 32  # the network's total stride: the stem divides by 4, three stride-2 stages by 8 more
OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw")
SCHEDULES = ("hyperrule", "multistep", "exponential", "constant", "cosine")

Check = Callable[[str, Any], Any]  # (key, value) -> the value as stored, or a one-line BitError


# -- the checks of single settings --------------------------------------------------------------------------------
def _fail(key: str, what: str, value: Any) -> NoReturn:
    raise BitError(f"{key} must be {what}, got {value!r}; fix it in the recipe or with --set {key}=...")


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _num(strict: bool = True, integer: bool = False, what: str | None = None) -> Check:
    """A number above 0 (at least 0 unless ``strict``); an integer setting is stored as an int."""
    what = what or f"{'an integer' if integer else 'a number'} {'above 0' if strict else 'of at least 0'}"

    def check(key: str, value: Any) -> Any:
        ok = _real(value) and (value > 0 if strict else value >= 0)
        if not ok or (integer and not float(value).is_integer()):
            _fail(key, what, value)
        return int(value) if integer else value

    return check


def _resolution(key: str, value: Any) -> int:
    value = _num(integer=True)(key, value)
    if value < MIN_RESOLUTION:
        raise BitError(f"{key} {value} px is below the network's minimum of {MIN_RESOLUTION} px (its total stride); "
                       f"use --set {key}={MIN_RESOLUTION} or more")
    return value


_AT_LEAST_ZERO = _num(strict=False)


def _numbers(count: int | None, what: str, item: Check = _AT_LEAST_ZERO) -> Check:
    """A list of ``count`` numbers (any count when None), each checked by ``item``; stored as a tuple."""
    def check(key: str, value: Any) -> tuple:
        if not isinstance(value, (list, tuple)) or (count is not None and len(value) != count):
            _fail(key, what, value)
        try:
            return tuple(item(key, v) for v in value)
        except BitError:
            _fail(key, what, value)

    return check


def _fraction(key: str, value: Any) -> float:
    if not (_real(value) and 0 < value < 1):
        raise BitError(f"{key} must be a fraction between 0 and 1 (exclusive), e.g. --val-split 0.2; got {value!r}")
    return value


def _channels(key: str, value: Any) -> tuple:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_real(v) for v in value)):
        raise BitError(f"{key} must be three numbers, one per RGB channel, e.g. --set {key}=[0.5,0.5,0.5]; "
                       f"got {value!r}")
    if key == "std" and min(value) <= 0:
        raise BitError(f"std must be positive for every channel, got {value!r}")
    return tuple(value)


def _pair(key: str, value: Any) -> tuple:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_real(v) for v in value)):
        raise BitError(f"randaugment must be [num_ops, magnitude], e.g. --set randaugment=[2,9]; got {value!r}")
    return tuple(value)


def _choice(*allowed: str, any_case: bool = False) -> Check:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or (value.lower() if any_case else value) not in allowed:
            raise BitError(f"unknown {key} '{value}': use {' | '.join(allowed)} (--set {key}=...)")
        return value

    return check


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(key, "true or false", value)
    return value


def _text(key: str, value: Any) -> str:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if not isinstance(value, str):
        _fail(key, "a string", value)
    return value


def _opt(check: Check) -> Check:
    """``check``, or None (an open value: the data set, the model or the HyperRule fills it in)."""
    return lambda key, value: None if value is None else check(key, value)


def _setting(default: Any, check: Check) -> Any:
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class RunConfig:
    """One run's settings, each checked once by ``from_dict``; ``resolve`` fills the open ones (None)."""

    # model and data
    model: str = _setting("BiT-M-R50x1", _text)
    pretrained: bool = _setting(True, _flag)
    weights: str | None = _setting(None, _opt(_text))  # a local checkpoint of any supported format
    num_classes: int | None = _setting(None, _opt(_num(integer=True)))  # from the data set
    data: str | None = _setting(None, _opt(_text))  # "name:PATH", e.g. imagefolder:/data/pets
    train_split: str = _setting("train", _text)
    eval_split: str | None = _setting("test", _opt(_text))  # "none" to skip evaluation
    # a fraction (0, 1): a seeded, class-stratified hold-out of the train split, evaluated as "val"
    val_split: float | None = _setting(None, _opt(_fraction))
    skip_corrupt: bool = _setting(False, _flag)
    # k examples per class (few-shot); the rest of the split is the eval pool when it has no test split
    shots: int | None = _setting(None, _opt(_num(integer=True, what="a positive number of examples per class")))
    seed: int = _setting(0, _num(strict=False, integer=True))
    # the BiT-HyperRule fills every null value it knows from the data set's size and image size
    hyperrule: bool = _setting(True, _flag)
    resolution_rule: str = _setting("code", _choice("code", "paper"))  # code: 512/480 | paper: 448/384
    # input pipeline: hyperrule (squash resize, random crop, flip) | recipe (RandomResizedCrop, ...)
    transforms: str = _setting("hyperrule", _choice("hyperrule", "recipe"))
    precrop: int | None = _setting(None, _opt(_resolution))
    crop: int | None = _setting(None, _opt(_resolution))
    flip: bool = _setting(True, _flag)
    scale: tuple[float, float] = _setting((0.08, 1.0), _numbers(2, "two numbers [low, high], e.g. [0.08, 1.0]"))
    color_jitter: float = _setting(0.0, _num(strict=False))
    randaugment: tuple[float, float] | None = _setting(None, _opt(_pair))  # [num_ops, magnitude]
    eval_resize: int | None = _setting(None, _opt(_num(integer=True)))
    eval_crop: int | None = _setting(None, _opt(_resolution))
    mean: tuple[float, float, float] | None = _setting(None, _opt(_channels))  # from the model's pretrained config
    std: tuple[float, float, float] | None = _setting(None, _opt(_channels))
    workers: int = _setting(2, _num(strict=False, integer=True))
    # optimisation
    batch_size: int = _setting(512, _num(integer=True))  # global batch per optimizer step, over all ranks
    batch_split: int = _setting(1, _num(integer=True))  # micro-batches per step (gradient accumulation)
    steps: int | None = _setting(None, _opt(_num(integer=True)))  # total optimizer steps, or
    epochs: float | None = _setting(None, _opt(_num()))
    optimizer: str = _setting("sgd", _choice(*OPTIMIZERS, any_case=True))
    lr: float | None = _setting(None, _opt(_num()))  # base lr at batch lr_batch, rescaled linearly to batch_size
    lr_batch: int | None = _setting(512, _opt(_num(integer=True)))
    momentum: float = _setting(0.9, _num(strict=False))
    nesterov: bool = _setting(False, _flag)
    weight_decay: float = _setting(0.0, _num(strict=False))
    weight_decay_filter: str = _setting("norm_bias", _choice("none", "norm_bias", "conv_only"))
    rmsprop_rho: float = _setting(0.9, _num(strict=False))
    rmsprop_eps: float = _setting(1.0, _num(strict=False))
    # the mean square's start: 1.0 as MindSpore, TF1 and timm | 0.0 as TF2/Keras
    rmsprop_init: float = _setting(1.0, _num(strict=False))
    adam_beta1: float = _setting(0.9, _num(strict=False))
    adam_beta2: float = _setting(0.999, _num(strict=False))
    adam_eps: float = _setting(1e-8, _num(strict=False))
    schedule: str = _setting("hyperrule", _choice(*SCHEDULES))
    warmup_steps: int | None = _setting(None, _opt(_num(strict=False, integer=True)))
    warmup_epochs: float | None = _setting(None, _opt(_num(strict=False)))
    decay_steps: tuple[int, ...] | None = _setting(  # hyperrule boundaries
        None, _opt(_numbers(None, "a list of steps", _num(strict=False, integer=True))))
    milestones: tuple[float, ...] | None = _setting(None, _opt(_numbers(None, "a list of epochs")))  # multistep
    gamma: float = _setting(0.1, _num(strict=False))
    decay_every_epochs: float | None = _setting(None, _opt(_num()))  # exponential
    mixup: float | None = _setting(None, _opt(_num(strict=False)))  # alpha; null lets the HyperRule decide
    label_smoothing: float = _setting(0.0, _num(strict=False))
    ema_decay: float | None = _setting(None, _opt(_num(strict=False)))
    clip_grad_norm: float | None = _setting(None, _opt(_num()))
    head_only: bool = _setting(False, _flag)  # train the classifier on cached features of the frozen backbone
    zero_head: bool = _setting(True, _flag)
    # distillation (bit distill): the student is "model", trained to match the teacher's softmax
    teacher: str | None = _setting(None, _opt(_text))  # a run folder, a weights file or a model name
    teacher_weights: str | None = _setting(None, _opt(_text))  # a weights file for a teacher given by model name
    temperature: float = _setting(1.0, _num())  # of the KL divergence between the teacher's and student's softmax
    # more images for the distillation stream (labels unused): a data spec or a plain folder
    extra_data: str | None = _setting(None, _opt(_text))
    # numerics and speed
    device: str = _setting("auto", _text)
    precision: str = _setting("fp32", _choice("fp32", "bf16", "fp16"))
    channels_last: bool = _setting(True, _flag)
    fast_path: bool = _setting(True, _flag)  # CPU: fused GroupNorm+ReLU kernel and prepacked convolutions
    # bookkeeping
    log_every: int = _setting(10, _num(integer=True))
    eval_every: int | None = _setting(0, _opt(_num(strict=False, integer=True)))  # 0 or null: at the end only
    save_every: int | None = _setting(100, _opt(_num(strict=False, integer=True)))  # 0 or null: no periodic checkpoints
    keep_checkpoints: int = _setting(2, _num(integer=True))
    tensorboard: bool = _setting(True, _flag)  # TensorBoard event files in RUN/tensorboard (when installed)
    # derived when a run starts, recorded in its config.yaml
    n_train: int | None = _setting(None, _opt(_num(strict=False, integer=True)))
    steps_per_epoch: float | None = _setting(None, _opt(_num(strict=False)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "the run config", *, strict: bool = True) -> RunConfig:
        """The settings of ``d``, each checked (a one-line BitError naming the key); missing keys take defaults. Unknown
        keys are errors that suggest the closest key; ``strict=False`` drops them (a config.yaml of another version)."""
        if strict:
            check_keys(d, source)
        order = [*(key for key in _CHECK_FIRST if key in d), *(key for key in d if key not in _CHECK_FIRST)]
        return cls(**{key: _CHECKS[key](key, d[key]) for key in order if key in _CHECKS})

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain YAML values (lists, not tuples), in schema order: what ``config.yaml`` holds."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes``, each checked as ``from_dict`` checks it."""
        check_keys(changes, "a change of the run config")
        return dataclasses.replace(self, **{key: _CHECKS[key](key, value) for key, value in changes.items()})

    def __getitem__(self, key: str) -> Any:
        """``to_dict()[key]``: read access for code written against the plain dict (the engine reads attributes)."""
        if key not in _CHECKS:
            raise KeyError(key)
        return _plain(getattr(self, key))

    def get(self, key: str, default: Any = None) -> Any:
        """As ``dict.get`` on ``to_dict()``."""
        return self[key] if key in _CHECKS else default

    def __contains__(self, key: object) -> bool:
        return key in _CHECKS


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


_CHECKS: dict[str, Check] = {f.name: f.metadata["check"] for f in fields(RunConfig)}
# reported first when several settings are wrong: what the run is sized by, then the crop before the precrop
_CHECK_FIRST = ("batch_size", "batch_split", "steps", "epochs", "mixup", "crop", "eval_crop")

DEFAULTS: dict[str, Any] = RunConfig().to_dict()  # the schema's defaults as a plain dict, in schema order

# Keys that do not change what a run computes: a run folder may be resumed with other values.
NON_IDENTITY = {"workers", "log_every", "eval_every", "save_every", "keep_checkpoints", "device", "weights",
                "tensorboard"}


def as_run_config(cfg: RunConfig | Mapping[str, Any]) -> RunConfig:
    """``cfg`` itself when it is a RunConfig, else ``RunConfig.from_dict(cfg)``."""
    return cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)


def check_keys(cfg: Mapping[str, Any], source: str) -> None:
    """Every key of ``cfg`` is a setting; else an error that suggests the closest one."""
    for key in cfg:
        if key not in DEFAULTS:
            raise UnknownNameError(f"setting (in {source})", key, DEFAULTS,
                                   "'bit recipes hyperrule' shows every setting")


def merge(base: dict, update: dict, source: str) -> dict:
    """``base`` with ``update`` on top; unknown keys are errors that suggest the closest key."""
    check_keys(update, source)
    return {**copy.deepcopy(base), **copy.deepcopy(update)}


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


def identity(cfg: Mapping[str, Any] | RunConfig) -> str:
    """A short hash of what the run computes, to recognise the same run in a folder (one data set, one spelling).
    Settings at their default are left out, so a setting added later keeps the identity of earlier runs."""
    if isinstance(cfg, RunConfig):
        cfg = cfg.to_dict()
    data = {k: v for k, v in sorted(cfg.items()) if k not in NON_IDENTITY and (k not in DEFAULTS or DEFAULTS[k] != v)}
    if isinstance(data.get("data"), str):
        data["data"] = canonical_spec(data["data"])
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def dump(cfg: Mapping[str, Any] | RunConfig) -> str:
    """``cfg`` as the YAML of ``config.yaml`` (a RunConfig as its ``to_dict()``)."""
    return yaml.safe_dump(cfg.to_dict() if isinstance(cfg, RunConfig) else cfg, sort_keys=False)
