"""Speed of bigtransfer's ResNetV2 against timm's resnetv2_*_bit on the same CPU, measured side by side.

    .venv/bin/python benchmarks/bench.py [--quick] [--sizes 128,224] [--out PATH]

Both models get identical weights (copied through bigtransfer.weights.timm). Every figure is taken in
this one run: the cases of a group are timed in turn, round after round, after a warm-up, and the
median of the rounds is reported, so drift on a shared machine hits all of them alike. Speeds are
also given as a ratio to timm fp32 and to timm's best mode, and as achieved GFLOP/s (model FLOPs from
FlopCounterMode) against a 1x1-convolution peak measured here. Training memory is the peak RSS growth
over a few steps, measured in a fresh subprocess per case.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import bigtransfer as bt
from bigtransfer.models.fast import InferenceModel, bf16_supported, prepare_for_inference, use_fast_path
from bigtransfer.models.randomize import randomize_
from bigtransfer.weights.timm import load_timm_state

TIMM_EPS = 1e-8  # timm's weight-standardization epsilon, so both models compute the same function
ARCHS = {"R50x1": ("resnetv2_50x1_bit", "BiT-M-R50x1-ILSVRC2012"),
         "R50x3": ("resnetv2_50x3_bit", "BiT-M-R50x3-ILSVRC2012")}
MODES = ("fp32", "channels_last", "bf16", "bf16+channels_last")


# ----------------------------------------------------------------------------------------------- models
def make_pair(arch: str, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """timm's model with non-trivial weights (``randomize_``), and ours holding the same weights."""
    import timm

    timm_name, ours_name = ARCHS[arch]
    ref = randomize_(timm.create_model(timm_name, num_classes=1000), seed)
    ours = load_timm_state(bt.create_model(ours_name, ws_eps=TIMM_EPS), ref.state_dict())
    return ref, ours


def in_mode(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The model in one of the plain modes (the same treatment for both implementations)."""
    return model.to(memory_format=torch.channels_last if "channels_last" in mode else torch.contiguous_format)


def mode_input(x: torch.Tensor, mode: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if "channels_last" in mode else x.contiguous()


def autocast(mode: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in mode else contextlib.nullcontext()


def infer_fn(model: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable[[], torch.Tensor]:
    model = in_mode(model.eval(), mode)
    x = mode_input(x, mode)

    def run() -> torch.Tensor:
        with torch.inference_mode(), autocast(mode):
            return model(x).float()
    return run


def plain(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Our model as ``prepare_for_inference`` leaves it in a plain mode: the reference network whose convolutions
    cache their standardized weights (no fused kernel, no prepacking)."""
    return prepare_for_inference(model, "channels_last" if "channels_last" in mode else "fp32").model


def fastest_infer_fn(model: torch.nn.Module, x: torch.Tensor, compile: bool = False,
                     fp32: bool = False) -> Callable[[], torch.Tensor]:
    """``prepare_for_inference(model, "fastest")``; with ``fp32`` the same path without bf16."""
    prepared = prepare_for_inference(model, "fastest", compile=compile)
    if fp32:
        prepared = InferenceModel(prepared.model, "fastest", bf16=False)
    return lambda: prepared(x)


def train_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str,
             fastest: bool = False) -> Callable[[], None]:
    """One fine-tuning step (forward, cross-entropy, backward, SGD with momentum) per call.

    ``fastest``: :func:`use_fast_path` with bf16 autocast where native (``mode`` "fp32" forces fp32).
    """
    model.train()
    if fastest:
        use_fast_path(model)
        mode = "bf16" if bf16_supported() and mode != "fp32" else "fp32"
    else:
        in_mode(model, mode)
        x = mode_input(x, mode)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with autocast(mode):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def onnx_fn(model: torch.nn.Module, x: torch.Tensor, threads: int) -> Callable[[], torch.Tensor]:
    """ONNX Runtime (CPU, fp32, all graph optimizations) on an export of ``model``."""
    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x[:1],), buf, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


# ------------------------------------------------------------------------------------------- measuring
def _busy_ticks() -> int:
    with open("/proc/stat") as f:
        v = [int(a) for a in f.readline().split()[1:8]]
    return sum(v) - v[3] - v[4]


