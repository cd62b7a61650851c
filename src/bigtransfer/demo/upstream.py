"""The demo's upstreams: their recipes, their cache keys, and their pre-training into the cache."""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..engine import config as C
from ..engine.fewshot import Dependency, is_finished
from .config import BALANCED_SIZES, DEMO_VERSION, UPSTREAM_SIZES, UPSTREAMS, DemoConfig, cache_root
from .data import upstream_data

log = logging.getLogger("bigtransfer")


@dataclass
class Upstream:
    """A pre-trained upstream in the cache: its run folder and the head-less weights fine-tuning starts from."""

    kind: str
    run_dir: Path
    backbone: Path
    cached: bool
    seconds: float
    summary: dict


def _recipe(name: str, overrides: dict, source: str) -> dict:
    from ..recipes import load_recipe

    return C.merge(load_recipe(name), overrides, source)


def upstream_config(cfg: DemoConfig, kind: str) -> dict:
    """The engine config that pre-trains upstream ``kind``."""
    data = {"S": "fashion-mnist", "M": "fashion-mnist+mnist5k", "L": "fashion-mnist+mnist5k+fractals"}[kind]
    return {**_recipe(cfg.upstream_recipe, cfg.upstream_overrides, "upstream overrides"), "data": data}


def upstream_key(cfg: DemoConfig, kind: str) -> str:
    """The cache key of upstream ``kind``: the demo version, its data preparation and its recipe's run identity
    (which leaves out settings at their default, so a setting added to the engine later keeps the cache valid)."""
    fractals = {"fractals": [cfg.fractal_classes, cfg.fractal_images]} if kind == "L" else {}
    return C.identity({"demo_version": DEMO_VERSION, "upstream": kind, "images": cfg.upstream_images,
                       "eval_images": cfg.upstream_eval_images, "low_res": list(cfg.upstream_low_res or []),
                       "zoom": list(cfg.upstream_zoom or []), "stretch": cfg.upstream_stretch,
                       "balance": cfg.upstream_balance, "config": C.identity(upstream_config(cfg, kind)), **fractals})


def _write_backbone(run_dir: Path) -> Path:
    """Save the upstream weights without the classifier, so fine-tuning always starts from a zero head."""
    from safetensors.torch import load_file, save_file

    from ..weights.common import HEAD_KEYS, atomic_write

    target = run_dir / "backbone.safetensors"
    if target.is_file():
        return target
    state = {k: v for k, v in load_file(run_dir / "model.safetensors").items() if k not in HEAD_KEYS}
    model = str(yaml.safe_load((run_dir / "config.yaml").read_text())["model"])
    atomic_write(target, lambda p: save_file(state, p, metadata={"model": model, "head": "none"}))
    return target


def upstream_dir(cfg: DemoConfig, kind: str) -> Path:
    """The cache folder of upstream ``kind`` as ``cfg`` trains it."""
    return cache_root(cfg.home) / "demo" / f"upstream-{kind}-{upstream_key(cfg, kind)}"


def upstream_steps(cfg: DemoConfig, kind: str) -> int:
    """Optimizer steps of upstream ``kind`` (for progress while it trains elsewhere)."""
    ucfg = upstream_config(cfg, kind)
    if ucfg.get("steps"):
        return int(ucfg["steps"])
    n = min(UPSTREAM_SIZES[kind], cfg.upstream_images or UPSTREAM_SIZES[kind])
    if cfg.upstream_balance:  # approximate for a subset: the progress bar only needs the scale
        n = round(n * BALANCED_SIZES[kind] / UPSTREAM_SIZES[kind])
    return max(1, math.ceil(float(ucfg["epochs"]) * n / int(ucfg["batch_size"])))


def pretrain_upstream(cfg: DemoConfig, kind: str, quiet: bool | None = None) -> Upstream:
    """Pre-train upstream ``kind`` into the cache, or reuse the finished run (an interrupted one resumes);
    ``quiet`` hides its progress bar (default: as ``cfg.progress`` says)."""
    from ..engine.trainer import train

    start = time.perf_counter()
    run_dir = upstream_dir(cfg, kind)
    cached = is_finished(run_dir)
    if not cached:
        log.info("pre-training upstream %s: %s -> %s", kind, UPSTREAMS[kind], run_dir)
        train_set, eval_set = upstream_data(kind, cfg.upstream_images, cfg.upstream_eval_images, cfg.home,
                                            cfg.upstream_low_res, cfg.upstream_zoom, cfg.upstream_stretch,
                                            cfg.upstream_balance, (cfg.fractal_classes, cfg.fractal_images))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "demo-upstream.json").write_text(json.dumps(
            {"upstream": kind, "description": UPSTREAMS[kind], "images": len(train_set),
             "classes": train_set.classes}, indent=1))
        train(upstream_config(cfg, kind), run_dir, train_set=train_set, eval_set=eval_set,
              quiet=not cfg.progress if quiet is None else quiet)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the final weights are all the demo needs
    else:
        log.info("upstream %s: reusing %s", kind, run_dir)
    backbone = _write_backbone(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    return Upstream(kind, run_dir, backbone, cached, time.perf_counter() - start, summary)


def dependencies(cfg: DemoConfig) -> dict[str, Dependency]:
    """Each upstream ``cfg`` asks for, as a dependency of the few-shot cells that start from it."""
    return {kind: Dependency(functools.partial(pretrain_upstream, cfg, kind), upstream_dir(cfg, kind),
                             upstream_steps(cfg, kind), f"upstream {kind}: {UPSTREAMS[kind]}")
            for kind in UPSTREAMS if kind in cfg.upstreams}
