"""The few-shot protocol: k examples per class over several seeds, each cell a resumable run."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import config as C
from .plots import plot_fewshot
from .trainer import Trainer

log = logging.getLogger("bigtransfer")
REQUEST = "request.json"  # the identity of a finished cell's settings and data, to reuse it only when they match
METRIC_NAMES = {"top1": "top-1 accuracy (%)", "balanced_accuracy": "balanced accuracy (%)"}


def _fingerprint(dataset) -> str:
    """A hash of what a data set holds: classes, labels, and the image files (or a sample of in-memory images)."""
    h = hashlib.sha256()
    if dataset is None:
        return "none"
    h.update(json.dumps([type(dataset).__name__, list(dataset.classes)]).encode())
    h.update(np.ascontiguousarray(np.asarray(dataset.targets, dtype=np.int64)).tobytes())
    if hasattr(dataset, "parent") and hasattr(dataset, "indices"):
        h.update(np.ascontiguousarray(dataset.indices, dtype=np.int64).tobytes())
        h.update(_fingerprint(dataset.parent).encode())
    if hasattr(dataset, "paths"):  # the files under the root, however the root was spelled
        root = getattr(dataset, "root", None)
        prefix = str(root) if root is not None and str(root) != "." else ""
        h.update(str(Path(root).resolve() if root is not None else "").encode())
        h.update("\n".join(str(p).removeprefix(prefix).lstrip("/") for p in dataset.paths).encode())
    images = getattr(dataset, "images", None)
    if isinstance(images, np.ndarray):
        h.update(str(images.shape).encode())
        h.update(np.ascontiguousarray(images[:: max(1, len(images) // 1024)]).tobytes())
    return h.hexdigest()


def request_key(cfg: dict, train_set, eval_set=None) -> str:
    """The identity of a cell as asked for: every setting that changes its result, and its data."""
    weights = cfg.get("weights")
    if isinstance(weights, str):
        weights = str(Path(weights).expanduser().resolve())
    payload = {"config": C.identity(cfg), "weights": weights, "train": _fingerprint(train_set),
               "eval": _fingerprint(eval_set)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(cell: Path, key: str) -> dict | None:
    """The summary of a finished cell that was asked for with the same settings and data (``key``), else None."""
    summary, request = cell / "summary.json", cell / REQUEST
    if not (summary.exists() and request.exists()):
        return None
    try:
        if json.loads(request.read_text()).get("request") != key:
            return None
        return json.loads(summary.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None  # a damaged record: train again


def run_cell(cfg: dict, cell: Path, train_set, eval_set, quiet: bool = True) -> dict:
    """Train and evaluate one (method, k, seed) cell, or reuse it when it finished with the same settings and data.

    An interrupted cell resumes from its last checkpoint; ``Interrupted`` propagates unchanged.
    """
    from ..data import fewshot_split

    key = request_key(cfg, train_set, eval_set)
    hit = _cached(cell, key)
    if hit is not None:
        return hit
    (cell / REQUEST).unlink(missing_ok=True)
    sub, rest = fewshot_split(train_set, int(cfg["shots"]), int(cfg["seed"]))
    trainer = Trainer(cfg, cell, train_set=sub, eval_set=eval_set if eval_set is not None else rest,
                      overwrite=True, quiet=quiet)
    trainer.fit()
    if trainer.info.is_main:
        (cell / REQUEST).write_text(json.dumps({"request": key}) + "\n")
    return json.loads((cell / "summary.json").read_text())


def sweep(base: dict, shots: Sequence[int], seeds: Sequence[int], out: Path, train_set, eval_set=None,
          methods: dict[str, dict] | None = None, metric: str = "top1", progress: bool = True,
          extra: dict[str, Callable[[int, int], float]] | None = None, rest_context: str = "eval_split rest") -> dict:
    """Run every (method, k, seed) cell; ``methods`` maps a name to config overrides (e.g. scratch).

    ``extra`` adds methods computed by a function of (k, seed) (baselines outside the engine). Without
    ``eval_set`` each cell is scored on the rest of its split, and a k that leaves none is refused before any
    training (``rest_context`` says why in that message). Writes ``results.json``, ``table.md`` and
    ``fewshot.png`` into ``out`` and returns the results.
    """
    from tqdm.auto import tqdm

    from ..data.fewshot import rest_check

    methods = methods or {"transfer": {}}
    if eval_set is None:
        for k in shots:
            empty = rest_check(train_set, int(k), rest_context)
            if empty:
                log.warning("k=%d per class leaves no image of class %s to evaluate on (%s); balanced accuracy "
                            "averages the other classes", k, ", ".join(f"'{c}'" for c in empty[:5]), rest_context)
    out.mkdir(parents=True, exist_ok=True)
    cells = [(m, k, s) for m in list(methods) + list(extra or {}) for k in shots for s in seeds]
    results: dict[str, dict[int, list[float]]] = {m: {k: [] for k in shots} for m, _, _ in cells}
    bar = tqdm(cells, desc="few-shot", disable=not progress, dynamic_ncols=True)
    try:
        for method, k, s in bar:
            bar.set_postfix(method=method, k=k, seed=s)
            if method in methods:
                cfg = C.merge(base, {**methods[method], "shots": int(k), "seed": int(s)}, f"method {method}")
                value = run_cell(cfg, out / method / f"k{k}_s{s}", train_set, eval_set)[metric]
            else:
                value = float(extra[method](k, s))
            results[method][k].append(float(value))
    finally:
        bar.close()
    payload = {"metric": metric, "shots": list(shots), "seeds": list(seeds),
               "results": {m: {str(k): v for k, v in r.items()} for m, r in results.items()}}
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    (out / "table.md").write_text(format_table(results, metric))
    plot_fewshot(results, out / "fewshot.png", METRIC_NAMES.get(metric, metric))
    return payload


def format_table(results: dict[str, dict[int, list[float]]], metric: str = "top1") -> str:
    """A Markdown table: one row per k, one column per method, mean +- std over seeds."""
    methods = list(results)
    shots = sorted({k for r in results.values() for k in r})
    lines = [f"| k | {' | '.join(methods)} |", "|---|" + "---|" * len(methods)]
    for k in shots:
        cells = [f"{np.mean(results[m][k]):.1f} ± {np.std(results[m][k]):.1f}" if results[m].get(k) else "-"
                 for m in methods]
        lines.append(f"| {k} | {' | '.join(cells)} |")
    return f"{METRIC_NAMES.get(metric, metric)}, mean ± std over seeds\n\n" + "\n".join(lines) + "\n"
