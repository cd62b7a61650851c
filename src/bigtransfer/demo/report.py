"""The demo's claim (targets, margins over the baselines against the seed spread) and its report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import CLAIM_SHOTS, DOWNSTREAMS, METRIC, PIXELS, SCRATCH, UPSTREAMS, DemoConfig, transfer_name

Curves = dict[str, dict[int, list[float]]]  # method -> k -> one score per seed


def _stats(values: Sequence[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def _beyond(main: Sequence[float], base: Sequence[float]) -> dict:
    (m, s), (bm, bs) = _stats(main), _stats(base)
    return {"margin": round(m - bm, 2), "spread": round(s + bs, 2), "beyond_spread": bool(m - bm > s + bs)}


def _margin(row: dict) -> str:
    """A margin against its spread, tagged when it is within the spread or behind beyond it."""
    text = f"{row['margin']:+.1f} vs spread {row['spread']:.1f}"
    if row["beyond_spread"]:
        return text
    return text + (" (behind, beyond spread)" if row["margin"] < -row["spread"] else " (within spread)")


def check_claims(results: Curves, main: str, targets: dict[int, float] | None = None) -> dict:
    """Targets for ``main`` and its margins over each baseline against the seed spread (mean +- std bands)."""
    out: dict = {"method": main, "targets": {}, "beats": {}, "all_targets": True, "beats_all": True}
    for k, target in (targets or {}).items():
        if k in results[main]:
            mean, _ = _stats(results[main][k])
            ok = mean >= target
            out["targets"][str(k)] = {"mean": round(mean, 2), "target": target, "met": ok}
            out["all_targets"] &= ok
    for base in [b for b in (SCRATCH, PIXELS) if b in results]:
        rows = {str(k): _beyond(results[main][k], results[base][k]) for k in results[main]}  # +-1 std bands apart
        out["beats_all"] &= all(r["beyond_spread"] for r in rows.values())
        out["beats"][base] = rows
    s_name, m_name = transfer_name("S"), transfer_name("M")
    if s_name in results and m_name in results:
        out["m_over_s"] = {str(k): round(_stats(results[m_name][k])[0] - _stats(results[s_name][k])[0], 2)
                           for k in results[m_name]}
    return out


def describe_checks(checks: dict) -> list[str]:
    """The claim check as printable lines."""
    main = checks["method"]
    lines = []
    if checks["targets"]:
        got = ", ".join(f"k={k}: {v['mean']:.1f} (target {v['target']:.0f}) {'ok' if v['met'] else 'MISSED'}"
                        for k, v in checks["targets"].items())
        lines.append(f"{main} targets: {got}")
    for base, rows in checks["beats"].items():
        lines.append(f"{main} over {base}: " + ", ".join(f"k={k}: {_margin(v)}" for k, v in rows.items()))
    if "m_over_s" in checks:
        lines.append("M minus S: " + ", ".join(f"k={k}: {v:+.1f}" for k, v in checks["m_over_s"].items()))
    return lines


def suite_means(results: dict[str, Curves]) -> Curves:
    """Method -> k -> the task means (one per task that ran it): the suite's average at a glance."""
    methods = list(dict.fromkeys(m for r in results.values() for m in r))
    shots = sorted({k for r in results.values() for c in r.values() for k in c})
    return {m: {k: [float(np.mean(r[m][k])) for r in results.values() if r.get(m, {}).get(k)] for k in shots}
            for m in methods}


def check_suite(results: dict[str, Curves], main: str, shots: Sequence[int] = CLAIM_SHOTS) -> dict:
    """The suite's claim: ``main`` beats scratch and raw-pixel LR beyond the seed spread at every k of ``shots`` on at
    least 3/4 of the tasks (not met unless both baselines ran); and the upstreams' order, averaged over tasks and k."""
    tasks = {}
    for task, curves in results.items():
        ks = [k for k in shots if k in curves.get(main, {})]
        margins = {b: {str(k): _beyond(curves[main][k], curves[b][k]) for k in ks} for b in (SCRATCH, PIXELS)
                   if b in curves}
        holds = bool(ks) and bool(margins) and all(v["beyond_spread"] for r in margins.values() for v in r.values())
        tasks[task] = {"holds": holds, "margins": margins}
    shots = [k for k in shots if any(k in c.get(main, {}) for c in results.values())]
    needed = math.ceil(0.75 * len(results))
    held = sorted(t for t, v in tasks.items() if v["holds"])
    means = suite_means(results)
    upstream = {kind: round(float(np.mean([v for vals in means[transfer_name(kind)].values() for v in vals])), 2)
                for kind in UPSTREAMS if transfer_name(kind) in means}
    order = list(upstream.values())
    compared = [b for b in (SCRATCH, PIXELS) if any(b in v["margins"] for v in tasks.values())]
    missing = [b for b in (SCRATCH, PIXELS) if b not in compared]
    return {"method": main, "shots": list(shots), "baselines": compared, "missing": missing, "tasks": tasks,
            "holds_on": held, "needed": needed, "met": len(held) >= needed and not missing, "upstream_means": upstream,
            "upstreams_ordered": all(a <= b for a, b in zip(order, order[1:], strict=False))}


