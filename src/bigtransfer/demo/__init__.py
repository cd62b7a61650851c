"""The offline demo: pre-train small BiT upstreams on real packaged data, then few-shot transfer to another set.

Upstream "S" is Fashion-MNIST (60k images, 10 classes); upstream "M" adds the MNIST-5k digits (65k, 20 classes),
the offline analogue of BiT-S against BiT-M. Downstream is scikit-learn's 8x8 digits at k examples per class,
against the same network from scratch, logistic regression on raw pixels and a linear probe on frozen features.
Every few-shot cell runs on the engine's sweep (``engine.fewshot.sweep``), as ``bit fewshot`` does.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BitError
from .config import (
    BASELINES,
    DOWNSTREAMS,
    METRIC,
    PIXELS,
    SCRATCH,
    TARGETS,
    UPSTREAMS,
    DemoConfig,
    _hash,
    cache_root,
    probe_name,
    quick_config,
    transfer_name,
)
from .data import (
    balance_classes,
    downstream_data,
    fashion_mnist,
    low_resolution,
    pixel_baseline,
    upstream_data,
    zoom_stretch,
)
from .report import check_claims, describe_checks, results_payload, write_report
from .upstream import (
    Upstream,
    _recipe,
    dependencies,
    pretrain_upstream,
    upstream_config,
    upstream_dir,
    upstream_key,
    upstream_steps,
)

__all__ = ["BASELINES", "DOWNSTREAMS", "METRIC", "PIXELS", "SCRATCH", "TARGETS", "UPSTREAMS", "DemoConfig",
           "DemoResult", "Upstream", "balance_classes", "cache_root", "check_claims", "dependencies",
           "describe_checks", "downstream_data", "fashion_mnist", "low_resolution", "pixel_baseline",
           "pretrain_upstream", "probe_name", "quick_config", "run_all", "run_demo", "transfer_name",
           "upstream_config", "upstream_data", "upstream_dir", "upstream_key", "upstream_steps", "zoom_stretch"]


@dataclass
class DemoResult:
    out: Path
    table: str
    results: dict[str, dict[int, list[float]]]
    checks: dict
    upstreams: dict[str, Upstream]
    paths: dict[str, Path]
    seconds: float


def _methods(cfg: DemoConfig, backbones: dict[str, Path]) -> tuple[dict[str, dict], dict[str, set[str]]]:
    """Method name -> the engine config of its few-shot cells, and the upstreams each method needs."""
    base = {**_recipe(cfg.finetune_recipe, cfg.finetune_overrides, "fine-tune overrides"), "data": cfg.downstream}
    methods = {transfer_name(k): {**base, "pretrained": True, "weights": str(b)} for k, b in backbones.items()}
    needs = {transfer_name(k): {k} for k in backbones}
    if SCRATCH in cfg.baselines:
        methods[SCRATCH] = {**base, "pretrained": False, "weights": None}
        needs[SCRATCH] = set()
    if "linear probe" in cfg.baselines:
        kind = "M" if "M" in backbones else next(iter(backbones))
        probe = _recipe(cfg.probe_recipe, cfg.probe_overrides, "probe overrides")
        methods[probe_name(kind)] = {**probe, "data": cfg.downstream, "pretrained": True, "head_only": True,
                                     "weights": str(backbones[kind])}
        needs[probe_name(kind)] = {kind}
    return methods, needs


@functools.lru_cache(maxsize=2)
def _downstream(name: str):
    return downstream_data(name)


def run_all(cfg: DemoConfig, methods: dict[str, dict], needs: dict[str, set[str]], folder: Path,
            processes: int) -> tuple[dict[str, Upstream], dict[str, dict[int, list[float]]], list[dict]]:
    """Pre-train the upstreams and run every (method, k, seed) cell; returns (upstreams, results, rows).

    With several processes, both upstreams train side by side and each cell starts as soon as the upstream it
    needs is ready (scratch cells at once); finished cells and the quick pixel baseline run here.
    """
    from ..engine.fewshot import sweep

    data = _downstream(cfg.downstream)
    extra = {PIXELS: pixel_baseline(data)} if PIXELS in cfg.baselines else {}
    res = sweep({}, cfg.shots, cfg.seeds, folder, data, None, methods, METRIC, cfg.progress, extra, jobs=processes,
                needs=needs, upstreams=dependencies(cfg), keep="weights" if cfg.keep_weights else "results",
                report=False)
    return res.upstreams, res.results, res.cells


def _validate(cfg: DemoConfig) -> None:
    if not cfg.upstreams:
        raise BitError("no upstream to pre-train: pass --upstream S, M or S,M")
    for kind in cfg.upstreams:
        if kind not in UPSTREAMS:
            raise BitError(f"unknown upstream '{kind}': choose S (Fashion-MNIST) or M (Fashion-MNIST + MNIST-5k)")
    if cfg.downstream not in DOWNSTREAMS:
        raise BitError(f"unknown downstream '{cfg.downstream}': choose {' or '.join(DOWNSTREAMS)}")
    if cfg.downstream == "mnist5k" and "M" in cfg.upstreams:
        raise BitError("upstream M already contains MNIST-5k, so transfer to it would test on training images; "
                       "use --upstream S with --downstream mnist5k")
    unknown = sorted(set(cfg.baselines) - set(BASELINES))
    if unknown:
        raise BitError(f"unknown baseline '{unknown[0]}': choose from {', '.join(BASELINES)}")
    if not cfg.shots or not cfg.seeds or min(cfg.shots) < 1 or min(cfg.seeds) < 0:
        raise BitError("shots must be positive and seeds non-negative, e.g. --shots 1,2,5,10 --seeds 0,1,2")


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Pre-train (or reuse) the upstreams, run every few-shot cell, and write the table, plot and JSON."""
    _validate(cfg)
    start, cpu_start = time.perf_counter(), time.process_time()
    _downstream(cfg.downstream)  # fails early (missing scikit-learn / mlxtend) before any training
    processes = cfg.processes or min(2, os.cpu_count() or 1)
    backbones = {k: upstream_dir(cfg, k) / "backbone.safetensors" for k in UPSTREAMS if k in cfg.upstreams}
    methods, needs = _methods(cfg, backbones)
    folder = cfg.out / "cells" / _hash({"downstream": cfg.downstream, "methods": methods})  # new recipe, new cells
    ups, results, rows = run_all(cfg, methods, needs, folder, processes)

    checks = check_claims(results, transfer_name("M") if "M" in ups else transfer_name(next(iter(ups))))
    table, paths = write_report(cfg, results, checks)
    seconds = time.perf_counter() - start
    payload = {**results_payload(cfg, results, rows, checks, ups), "cells_dir": str(folder), "processes": processes,
               "seconds": {"total": round(seconds, 1), "cpu_this_process": round(time.process_time() - cpu_start, 1)}}
    paths["json"].write_text(json.dumps(payload, indent=1))
    return DemoResult(cfg.out, table, results, checks, ups, paths, seconds)
