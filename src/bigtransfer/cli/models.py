"""``bit models``: list every registered model with its size and input."""

from __future__ import annotations

import argparse


def count_params(name: str) -> int:
    """Parameters of a registered model, built on the meta device so even R152x4 is instant."""
    import torch

    from ..hub import create_model

    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


def timm_names() -> dict[str, str]:
    """Our model names mapped to their timm names; ``*`` marks the one a bare timm architecture name loads."""
    from ..models.registry import timm_aliases

    out: dict[str, str] = {}
    aliases = timm_aliases()
    for alias, name in aliases.items():
        if "." in alias:
            out.setdefault(name, alias + ("*" if aliases.get(alias.partition(".")[0]) == name else ""))
    return out


def run(args: argparse.Namespace) -> int:
    from ..models import get_config, list_models

    timm = timm_names()
    text = args.filter.lower()
    names = [n for n in list_models() if text in n.lower() or text in timm.get(n, "").lower()]
    show_timm = args.timm or any(text not in n.lower() for n in names)
    rows = [("name", "arch", "params", "classes", "input", "weights", *(("timm",) if show_timm else ()),
             "description")]
    for n in names:
        c = get_config(n)
        rows.append((n, c.arch, f"{count_params(n) / 1e6:.2f}M", str(c.num_classes), f"{c.input_size}px",
                     c.weights_format or "-", *((timm.get(n, "-"),) if show_timm else ()), c.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    if show_timm:
        print("\ntimm names work wherever a model name does; * marks timm's default tag, which the bare "
              "timm name (e.g. resnetv2_50x1_bit) means")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models with parameters and input size")
    p.add_argument("filter", nargs="?", default="", help="only names (ours or timm's) containing this text")
    p.add_argument("--timm", action="store_true", help="add a column with each model's timm name")
    p.set_defaults(func=run)
