"""``bit finetune`` and ``bit train``: one run of the engine with a recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_run_args, config_from_args, default_out


def run(args: argparse.Namespace) -> int:
    from ..engine import train
    from ..engine.distributed import launched_as_main

    cfg = config_from_args(args)
    out = Path(args.out) if args.out else default_out(cfg)
    result = train(cfg, out, overwrite=args.overwrite, quiet=args.quiet, announce=True,
                   dry_run=args.dry_run)  # Interrupted: main() prints it
    if args.dry_run:
        print(f"dry run: nothing trained or written; drop --dry-run to train into {out}")
    elif result.summary_line and launched_as_main():  # once, not once per torchrun process
        print(result.summary_line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a pretrained BiT model with the BiT-HyperRule",
                       description="Fine-tune with the HyperRule: resolution, schedule and MixUp from the data set.")
    add_run_args(p, "hyperrule")
    p.set_defaults(func=run)
