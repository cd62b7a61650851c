"""``bit models``: list every registered model with its size and input."""

from __future__ import annotations

import argparse


def count_params(name: str) -> int:
    """Parameters of a registered model, built on the meta device so even R152x4 is instant."""
    import torch

    from ..models import create_model

    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


def run(args: argparse.Namespace) -> int:
    from ..models import get_config, list_models

    names = [n for n in list_models() if not args.filter or args.filter.lower() in n.lower()]
    rows = [("name", "arch", "params", "classes", "input", "weights", "description")]
    for n in names:
        c = get_config(n)
        rows.append((n, c.arch, f"{count_params(n) / 1e6:.2f}M", str(c.num_classes), f"{c.input_size}px",
                     c.weights_format or "-", c.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models with parameters and input size")
    p.add_argument("filter", nargs="?", default="", help="only names containing this text")
    p.set_defaults(func=run)
