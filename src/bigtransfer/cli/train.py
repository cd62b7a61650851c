"""``bit train``: upstream training with a recipe (under ``torchrun`` for several processes)."""

from __future__ import annotations

import argparse

from .common import add_run_args
from .finetune import run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train with a recipe (e.g. bit_resnet50_imagenet); DDP under torchrun",
                       description="Train with a recipe. For several processes: "
                                   "torchrun --nproc_per_node N -m bigtransfer.cli.main train --recipe ...")
    add_run_args(p, None)
    p.set_defaults(func=run)
