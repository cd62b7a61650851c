"""Distillation on the demo's data: a student distilled from a fine-tuned BiT teacher against one trained on labels.

    .venv/bin/python benchmarks/distill.py [--shots 1,5,10] [--seeds 0,1,2] [--steps 1500] [--processes 2]

The teacher of each (k, seed) cell is the demo's upstream M (pre-trained once, cached under $BIGTRANSFER_HOME/demo)
fine-tuned on k digits per class with the demo's own recipe, exactly as the demo's "transfer M" cell. The student is
a BiT-R14x0.5 from random weights (GroupNorm's 32 groups rule out a narrower BiT at this depth), trained on the same
k x 10 images with the `demo_distill` recipe twice: distilled (`bit distill`: KL to the teacher's softmax on the very
same augmented, mixed batch; labels unused) and on the labels (`bit train`: the same augmentation, MixUp, optimizer and
steps). Every network is scored on all remaining digits (balanced accuracy). Prints a table, writes JSON and a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench import write_results  # noqa: E402

HERE = Path(__file__).parent


def _configs(args: argparse.Namespace, k: int, seed: int, backbone: str, curve: bool) -> tuple[dict, dict]:
    """(teacher config, student config) of one cell; ``curve``: evaluate the students along the way."""
    from bigtransfer.engine import config as C
    from bigtransfer.recipes import load_recipe

    teacher = {**load_recipe("demo_finetune"), "data": "digits", "pretrained": True, "weights": backbone,
               "shots": k, "seed": seed}
    student = C.merge(load_recipe(args.recipe), {"data": "digits", "shots": k, "seed": seed, "steps": args.steps,
                                                 "eval_every": args.curve_every if curve else 0}, "example")
    return teacher, student


def _split(k: int, seed: int):
    from bigtransfer.data import fewshot_split, load_digits

    return fewshot_split(load_digits(), k, seed)


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_teacher(cfg: dict, out: str) -> dict:
    """Fine-tune upstream M on one few-shot split (the demo's transfer M cell)."""
    from bigtransfer.engine import train

    sub, rest = _split(int(cfg["shots"]), int(cfg["seed"]))
    return train(cfg, out, train_set=sub, eval_set=rest, quiet=True, announce=False).metrics


def run_student(cfg: dict, out: str, teacher_dir: str | None) -> dict:
    """Train the student on the labels (``teacher_dir`` None) or distil it from the teacher in ``teacher_dir``."""
    from bigtransfer.engine import train
    from bigtransfer.engine.distill import distill

    sub, rest = _split(int(cfg["shots"]), int(cfg["seed"]))
    start = time.perf_counter()
    if teacher_dir is None:
        metrics = train(cfg, out, train_set=sub, eval_set=rest, quiet=True, announce=False).metrics
    else:
        metrics = distill({**cfg, "teacher": teacher_dir}, out, train_set=sub, eval_set=rest, quiet=True,
                          announce=False).metrics
    return {**metrics, "seconds": round(time.perf_counter() - start, 1)}


def curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, balanced accuracy) of a run's evaluations."""
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines() if r.strip()]
    return [(r["step"], r["balanced_accuracy"]) for r in rows if "balanced_accuracy" in r]


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):5.1f} ± {np.std(values):3.1f}"


def table(results: dict) -> str:
    lines = ["   k | teacher (M, fine-tuned) | student on labels | student distilled | agreement | gap closed",
             "-----+-------------------------+-------------------+-------------------+-----------+-----------"]
    for k, cell in results.items():
        t, lab, dis = cell["teacher"], cell["labels"], cell["distilled"]
        gap = np.mean(t) - np.mean(lab)
        closed = f"{100 * (np.mean(dis) - np.mean(lab)) / gap:5.0f} %" if gap > 0 else "    n/a"
        lines.append(f"{k:>4} | {_mean_sd(t):>23} | {_mean_sd(lab):>17} | {_mean_sd(dis):>17} | "
                     f"{np.mean(cell['agreement']):7.1f} % | {closed:>9}")
    return "\n".join(lines)


