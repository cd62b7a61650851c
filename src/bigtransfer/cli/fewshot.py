"""``bit fewshot``: the few-shot protocol over shots x seeds, with a table and the accuracy-vs-k plot."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import BitError, DataError
from .common import add_run_args, config_from_args, default_out, parse_ints, positive_int, resumable


def run(args: argparse.Namespace) -> int:
    """Train every (k, seed) cell, reusing finished ones, and print the table."""
    from ..engine.baselines import BASELINES, baseline_methods, parse_baselines, pixel_baseline
    from ..engine.fewshot import sweep

    shots, seeds = parse_ints(args.shots, "--shots"), parse_ints(args.seeds, "--seeds")
    baselines = parse_baselines(args.baseline)
    methods = {"transfer": {}, **baseline_methods(baselines, {"scratch": args.scratch_recipe,
                                                              "probe": args.probe_recipe})}
    cfg = config_from_args(args)
    cfg["shots"] = None
    if args.suite:
        return _suite(args, cfg, shots, seeds, methods, "pixels" in baselines)
    from ..engine.trainer import load_data

    eval_split = cfg.get("eval_split")
    # with val_split, every cell is scored on the one seeded hold-out of the train split
    train_set, eval_set = load_data({**cfg, "eval_split": "none"})
    rest_context = f"eval_split {eval_split}"
    if cfg.get("val_split") is None and eval_split not in (None, "none", "rest"):
        from ..data import load_dataset

        try:
            eval_set = load_dataset(cfg["data"], eval_split, skip_corrupt=cfg["skip_corrupt"])
        except DataError:
            eval_set = None  # no such split: each cell evaluates on the rest of its own split
            rest_context = f"no '{eval_split}' split, so each cell is scored on the rest"
            print(f"no '{eval_split}' split in {cfg['data']}: each cell is scored on the rest of its split",
                  file=sys.stderr)
    extra = {BASELINES["pixels"]: pixel_baseline(train_set, eval_set, args.metric, progress=not args.quiet)
             } if "pixels" in baselines else {}
    out = Path(args.out) if args.out else default_out(cfg, "fewshot-")
    sweep(cfg, shots, seeds, out, train_set, eval_set, methods, args.metric, progress=not args.quiet, extra=extra,
          rest_context=rest_context, jobs=args.processes, keep="weights" if args.keep_weights else "results")
    print((out / "table.md").read_text())
    print(f"results: {out / 'results.json'}\nplot:    {out / 'fewshot.png'}")
    return 0


def _suite(args: argparse.Namespace, cfg: dict, shots: list[int], seeds: list[int], methods: dict[str, dict],
           pixels: bool) -> int:
    """The sweep on each task of the transfer suite (``bigtransfer.demo.tasks``), one pool for all, and its report."""
    from ..demo import downstream_data, suite_checks, write_suite_report
    from ..demo.tasks import SUITE
    from ..engine.baselines import BASELINES, pixel_baseline
    from ..engine.fewshot import Task, sweep_tasks
    from ..models.registry import get_config

    if cfg.get("data"):
        raise BitError(f"--suite runs the {len(SUITE)} tasks of the transfer suite ({', '.join(SUITE)}); "
                       "drop --data, or drop --suite to run on your data")
    get_config(cfg["model"])  # an unknown name fails before the tasks are drawn
    tasks = {}
    for name in SUITE:
        data = downstream_data(name)
        extra = {BASELINES["pixels"]: pixel_baseline(data, None, args.metric)} if pixels else {}
        tasks[name] = Task(data, None, extra, {"data": f"suite:{name}"}, "the suite scores each cell on the rest")
    out = Path(args.out) if args.out else default_out({**cfg, "data": "suite"}, "fewshot-")
    with resumable(f"finished cells (in {out / 'cells'})"):
        res = sweep_tasks(cfg, shots, seeds, out / "cells", tasks, methods, args.metric, not args.quiet,
                          jobs=args.processes, keep="weights" if args.keep_weights else "results")
    results = {t: r.results for t, r in res.items()}
    table, paths = write_suite_report(out, results, suite_checks(results, "transfer"), len(seeds), args.metric)
    payload = {t: r.payload(shots, seeds) for t, r in res.items()}
    paths["json"].write_text(json.dumps({"suite": list(SUITE), "tasks": payload}, indent=1))
    print(table)
    print(f"results: {paths['json']}\nplot:    {paths['plot']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fewshot", help="few-shot sweep: shots x seeds, table and accuracy-vs-k plot")
    add_run_args(p, "hyperrule")
    p.add_argument("--shots", default="1,2,5,10", help="examples per class, comma-separated")
    p.add_argument("--seeds", default="0,1,2", help="sampling seeds, comma-separated")
    p.add_argument("--baseline", default="", metavar="NAMES",
                   help="baselines beside transfer, comma-separated: scratch (the same network from random weights, "
                        "with the scratch recipe), probe (a linear classifier on the frozen features, with the probe "
                        "recipe), pixels (logistic regression on raw pixels); e.g. --baseline scratch,probe,pixels")
    p.add_argument("--scratch-recipe", default="scratch", help="recipe of the scratch baseline (default: scratch)")
    p.add_argument("--probe-recipe", default="probe", help="recipe of the probe baseline (default: probe)")
    p.add_argument("--suite", action="store_true",
                   help="instead of --data, run on the transfer suite's four offline tasks (digits, glyphs, shapes, "
                        "textures; each cell scored on the rest of its task) and check transfer against the baselines")
    p.add_argument("--keep-weights", action="store_true",
                   help="keep each finished cell's final weights (by default a cell keeps its scores and config)")
    p.add_argument("--metric", default="top1", choices=["top1", "balanced_accuracy"])
    p.add_argument("--processes", type=positive_int, default=1,
                   help="cells trained side by side, each on its share of the cores (default 1)")
    p.set_defaults(func=run)
