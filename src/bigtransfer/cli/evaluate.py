"""``bit evaluate``: top-1/top-5, balanced and per-class accuracy and a confusion matrix on a data split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import BitError
from .common import add_mode_argument, non_negative_int, positive_int


def run(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..data.transforms import build_transforms
    from ..engine.distributed import resolve_device
    from ..engine.evaluate import evaluate_model
    from ..engine.plots import plot_confusion
    from ..engine.runs import open_run
    from ..engine.sampling import SeededTransform

    loaded = open_run(args.source, args.weights)
    cfg = loaded.cfg
    data = args.data or cfg.data
    if not data:
        raise BitError("no data: pass --data NAME:PATH")
    dataset = load_dataset(data, args.split, skip_corrupt=args.skip_corrupt)
    classes = loaded.classes or dataset.classes
    n = loaded.model.num_classes
    if dataset.num_classes > n:
        raise BitError(f"the data has {dataset.num_classes} classes but the model's head has {n}; "
                       f"evaluate a model fine-tuned on this data")
    _, eval_tf = build_transforms(cfg)
    device = resolve_device(args.device)
    mode = args.mode or loaded.mode
    m = evaluate_model(loaded.model.to(device), SeededTransform(dataset, eval_tf), n, mode=mode,
                       batch_size=args.batch_size, workers=args.workers, device=device, classes=classes,
                       progress=not args.quiet)
    out = Path(args.out) if args.out else (Path(args.source) / f"eval-{args.split}" if Path(args.source).is_dir()
                                           else Path("runs") / f"eval-{cfg.model}-{args.split}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(m, indent=1))
    if n <= 100:
        plot_confusion(m["confusion"], classes[:n], out / "confusion.png")
    print(f"{data} [{args.split}] {m['n']} images: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  "
          f"balanced {m['balanced_accuracy']:.2f}%  (inference {mode})")
    worst = sorted(m["per_class"].items(), key=lambda kv: kv[1])[:5]
    print("lowest per-class accuracy: " + ", ".join(f"{k} {v:.1f}%" for k, v in worst))
    print(f"written: {out / 'metrics.json'}" + (f", {out / 'confusion.png'}" if n <= 100 else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5, per-class accuracy and confusion matrix on a split")
    p.add_argument("source", help="run folder, or a registered model name (pretrained weights)")
    p.add_argument("--data", help="NAME:PATH (default: the run's data)")
    p.add_argument("--split", default="test", help="split to evaluate (test, val, train, all)")
    p.add_argument("--weights", help="checkpoint file to use instead")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--workers", type=non_negative_int, default=2)
    add_mode_argument(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-corrupt", action="store_true")
    p.add_argument("--out", help="folder for metrics.json and confusion.png")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
