"""``bit convert``: any BiT checkpoint to official .npz, our safetensors, timm, transformers or MindSpore."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import BitError, CheckpointError

# ``weights.convert.TARGETS``, repeated here so building the parser needs no PyTorch.
TARGETS = ("npz", "safetensors", "timm", "hf", "ckpt")
WEIGHT_SUFFIXES = (".npz", ".safetensors", ".ckpt", ".pth", ".pt", ".bin")
# in a folder, these names are the weights whatever else it holds (a Hugging Face download, a run folder)
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def weights_in_folder(folder: Path) -> Path:
    """The one weights file of ``folder``: ``model.safetensors``, ``pytorch_model.bin``, or its only weights file."""
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES and p.is_file())
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(p.name for p in found[:5]) + (", ..." if len(found) > 5 else "")
        raise CheckpointError(f"folder '{folder}' holds {len(found)} weights files ({names}); give one of them")
    raise CheckpointError(f"folder '{folder}' holds no weights file (looked for {', '.join(WEIGHT_NAMES)} and "
                          f"*{', *'.join(WEIGHT_SUFFIXES)}); give the weights file")


def _source(src: str, model: str | None) -> tuple[str, str | None]:
    """A path as given (a folder: its weights file), or a registered model name resolved to its weights file."""
    path = Path(src)
    if path.is_dir():
        return str(weights_in_folder(path)), model
    if path.exists():
        return src, model
    if path.suffix.lower() in WEIGHT_SUFFIXES or "/" in src or os.sep in src:
        raise CheckpointError(f"{src}: no such file; check the path (or give a registered model name to download "
                              f"its weights)")
    from ..models import get_config
    from ..weights.download import fetch_pretrained

    cfg = get_config(src)  # an unknown name raises with a suggestion
    return str(fetch_pretrained(cfg)), model or cfg.name


def _check_destination(dst: str, to: str | None) -> None:
    """DST must name a file: a folder (or a path ending in a separator) is refused before anything is read."""
    if Path(dst).is_dir() or dst.endswith(("/", os.sep)):
        suffix = {"npz": ".npz", "ckpt": ".ckpt"}.get(to or "", ".safetensors")
        example = Path(dst) / f"model{suffix}"
        raise BitError(f"DST '{dst}' is a folder; give a file name, e.g. {example}")


def run(args: argparse.Namespace) -> int:
    from ..weights.convert import arch_name, convert

    _check_destination(args.dst, args.to)
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
                       "folder holding one weights file (e.g. a Hugging Face download: its model.safetensors) "
                       "or a registered model name, whose pretrained weights are downloaded.")
    p.add_argument("src", metavar="SRC", help="weights file, a folder holding one, or a model name to download")
    p.add_argument("dst", metavar="DST", help="output file")
    p.add_argument("--to", choices=TARGETS, default=None,
                   help="output format (default: from DST's extension: .npz, .safetensors = ours, .ckpt)")
    p.add_argument("--model", default=None, help="registered model name to check the weights against")
    p.add_argument("--ema", action="store_true", help="take the EMA copy of a MindSpore training checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=run)
