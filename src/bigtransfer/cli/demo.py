"""``bit demo``: BiT's few-shot claim end to end on data that ships with installed packages (no downloads)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import BitError
from .common import parse_ints, positive_int, resumable

RECIPES = {"upstream": "upstream", "finetune": "fine-tune", "scratch": "scratch", "probe": "linear-probe"}
BASELINE_FLAGS = {"scratch": "scratch", "pixels": "raw-pixel LR", "probe": "linear probe"}


def _names(text: str, choices: dict[str, str] | tuple[str, ...], what: str) -> tuple[str, ...]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    for name in names:
        if name not in choices:
            raise BitError(f"unknown {what} '{name}': choose from {', '.join(choices)}")
    return tuple(choices[n] if isinstance(choices, dict) else n for n in names)


def run(args: argparse.Namespace) -> int:
    from ..demo import DOWNSTREAMS, DemoConfig, quick_config, run_demo
    from ..engine.config import parse_overrides

    downstreams = _names(args.downstream, tuple(DOWNSTREAMS), "downstream")
    upstream = args.upstream or ("S" if "mnist5k" in downstreams else "S,M")
    settings = dict(
        out=Path(args.out), upstreams=_names(upstream.upper(), ("S", "M", "L"), "upstream"), downstreams=downstreams,
        baselines=_names(args.baselines, BASELINE_FLAGS, "baseline"), keep_weights=args.keep_weights,
        home=Path(args.cache) if args.cache else None, progress=not args.quiet, processes=args.processes)
    cfg = quick_config(**settings) if args.quick else DemoConfig(**settings)
    if args.shots:
        cfg.shots = tuple(parse_ints(args.shots, "--shots"))
    if args.seeds:
        cfg.seeds = tuple(parse_ints(args.seeds, "--seeds"))
    if args.upstream_images is not None:
        cfg.upstream_images = args.upstream_images
    for kind in RECIPES:
        getattr(cfg, f"{kind}_overrides").update(parse_overrides(getattr(args, f"set_{kind}")))
    with resumable(f"the upstreams and finished cells (in {cfg.out / 'cells'})"):
        res = run_demo(cfg)
    print()
    print(res.table)
    for kind, up in res.upstreams.items():
        state = "reused from the cache" if up.cached else f"pre-trained in {up.seconds:.0f} s"
        print(f"upstream {kind}: {up.run_dir} ({state})")
    print(f"table:   {res.paths['table']}\nplot:    {res.paths['plot']}\nresults: {res.paths['json']}")
    print(f"total:   {res.seconds:.0f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="offline demo: pre-train small BiT upstreams, few-shot transfer to a suite of four tasks",
        description="Pre-train a small BiT ResNetV2 on Fashion-MNIST (upstream S) and on Fashion-MNIST + MNIST-5k "
                    "(upstream M), cache both, then fine-tune with k examples per class of each task of the suite "
                    "(digit scans, printed letters, shapes, textures) against the same network from scratch (with a "
                    "from-scratch recipe), a linear probe and logistic regression on raw pixels. Writes table.md, "
                    "fewshot.png and results.json into --out (and a table and plot per task).")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--upstream", help="upstreams to pre-train, comma-separated: S, M, L (default S,M; S for "
                                      "--downstream mnist5k; L adds about 5 min on 2 cores)")
    p.add_argument("--downstream", default="digits,glyphs,shapes,textures", metavar="TASKS",
                   help="few-shot tasks, comma-separated: digits, glyphs, shapes, textures (default: all four), "
                        "or mnist5k (with upstream S only)")
    p.add_argument("--shots", help="examples per class, comma-separated (default 2,5)")
    p.add_argument("--seeds", help="sampling seeds, comma-separated (default 0,1,2)")
    p.add_argument("--baselines", default="scratch,pixels,probe",
                   help="comma-separated: scratch (same network, random init), pixels (logistic regression on raw "
                        "pixels), probe (linear classifier on frozen upstream features); '' for none")
    p.add_argument("--quick", action="store_true",
                   help="a tiny schedule that checks the whole pipeline in well under a minute (numbers meaningless)")
    p.add_argument("--upstream-images", type=positive_int, help="pre-train on a seeded subset of this many images")
    for kind, recipe in RECIPES.items():
        p.add_argument(f"--set-{kind}", action="append", metavar="KEY=VALUE", help=f"override the {recipe} recipe")
    p.add_argument("--cache", help="cache folder for data and upstream weights (default $BIGTRANSFER_HOME or "
                                   "~/.cache/bigtransfer)")
    p.add_argument("--processes", type=positive_int,
                   help="runs side by side, each on its share of the cores (default: 2, or 1 on a one-core machine)")
    p.add_argument("--keep-weights", action="store_true", help="keep each few-shot run's final weights")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
