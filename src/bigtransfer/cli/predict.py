"""``bit predict``: the top-5 classes of each image, decoded by worker processes and classified in batches."""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BitError, DataError
from .common import add_mode_argument, non_negative_int, positive_int

DEFAULT_BATCH = 64
DEFAULT_WORKERS = 2
PRINT_LIMIT = 20  # with --output, more images than this print one summary line instead of a line each
OUTPUT_FORMATS = (".csv", ".jsonl")


def _folder_images(path: Path, extensions: set[str]) -> list[str]:
    return [str(p) for p in sorted(p for p in path.rglob("*") if p.suffix.lower() in extensions and p.is_file())]


def image_files(items: Sequence[str]) -> list[str]:
    """The images to classify: files as given, folders expanded to the images inside them (recursively, sorted),
    and glob patterns (``'imgs/*.jpg'``, ``'imgs/**/*.png'``) to the images they match, sorted."""
    from ..data.imagefolder import image_extensions

    extensions = image_extensions()
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = _folder_images(path, extensions)
            if not found:
                raise DataError(f"no images in folder '{item}' (looked for .jpg, .png, .webp and the other image "
                                f"files Pillow opens); give image files or a folder holding them")
            out += found
        elif path.exists():
            out.append(item)
        elif glob.has_magic(item):
            found = []
            for match in sorted(glob.glob(os.path.expanduser(item), recursive=True)):
                if os.path.isdir(match):
                    found += _folder_images(Path(match), extensions)
                elif os.path.splitext(match)[1].lower() in extensions:
                    found.append(match)
            if not found:
                raise DataError(f"no images match '{item}'; check the pattern (folders and '**' are searched "
                                f"recursively, e.g. 'imgs/**/*.jpg')")
            out += found
        else:
            raise DataError(f"no such image '{item}'; check the path")
    return out


def check_output(text: str) -> Path:
    """The ``--output`` file: a .csv or .jsonl name in a folder that can be created; else one clear error."""
    from ..weights.common import writable_dir

    path = Path(text).expanduser()
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise BitError(f"--output '{text}': unknown format '{path.suffix or '(no extension)'}'; end the file name "
                       f"with .csv or .jsonl, e.g. preds.csv")
    if path.is_dir():
        raise BitError(f"--output '{text}' is a folder; give a file name, e.g. {path / 'preds.csv'}")
    writable_dir(path.parent)
    return path


@dataclass
class Predictions:
    """Top-k classes per image: ``ids[i]``/``probs[i]`` for ``paths[i]`` where ``done[i]`` (else it was skipped)."""

    paths: list[str]
    classes: list[str] | None
    ids: Any  # numpy int64, N x k
    probs: Any  # numpy float32, N x k
    done: Any  # numpy bool, N
    skipped: list[str] = field(default_factory=list)

    def top(self, row: int) -> list[tuple[str | int, float]]:
        """(class, probability) pairs of image ``row``, most probable first; a class without a name is its index."""
        names = self.classes or []
        return [(names[i] if i < len(names) else i, float(p))
                for i, p in zip(map(int, self.ids[row]), self.probs[row], strict=True)]

    def rows(self) -> Iterator[tuple[str, list[tuple[str | int, float]]]]:
        """(path, top-k) of each classified image, in input order."""
        for row, path in enumerate(self.paths):
            if self.done[row]:
                yield path, self.top(row)

    @property
    def count(self) -> int:
        return int(self.done.sum())


def predict_images(model, transform: Callable, paths: Sequence[str], *, top: int, classes: list[str] | None,
                   batch_size: int = DEFAULT_BATCH, workers: int = DEFAULT_WORKERS, device: Any = "cpu",
                   skip_corrupt: bool = False, progress: bool = False,
                   on_result: Callable[[str, list], None] | None = None) -> Predictions:
    """Top-``top`` classes of ``paths`` through a prepared model (``prepare_for_inference``); ``on_result(path,
    top)`` is called per image as its batch finishes."""
    import numpy as np

    from ..data.paths import ImagePaths
    from ..engine.infer import predict_batches

    n = len(paths)
    preds = Predictions(list(paths), classes, np.zeros((n, top), np.int64), np.zeros((n, top), np.float32),
                        np.zeros(n, bool))
    dataset = ImagePaths(paths, transform, skip_corrupt)
    for batch in predict_batches(model, dataset, batch_size=batch_size, workers=workers, device=device,
                                 progress=progress):
        if batch.indices:
            values, ids = batch.values.topk(top, dim=1)
            rows = np.asarray(batch.indices)
            preds.ids[rows], preds.probs[rows], preds.done[rows] = ids.numpy(), values.numpy(), True
            if on_result is not None:
                for row in batch.indices:
                    on_result(preds.paths[row], preds.top(row))
        preds.skipped += [preds.paths[i] for i in batch.skipped]
    return preds


