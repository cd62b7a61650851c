"""``bit export``: a run, a weights file or a pretrained model to ONNX, checked with onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import BitError
from .common import positive_int

DESCRIPTION = ("Export a run folder (config.yaml and its final or newest weights), a weights file of any supported "
               "format, or a pretrained model name to ONNX. The weight standardization is baked into plain "
               "convolutions; the class names, mean/std and evaluation preprocessing are written as ONNX metadata "
               "props.")


def run(args: argparse.Namespace) -> int:
    from ..engine.runs import open_run
    from ..export import export_onnx, onnx_metadata

    out = Path(args.onnx)
    if out.exists() and not args.overwrite:
        raise BitError(f"{out} exists; pass --overwrite to replace it")
    loaded = open_run(args.source, model_name=args.model, unfinished=True)
    size = args.size or loaded.input_size or 224
    meta = onnx_metadata(loaded.facts, size)
    diff = export_onnx(loaded.model, out, size, opset=args.opset, check=not args.no_check, dynamo=not args.legacy,
                       metadata=meta)
    checked = f"; onnxruntime max |logit diff| vs PyTorch {diff:.2e}" if diff is not None else ""
    print(f"wrote {out} (opset {args.opset}, input N x 3 x {size} x {size}, dynamic batch, "
          f"{loaded.model.num_classes} classes{checked})")
    print(f"  metadata: {meta['preprocessing']}; mean {meta['mean']}, std {meta['std']}; "
          f"{'class names' if loaded.classes else 'no class names (LABEL_i)'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to ONNX (dynamic batch), checked against PyTorch",
                       description=DESCRIPTION)
    p.add_argument("source", metavar="RUN_OR_CKPT", help="run folder, weights file or model name")
    p.add_argument("--onnx", required=True, metavar="OUT", help="output .onnx file")
    p.add_argument("--model", default=None, help="registered model name (needed when it cannot be inferred)")
    p.add_argument("--size", type=positive_int, default=None, metavar="PX",
                   help="input resolution (default: the model's)")
    p.add_argument("--opset", type=positive_int, default=18,
                   help="ONNX opset (default 18; torch.export writes 18 and newer, so older ones are written by the "
                        "TorchScript exporter)")
    p.add_argument("--legacy", action="store_true", help="use the TorchScript exporter instead of torch.export")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)
