"""``bit convert``: any BiT checkpoint to official .npz, our safetensors, timm, transformers or MindSpore."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..weights.convert import TARGETS, arch_name, convert


def _source(src: str, model: str | None) -> tuple[str, str | None]:
    """A path as given, or a registered model name resolved to its (downloaded) weights file."""
    if Path(src).exists():
        return src, model
    from ..models import get_config
    from ..weights.download import fetch_pretrained

    cfg = get_config(src)  # an unknown name raises with a suggestion
    return str(fetch_pretrained(cfg)), model or cfg.name


def run(args: argparse.Namespace) -> int:
    src, model_name = _source(args.src, args.model)
    dst, model = convert(src, args.dst, args.to, model_name=model_name, ema=args.ema, overwrite=args.overwrite)
    arch = arch_name(model.block_units, model.width_factor) or f"units {model.block_units} x{model.width_factor:g}"
    print(f"wrote {dst} ({args.to or dst.suffix.lstrip('.')}; {arch}, {model.num_classes} classes)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert weights between .npz, safetensors, timm, transformers and .ckpt",
                       description="Convert BiT weights. The source format (official .npz; safetensors in our, "
                       "timm or transformers layout; MindSpore .ckpt; torch state dict) is detected from the "
                       "content, the architecture from the keys unless --model is given. SRC may also be a "
                       "registered model name, whose pretrained weights are downloaded.")
    p.add_argument("src", metavar="SRC", help="weights file, or a model name to download")
    p.add_argument("dst", metavar="DST", help="output file")
    p.add_argument("--to", choices=TARGETS, default=None,
                   help="output format (default: from DST's extension: .npz, .safetensors = ours, .ckpt)")
    p.add_argument("--model", default=None, help="registered model name to check the weights against")
    p.add_argument("--ema", action="store_true", help="take the EMA copy of a MindSpore training checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=run)
