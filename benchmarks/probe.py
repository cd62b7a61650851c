"""Head-only linear probe against full fine-tuning for 10-shot, CIFAR-sized data on a CPU.

    .venv/bin/python benchmarks/probe.py [--model BiT-M-R50x1] [--shots 10] [--finetune-steps 20]

Data: scikit-learn's digits (32 px after the HyperRule's resize, like CIFAR), k examples per class for
training, every other image for evaluation. The network keeps its initial weights (no pretrained
weights offline), so only the times mean something here; accuracies of the same comparison on a
pre-trained network are the demo's (docs/demo.md). Times: the probe's feature extraction plus head
training, against full fine-tuning at the HyperRule's schedule (500 steps for few-shot sets), measured
over ``--finetune-steps`` steps and extrapolated; evaluation is timed apart, as both need it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bigtransfer.data import fewshot_split, load_digits
from bigtransfer.engine import DEFAULTS, train
from bigtransfer.engine.config import merge
from bigtransfer.hyperrule import for_dataset

sys.path.insert(0, str(Path(__file__).parent))
from bench import write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="BiT-M-R50x1")
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--finetune-steps", type=int, default=20, help="timed fine-tuning steps (extrapolated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "probe.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_set, eval_set = fewshot_split(load_digits("all"), args.shots, 0)
    hp = for_dataset(len(train_set), (32, 32))
    base = dict(model=args.model, pretrained=False, data="digits", flip=False, workers=0, save_every=0,
                batch_size=args.batch_size, lr_batch=args.batch_size, precision="bf16", eval_split="test")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        probe = train(merge(DEFAULTS, {**base, "head_only": True, "steps": hp.total_steps, "lr": 0.1}, "probe"),
                      Path(tmp) / "probe", train_set=train_set, eval_set=eval_set, quiet=True)
        probe_total = time.perf_counter() - start
        probe_fit = probe.train_seconds
        rows.append({"method": "head-only probe", "train_s": probe_fit, "eval_s": probe_total - probe_fit,
                     "steps": hp.total_steps, "top1_untrained_backbone": probe.metrics["top1"]})
        start = time.perf_counter()
        tuned = train(merge(DEFAULTS, {**base, "steps": args.finetune_steps, "lr": 0.003}, "fine-tune"),
                      Path(tmp) / "tune", train_set=train_set, eval_set=eval_set, quiet=True)
        tune_total = time.perf_counter() - start
        step_s = tuned.train_seconds / args.finetune_steps
        rows.append({"method": "full fine-tune", "train_s": step_s * hp.total_steps,
                     "eval_s": tune_total - tuned.train_seconds, "steps": hp.total_steps,
                     "measured_steps": args.finetune_steps, "step_s": step_s,
                     "top1_untrained_backbone": tuned.metrics["top1"]})
    print(f"{args.model}, {args.shots}-shot digits ({len(train_set)} training images, {len(eval_set)} evaluated), "
          f"HyperRule {hp.precrop}/{hp.crop} px, batch {args.batch_size}, bf16, {args.threads} threads")
    print(f"  {'method':18s} {'train s':>9s} {'eval s':>8s}  steps")
    for r in rows:
        print(f"  {r['method']:18s} {r['train_s']:9.1f} {r['eval_s']:8.1f}  {r['steps']}"
              + (f"  (extrapolated from {r['measured_steps']})" if "measured_steps" in r else ""))
    write_results(args.out, {"model": args.model, "shots": args.shots, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
