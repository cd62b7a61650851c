"""``bit convert``: any BiT checkpoint to official .npz, our safetensors, timm, transformers or MindSpore."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import BitError

# ``weights.convert.TARGETS``, repeated here so building the parser needs no PyTorch.
TARGETS = ("npz", "safetensors", "timm", "hf", "ckpt")


def run(args: argparse.Namespace) -> int:
    from ..engine.runs import weights_source
    from ..weights.convert import arch_name, check_destination, convert, is_folder_target

    folder = is_folder_target(args.dst, args.to)
    if not folder and (Path(args.dst).is_dir() or args.dst.endswith(("/", os.sep))):  # refused before reading SRC
        suffix = {"npz": ".npz", "ckpt": ".ckpt"}.get(args.to or "", ".safetensors")
        raise BitError(f"DST '{args.dst}' is a folder; give a file name, e.g. {Path(args.dst) / f'model{suffix}'}")
    check_destination(args.dst, args.to, args.overwrite)  # before SRC is read, or downloaded
    src, model_name = weights_source(args.src, args.model)
    dst, model = convert(src, args.dst, args.to, model_name=model_name, ema=args.ema, overwrite=args.overwrite)
    arch = arch_name(model.block_units, model.width_factor) or f"units {model.block_units} x{model.width_factor:g}"
    kind = "transformers folder" if folder else args.to or dst.suffix.lstrip(".")
    print(f"wrote {dst} ({kind}; {arch}, {model.num_classes} classes)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert weights between .npz, safetensors, timm, transformers and .ckpt",
                       description="Convert BiT weights. The source format (official .npz; safetensors in our, "
                       "timm or transformers layout; MindSpore .ckpt; torch state dict) is detected from the "
                       "content, the architecture from the keys unless --model is given. SRC may also be a "
                       "folder: a Hugging Face one (its config.json gives the class names and preprocessor), a "
                       "run folder or any folder holding one weights file; or a registered model name, whose "
                       "pretrained weights are downloaded. --to hf writes a folder that transformers' "
                       "from_pretrained loads (model.safetensors, config.json, preprocessor_config.json); give "
                       "DST a .safetensors name for the weights file alone.")
    p.add_argument("src", metavar="SRC", help="weights file, a folder holding one, or a model name to download")
    p.add_argument("dst", metavar="DST", help="output file (for --to hf: a folder, unless it ends in .safetensors)")
    p.add_argument("--to", choices=TARGETS, default=None,
                   help="output format (default: from DST's extension: .npz, .safetensors = ours, .ckpt; "
                   "hf = a transformers folder)")
    p.add_argument("--model", default=None, help="registered model name to check the weights against")
    p.add_argument("--ema", action="store_true", help="take the EMA copy of a MindSpore training checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DST if it exists (for a transformers folder: its model files)")
    p.set_defaults(func=run)
