"""The run config: one frozen, typed RunConfig, checked once at the start; config.yaml and run identities as before."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from bigtransfer.data import ArrayDataset
from bigtransfer.engine.config import DEFAULTS, RunConfig, dump, identity, merge
from bigtransfer.engine.resolve import resolve
from bigtransfer.engine.trainer import Trainer
from bigtransfer.errors import BitError, UnknownNameError
from bigtransfer.recipes import list_recipes, load_recipe

SRC = Path(__file__).resolve().parents[1] / "src" / "bigtransfer"

# DEFAULTS as the engine defined them before RunConfig: the keys, their order and their values of every config.yaml
OLD_DEFAULTS = {"model": "BiT-M-R50x1", "pretrained": True, "weights": None, "num_classes": None, "data": None,
    "train_split": "train", "eval_split": "test", "val_split": None, "skip_corrupt": False, "shots": None, "seed": 0,
    "hyperrule": True, "resolution_rule": "code", "transforms": "hyperrule", "precrop": None, "crop": None,
    "flip": True, "scale": [0.08, 1.0], "color_jitter": 0.0, "randaugment": None, "eval_resize": None,
    "eval_crop": None, "mean": None, "std": None, "workers": 2, "batch_size": 512, "batch_split": 1, "steps": None,
    "epochs": None, "optimizer": "sgd", "lr": None, "lr_batch": 512, "momentum": 0.9, "nesterov": False,
    "weight_decay": 0.0, "weight_decay_filter": "norm_bias", "rmsprop_rho": 0.9, "rmsprop_eps": 1.0,
    "rmsprop_init": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_eps": 1e-08, "schedule": "hyperrule",
    "warmup_steps": None, "warmup_epochs": None, "decay_steps": None, "milestones": None, "gamma": 0.1,
    "decay_every_epochs": None, "mixup": None, "label_smoothing": 0.0, "ema_decay": None, "clip_grad_norm": None,
    "head_only": False, "zero_head": True, "teacher": None, "teacher_weights": None, "temperature": 1.0,
    "extra_data": None, "device": "auto", "precision": "fp32", "channels_last": True, "fast_path": True,
    "log_every": 10, "eval_every": 0, "save_every": 100, "keep_checkpoints": 2, "tensorboard": True, "n_train": None,
    "steps_per_epoch": None}

# A tiny run on in-memory images, and the config.yaml the code before RunConfig wrote for it (byte for byte).
TINY = {**OLD_DEFAULTS, "model": "BiT-R14x0.5", "pretrained": False, "crop": 32, "precrop": 36, "batch_size": 8,
        "steps": 2, "save_every": 1, "workers": 0, "fast_path": False, "channels_last": False, "tensorboard": False,
        "lr": 0.01, "lr_batch": 8, "randaugment": [2, 9], "eval_split": "none", "log_every": 1}
OLD_CONFIG_YAML = """\
model: BiT-R14x0.5
pretrained: false
weights: null
num_classes: 3
data: null
train_split: train
eval_split: none
val_split: null
skip_corrupt: false
shots: null
seed: 0
hyperrule: true
resolution_rule: code
transforms: hyperrule
precrop: 36
crop: 32
flip: true
scale:
- 0.08
- 1.0
color_jitter: 0.0
randaugment:
- 2
- 9
eval_resize: null
eval_crop: 32
mean:
- 0.5
- 0.5
- 0.5
std:
- 0.5
- 0.5
- 0.5
workers: 0
batch_size: 8
batch_split: 1
steps: 2
epochs: null
optimizer: sgd
lr: 0.01
lr_batch: 8
momentum: 0.9
nesterov: false
weight_decay: 0.0
weight_decay_filter: norm_bias
rmsprop_rho: 0.9
rmsprop_eps: 1.0
rmsprop_init: 1.0
adam_beta1: 0.9
adam_beta2: 0.999
adam_eps: 1.0e-08
schedule: hyperrule
warmup_steps: 0
warmup_epochs: null
decay_steps:
- 1
- 1
- 2
milestones: null
gamma: 0.1
decay_every_epochs: null
mixup: 0.0
label_smoothing: 0.0
ema_decay: null
clip_grad_norm: null
head_only: false
zero_head: true
teacher: null
teacher_weights: null
temperature: 1.0
extra_data: null
device: auto
precision: fp32
channels_last: false
fast_path: false
log_every: 1
eval_every: 0
save_every: 1
keep_checkpoints: 2
tensorboard: false
n_train: 24
steps_per_epoch: 3.0
"""
OLD_IDENTITY = "599809cb8ea7"  # identity() of that resolved config, computed by the code before RunConfig


def tiny_data() -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.integers(0, 256, (24, 20, 20, 3), dtype=np.uint8), np.arange(24) % 3, ["a", "b", "c"])


def test_the_schema_and_its_defaults_are_those_of_before():
    assert DEFAULTS == OLD_DEFAULTS and list(DEFAULTS) == list(OLD_DEFAULTS)
    assert [f.name for f in dataclasses.fields(RunConfig)] == list(DEFAULTS)  # one list of settings, not two
    assert RunConfig().to_dict() == DEFAULTS
    assert dump(RunConfig.from_dict(OLD_DEFAULTS)) == yaml.safe_dump(OLD_DEFAULTS, sort_keys=False)


@pytest.mark.parametrize("key,value,needle", [
    ("steps", "abc", r"^steps must be an integer above 0, got 'abc'; fix it in the recipe or with --set steps=\.\.\.$"),
    ("lr", "0.1", r"^lr must be a number above 0, got '0\.1'"),
    ("batch_size", True, r"^batch_size must be an integer above 0, got True"),
    ("workers", 1.5, r"^workers must be an integer of at least 0, got 1\.5"),
    ("seed", -1, r"^seed must be an integer of at least 0, got -1"),
    ("pretrained", "yes", r"^pretrained must be true or false, got 'yes'"),
    ("data", 5, r"^data must be a string, got 5"),
    ("mean", [0.5, 0.5], r"^mean must be three numbers, one per RGB channel"),
    ("randaugment", [2], r"^randaugment must be \[num_ops, magnitude\]"),
    ("decay_steps", [10, "x"], r"^decay_steps must be a list of steps, got \[10, 'x'\]"),
    ("optimizer", "lamb", r"^unknown optimizer 'lamb': use sgd \| rmsprop \| adam \| adamw"),
    ("precision", "fp64", r"^unknown precision 'fp64': use fp32 \| bf16 \| fp16"),
    ("val_split", 1.5, r"^val_split must be a fraction between 0 and 1 \(exclusive\), e\.g\. --val-split 0\.2; "
                       r"got 1\.5$"),
    ("shots", 0, r"^shots must be a positive number of examples per class, got 0"),
    ("keep_checkpoints", 0, r"^keep_checkpoints must be an integer above 0, got 0"),
    ("crop", 16, r"^crop 16 px is below the network's minimum of 32 px"),
], ids=lambda v: v if isinstance(v, str) and not v.startswith("^") else None)
def test_a_wrong_setting_is_one_clear_error_at_resolve_time(key, value, needle):
    cfg = {**DEFAULTS, "lr": 0.1, "steps": 10, key: value}
    with pytest.raises(BitError, match=needle) as caught:
        resolve(cfg, 100, (32, 32), 10, {})
    assert "\n" not in str(caught.value)
    with pytest.raises(BitError, match=needle):
        RunConfig.from_dict(cfg)


def test_a_wrong_setting_stops_the_trainer_before_any_data_is_read(monkeypatch, tmp_path):
    def no_data(cfg):
        raise AssertionError("the data was read before the settings were checked")

    monkeypatch.setattr("bigtransfer.data.splits.load_run_data", no_data)
    with pytest.raises(BitError, match=r"^steps must be an integer above 0, got 'abc'"):
        Trainer({**DEFAULTS, "data": "digits", "steps": "abc"}, tmp_path / "run")
    with pytest.raises(UnknownNameError, match="did you mean 'steps'"):
        Trainer({**DEFAULTS, "data": "digits", "stepz": 3}, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_run_config_is_frozen_and_a_change_is_checked():
    cfg = RunConfig.from_dict({**DEFAULTS, "randaugment": [2, 9]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        del cfg.steps
    assert cfg.randaugment == (2, 9) and cfg.scale == (0.08, 1.0)  # tuples: nothing to change in place either
    changed = cfg.replace(lr=0.1, mean=[0.5, 0.5, 0.5])
    assert (changed.lr, changed.mean, cfg.lr, cfg.mean) == (0.1, (0.5, 0.5, 0.5), None, None)
    with pytest.raises(BitError, match="^lr must be a number above 0, got 0"):
        cfg.replace(lr=0)
    with pytest.raises(UnknownNameError, match="did you mean 'lr'"):
        cfg.replace(lrr=0.1)
    assert cfg == RunConfig.from_dict(cfg.to_dict()) and hash(cfg) == hash(RunConfig.from_dict(cfg.to_dict()))


def test_an_old_config_yaml_reads_back_unchanged():
    old = yaml.safe_load(OLD_CONFIG_YAML)
    cfg = RunConfig.from_dict(old)
    assert cfg.to_dict() == old and list(cfg.to_dict()) == list(old)
    assert dump(cfg) == OLD_CONFIG_YAML
    assert identity(cfg) == identity(old) == OLD_IDENTITY
    older = {k: v for k, v in old.items() if k not in ("val_split", "rmsprop_init")}  # settings added later
    assert RunConfig.from_dict(older) == cfg
    assert cfg["lr"] == 0.01 and cfg["mean"] == [0.5, 0.5, 0.5] and cfg.get("nothing", 1) == 1  # read access by key


def test_the_same_config_yaml_is_written_and_an_old_run_folder_resumes(tmp_path, caplog):
    from bigtransfer.engine.runs import open_run

    run = tmp_path / "run"
    first = Trainer(dict(TINY), run, train_set=tiny_data(), quiet=True).fit()  # a plain dict, as before
    assert (run / "config.yaml").read_text() == OLD_CONFIG_YAML  # the same file for users
    assert isinstance(first.config, RunConfig) and first.config.steps == 2 and identity(first.config) == OLD_IDENTITY
    (run / "config.yaml").write_text(OLD_CONFIG_YAML)  # the folder as the code before RunConfig left it
    with caplog.at_level(logging.INFO, logger="bigtransfer"):
        again = Trainer(dict(TINY), run, train_set=tiny_data(), quiet=True)
        assert again.resumable
        result = again.fit()
    assert "resuming" in caplog.text and result.steps_done == 2
    assert open_run(run).cfg == RunConfig.from_dict(yaml.safe_load(OLD_CONFIG_YAML))


def test_the_identity_of_a_config_is_unchanged():
    sample = merge(DEFAULTS, {"model": "BiT-R14x0.5", "lr": 0.1, "data": "digits", "randaugment": [2, 9],
                              "epochs": 3, "mixup": 0.2, "workers": 0}, "test")
    assert identity(sample) == "c56e213faad8"  # computed by the code before RunConfig
    assert identity(DEFAULTS) == "44136fa355b3"
    assert identity(RunConfig.from_dict(sample)) == identity(sample)


@pytest.mark.parametrize("name", sorted(list_recipes()))
def test_every_recipe_is_a_valid_run_config(name):
    recipe = load_recipe(name)
    assert RunConfig.from_dict(recipe).to_dict() == recipe


# -- the engine reads attributes -----------------------------------------------------------------------------------
CONVERTED = ["engine/trainer.py", "engine/plan.py", "engine/optim.py", "engine/schedules.py", "engine/distill.py",
             "engine/probe.py", "engine/runs.py", "engine/resolve.py", "engine/checkpoint.py", "engine/evaluate.py",
             "data/transforms.py", "data/splits.py", "cli/evaluate.py", "cli/embed.py"]
DICT_READ = re.compile(r"""\b(?:cfg|c|config)\s*(?:\[\s*["']|\.get\()""")


def dict_reads(source: str) -> list[str]:
    """``line: text`` of each read of a run config by key (``cfg["lr"]``, ``c['lr']``, ``cfg.get("lr")``)."""
    return [f"{i}: {line.strip()}" for i, line in enumerate(source.splitlines(), 1) if DICT_READ.search(line)]


def test_the_grep_finds_dict_reads():
    source = "a = int(cfg[\"steps\"])\nb = self.cfg['lr']\nc = c[\"x\"]\nd = cfg.get(\"mean\")\ne = cfg.steps\n" \
             "f = model.pretrained_cfg[\"num_classes\"]\n"
    assert [r.split(":")[0] for r in dict_reads(source)] == ["1", "2", "3", "4"]


def test_the_engine_reads_attributes_not_keys():
    found = {name: dict_reads((SRC / name).read_text(encoding="utf-8")) for name in CONVERTED}
    found = {name: rows for name, rows in found.items() if rows}
    assert found == {}, "read the RunConfig's attributes (cfg.lr), not cfg[\"lr\"]:\n" + "\n".join(
        f"{name}:{row}" for name, rows in found.items() for row in rows)
