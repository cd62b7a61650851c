"""Logit parity with timm's resnetv2_*_bit: equal weights, max |difference| per model and WS epsilon.

    python benchmarks/parity.py [--size 128] [--out benchmarks/results/parity.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch

import bigtransfer as bt
from bigtransfer.models.randomize import randomize_
from bigtransfer.weights.timm import load_timm_state

PAIRS = [("resnetv2_50x1_bit", "BiT-M-R50x1-ILSVRC2012"), ("resnetv2_101x1_bit", "BiT-M-R101x1-ILSVRC2012")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results/parity.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    x = torch.randn(4, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows = []
    for i, (tname, ours) in enumerate(PAIRS):
        ref = randomize_(timm.create_model(tname, num_classes=1000), i).eval()
        with torch.no_grad():
            want = ref(x)
            want64 = ref.double()(x.double())
        for eps in (1e-8, 1e-10):
            model = load_timm_state(bt.create_model(ours, ws_eps=eps), ref.float().state_dict()).eval()
            with torch.no_grad():
                got = model(x)
            rows.append({"timm": tname, "ours": ours, "ws_eps": eps, "max_abs_diff": (got - want).abs().max().item(),
                         "max_abs_logit": want.abs().max().item(),
                         "ours_vs_timm_fp64": (got.double() - want64).abs().max().item(),
                         "timm_fp32_vs_fp64": (want.double() - want64).abs().max().item()})
    print(f"{'model':24} {'ws_eps':>7} {'max|ours-timm|':>15} {'ours-timm64':>12} "
          f"{'timm32-timm64':>14} {'max|logit|':>10}")
    for r in rows:
        print(f"{r['ours']:24} {r['ws_eps']:7.0e} {r['max_abs_diff']:15.3e} {r['ours_vs_timm_fp64']:12.3e} "
              f"{r['timm_fp32_vs_fp64']:14.3e} {r['max_abs_logit']:10.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"size": args.size, "batch": 4, "rows": rows}, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
