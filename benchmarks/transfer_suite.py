"""Recipe variants on the demo's transfer suite: which fine-tuning and scratch recipes hold on all four tasks.

    .venv/bin/python benchmarks/transfer_suite.py [--variants demo,rule-lr,...] [--shots 2,5] [--seeds 0,1,2]

Every variant is a method of one ``engine.fewshot.sweep_tasks`` pool over the suite (digits, glyphs, shapes,
textures; ``bigtransfer.demo.tasks``): the demo's cached upstream (M by default; pre-trained once when missing)
fine-tuned, probed or a network trained from scratch, each cell scored on the rest of its task (balanced accuracy).
Prints a table per k (variants x tasks, mean ± sd over seeds, and the mean over tasks) and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench import write_results  # noqa: E402

HERE = Path(__file__).parent
_ZOOM = {"transforms": "recipe", "scale": [0.4, 1.0], "precrop": 32, "eval_resize": 32, "eval_crop": 32}
# name -> (recipe, overrides, starts from the upstream)
VARIANTS = {
    "demo": ("demo_finetune", {}, True),  # SGD lr 0.01 at batch 32, 100 steps, the HyperRule's shape
    "rule-lr": ("demo_finetune", {"lr": 0.003, "lr_batch": 512, "steps": 500}, True),  # the rule's lr at batch 32
    "lr0.003x300": ("demo_finetune", {"lr": 0.003, "steps": 300}, True),
    "probe": ("demo_probe", {}, True),
    "scratch-300": ("demo_scratch", {"steps": 300, "warmup_steps": 30}, False),
    "scratch-1000": ("demo_scratch", {"steps": 1000, "warmup_steps": 100}, False),  # the demo's first scratch baseline
    "scratch-500": ("demo_scratch", {"steps": 500, "warmup_steps": 50}, False),
    "scratch-600": ("demo_scratch", {"steps": 600, "warmup_steps": 60}, False),
    "scratch-b16": ("demo_scratch", {"batch_size": 16, "steps": 1000, "warmup_steps": 100}, False),  # lr scaled to 16
    "scratch-1500": ("demo_scratch", {"steps": 1500, "warmup_steps": 150}, False),
    # the upstream fine-tuned with the scratch recipe as first measured (1000 AdamW steps, zoom, MixUp, ...)
    "ft-long": ("demo_scratch", {"steps": 1000, "warmup_steps": 100}, True),
    "ft-long-lr1e-3": ("demo_scratch", {"steps": 1000, "warmup_steps": 100, "lr": 0.001}, True),
    # the demo's fine-tune with the scratch recipe's zoom (random resized crops), longer, with and without MixUp
    "ft-aug-300": ("demo_finetune", {**_ZOOM, "steps": 300}, True),
    "ft-aug-mix-300": ("demo_finetune", {**_ZOOM, "steps": 300, "mixup": 1.0}, True),
    "ft-aug-mix-1000": ("demo_finetune", {**_ZOOM, "steps": 1000, "mixup": 1.0}, True),
}


def methods(names: list[str], backbone: str, upstream: str) -> tuple[dict, dict]:
    from bigtransfer.engine import config as C
    from bigtransfer.recipes import load_recipe

    out, needs = {}, {}
    for name in names:
        recipe, overrides, pretrained = VARIANTS[name]
        cfg = C.merge(load_recipe(recipe), overrides, name)
        cfg.update(pretrained=pretrained, weights=backbone if pretrained else None)
        out[name], needs[name] = cfg, {upstream} if pretrained else set()
    return out, needs


def table(results: dict, shots: list[int]) -> str:
    tasks = list(results)
    lines = []
    for k in shots:
        lines += [f"\nk = {k}", f"| variant | {' | '.join(tasks)} | mean |", "|---|" + "---|" * (len(tasks) + 1)]
        for name in results[tasks[0]]:
            cells = [results[t][name][k] for t in tasks]
            text = [f"{np.mean(c):.1f} ± {np.std(c):.1f}" for c in cells]
            lines.append(f"| {name} | {' | '.join(text)} | {np.mean([np.mean(c) for c in cells]):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="demo,rule-lr,lr0.003x300,probe,scratch-300,scratch-1000")
    ap.add_argument("--tasks", default="digits,glyphs,shapes,textures")
    ap.add_argument("--shots", default="2,5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--upstream", default="M", choices=["S", "M", "L"])
    ap.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--runs", default="runs/transfer-suite", help="folder of the few-shot cells (reused when rerun)")
    ap.add_argument("--out", default=str(HERE / "results" / "transfer_suite.json"))
    args = ap.parse_args(argv)

    from bigtransfer.demo import DemoConfig, dependencies, downstream_data, upstream_dir
    from bigtransfer.engine.fewshot import Task, sweep_tasks

    start = time.perf_counter()
    names, shots = args.variants.split(","), [int(v) for v in args.shots.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    demo = DemoConfig(upstreams=(args.upstream,))
    backbone = str(upstream_dir(demo, args.upstream) / "backbone.safetensors")
    variants, needs = methods(names, backbone, args.upstream)
    tasks = {t: Task(downstream_data(t), None, {}, {"data": t}) for t in args.tasks.split(",")}
    res = sweep_tasks({}, shots, seeds, Path(args.runs), tasks, variants, "balanced_accuracy", jobs=args.processes,
                      needs=needs, upstreams=dependencies(demo), keep="results")
    results = {t: r.results for t, r in res.items()}
    print(table(results, shots))
    seconds = time.perf_counter() - start
    payload = {"upstream": args.upstream, "shots": shots, "seeds": seeds, "metric": "balanced_accuracy",
               "variants": {n: {"recipe": VARIANTS[n][0], "overrides": VARIANTS[n][1]} for n in names},
               "results": {t: {m: {str(k): v for k, v in r.items()} for m, r in per.items()}
                           for t, per in results.items()},
               "seconds": round(seconds, 1)}
    write_results(args.out, payload, seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
