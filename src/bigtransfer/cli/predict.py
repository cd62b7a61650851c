"""``bit predict``: the top-5 classes of each image."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision import tv_tensors

from ..data.imagefolder import decode_image
from ..engine.runs import load_run
from ..engine.trainer import build_transforms
from ..models.fast import prepare_for_inference
from .common import add_mode_argument


def run(args: argparse.Namespace) -> int:
    loaded = load_run(args.source, args.weights)
    _, eval_tf = build_transforms(loaded.cfg)
    k = min(args.top, loaded.model.num_classes)
    model = prepare_for_inference(loaded.model, args.mode)
    names = loaded.classes
    for path in args.images:
        image = tv_tensors.Image(torch.from_numpy(decode_image(Path(path)).transpose(2, 0, 1).copy()))
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
    add_mode_argument(p)
    p.set_defaults(func=run)
