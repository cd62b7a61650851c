"""``bit predict``: the top-5 classes of each image."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import BitError, DataError
from .common import add_mode_argument, positive_int


def looks_like_path(text: str) -> bool:
    """Whether ``text`` is written as a path (a separator, or a leading '.' or '~') rather than a model name."""
    return "/" in text or os.sep in text or text.startswith((".", "~"))


def check_source(source: str) -> None:
    """A run folder, weights file or model name; a path-like source that does not exist is one clear error."""
    if not Path(source).exists() and looks_like_path(source):
        raise BitError(f"no such run folder '{source}'; give a run folder (with config.yaml), a weights file or a "
                       f"model name ('bit models' lists them)")


def image_files(items: list[str]) -> list[str]:
    """The images to classify: files as given, folders expanded to the images inside them (recursively, sorted)."""
    from ..data.imagefolder import image_extensions

    extensions = image_extensions()
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in extensions and p.is_file())
            if not found:
                raise DataError(f"no images in folder '{item}' (looked for .jpg, .png, .webp and the other image "
                                f"files Pillow opens); give image files or a folder holding them")
            out += [str(p) for p in found]
        elif not path.exists():
            raise DataError(f"no such image '{item}'; check the path")
        else:
            out.append(item)
    return out


def read_image(path: str):
    """``path`` as a CHW uint8 image tensor; an unreadable file is one clear error (predict skips nothing)."""
    import torch
    from torchvision import tv_tensors

    from ..data.imagefolder import decode_image

    try:
        hwc = decode_image(Path(path))
    except DataError as e:  # drop the hint about skipping: predict reads exactly the files it is given
        reason = str(e).split("; delete or replace it")[0]
        raise DataError(f"{reason}; replace the file or leave it out") from None
    return tv_tensors.Image(torch.from_numpy(hwc.transpose(2, 0, 1).copy()))


def run(args: argparse.Namespace) -> int:
    from ..engine.runs import load_run
    from ..engine.trainer import build_transforms
    from ..models.fast import prepare_for_inference

    check_source(args.source)
    images = image_files(args.images)
    loaded = load_run(args.source, args.weights)
    _, eval_tf = build_transforms(loaded.cfg)
    k = min(args.top, loaded.model.num_classes)
    model = prepare_for_inference(loaded.model, args.mode or loaded.mode)
    names = loaded.classes
    for path in images:
        probs = model(eval_tf(read_image(path))[None]).softmax(1)[0]
        top = probs.topk(k)
        ranked = ", ".join(f"{names[i] if names and i < len(names) else i} {100 * p:.1f}%"
                           for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True))
        print(f"{path}: {ranked}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-5 classes of images")
    p.add_argument("source", help="run folder, weights file, or a registered model name (pretrained weights)")
    p.add_argument("images", nargs="+", help="image files, or folders of images (searched recursively)")
    p.add_argument("--weights", help="checkpoint file to use instead")
    p.add_argument("--top", type=positive_int, default=5, help="classes to show per image (default 5)")
    add_mode_argument(p)
    p.set_defaults(func=run)