def _own_ticks() -> float:
    t = os.times()
    return (t.user + t.system) * os.sysconf("SC_CLK_TCK")


def other_load(fn: Callable[[], object]) -> tuple[float, float]:
    """Run ``fn``; return its wall time and the CPU share other processes used meanwhile (0..1)."""
    b0, o0, t0 = _busy_ticks(), _own_ticks(), time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    other = (_busy_ticks() - b0) - (_own_ticks() - o0)
    return dt, max(0.0, other / (dt * os.sysconf("SC_CLK_TCK") * os.cpu_count()))


def wait_quiet(limit_s: float, threshold: float = 0.1) -> None:
    """Wait up to ``limit_s`` for other processes to leave the CPUs mostly idle."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end and other_load(lambda: time.sleep(0.25))[1] > threshold:
        pass


@dataclass
class Case:
    impl: str  # "timm" | "ours"
    mode: str
    fn: Callable[[], object]
    images: int
    gflop_per_image: float
    bf16: bool
    samples: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    @property
    def ips(self) -> float:
        return statistics.median(self.samples)


def run_group(title: str, cases: list[Case], rounds: int, warmup: int, quiet_s: float) -> None:
    """Time the cases in turn, round after round, after ``warmup`` untimed calls each."""
    bar = tqdm(total=len(cases) * (rounds + warmup), desc=title, leave=False, file=sys.stderr)
    for c in cases:
        for _ in range(warmup):
            c.fn()
            bar.update()
    for _ in range(rounds):
        for c in cases:
            wait_quiet(quiet_s)
            dt, load = other_load(c.fn)
            c.samples.append(c.images / dt)
            c.loads.append(load)
            bar.update()
    bar.close()


def measure_peak(threads: int, quick: bool) -> dict:
    """Best GFLOP/s of a large 1x1 convolution (channels_last) in fp32 and bf16, and of an fp32 matmul."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1024, 14, 14, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(1024, 1024, 1, 1, generator=g).contiguous(memory_format=torch.channels_last)
    xb, wb = x.bfloat16(), w.bfloat16()
    a, b = torch.randn(2048, 2048, generator=g), torch.randn(2048, 2048, generator=g)
    conv_flop = 2 * 32 * 14 * 14 * 1024 * 1024
    out = {}
    reps = 4 if quick else 10
    with torch.inference_mode():
        for name, fn, flop in (("conv1x1_fp32", lambda: F.conv2d(x, w), conv_flop),
                               ("conv1x1_bf16", lambda: F.conv2d(xb, wb), conv_flop),
                               ("matmul_fp32", lambda: a @ b, 2 * 2048**3)):
            fn()
            best = min(other_load(fn)[0] for _ in range(reps))
            out[name] = flop / best / 1e9
    return out


def count_gflops(model: torch.nn.Module, size: int, backward: bool) -> float:
    """Model GFLOP per image (forward, or forward and backward) at ``size`` pixels."""
    m = copy.deepcopy(model).train(backward)
    x = torch.randn(2, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        if backward:
            m(x).sum().backward()
        else:
            with torch.no_grad():
                m(x)
    return counter.get_total_flops() / 2 / 1e9


# --------------------------------------------------------------------------------------------- memory
def _rss_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def memory_probe(spec: dict) -> dict:
    """In this (fresh) process: peak RSS growth of ``steps`` training steps of one case."""
    torch.set_num_threads(spec["threads"])
    timm_name, ours_name = ARCHS[spec["arch"]]
    if spec["impl"] == "timm":
        import timm

        model = timm.create_model(timm_name, num_classes=1000)
    else:
        model = bt.create_model(ours_name, ws_eps=TIMM_EPS)
    x = torch.randn(spec["batch"], 3, spec["size"], spec["size"])
    y = torch.randint(0, 1000, (spec["batch"],))
    step = train_fn(model, x, y, spec["mode"], fastest=spec["mode"] == "fastest")
    base = _rss_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
        peak_field = "VmHWM"
    except OSError:
        peak_field = ""
    for _ in range(spec["steps"]):
        step()
    peak = _rss_kb(peak_field) if peak_field else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"base_mb": base / 1024, "peak_mb": peak / 1024, "delta_mb": (peak - base) / 1024}


