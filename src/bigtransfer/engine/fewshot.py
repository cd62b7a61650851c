"""The few-shot protocol: k examples per class over several seeds, each cell a resumable run."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BitError
from . import config as C
from .plots import plot_fewshot
from .runs import CHECKPOINTS, CONFIG, FINAL_WEIGHTS, METRICS, SUMMARY, read_rows
from .trainer import Trainer

log = logging.getLogger("bigtransfer")
REQUEST = "request.json"  # the identity of a finished cell's settings and data, to reuse it only when they match
METRIC_NAMES = {"top1": "top-1 accuracy (%)", "balanced_accuracy": "balanced accuracy (%)"}
KEEP = ("all", "weights", "results")  # what a finished cell keeps: everything, its final weights, its record only


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
    summary, request = cell / SUMMARY, cell / REQUEST
    if not (summary.exists() and request.exists()):
        return None
    try:
        if json.loads(request.read_text()).get("request") != key:
            return None
        return json.loads(summary.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None  # a damaged record: train again


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run: its config, its summary and its final weights."""
    return all((run_dir / name).is_file() for name in (CONFIG, SUMMARY, FINAL_WEIGHTS))


def _check_keep(keep: str) -> None:
    if keep not in KEEP:
        raise BitError(f"unknown keep '{keep}': choose from {', '.join(KEEP)}")


def prune_cell(cell: Path, keep: str = "all") -> None:
    """Drop what a finished cell no longer needs: its resume checkpoints, and its final weights for ``results``."""
    _check_keep(keep)
    if keep == "all":
        return
    shutil.rmtree(cell / CHECKPOINTS, ignore_errors=True)
    if keep == "results":
        (cell / FINAL_WEIGHTS).unlink(missing_ok=True)


def run_cell(cfg: dict, cell: Path, train_set, eval_set, quiet: bool = True, keep: str = "all") -> dict:
    """Train and evaluate one (method, k, seed) cell, or reuse it when it finished with the same settings and data;
    an interrupted cell resumes from its last checkpoint. Only a cell that keeps ``all`` draws its plots."""
    from ..data import fewshot_split

    key = request_key(cfg, train_set, eval_set)
    hit = _cached(cell, key)
    if hit is None:
        (cell / REQUEST).unlink(missing_ok=True)
        sub, rest = fewshot_split(train_set, int(cfg["shots"]), int(cfg["seed"]))
        trainer = Trainer(cfg, cell, train_set=sub, eval_set=eval_set if eval_set is not None else rest,
                          overwrite=True, quiet=quiet, plots=keep == "all")
        trainer.fit()
        if not trainer.info.is_main:
            return json.loads((cell / SUMMARY).read_text())
        (cell / REQUEST).write_text(json.dumps({"request": key}) + "\n")
        hit = json.loads((cell / SUMMARY).read_text())
    prune_cell(cell, keep)
    return hit


# -- running cells side by side ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dependency:
    """A run that cells start from (e.g. an upstream pre-training), made once before the first cell that needs it;
    with ``jobs`` > 1, ``make(quiet)`` must pickle, as it runs in a worker unless ``run_dir`` holds a finished run."""

    make: Callable[[bool], Any]
    run_dir: Path
    steps: int = 1
    label: str = ""


_DATA: dict[str, tuple] = {}  # a worker's (train set, eval set) of every task, sent once when it starts


def _init_worker(threads: int, parent: int, data: dict[str, tuple]) -> None:
    import threading

    import torch

    _DATA.update(data)
    torch.set_num_threads(threads)
    logging.getLogger("bigtransfer").setLevel(logging.WARNING)

    def watch() -> None:  # a worker whose parent was killed must not train on as an orphan
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_cell(cfg: dict, cell: Path, keep: str, task: str = "") -> dict:
    return run_cell(cfg, cell, *_DATA[task], keep=keep)


