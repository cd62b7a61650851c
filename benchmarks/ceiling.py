"""How much of a bf16 fine-tuning step is convolution: the ceiling of a faster GroupNorm and standardization.

    .venv/bin/python benchmarks/ceiling.py [--size 128] [--batch 16] [--rounds 7] [--compile]

Times one SGD step of R50x1 (bf16 autocast, 2 threads), alternating in one process: timm, our fastest
path, and the same path with GroupNorm+ReLU replaced by a bare ReLU and the weight standardization by a
cast (everything else unchanged: the convolution-only floor no GroupNorm or standardization kernel can
beat). ``--compile`` adds ``torch.compile`` of our plain channels_last model.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import bigtransfer as bt
from bigtransfer.models import StdConv2d
from bigtransfer.models.fast import use_fast_path

sys.path.insert(0, str(Path(__file__).parent))
from bench import make_pair, write_results  # noqa: E402


class _CastConv(torch.nn.Module):
    """The convolution of a ``StdConv2d`` on its raw weight (cast under autocast): no standardization."""

    def __init__(self, conv: StdConv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        w = c.weight.to(torch.bfloat16) if torch.is_autocast_enabled("cpu") else c.weight
        return F.conv2d(x, w, None, c.stride, c.padding)


def _strip(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.GroupNorm):  # GroupNorm(+ReLU): a bare ReLU
            setattr(module, name, torch.nn.ReLU())
        elif isinstance(child, StdConv2d):
            setattr(module, name, _CastConv(child))
        else:
            _strip(child)


def convolution_floor(model: bt.ResNetV2) -> bt.ResNetV2:
    """A copy of a fast-path ``model`` without GroupNorm and without weight standardization."""
    floor = copy.deepcopy(model)
    _strip(floor)
    return floor


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ceiling.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ref, ours = make_pair("R50x1")
    plain = copy.deepcopy(ours).train().to(memory_format=torch.channels_last) if args.compile else None
    ours = use_fast_path(ours.train())
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 1000, (args.batch,), generator=torch.Generator().manual_seed(1))
    cl = x.contiguous(memory_format=torch.channels_last)
    cases = {"timm bf16": (ref.train(), x), "ours fastest": (ours, cl),
             "convolution-only floor": (convolution_floor(ours), cl)}
    if plain is not None:
        cases["ours plain + torch.compile"] = (torch.compile(plain), cl)
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9) for k, (m, _) in cases.items()}

    def step(name: str) -> float:
        model, inp = cases[name]
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16):
            loss = F.cross_entropy(model(inp).float(), y)
        loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        return time.perf_counter() - start

    first = {name: step(name) for name in cases}  # includes compilation where asked
    for name in cases:
        step(name)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name in cases:
            times[name].append(step(name))
    med = {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}
    print(f"R50x1 SGD step, {args.size} px, batch {args.batch}, bf16 autocast, {args.threads} threads "
          f"(medians of {args.rounds}, alternating)")
    for name, ms in med.items():
        print(f"  {name:28} {ms:7.1f} ms  {1000 * args.batch / ms:6.1f} img/s  x timm {med['timm bf16'] / ms:5.2f}")
    rows = [{"case": k, "ms": v, "x_timm": med["timm bf16"] / v, "first_call_s": first[k]} for k, v in med.items()]
    write_results(args.out, {"size": args.size, "batch": args.batch, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
