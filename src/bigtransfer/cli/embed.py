"""``bit embed``: pre-logit features of images or a data split (OUT.npy + OUT.index.csv, or OUT.parquet), and
nearest neighbours of query images in such an index by cosine similarity."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import BitError, DataError
from .common import INFERENCE_MODES, non_negative_int, positive_int
from .predict import DEFAULT_BATCH, DEFAULT_WORKERS, image_files

FORMATS = ("npy", "parquet")
DEFAULT_MODE = "fp32"  # the plain model: features equal forward_head(forward_features(x), pre_logits=True)


def output_paths(text: str, fmt: str) -> dict[str, Path]:
    """The files ``--out`` names: OUT.npy, OUT.index.csv and OUT.meta.json, or OUT.parquet (a suffix is optional)."""
    path = Path(text).expanduser()
    base = path.with_suffix("") if path.suffix.lower() in (".npy", ".parquet") else path
    files = {"parquet": ".parquet"} if fmt == "parquet" else {"npy": ".npy", "csv": ".index.csv", "meta": ".meta.json"}
    return {key: base.with_name(base.name + ext) for key, ext in files.items()}


def index_paths(text: str) -> dict[str, Path]:
    """The files of the index ``--index`` names (OUT.npy, OUT.parquet or OUT); a missing index is one clear error."""
    path = Path(text).expanduser()
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:  # OUT: OUT.npy, else OUT.parquet when only that exists
        parquet, npy = (path.with_name(path.name + ext).is_file() for ext in (".parquet", ".npy"))
        fmt = "parquet" if parquet and not npy else "npy"
    files = output_paths(text, fmt)
    missing = [p for key, p in files.items() if key != "meta" and not p.is_file()]
    if missing:
        raise DataError(f"no such index file '{missing[0]}'; write the index first with "
                        f"'bit embed SOURCE IMAGES --out {text}'")
    return files


def require_pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BitError("--format parquet needs pyarrow; install it (pip install pyarrow) or write "
                       "OUT.npy + OUT.index.csv with --format npy") from None
    return pq


def write_index(files: dict[str, Path], features, paths: list[str], labels: list[str], meta: dict) -> None:
    """Write the features (float32, N x D), their paths and labels, and what made them, each file atomically."""
    import numpy as np

    from ..weights.common import atomic_write

    if "parquet" in files:
        import pyarrow as pa

        pq = require_pyarrow()
        dim = features.shape[1]
        table = pa.table({"row": pa.array(np.arange(len(paths), dtype=np.int64)), "path": pa.array(paths),
                          "label": pa.array(labels),
                          "embedding": pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), dim)})
        table = table.replace_schema_metadata({"bigtransfer": json.dumps(meta)})
        atomic_write(files["parquet"], lambda tmp: pq.write_table(table, tmp))
        return

    def save_npy(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add '.npy' to the temporary name
            np.save(f, np.ascontiguousarray(features, dtype=np.float32))

    def save_csv(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["row", "path", "label"])
            out.writerows([i, p, lab] for i, (p, lab) in enumerate(zip(paths, labels, strict=True)))

    atomic_write(files["npy"], save_npy)
    atomic_write(files["csv"], save_csv)
    atomic_write(files["meta"], lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1) + "\n"))


def read_index(files: dict[str, Path]) -> tuple[Any, list[str], list[str], dict]:
    """(features N x D float32, paths, labels, meta) of an index written by :func:`write_index`."""
    import numpy as np

    if "parquet" in files:
        pq = require_pyarrow()
        table = pq.read_table(files["parquet"])
        column = table.column("embedding").combine_chunks()
        features = np.asarray(column.flatten(), dtype=np.float32).reshape(len(table), -1)
        raw = (table.schema.metadata or {}).get(b"bigtransfer")
        return (features, [str(p) for p in table.column("path").to_pylist()],
                [str(v) for v in table.column("label").to_pylist()], json.loads(raw) if raw else {})
    try:
        features = np.load(files["npy"], allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read index '{files['npy']}' ({e}); write it again with 'bit embed'") from None
    with open(files["csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if features.ndim != 2 or len(rows) != len(features):
        raise DataError(f"'{files['npy']}' ({'x'.join(map(str, features.shape))}) and '{files['csv']}' "
                        f"({len(rows)} rows) do not belong together; write the index again with 'bit embed'")
    meta = json.loads(files["meta"].read_text()) if files["meta"].is_file() else {}
    return features.astype(np.float32, copy=False), [r["path"] for r in rows], [r["label"] for r in rows], meta


def embed_dataset(model, dataset, *, batch_size: int, workers: int, device: Any,
                  progress: bool) -> tuple[Any, list[int], list[int]]:
    """(features of the readable items in order, their indices, the skipped indices) of an (image, index) set."""
    import numpy as np

    from ..engine.infer import feature_batches

    features = np.zeros((len(dataset), model.model.num_features), np.float32)
    kept = np.zeros(len(dataset), bool)
    skipped: list[int] = []
    for batch in feature_batches(model, dataset, batch_size=batch_size, workers=workers, device=device,
                                 progress=progress):
        if batch.indices:
            features[batch.indices] = batch.values.numpy()
            kept[batch.indices] = True
        skipped += batch.skipped
    return features[kept], np.flatnonzero(kept).tolist(), skipped


def _load(args: argparse.Namespace, source: str, weights: str | None, mode: str):
    from ..data.transforms import build_transforms
    from ..engine.distributed import resolve_device
    from ..engine.runs import check_source, open_run
    from ..models.fast import prepare_for_inference

    check_source(source)
    device = resolve_device(args.device)
    loaded = open_run(source, weights)
    _, eval_tf = build_transforms(loaded.cfg)
    return loaded, prepare_for_inference(loaded.model.to(device), mode), eval_tf, device


def build(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..data.paths import ImagePaths, IndexedImages
    from ..weights.common import writable_dir

    if not args.out:
        raise BitError("give --out OUT to write OUT.npy and OUT.index.csv (or --query IMAGES --index OUT.npy to "
                       "search an index)")
    if args.data and args.images:
        raise BitError("give images (files, folders, globs) or --data NAME:PATH, not both")
    if not args.data and not args.images:
        raise BitError("nothing to embed: give image files, folders or quoted globs, or --data NAME:PATH "
                       "--split SPLIT")
    if args.source is None:
        raise BitError("give the model: 'bit embed SOURCE IMAGES --out OUT' (a run folder, weights file or model "
                       "name)")
    if args.format == "parquet":
        require_pyarrow()
    files = output_paths(args.out, args.format)
    for path in files.values():
        if path.is_dir():
            raise BitError(f"--out: '{path}' is a folder; give a file name, e.g. {path / 'features'}")
        writable_dir(path.parent)
    images = image_files(args.images) if args.images else None
    mode = args.mode or DEFAULT_MODE
    loaded, model, eval_tf, device = _load(args, args.source, args.weights, mode)
    if images is not None:
        dataset = ImagePaths(images, eval_tf, args.skip_corrupt)
        paths, labels = images, [""] * len(images)
    else:
        data = load_dataset(args.data, args.split, skip_corrupt=args.skip_corrupt)
        dataset = IndexedImages(data, eval_tf)
        stored = getattr(data, "paths", None)
        paths = [str(p) for p in stored] if stored is not None else [f"{args.data}#{args.split}/{i}"
                                                                       for i in range(len(data))]
        labels = [data.classes[t] for t in data.targets]
    start = time.perf_counter()
    features, rows, skipped = embed_dataset(model, dataset, batch_size=args.batch_size, workers=args.workers,
                                            device=device, progress=not args.quiet)
    seconds = time.perf_counter() - start
    source = str(Path(args.source).resolve()) if Path(args.source).exists() else args.source
    meta = {"source": source, "weights": str(Path(args.weights).resolve()) if args.weights else None,
            "model": loaded.cfg.model, "mode": mode, "count": len(rows), "dim": int(features.shape[1]),
            "data": args.data, "split": args.split if args.data else None}
    write_index(files, features, [paths[i] for i in rows], [labels[i] for i in rows], meta)
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s) of {len(dataset)}, e.g. '{paths[skipped[0]]}'",
              file=sys.stderr)
    print(f"embedded {len(rows)} images in {seconds:.1f} s ({features.shape[1]} features each, mode {mode}); "
          f"written: {', '.join(str(p) for k, p in files.items() if k != 'meta')}")
    return 0


def search(args: argparse.Namespace) -> int:
    from ..data.paths import ImagePaths
    from ..engine.infer import nearest

    if not args.index:
        raise BitError("--query needs --index OUT.npy, an index written by 'bit embed SOURCE IMAGES --out OUT'")
    if args.images or args.data:
        raise BitError("--query searches an index; give the images to search for after --query, and no --data")
    files = index_paths(args.index)
    queries = image_files(args.query)
    features, paths, labels, meta = read_index(files)
    if not len(features):
        raise DataError(f"the index '{args.index}' holds no images; write it again with 'bit embed'")
    source = args.source or meta.get("source")
    if not source:
        raise BitError(f"the index '{args.index}' does not say which model made it; give it: "
                       f"'bit embed SOURCE --query ... --index {args.index}'")
    weights = args.weights or (meta.get("weights") if args.source is None else None)
    mode = args.mode or meta.get("mode") or DEFAULT_MODE
    _, model, eval_tf, device = _load(args, source, weights, mode)
    found, rows, skipped = embed_dataset(model, ImagePaths(queries, eval_tf, args.skip_corrupt),
                                         batch_size=args.batch_size, workers=args.workers, device=device,
                                         progress=not args.quiet)
    if found.shape[1] != features.shape[1]:
        raise BitError(f"the index holds {features.shape[1]}-dimensional features but {source} gives "
                       f"{found.shape[1]}; query with the model that wrote the index")
    sims, ids = nearest(features, found, args.k)
    for q, row in enumerate(rows):
        print(f"query: {queries[row]}")
        print("rank, similarity, path, label")
        for rank, (s, i) in enumerate(zip(sims[q], ids[q], strict=True), 1):
            print(f"{rank}, {s:.6f}, {paths[i]}, {labels[i] or '-'}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable query image(s), e.g. '{queries[skipped[0]]}'", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    return search(args) if args.query else build(args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="pre-logit features of images to .npy/.parquet; nearest-neighbour search")
    p.add_argument("source", nargs="?",
                   help="run folder, weights file, or a registered model name (with --query: default the index's)")
    p.add_argument("images", nargs="*",
                   help="image files, folders of images (searched recursively) or quoted globs ('imgs/**/*.jpg')")
    p.add_argument("--data", metavar="NAME:PATH", help="embed a data set split instead (labels are recorded)")
    p.add_argument("--split", default="train", help="split of --data (default train)")
    p.add_argument("--out", metavar="OUT", help="write OUT.npy (float32, N x D) and OUT.index.csv (row, path, label)")
    p.add_argument("--format", choices=FORMATS, default="npy", help="npy (default) or parquet (OUT.parquet, pyarrow)")
    p.add_argument("--query", nargs="+", metavar="IMAGE",
                   help="search --index for the nearest neighbours of these images, folders or globs")
    p.add_argument("--index", metavar="OUT.npy", help="index to search (OUT.npy or OUT.parquet)")
    p.add_argument("--k", type=positive_int, default=5, help="neighbours per query (default 5)")
    p.add_argument("--weights", help="checkpoint file to use instead")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH,
                   help=f"images per forward pass (default {DEFAULT_BATCH})")
    p.add_argument("--workers", type=non_negative_int, default=DEFAULT_WORKERS,
                   help=f"image-decoding worker processes (default {DEFAULT_WORKERS})")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images and say how many")
    p.add_argument("--mode", choices=INFERENCE_MODES, default=None,
                   help=f"inference path (default {DEFAULT_MODE}, the plain model; with --query: the index's); "
                        f"bf16 and fastest are faster but approximate")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
