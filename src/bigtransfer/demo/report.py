"""The demo's claim (targets, margins over the baselines against the seed spread) and its report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import METRIC, PIXELS, SCRATCH, TARGETS, UPSTREAMS, DemoConfig, transfer_name


def _stats(values: Sequence[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def check_claims(results: dict[str, dict[int, list[float]]], main: str) -> dict:
    """Targets for ``main`` and its margins over each baseline against the seed spread (mean +- std bands)."""
    out: dict = {"method": main, "targets": {}, "beats": {}, "all_targets": True, "beats_all": True}
    for k, target in TARGETS.items():
        if k in results[main]:
            mean, _ = _stats(results[main][k])
            ok = mean >= target
            out["targets"][str(k)] = {"mean": round(mean, 2), "target": target, "met": ok}
            out["all_targets"] &= ok
    for base in (SCRATCH, PIXELS):
        if base not in results:
            continue
        rows = {}
        for k in results[main]:
            (m, s), (bm, bs) = _stats(results[main][k]), _stats(results[base][k])
            beyond = m - bm > s + bs  # the +-1 std bands do not overlap
            rows[str(k)] = {"margin": round(m - bm, 2), "spread": round(s + bs, 2), "beyond_spread": beyond}
            out["beats_all"] &= beyond
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
        got = ", ".join(f"k={k}: {v['margin']:+.1f} vs spread {v['spread']:.1f}"
                        f"{'' if v['beyond_spread'] else ' (within spread)'}" for k, v in rows.items())
        lines.append(f"{main} over {base}: {got}")
    if "m_over_s" in checks:
        lines.append("M minus S: " + ", ".join(f"k={k}: {v:+.1f}" for k, v in checks["m_over_s"].items()))
    return lines



def write_report(cfg: DemoConfig, results: dict[str, dict[int, list[float]]], checks: dict) -> tuple[str, dict]:
    """Write ``table.md`` (the table and the claim check) and ``fewshot.png`` into ``cfg.out``; (table, paths)."""
    from ..engine.fewshot import METRIC_NAMES, format_table
    from ..engine.plots import plot_fewshot

    table = format_table(results, METRIC)
    title = f"BiT few-shot transfer to {cfg.downstream} ({len(cfg.seeds)} seeds)"
    paths = {"table": cfg.out / "table.md", "plot": cfg.out / "fewshot.png", "json": cfg.out / "results.json"}
    cfg.out.mkdir(parents=True, exist_ok=True)
    paths["table"].write_text(f"{title}\n\n{table}\n" + "".join(f"- {line}\n" for line in describe_checks(checks)))
    plot_fewshot(results, paths["plot"], METRIC_NAMES[METRIC], title=title)
    return table, paths


def results_payload(cfg: DemoConfig, results: dict[str, dict[int, list[float]]], rows: list[dict], checks: dict,
                    ups: dict) -> dict:
    """What ``results.json`` records: every cell, the means, the checks, the upstream runs and the recipes."""
    return {
        "metric": METRIC, "downstream": cfg.downstream, "shots": list(cfg.shots), "seeds": list(cfg.seeds),
        "results": {m: {str(k): v for k, v in r.items()} for m, r in results.items()},
        "summary": {m: {str(k): dict(zip(("mean", "std"), _stats(v), strict=True)) for k, v in r.items()}
                    for m, r in results.items()},
        "cells": rows, "checks": checks,
        "upstreams": {k: {"description": UPSTREAMS[k], "run_dir": str(u.run_dir), "cached": u.cached,
                          "seconds": round(u.seconds, 1), "summary": u.summary} for k, u in ups.items()},
        "recipes": {"upstream": cfg.upstream_recipe, "finetune": cfg.finetune_recipe, "probe": cfg.probe_recipe,
                    "upstream_overrides": cfg.upstream_overrides, "finetune_overrides": cfg.finetune_overrides,
                    "probe_overrides": cfg.probe_overrides, "upstream_images": cfg.upstream_images,
                    "upstream_low_res": cfg.upstream_low_res, "upstream_zoom": cfg.upstream_zoom,
                    "upstream_stretch": cfg.upstream_stretch, "upstream_balance": cfg.upstream_balance},
    }
