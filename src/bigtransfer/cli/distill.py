"""``bit distill``: a compact student from a teacher by consistent, patient function matching."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_run_args, config_from_args, default_out, positive_float, setting


def run(args: argparse.Namespace) -> int:
    from ..engine.config import merge
    from ..engine.distill import distill
    from ..engine.distributed import launched_as_main

    cfg = config_from_args(args)
    extra = {"teacher": args.teacher, "teacher_weights": args.teacher_weights, "model": args.student,
             "weights": args.student_weights, "extra_data": args.extra_data, "temperature": args.temperature}
    cfg = merge(cfg, {k: v for k, v in extra.items() if v is not None}, "command line")
    out = Path(args.out) if args.out else default_out(cfg, prefix="distill_")
    result = distill(cfg, out, overwrite=args.overwrite, quiet=args.quiet, announce=True, dry_run=args.dry_run)
    if args.dry_run:
        print(f"dry run: nothing trained or written; drop --dry-run to distil into {out}")
    elif result.summary_line and launched_as_main():
        print(result.summary_line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a fine-tuned teacher into a smaller student (function matching)",
                       description="Train a student to match a teacher's softmax on the very same augmented, mixed "
                                   "images (Beyer et al. 2022). Labels are only used to evaluate.")
    d = p.add_argument_group("distillation")
    d.add_argument("--teacher", help="the teacher: a run folder, a weights file or a model name")
    d.add_argument("--teacher-weights", help="weights file for a teacher given by model name")
    d.add_argument("--student", help="the student's model name ('bit models' lists them; same as --model)")
    d.add_argument("--student-weights", help="weights the student starts from (same as --weights); "
                                             "--no-pretrained starts it from random weights")
    d.add_argument("--extra-data", help="more images for the distillation stream: a folder (labels unused) or a "
                                        "data spec")
    d.add_argument("--temperature", type=setting(positive_float, "temperature"),
                   help="softmax temperature of the KL divergence (default 1)")
    add_run_args(p, "distill")
    p.set_defaults(func=run)