def _timed(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
    tick = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - tick


class Workers:
    """Spawned worker processes, started on first use, that split the cores between them and hold the sweep's data
    (a script that runs a parallel sweep needs the ``if __name__ == "__main__":`` guard)."""

    def __init__(self, processes: int, data: dict[str, tuple] | None = None) -> None:
        self.processes = max(1, int(processes))
        self.data = data or {}
        self._ex = None

    def submit(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` in a worker; the future's result is (its value, its seconds)."""
        if self._ex is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            threads = max(1, (os.cpu_count() or 1) // self.processes)
            self._ex = ProcessPoolExecutor(self.processes, mp_context=mp.get_context("spawn"),
                                           initializer=_init_worker, initargs=(threads, os.getpid(), self.data))
        return self._ex.submit(_timed, fn, *args, **kwargs)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._ex is None:
            return
        if exc_type is not None:  # do not let a half-finished sweep train on for minutes after an error
            for proc in list(getattr(self._ex, "_processes", {}).values()):
                proc.terminate()
        self._ex.shutdown(wait=True, cancel_futures=True)


def _last_step(run_dir: Path) -> int:
    """The last training step ``run_dir`` has logged, while another process trains it."""
    try:
        steps = [row["step"] for row in read_rows(run_dir / METRICS) if "loss" in row]
    except OSError:
        return 0
    return int(steps[-1]) if steps else 0


@dataclass(frozen=True, eq=False)  # a cell is itself: compared and hashed by identity
class _Cell:
    method: str
    k: int
    seed: int
    cfg: dict | None = None  # an engine cell's config; None for a method computed by a function of (k, seed)
    run_dir: Path | None = None
    needs: frozenset[str] = frozenset()
    task: str = ""
    fn: Callable[[int, int], float] | None = None


@dataclass
class Task:
    """One downstream data set of a sweep: its sets, its methods computed by a function of (k, seed), and the
    settings its engine cells add to the sweep's (e.g. its ``data`` spec, which enters the cells' identity)."""

    train_set: Any
    eval_set: Any = None
    extra: dict[str, Callable[[int, int], float]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    rest_context: str = "eval_split rest"


@dataclass
class SweepResult:
    """Per method and k, the metric over seeds; a row per cell (with its run folder and seconds); each dependency."""

    metric: str
    results: dict[str, dict[int, list[float]]]
    cells: list[dict]
    upstreams: dict[str, Any]
    methods: dict[str, dict] = field(default_factory=dict)  # what each method lays over the sweep's config

    def payload(self, shots: Sequence[int], seeds: Sequence[int]) -> dict:
        return {"metric": self.metric, "shots": list(shots), "seeds": list(seeds),
                "results": {m: {str(k): v for k, v in r.items()} for m, r in self.results.items()},
                "methods": self.methods, "cells": self.cells}


class _Scheduler:
    """Runs the cells, here or in workers, each as soon as the dependencies it needs are made."""

    def __init__(self, cells: list[_Cell], data: dict[str, tuple], upstreams: dict[str, Dependency], metric: str,
                 keep: str, workers: Workers | None, progress: bool) -> None:
        self.cells, self.data, self.upstreams = cells, data, upstreams
        self.metric, self.keep, self.workers, self.progress = metric, keep, workers, progress
        self.made: dict[str, Any] = {}
        self.rows: dict[_Cell, dict] = {}
        self.bar = self.up_bar = None

    def run(self) -> tuple[dict[_Cell, dict], dict[str, Any]]:
        from tqdm.auto import tqdm

        todo = self._start_upstreams()
        self.bar = tqdm(total=len(self.cells), desc="few-shot cells", disable=not self.progress, dynamic_ncols=True,
                        unit="cell", position=1 if self.up_bar is not None else 0)
        try:
            if self.workers is None:
                for cell in self.cells:
                    self._local(cell)
            else:
                self._parallel(todo)
        finally:
            for bar in (self.up_bar, self.bar):
                if bar is not None:
                    bar.close()
        return self.rows, {name: self.made[name] for name in self.upstreams}

    def _start_upstreams(self) -> dict:
        """Make each dependency here (a finished one is reused at once), or with workers send the unfinished ones
        off, longest first; returns their futures."""
        from tqdm.auto import tqdm

        todo = [n for n, dep in self.upstreams.items() if self.workers is not None and not is_finished(dep.run_dir)]
        for name, dep in self.upstreams.items():
            if name not in todo:
                self.made[name] = dep.make(not self.progress)
        if not todo:
            return {}
        order = sorted(todo, key=lambda n: -self.upstreams[n].steps)
        futures = {}
        for name in order:
            dep = self.upstreams[name]
            log.info("pre-training %s -> %s", dep.label or name, dep.run_dir)
            futures[self.workers.submit(dep.make, True)] = name
        self.up_bar = tqdm(total=sum(self.upstreams[n].steps for n in todo), desc=f"upstreams {'+'.join(order)}",
                           unit="step", disable=not self.progress, dynamic_ncols=True, position=0)
        return futures

    def _parallel(self, up_futures: dict) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        # Decided once, before any worker can finish a cell: finished cells and functions of (k, seed) run here.
        local = [c for c in self.cells
                 if c.cfg is None or _cached(c.run_dir, request_key(c.cfg, *self.data[c.task]))]
        here = set(local)
        remote = [c for c in self.cells if c not in here]
        cell_futures: dict = {}

        def submit_ready() -> set:
            ready = [c for c in remote if c.needs <= set(self.made)]
            new = {self.workers.submit(_worker_cell, c.cfg, c.run_dir, self.keep, c.task): c for c in ready}
            remote[:] = [c for c in remote if c not in ready]
            cell_futures.update(new)
            return set(new)

        pending = set(up_futures) | submit_ready()
        for cell in local:
            self._local(cell)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                value, seconds = future.result()
                if future in up_futures:
                    self.made[up_futures[future]] = value
                    pending |= submit_ready()
                else:
                    self._record(cell_futures[future], value, seconds)
            self._upstream_progress(up_futures.values())

    def _upstream_progress(self, names: Collection[str]) -> None:
        if self.up_bar is not None:
            steps = sum(self.upstreams[n].steps if n in self.made else _last_step(self.upstreams[n].run_dir)
                        for n in names)
            self.up_bar.update(steps - self.up_bar.n)

    def _local(self, cell: _Cell) -> None:
        self.bar.set_postfix_str(f"{_label(cell)} k={cell.k} seed={cell.seed}")
        if cell.cfg is None:
            self._record(cell, *_timed(cell.fn, cell.k, cell.seed))
        else:
            self._record(cell, *_timed(run_cell, cell.cfg, cell.run_dir, *self.data[cell.task], keep=self.keep))

    def _record(self, cell: _Cell, value, seconds: float) -> None:
        row = {**({"task": cell.task} if cell.task else {}), "method": cell.method, "k": cell.k, "seed": cell.seed}
        if isinstance(value, dict):
            row[self.metric] = float(value[self.metric])
            row.update({m: float(value[m]) for m in METRIC_NAMES if m != self.metric and m in value})
            row["run"] = str(cell.run_dir)
        else:
            row[self.metric] = float(value)
        row["seconds"] = round(seconds, 2)
        self.rows[cell] = row
        self.bar.set_postfix_str(f"{_label(cell)} k={cell.k} seed={cell.seed}: {row[self.metric]:.1f}%")
        self.bar.update(1)


def _label(cell: _Cell) -> str:
    return f"{cell.task} {cell.method}" if cell.task else cell.method


def _plan(base: dict, shots: Sequence[int], seeds: Sequence[int], out: Path, methods: dict[str, dict],
          tasks: dict[str, Task], needs: dict[str, Collection[str]], upstreams: dict[str, Dependency]) -> list[_Cell]:
    """Every (task, method, k, seed) cell: per task its methods, then its functions of (k, seed), over shots x seeds."""
    unknown = sorted(set(needs) - set(methods)) + sorted({n for v in needs.values() for n in v} - set(upstreams))
    if unknown:
        raise BitError(f"'{unknown[0]}' is neither a method nor a dependency of this sweep")
    cells = []
    for name, task in tasks.items():
        folder = out / name if name else out
        for method in [*methods, *task.extra]:
            for k in shots:
                for s in seeds:
                    if method not in methods:
                        cells.append(_Cell(method, int(k), int(s), task=name, fn=task.extra[method]))
                        continue
                    cfg = C.merge(base, {**task.settings, **methods[method], "shots": int(k), "seed": int(s)},
                                  f"method {method}")
                    cells.append(_Cell(method, int(k), int(s), cfg, folder / method.replace(" ", "-") / f"k{k}_s{s}",
                                       frozenset(needs.get(method, ())), name))
    return cells


def _warn_empty_classes(task: Task, shots: Sequence[int]) -> None:
    """Without an eval set each cell is scored on the rest of its split: refuse a k that leaves none."""
    from ..data.fewshot import rest_check

    if task.eval_set is not None:
        return
    for k in shots:
        empty = rest_check(task.train_set, int(k), task.rest_context)
        if empty:
            log.warning("k=%d per class leaves no image of class %s to evaluate on (%s); balanced accuracy "
                        "averages the other classes", k, ", ".join(f"'{c}'" for c in empty[:5]), task.rest_context)


def sweep_tasks(base: dict, shots: Sequence[int], seeds: Sequence[int], out: Path, tasks: dict[str, Task],
                methods: dict[str, dict] | None = None, metric: str = "top1", progress: bool = True, *,
                jobs: int = 1, needs: dict[str, Collection[str]] | None = None,
                upstreams: dict[str, Dependency] | None = None, keep: str = "all") -> dict[str, SweepResult]:
    """Run every (task, method, k, seed) cell into ``out/TASK/METHOD/kK_sSEED`` in one pool of ``jobs`` workers, a
    method's cells after the ``upstreams`` it ``needs``; a result per task. ``keep``: see ``KEEP``."""
    methods, upstreams = methods or {"transfer": {}}, upstreams or {}
    _check_keep(keep)
    for task in tasks.values():
        _warn_empty_classes(task, shots)
    cells = _plan(base, shots, seeds, out, methods, tasks, needs or {}, upstreams)
    out.mkdir(parents=True, exist_ok=True)
    data = {name: (task.train_set, task.eval_set) for name, task in tasks.items()}
    with Workers(jobs, data) as workers:
        rows, made = _Scheduler(cells, data, upstreams, metric, keep, workers if jobs > 1 else None, progress).run()
    results = {}
    for name, task in tasks.items():
        mine = [c for c in cells if c.task == name]
        per = {m: {int(k): [rows[c][metric] for c in mine if (c.method, c.k) == (m, int(k))] for k in shots}
               for m in [*methods, *task.extra]}
        settings = {**methods, **{m: getattr(fn, "settings", {}) for m, fn in task.extra.items()}}
        results[name] = SweepResult(metric, per, [rows[c] for c in mine], made, settings)
    return results


def sweep(base: dict, shots: Sequence[int], seeds: Sequence[int], out: Path, train_set, eval_set=None,
          methods: dict[str, dict] | None = None, metric: str = "top1", progress: bool = True,
          extra: dict[str, Callable[[int, int], float]] | None = None, rest_context: str = "eval_split rest", *,
          jobs: int = 1, needs: dict[str, Collection[str]] | None = None,
          upstreams: dict[str, Dependency] | None = None, keep: str = "all", report: bool = True) -> SweepResult:
    """:func:`sweep_tasks` of one task into ``out/METHOD/kK_sSEED``, ``extra`` methods being functions of (k, seed);
    with ``report``, writes ``results.json``, ``table.md`` and ``fewshot.png`` into ``out``."""
    task = Task(train_set, eval_set, extra or {}, {}, rest_context)
    res = sweep_tasks(base, shots, seeds, out, {"": task}, methods, metric, progress, jobs=jobs, needs=needs,
                      upstreams=upstreams, keep=keep)[""]
    if report:
        (out / "results.json").write_text(json.dumps(res.payload(shots, seeds), indent=1))
        (out / "table.md").write_text(format_table(res.results, res.metric))
        plot_fewshot(res.results, out / "fewshot.png", METRIC_NAMES.get(res.metric, res.metric))
    return res


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
