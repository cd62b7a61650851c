"""The few-shot protocol: k examples per class over several seeds, each cell a resumable run."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml

from . import config as C
from .plots import plot_fewshot
from .trainer import Trainer

log = logging.getLogger("bigtransfer")
METRIC_NAMES = {"top1": "top-1 accuracy (%)", "balanced_accuracy": "balanced accuracy (%)"}


def _cached(cell: Path, cfg: dict) -> dict | None:
    """The summary of a finished cell whose settings are the same, else None."""
    summary, saved = cell / "summary.json", cell / "config.yaml"
    if not (summary.exists() and saved.exists()):
        return None
    old = yaml.safe_load(saved.read_text()) or {}
    keys = ("model", "pretrained", "shots", "seed", "data", "head_only", "weights")
    if any(old.get(k) != cfg.get(k) for k in keys):
        return None
    return json.loads(summary.read_text())


def run_cell(cfg: dict, cell: Path, train_set, eval_set, quiet: bool = True) -> dict:
    """Train and evaluate one (method, k, seed) cell, or reuse its finished result."""
    from ..data import fewshot_split

    hit = _cached(cell, cfg)
    if hit is not None:
        return hit
    sub, rest = fewshot_split(train_set, int(cfg["shots"]), int(cfg["seed"]))
    trainer = Trainer(cfg, cell, train_set=sub, eval_set=eval_set if eval_set is not None else rest,
                      overwrite=True, quiet=quiet)
    trainer.fit()
    return json.loads((cell / "summary.json").read_text())


def sweep(base: dict, shots: Sequence[int], seeds: Sequence[int], out: Path, train_set, eval_set=None,
          methods: dict[str, dict] | None = None, metric: str = "top1", progress: bool = True,
          extra: dict[str, Callable[[int, int], float]] | None = None) -> dict:
    """Run every (method, k, seed) cell; ``methods`` maps a name to config overrides (e.g. scratch).

    ``extra`` adds methods computed by a function of (k, seed) (baselines outside the engine). Writes
    ``results.json``, ``table.md`` and ``fewshot.png`` into ``out`` and returns the results.
    """
    from tqdm.auto import tqdm

    methods = methods or {"transfer": {}}
    out.mkdir(parents=True, exist_ok=True)
    cells = [(m, k, s) for m in list(methods) + list(extra or {}) for k in shots for s in seeds]
    results: dict[str, dict[int, list[float]]] = {m: {k: [] for k in shots} for m, _, _ in cells}
    bar = tqdm(cells, desc="few-shot", disable=not progress, dynamic_ncols=True)
    for method, k, s in bar:
        bar.set_postfix(method=method, k=k, seed=s)
        if method in methods:
            cfg = C.merge(base, {**methods[method], "shots": int(k), "seed": int(s)}, f"method {method}")
            value = run_cell(cfg, out / method / f"k{k}_s{s}", train_set, eval_set)[metric]
        else:
            value = float(extra[method](k, s))
        results[method][k].append(float(value))
    payload = {"metric": metric, "shots": list(shots), "seeds": list(seeds),
               "results": {m: {str(k): v for k, v in r.items()} for m, r in results.items()}}
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    (out / "table.md").write_text(format_table(results, metric))
    plot_fewshot(results, out / "fewshot.png", METRIC_NAMES.get(metric, metric))
    return payload


def format_table(results: dict[str, dict[int, list[float]]], metric: str = "top1") -> str:
    """A Markdown table: one row per k, one column per method, mean +- std over seeds."""
    methods = list(results)
    shots = sorted({k for r in results.values() for k in r})
    lines = [f"| k | {' | '.join(methods)} |", "|---|" + "---|" * len(methods)]
    for k in shots:
        cells = [f"{np.mean(results[m][k]):.1f} ± {np.std(results[m][k]):.1f}" if results[m].get(k) else "-"
                 for m in methods]
        lines.append(f"| {k} | {' | '.join(cells)} |")
    return f"{METRIC_NAMES.get(metric, metric)}, mean ± std over seeds\n\n" + "\n".join(lines) + "\n"