def write_predictions(path: str | Path, preds: Predictions) -> Path:
    """Write ``preds`` to a .csv (path, class_1, prob_1, ...) or .jsonl (path, top) file, atomically."""
    from ..weights.common import atomic_write

    k = preds.ids.shape[1]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            if Path(path).suffix.lower() == ".csv":
                out = csv.writer(f)
                out.writerow(["path"] + [f"{kind}_{j}" for j in range(1, k + 1) for kind in ("class", "prob")])
                for image, top in preds.rows():
                    out.writerow([image] + [v for c, p in top for v in (c, f"{p:.6f}")])
            else:
                for image, top in preds.rows():
                    f.write(json.dumps({"path": image, "top": [{"class": c, "prob": round(p, 6)} for c, p in top]})
                            + "\n")

    return atomic_write(path, write)


class ReaderGone(Exception):
    """The reader of the per-image lines closed the pipe (``bit predict ... | head``) and no file is written."""


class LinePrinter:
    """Prints each image's line above the progress bar; once the reader closes the pipe, stops printing (and, with
    ``stop_when_closed``, stops predicting)."""

    def __init__(self, stop_when_closed: bool) -> None:
        self.stop_when_closed = stop_when_closed
        self.closed = False

    def __call__(self, path: str, top: list[tuple[str | int, float]]) -> None:
        from tqdm.auto import tqdm

        if self.closed:
            return
        try:
            tqdm.write(f"{path}: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in top), file=sys.stdout)
            sys.stdout.flush()
        except BrokenPipeError:
            self.closed = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail
            if self.stop_when_closed:
                raise ReaderGone from None


def run(args: argparse.Namespace) -> int:
    from ..data.transforms import build_transforms
    from ..engine.distributed import resolve_device
    from ..engine.runs import check_source, open_run
    from ..models.fast import prepare_for_inference

    check_source(args.source)
    images = image_files(args.images)
    output = check_output(args.output) if args.output else None
    device = resolve_device(args.device)
    loaded = open_run(args.source, args.weights)
    _, eval_tf = build_transforms(loaded.cfg)
    k = min(args.top, loaded.model.num_classes)
    model = prepare_for_inference(loaded.model.to(device), args.mode or loaded.mode)
    show = output is None or args.print or len(images) <= PRINT_LIMIT
    printer = LinePrinter(stop_when_closed=output is None) if show else None
    start = time.perf_counter()
    try:
        preds = predict_images(model, eval_tf, images, top=k, classes=loaded.classes, batch_size=args.batch_size,
                               workers=args.workers, device=device, skip_corrupt=args.skip_corrupt,
                               progress=not args.quiet, on_result=printer)
    except ReaderGone:
        return 0
    seconds = time.perf_counter() - start
    if output is not None:
        write_predictions(output, preds)
    if preds.skipped:
        print(f"skipped {len(preds.skipped)} unreadable image(s) of {len(images)}, e.g. '{preds.skipped[0]}'",
              file=sys.stderr)
    if output is not None and not show:
        mode = model.mode + (" bf16" if model.bf16 and model.mode != "bf16" else "")
        print(f"predicted {preds.count} images in {seconds:.1f} s ({preds.count / max(seconds, 1e-9):.1f} img/s, "
              f"mode {mode}); top-{k} written to {output}")
    elif output is not None:
        print(f"written: {output}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-5 classes of images")
    p.add_argument("source", help="run folder, weights file, or a registered model name (pretrained weights)")
    p.add_argument("images", nargs="+",
                   help="image files, folders of images (searched recursively) or quoted globs ('imgs/**/*.jpg')")
    p.add_argument("--weights", help="checkpoint file to use instead")
    p.add_argument("--top", type=positive_int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--output", metavar="FILE",
                   help="write path, top classes and probabilities to FILE.csv or FILE.jsonl")
    p.add_argument("--print", action="store_true",
                   help=f"print a line per image even with --output and more than {PRINT_LIMIT} images")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH,
                   help=f"images per forward pass (default {DEFAULT_BATCH})")
    p.add_argument("--workers", type=non_negative_int, default=DEFAULT_WORKERS,
                   help=f"image-decoding worker processes (default {DEFAULT_WORKERS}; 0 decodes in this process)")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="skip unreadable images and say how many were skipped (default: stop at the first)")
    add_mode_argument(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
