"""``bit predict``: the top-5 classes of each image."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision import tv_tensors

from ..data.imagefolder import decode_image
from ..engine.runs import load_run
from ..engine.trainer import build_transforms


def run(args: argparse.Namespace) -> int:
    loaded = load_run(args.source, args.weights)
    _, eval_tf = build_transforms(loaded.cfg)
    model = loaded.model
    names = loaded.classes
    k = min(args.top, model.num_classes)
    for path in args.images:
        image = tv_tensors.Image(torch.from_numpy(decode_image(Path(path)).transpose(2, 0, 1).copy()))
        with torch.inference_mode():
            probs = model(eval_tf(image)[None]).softmax(1)[0]
        top = probs.topk(k)
        ranked = ", ".join(f"{names[i] if names and i < len(names) else i} {100 * p:.1f}%"
                           for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True))
        print(f"{path}: {ranked}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-5 classes of images")
    p.add_argument("source", help="run folder, or a registered model name (pretrained weights)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--weights", help="checkpoint file to use instead")
    p.add_argument("--top", type=int, default=5)
    p.set_defaults(func=run)