def describe_suite(checks: dict) -> list[str]:
    """The suite's claim check as printable lines."""
    s = checks["suite"]
    ks = " and ".join(f"k={k}" for k in s["shots"]) or "the claim's k (2 and 5: none ran)"
    against = " and ".join(s["baselines"]) or "no baseline (none ran)"
    missing = "; not compared with " + " or ".join(s["missing"]) if s["missing"] else ""
    lines = [f"{s['method']} beats {against} beyond the seed spread at {ks} on {len(s['holds_on'])} "
             f"of {len(s['tasks'])} tasks ({', '.join(s['holds_on']) or 'none'}; needed {s['needed']}): "
             f"{'ok' if s['met'] else 'NOT MET'}{missing}"]
    for task, v in s["tasks"].items():
        if not v["holds"]:
            short = [f"{b} k={k} {_margin(r)}" for b, rows in v["margins"].items() for k, r in rows.items()
                     if not r["beyond_spread"]]
            lines.append(f"{task}: not shown ({'; '.join(short) or 'no baseline or k to compare'})")
    if s["upstream_means"]:
        means = ", ".join(f"{k} {v:.1f}" for k, v in s["upstream_means"].items())
        order = " <= ".join(s["upstream_means"])
        lines.append(f"upstreams, transfer averaged over tasks and k: {means} "
                     f"({order}: {'yes' if s['upstreams_ordered'] else 'NO'})")
    return lines


def suite_checks(results: dict[str, Curves], main: str, targets: dict[str, dict[int, float]] | None = None) -> dict:
    """Each task's claim check (:func:`check_claims`) and the suite's (:func:`check_suite`) for method ``main``."""
    checks = {"tasks": {t: check_claims(r, main, (targets or {}).get(t, {})) for t, r in results.items()}}
    checks["suite"] = check_suite(results, main)
    return checks


def write_suite_report(out: Path, results: dict[str, Curves], checks: dict, seeds: int, metric: str = METRIC
                       ) -> tuple[str, dict]:
    """Write ``table.md`` (a table per task, the suite's mean and the claim check), ``fewshot.png`` (a panel per
    task and the mean) and each task's own table and plot into ``out``; returns (table, paths)."""
    from ..engine.fewshot import METRIC_NAMES, format_table
    from ..engine.plots import plot_fewshot, plot_fewshot_panels

    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "table.md", "plot": out / "fewshot.png", "json": out / "results.json"}
    parts = []
    for task, curves in results.items():
        title = f"### {task}: {DOWNSTREAMS.get(task, task)} ({seeds} seed{'s' if seeds != 1 else ''})"
        lines = "".join(f"- {line}\n" for line in describe_checks(checks["tasks"][task]))
        part = f"{title}\n\n{format_table(curves, metric)}\n{lines}"
        (out / task).mkdir(exist_ok=True)
        (out / task / "table.md").write_text(part)
        plot_fewshot(curves, out / task / "fewshot.png", METRIC_NAMES[metric], title=f"transfer to {task}")
        parts.append(part)
    means = suite_means(results)
    mean_table = format_table(means, metric).replace("over seeds", "over the tasks' means")
    summary = f"### suite mean over {len(results)} tasks\n\n{mean_table}\n" + "".join(
        f"- {line}\n" for line in describe_suite(checks))
    table = "\n".join([*parts, summary])
    title = f"BiT few-shot transfer suite ({len(results)} tasks, {seeds} seeds)"
    paths["table"].write_text(f"# {title}\n\n{table}")
    panels = {**results, "mean over tasks": means} if len(results) > 1 else results
    plot_fewshot_panels(panels, paths["plot"], METRIC_NAMES[metric], title=title, no_band=("mean over tasks",))
    return table, paths


def results_payload(cfg: DemoConfig, results: dict[str, Curves], rows: dict[str, list[dict]], checks: dict,
                    ups: dict, methods: dict[str, dict]) -> dict:
    """What ``results.json`` records: per task every cell and the means, the checks, the upstream runs and every
    method's recipe (the settings its cells ran with)."""
    return {
        "metric": METRIC, "downstreams": list(cfg.downstreams), "shots": list(cfg.shots), "seeds": list(cfg.seeds),
        "results": {t: {m: {str(k): v for k, v in r.items()} for m, r in curves.items()} for t, curves in
                    results.items()},
        "summary": {t: {m: {str(k): dict(zip(("mean", "std"), _stats(v), strict=True)) for k, v in r.items() if v}
                        for m, r in curves.items()} for t, curves in results.items()},
        "suite_mean": {m: {str(k): round(float(np.mean(v)), 2) for k, v in r.items() if v}
                       for m, r in suite_means(results).items()},
        "cells": rows, "checks": checks,
        "upstreams": {k: {"description": UPSTREAMS[k], "run_dir": str(u.run_dir), "cached": u.cached,
                          "seconds": round(u.seconds, 1), "summary": u.summary} for k, u in ups.items()},
        "methods": {**methods, PIXELS: {"classifier": "logistic regression on raw pixels / 255"}},
        "recipes": {"upstream": cfg.upstream_recipe, "finetune": cfg.finetune_recipe, "scratch": cfg.scratch_recipe,
                    "probe": cfg.probe_recipe, "upstream_overrides": cfg.upstream_overrides,
                    "finetune_overrides": cfg.finetune_overrides, "scratch_overrides": cfg.scratch_overrides,
                    "probe_overrides": cfg.probe_overrides, "upstream_images": cfg.upstream_images,
                    "upstream_low_res": cfg.upstream_low_res, "upstream_zoom": cfg.upstream_zoom,
                    "upstream_stretch": cfg.upstream_stretch, "upstream_balance": cfg.upstream_balance,
                    "task_images": cfg.task_images},
    }