def measure_memory(cases: list[tuple[str, str]], size: int, batch: int, threads: int) -> list[dict]:
    rows = []
    for impl, mode in tqdm(cases, desc="training memory", leave=False, file=sys.stderr):
        spec = {"arch": "R50x1", "impl": impl, "mode": mode, "size": size, "batch": batch, "steps": 3,
                "threads": threads}
        proc = subprocess.run([sys.executable, __file__, "--memory-probe", json.dumps(spec)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            rows.append({"impl": impl, "mode": mode, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        rows.append({"impl": impl, "mode": mode, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return rows


# ----------------------------------------------------------------------------------------------- report
def summarize(title: str, cases: list[Case], peak: dict) -> dict:
    timm_cases = [c for c in cases if c.impl == "timm" and c.mode in MODES]
    timm_fp32 = next(c.ips for c in timm_cases if c.mode == "fp32")
    timm_best = max(timm_cases, key=lambda c: c.ips)
    rows = []
    for c in cases:
        gflops = c.ips * c.gflop_per_image
        p = peak["conv1x1_bf16" if c.bf16 else "conv1x1_fp32"]
        rows.append({"impl": c.impl, "mode": c.mode, "img_s": c.ips, "x_timm_fp32": c.ips / timm_fp32,
                     "x_timm_best": c.ips / timm_best.ips, "gflop_s": gflops, "peak_fraction": gflops / p,
                     "samples_img_s": c.samples, "other_load_median": statistics.median(c.loads)})
    return {"title": title, "timm_best_mode": timm_best.mode, "rows": rows}


def print_group(group: dict) -> None:
    print(f"\n{group['title']}   (timm's best mode: {group['timm_best_mode']})")
    print(f"  {'impl':5} {'mode':28} {'img/s':>8} {'x timm fp32':>12} {'x timm best':>12} "
          f"{'GFLOP/s':>8} {'% peak':>7} {'busy':>5}")
    for r in group["rows"]:
        print(f"  {r['impl']:5} {r['mode']:28} {r['img_s']:8.1f} {r['x_timm_fp32']:12.2f} {r['x_timm_best']:12.2f} "
              f"{r['gflop_s']:8.0f} {100 * r['peak_fraction']:6.0f}% {100 * r['other_load_median']:4.0f}%")


def find(group: dict, impl: str, mode: str) -> float:
    return next(r["img_s"] for r in group["rows"] if r["impl"] == impl and r["mode"] == mode)


def targets(groups: dict, memory: list[dict]) -> list[dict]:
    """The speed targets, each as a measured ratio."""
    out = []

    def add(name: str, value: float, goal: float) -> None:
        out.append({"target": name, "measured": value, "goal": goal, "met": value >= goal})

    inf, train, x3 = groups.get("infer_R50x1_128"), groups.get("train_R50x1_128"), groups.get("infer_R50x3_128")
    if inf:
        best = max(r["img_s"] for r in inf["rows"] if r["impl"] == "timm" and r["mode"] in MODES)
        ours = find(inf, "ours", "fastest")
        add("R50x1 inference vs timm best", ours / best, 1.2)
        with contextlib.suppress(StopIteration):
            add("R50x1 inference vs timm ONNX Runtime fp32", ours / find(inf, "timm", "onnxruntime fp32"), 1.5)
    if x3:
        best = max(r["img_s"] for r in x3["rows"] if r["impl"] == "timm" and r["mode"] in MODES)
        add("R50x3 inference vs timm best", find(x3, "ours", "fastest") / best, 2.0)
    if train:
        ours = find(train, "ours", "fastest")
        add("fine-tune step vs timm fp32", ours / find(train, "timm", "fp32"), 1.5)
        best = max(r["img_s"] for r in train["rows"] if r["impl"] == "timm" and r["mode"] in MODES)
        add("fine-tune step vs timm best", ours / best, 1.2)
    mem = {(m["impl"], m["mode"]): m.get("delta_mb") for m in memory}
    if mem.get(("ours", "fastest")) and mem.get(("timm", "fp32")):
        add("training peak RSS, timm fp32 / ours fastest", mem[("timm", "fp32")] / mem[("ours", "fastest")], 1.0)
    return out


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# -------------------------------------------------------------------------------------------------- main
def timm_copies(ref: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """timm's model per plain mode; modes with the same layout share one copy (timm caches nothing)."""
    plain, cl = copy.deepcopy(ref), copy.deepcopy(ref)
    return {m: cl if "channels_last" in m else plain for m in MODES}


def inference_cases(ref, ours, x, gflop, threads, with_onnx, compile, modes=MODES) -> list[Case]:
    """Each mode on its own copy of our model: its cache of standardized weights is per dtype."""
    n = x.shape[0]
    cases = []
    timm_models = timm_copies(ref)
    for mode in MODES:
        cases.append(Case("timm", mode, infer_fn(timm_models[mode], x, mode), n, gflop, "bf16" in mode))
        if mode in modes:
            cases.append(Case("ours", mode, infer_fn(plain(copy.deepcopy(ours), mode), x, mode), n, gflop,
                              "bf16" in mode))
    bf16 = bf16_supported()
    cases.append(Case("ours", "fastest", fastest_infer_fn(copy.deepcopy(ours), x), n, gflop, bf16))
    if bf16 and modes == MODES:
        cases.append(Case("ours", "fast path fp32", fastest_infer_fn(copy.deepcopy(ours), x, fp32=True), n, gflop,
                          False))
    if compile:
        cases.append(Case("ours", "fastest+compile", fastest_infer_fn(copy.deepcopy(ours), x, True), n, gflop, bf16))
    if with_onnx:
        cases.append(Case("timm", "onnxruntime fp32", onnx_fn(ref, x, threads), n, gflop, False))
        from bigtransfer.export import bake_standardized

        cases.append(Case("ours", "onnxruntime fp32", onnx_fn(bake_standardized(ours), x, threads), n, gflop, False))
    return cases


def training_cases(ref, ours, x, y, gflop) -> list[Case]:
    n = x.shape[0]
    cases = []
    for mode in MODES:
        cases.append(Case("timm", mode, train_fn(copy.deepcopy(ref), x, y, mode), n, gflop, "bf16" in mode))
        cases.append(Case("ours", mode, train_fn(copy.deepcopy(ours), x, y, mode), n, gflop, "bf16" in mode))
    cases.append(Case("ours", "fastest", train_fn(copy.deepcopy(ours), x, y, "", fastest=True), n, gflop,
                      bf16_supported()))
    if bf16_supported():
        cases.append(Case("ours", "fast path fp32", train_fn(copy.deepcopy(ours), x, y, "fp32", fastest=True), n,
                          gflop, False))
    return cases


def check_outputs(cases: list[Case]) -> dict:
    """Max |logit - ours fp32 logit| of every inference case on the benchmark batch."""
    want = next(c.fn() for c in cases if c.impl == "ours" and c.mode == "fp32")
    return {f"{c.impl} {c.mode}": (c.fn().float() - want).abs().max().item() for c in cases}


def write_results(path: str | Path, payload: dict, seconds: float | None = None) -> None:
    """Write a benchmark's JSON (creating its folder) and say where, with the run time when given."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))
    print(f"\nwritten: {out}" + (f"  ({seconds / 60:.1f} min)" if seconds is not None else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds, 128 px, no R50x3, no memory probes")
    ap.add_argument("--sizes", default=None, help="comma-separated input sizes (default 128,224; --quick: 128)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 5, quick 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quiet-wait", type=float, default=2.0,
                    help="seconds to wait, before each sample, for other processes to go idle")
    ap.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    ap.add_argument("--no-train", action="store_true", help="skip the fine-tuning step")
    ap.add_argument("--no-x3", action="store_true", help="skip R50x3")
    ap.add_argument("--no-memory", action="store_true", help="skip the training-memory subprocesses")
    ap.add_argument("--compile", action="store_true", help="also time prepare_for_inference(compile=True)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench.json"))
    ap.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(json.loads(args.memory_probe))))
        return 0

    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in (args.sizes or ("128" if args.quick else "128,224")).split(",")]
    rounds = args.rounds or (3 if args.quick else 5)
    warmup = 1 if args.quick else 2
    t0 = time.time()
    env = {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
           "bf16_native": bf16_supported(), "load_avg_start": os.getloadavg()}
    with contextlib.suppress(ImportError):
        import timm

        env["timm"] = timm.__version__
    print(f"CPU: {env['cpu']}; {args.threads} threads; torch {env['torch']}; bf16 native: {env['bf16_native']}")
    peak = measure_peak(args.threads, args.quick)
    print("peak GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))

    ref, ours = make_pair("R50x1")
    groups, checks = {}, {}
    for size in sizes:
        g_fwd, g_train = count_gflops(ours, size, False), count_gflops(ours, size, True)
        x = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(1))
        cases = inference_cases(ref, ours, x, g_fwd, args.threads, not args.no_onnx, args.compile)
        checks[f"infer_R50x1_{size}"] = check_outputs(cases)
        run_group(f"R50x1 inference {size}px b32", cases, rounds, warmup, args.quiet_wait)
        groups[f"infer_R50x1_{size}"] = summarize(
            f"R50x1 inference, {size} px, batch 32 ({g_fwd:.2f} GFLOP/img)", cases, peak)
        print_group(groups[f"infer_R50x1_{size}"])
        del cases
        if not args.no_train:
            xt = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(2))
            yt = torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(3))
            cases = training_cases(ref, ours, xt, yt, g_train)
            run_group(f"R50x1 fine-tune step {size}px b16", cases, rounds, warmup, args.quiet_wait)
            groups[f"train_R50x1_{size}"] = summarize(
                f"R50x1 fine-tune step (SGD), {size} px, batch 16 ({g_train:.2f} GFLOP/img fwd+bwd)", cases, peak)
            print_group(groups[f"train_R50x1_{size}"])
            del cases
    memory = []
    if not (args.quick or args.no_memory or args.no_train):
        train = groups["train_R50x1_128" if 128 in sizes else f"train_R50x1_{sizes[0]}"]
        timm_best = train["timm_best_mode"]
        size = 128 if 128 in sizes else sizes[0]
        memory = measure_memory([("timm", "fp32"), ("timm", timm_best), ("ours", "fp32"), ("ours", "fastest")],
                                size, 16, args.threads)
        print(f"\nTraining peak RSS growth, R50x1 {size} px batch 16 (3 SGD steps, fresh process each):")
        for m in memory:
            print(f"  {m['impl']:5} {m['mode']:28} " + (f"{m['delta_mb']:8.0f} MB" if "delta_mb" in m
                                                          else f"failed: {m['error']}"))
    del ref, ours
    if not (args.quick or args.no_x3):
        ref3, ours3 = make_pair("R50x3")
        g3 = count_gflops(ours3, 128, False)
        x3 = torch.randn(8, 3, 128, 128, generator=torch.Generator().manual_seed(4))
        cases = inference_cases(ref3, ours3, x3, g3, args.threads, False, False, modes=("fp32",))
        run_group("R50x3 inference 128px b8", cases, rounds, warmup, args.quiet_wait)
        groups["infer_R50x3_128"] = summarize(f"R50x3 inference, 128 px, batch 8 ({g3:.2f} GFLOP/img)", cases, peak)
        print_group(groups["infer_R50x3_128"])
        del cases, ref3, ours3

    goals = targets(groups, memory)
    print("\nTargets (ratios measured in this run):")
    for t in goals:
        print(f"  {t['target']:48} {t['measured']:6.2f}x  (goal {t['goal']:.1f}x)  {'met' if t['met'] else 'NOT met'}")
    busy = max((r["other_load_median"] for g in groups.values() for r in g["rows"]), default=0.0)
    if busy > 0.1:
        print(f"note: other processes used up to {100 * busy:.0f}% of the CPUs during some cases; "
              f"rerun on an idle machine for clean absolute numbers")
    env["seconds"] = time.time() - t0
    result = {"env": env, "peak_gflop_s": peak, "groups": groups, "memory": memory, "targets": goals,
              "max_abs_logit_diff_vs_ours_fp32": checks}
    write_results(args.out, result, env["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