def plot(results: dict, curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ks = list(results)
    for name, key, color in (("teacher", "teacher", "black"), ("student on labels", "labels", "tab:blue"),
                             ("student distilled", "distilled", "tab:red")):
        means = [np.mean(results[k][key]) for k in ks]
        sds = [np.std(results[k][key]) for k in ks]
        left.errorbar(ks, means, yerr=sds, marker="o", capsize=3, label=name, color=color)
    left.set(xlabel="training images per class (k)", ylabel="balanced accuracy (%)", xscale="log",
             title="digits: distilled vs label-trained student")
    left.set_xticks(ks, [str(k) for k in ks])
    left.legend()
    for key, color in (("labels", "tab:blue"), ("distilled", "tab:red")):
        runs = curves.get(key) or []
        if runs:
            steps = [s for s, _ in runs[0]]
            acc = np.mean([[a for _, a in r] for r in runs], axis=0)
            right.plot(steps, acc, marker=".", color=color, label=f"student {key}")
    if curves.get("teacher"):
        right.axhline(np.mean(curves["teacher"]), color="black", ls="--", label="teacher")
    right.set(xlabel="optimizer steps", ylabel="balanced accuracy (%)",
              title=f"k = {max(ks)}: accuracy against steps (mean over seeds)")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", default="1,5,10")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="student steps (default: the recipe's)")
    ap.add_argument("--curve-every", type=int, default=150,
                    help="evaluate the students of the largest k every N steps (0: only at the end)")
    ap.add_argument("--recipe", default="demo_distill")
    ap.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--runs", default="runs/distill-example", help="folder of the teacher and student runs")
    ap.add_argument("--out", default=str(HERE / "results" / "distill.json"))
    ap.add_argument("--plot", default=str(HERE.parent / "docs" / "images" / "distill.png"))
    args = ap.parse_args(argv)
    t0 = time.time()
    from bigtransfer.demo import DemoConfig, pretrain_upstream
    from bigtransfer.recipes import load_recipe

    args.steps = args.steps or int(load_recipe(args.recipe)["steps"])
    shots = [int(v) for v in args.shots.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    runs = Path(args.runs)
    cells = [(k, s) for k in shots for s in seeds]
    threads = max(1, (os.cpu_count() or 1) // args.processes)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no OpenMP state inherited
    with ProcessPoolExecutor(args.processes, mp_context=ctx, initializer=_init, initargs=(threads,)) as pool:
        # in a worker, as the demo trains it: the same threads per process, so the same numerics and cache entry
        upstream = pool.submit(pretrain_upstream, DemoConfig(), "M").result()
        print(f"upstream M: {'cached' if upstream.cached else 'pre-trained'} ({upstream.seconds:.0f} s)", flush=True)
        cfgs = {c: _configs(args, *c, str(upstream.backbone), c[0] == max(shots)) for c in cells}
        teachers = {c: pool.submit(run_teacher, cfgs[c][0], str(runs / f"teacher-k{c[0]}-s{c[1]}")) for c in cells}
        teachers = {c: f.result() for c, f in teachers.items()}
        print(f"teachers: {len(cells)} fine-tuned ({time.time() - t0:.0f} s so far)", flush=True)
        jobs = {(c, kind): pool.submit(run_student, cfgs[c][1], str(runs / f"{kind}-k{c[0]}-s{c[1]}"),
                                       str(runs / f"teacher-k{c[0]}-s{c[1]}") if kind == "distilled" else None)
                for c in sorted(cells, key=lambda c: -c[0]) for kind in ("distilled", "labels")}
        students = {key: f.result() for key, f in jobs.items()}
    results = {k: {"teacher": [teachers[(k, s)]["balanced_accuracy"] for s in seeds],
                   "labels": [students[((k, s), "labels")]["balanced_accuracy"] for s in seeds],
                   "distilled": [students[((k, s), "distilled")]["balanced_accuracy"] for s in seeds],
                   "agreement": [students[((k, s), "distilled")]["agreement"] for s in seeds]} for k in shots}
    top = max(shots)
    curves = {kind: [curve(runs / f"{kind}-k{top}-s{s}") for s in seeds] for kind in ("labels", "distilled")}
    curves["teacher"] = results[top]["teacher"]
    text = table(results)
    seconds = time.time() - t0
    print(text)
    print(f"total: {seconds:.0f} s (upstream M {upstream.seconds:.0f} s{' cached' if upstream.cached else ''})")
    plot(results, curves, Path(args.plot))
    write_results(args.out, {"recipe": load_recipe(args.recipe), "steps": args.steps, "seeds": seeds,
                             "results": {str(k): v for k, v in results.items()},
                             "curves": {k: v for k, v in curves.items() if k != "teacher"},
                             "student_seconds": {f"{c[0][0]}-{c[0][1]}-{c[1]}": v["seconds"]
                                                 for c, v in students.items()},
                             "upstream_cached": upstream.cached, "table": text}, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
