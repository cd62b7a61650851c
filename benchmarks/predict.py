"""Throughput of ``bit predict`` on JPEG files against the same model's batched inference on decoded tensors.

    .venv/bin/python benchmarks/predict.py [--images 1000] [--size 128] [--rounds 3]

Writes ``--images`` JPEGs (160x160, smooth random content) and an R50x1 weights file (random weights, evaluated
at ``--size`` px) to a temporary folder. Three cases, timed in turn round after round after a warm-up: batched
inference on the already-decoded and transformed tensors (the model alone, as bench.py times it: same mode, same
batch size); the ``bit predict`` pipeline (the functions the CLI calls, with its default workers and batch size,
writing ``--output`` CSV) on the already-loaded model; and the whole command in-process (loading the weights
too). The goal: the pipeline at least 0.80 of the batched figure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import bigtransfer as bt
from bigtransfer.cli.main import main as bit
from bigtransfer.cli.predict import DEFAULT_BATCH, DEFAULT_WORKERS, image_files, predict_images, write_predictions
from bigtransfer.data.paths import read_image
from bigtransfer.data.transforms import build_transforms
from bigtransfer.engine.runs import load_run
from bigtransfer.models.fast import bf16_supported, prepare_for_inference
from bigtransfer.models.randomize import randomize_
from bigtransfer.weights.st import model_metadata, write_safetensors

sys.path.insert(0, str(Path(__file__).parent))
from bench import _busy_ticks, cpu_name, wait_quiet, write_results  # noqa: E402

GOAL = 0.80


def write_jpegs(folder: Path, n: int, px: int = 160, seed: int = 0) -> list[Path]:
    """``n`` smooth random JPEGs (upsampled low-resolution noise), quality 90."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(small).resize((px, px), Image.BICUBIC).save(path, quality=90)
        out.append(path)
    return out


def write_weights(path: Path, size: int, seed: int = 0) -> Path:
    """A BiT-M-R50x1 (1000 classes) with seeded random weights whose file says to evaluate at ``size`` px."""
    model = randomize_(bt.create_model("BiT-M-R50x1", num_classes=1000), seed)
    meta = {**model_metadata(model, "BiT-M-R50x1"), "eval_crop": str(size)}
    return write_safetensors(model.state_dict(), path, meta)


def _ticks_with_children() -> float:
    t = os.times()  # the DataLoader's workers are joined (reaped) when a pass ends, so their time is counted too
    return (t.user + t.system + t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Run ``fn``: (wall seconds, share of the CPUs other processes used meanwhile, 0..1)."""
    b0, o0, t0 = _busy_ticks(), _ticks_with_children(), time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    other = (_busy_ticks() - b0) - (_ticks_with_children() - o0)
    return dt, max(0.0, other / (dt * os.sysconf("SC_CLK_TCK") * os.cpu_count()))


def decode_cost(paths: list[str], transform: Callable, n: int = 200) -> float:
    """Milliseconds per image to decode and transform, on one thread (what a worker does per image)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for p in paths[:n]:
            transform(read_image(p))
        return 1000 * (time.perf_counter() - start) / min(n, len(paths))
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=128, help="evaluation resolution (px)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quiet-wait", type=float, default=2.0,
                    help="seconds to wait, before each sample, for other processes to go idle")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "predict.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jpegs(tmp / "images", args.images)
        weights = write_weights(tmp / "r50x1.safetensors", args.size)
        paths = image_files([str(tmp / "images")])
        loaded = load_run(str(weights))
        _, eval_tf = build_transforms(loaded.cfg)
        model = prepare_for_inference(loaded.model, loaded.mode)
        mode = model.mode + (" bf16" if model.bf16 and model.mode != "bf16" else "")
        batches = [torch.stack([eval_tf(read_image(p)) for p in paths[i:i + DEFAULT_BATCH]])
                   for i in range(0, len(paths), DEFAULT_BATCH)]
        csv = tmp / "preds.csv"

        def batched(count: int = len(batches)) -> None:
            for x in batches[:count]:
                model(x)

        def pipeline(count: int = len(paths)) -> None:
            preds = predict_images(model, eval_tf, paths[:count], top=5, classes=loaded.classes,
                                   batch_size=DEFAULT_BATCH, workers=DEFAULT_WORKERS, device="cpu")
            write_predictions(csv, preds)

        def command() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                assert bit(["predict", str(weights), str(tmp / "images"), "--output", str(csv), "--quiet"]) == 0

        cases = {"batched inference (decoded tensors)": batched, "bit predict pipeline (--output csv)": pipeline,
                 "bit predict command (load + run)": command}
        batched(2)
        pipeline(2 * DEFAULT_BATCH)
        decode_ms = decode_cost(paths, eval_tf)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        loads: dict[str, list[float]] = {name: [] for name in cases}
        for r in range(args.rounds):
            for name, fn in cases.items():
                wait_quiet(args.quiet_wait)
                dt, busy = timed(fn)
                samples[name].append(len(paths) / dt)
                loads[name].append(busy)
                print(f"  round {r + 1}/{args.rounds}: {name}: {len(paths) / dt:.1f} img/s (busy {100 * busy:.0f}%)",
                      file=sys.stderr)
        rows_written = len(csv.read_text().splitlines()) - 1
    base = statistics.median(samples["batched inference (decoded tensors)"])
    rows = [{"case": name, "img_s": statistics.median(s), "ratio": statistics.median(s) / base, "samples_img_s": s,
             "other_load_median": statistics.median(loads[name])} for name, s in samples.items()]
    model_ms = 1000 / base
    print(f"\nR50x1, {args.size} px, {len(paths)} JPEGs (160x160), batch {DEFAULT_BATCH}, {DEFAULT_WORKERS} workers, "
          f"mode {mode}, {args.threads} threads; CPU: {cpu_name()} ({os.cpu_count()} cores)")
    print(f"  {'case':38} {'img/s':>7} {'x batched':>10} {'busy':>5}")
    for r in rows:
        print(f"  {r['case']:38} {r['img_s']:7.1f} {r['ratio']:10.2f} {100 * r['other_load_median']:4.0f}%")
    print(f"decode + transform: {decode_ms:.2f} ms/img on one core; the model: {model_ms:.1f} ms/img on "
          f"{args.threads} threads ({100 * decode_ms / model_ms / args.threads:.1f}% of the CPU time per image)")
    ratio = rows[1]["ratio"]
    paired = statistics.median(p / b for p, b in zip(rows[1]["samples_img_s"], rows[0]["samples_img_s"], strict=True))
    print(f"goal: bit predict pipeline / batched inference >= {GOAL:.2f}: {ratio:.2f} (median of the per-round "
          f"ratios: {paired:.2f}), {'met' if ratio >= GOAL else 'NOT met'}")
    busy = max(r["other_load_median"] for r in rows)
    if busy > 0.1:
        print(f"note: other processes used up to {100 * busy:.0f}% of the CPUs during some cases; "
              f"rerun on an idle machine for clean absolute numbers")
    env = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
           "python": platform.python_version(), "bf16_native": bf16_supported(), "seconds": time.time() - t0}
    result = {"env": env, "model": "BiT-M-R50x1 (random weights)", "size": args.size, "images": len(paths),
              "image_px": 160, "batch_size": DEFAULT_BATCH, "workers": DEFAULT_WORKERS, "mode": mode,
              "rows": rows, "decode_ms_per_image_one_core": decode_ms, "csv_rows": rows_written,
              "goal": {"ratio": ratio, "paired_ratio": paired, "goal": GOAL, "met": ratio >= GOAL}}
    write_results(args.out, result, env["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
