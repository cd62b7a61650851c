"""How far each inference mode of prepare_for_inference strays from fp32, on real images.

    .venv/bin/python benchmarks/agreement.py [--steps 200] [--out benchmarks/results/agreement.json]

1. Top-1 agreement: a BiT-R26x0.5 trained here for a few hundred SGD steps on scikit-learn's 8x8 digits
   (upsampled to 32 px; 1200 for training, 597 held out) classifies all 1797 digits in every mode; the
   agreement is the share of images whose top-1 class equals the fp32 one. (No pretrained weights can
   be downloaded offline, and agreement on an untrained network would mean nothing.)
2. (``--run DIR``) A trained run, e.g. the demo's upstream M, on every image of its data's test split.
3. Logit error at ImageNet size: an R50x1 with seeded random weights (``randomize_``) on
   foolbox's 20 real ImageNet and 20 CIFAR-10 images at 224 px: max |logit - fp32 logit| per mode,
   against the largest fp32 logit.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import bigtransfer as bt
from bigtransfer.models.fast import INFERENCE_MODES, bf16_supported, prepare_for_inference

sys.path.insert(0, str(Path(__file__).parent))
from bench import make_pair, write_results  # noqa: E402


def digits(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as 3-channel images in [-1, 1] at ``size`` pixels, and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None].expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5, torch.from_numpy(d.target).long()


def train_digits_model(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0) -> torch.nn.Module:
    """BiT-R26x0.5 trained from scratch with SGD (momentum 0.9, linear warmup then cosine decay)."""
    torch.manual_seed(seed)
    model = bt.create_model("BiT-R26x0.5", num_classes=10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    warm = max(1, steps // 10)
    for step in tqdm(range(steps), desc="training on digits", leave=False, file=sys.stderr):
        lr = 0.05 * min(1.0, (step + 1) / warm) * 0.5 * (1 + np.cos(np.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def logits_by_mode(model: torch.nn.Module, x: torch.Tensor, modes: list[str], batch: int,
                   compile: bool = False) -> dict[str, torch.Tensor]:
    out = {}
    for mode in modes:
        prepared = prepare_for_inference(copy.deepcopy(model), mode, compile=compile and mode == "fastest")
        out[mode] = torch.cat([prepared(x[i:i + batch]) for i in range(0, len(x), batch)])
    return out


def foolbox_images(size: int = 224) -> torch.Tensor:
    """foolbox's real ImageNet and CIFAR-10 samples, resized to ``size`` and scaled to [-1, 1]."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("foolbox")  # found, not imported: it is installed without its dependencies
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("foolbox is not installed: pip install --no-deps foolbox (or pass --no-imagenet)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = sorted(folder.glob("imagenet_*.jpg")) + sorted(folder.glob("cifar10_*.png"))
    if not files:
        raise SystemExit(f"no sample images in {folder}")
    imgs = []
    for f in files:
        img = Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)
        imgs.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return (torch.stack(imgs) - 0.5) / 0.5


def run_agreement(run_dir: Path, data: str | None, split: str, modes: list[str]) -> dict:
    """Top-1 agreement with fp32 of a trained run's model on every image of its data's ``split``."""
    from bigtransfer.data import load_dataset
    from bigtransfer.data.transforms import build_transforms
    from bigtransfer.engine.runs import load_run
    from bigtransfer.engine.sampling import SeededTransform

    loaded = load_run(str(run_dir), None)
    data = data or loaded.cfg["data"]
    dataset = load_dataset(data, split)
    _, eval_tf = build_transforms(loaded.cfg)
    images = SeededTransform(dataset, eval_tf)
    x = torch.stack([images[i][0] for i in range(len(images))])
    y = torch.as_tensor(dataset.targets).long()
    logits = logits_by_mode(loaded.model, x, modes, 256)
    ref = logits["fp32"].argmax(1)
    print(f"\n{loaded.cfg['model']} from {run_dir} on {data} [{split}], {len(x)} images")
    print(f"  {'mode':15} {'top-1 agreement':>16} {'accuracy':>9} {'max|dlogit|':>12}")
    rows = []
    for mode, lg in logits.items():
        r = {"mode": mode, "top1_agreement": (lg.argmax(1) == ref).float().mean().item(),
             "accuracy": (lg.argmax(1) == y).float().mean().item(),
             "max_abs_logit_diff": (lg - logits["fp32"]).abs().max().item()}
        rows.append(r)
        print(f"  {mode:15} {100 * r['top1_agreement']:15.2f}% {100 * r['accuracy']:8.2f}% "
              f"{r['max_abs_logit_diff']:12.2e}")
    return {"run": str(run_dir), "model": loaded.cfg["model"], "data": data, "split": split,
            "images": len(x), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="SGD steps on digits")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="compile the 'fastest' mode too")
    ap.add_argument("--no-imagenet", action="store_true", help="skip the R50x1 logit check")
    ap.add_argument("--imagenet-model", help="a pretrained ImageNet-headed name (e.g. BiT-M-R50x1-ILSVRC2012; "
                                             "downloaded or cached) instead of the randomly initialised R50x1")
    ap.add_argument("--run", help="also a trained run folder (e.g. the demo's upstream M under "
                                  "$BIGTRANSFER_HOME/demo/) on its data's --split")
    ap.add_argument("--data", help="data of --run (default: the run's own)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "agreement.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    modes = list(INFERENCE_MODES)
    result: dict = {"bf16_native": bf16_supported(), "modes": modes}

    x, y = digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, held = perm[:1200], perm[1200:]
    model = train_digits_model(x[train], y[train], args.steps)
    logits = logits_by_mode(model, x, modes, 256, args.compile)
    ref = logits["fp32"].argmax(1)
    rows = []
    print(f"BiT-R26x0.5 trained {args.steps} steps on digits; {len(x)} digits, {len(held)} held out")
    print(f"  {'mode':15} {'top-1 agreement':>16} {'held-out acc':>13} {'max|dlogit|':>12}")
    for mode, lg in logits.items():
        r = {"mode": mode, "top1_agreement": (lg.argmax(1) == ref).float().mean().item(),
             "held_out_accuracy": (lg[held].argmax(1) == y[held]).float().mean().item(),
             "max_abs_logit_diff": (lg - logits["fp32"]).abs().max().item()}
        rows.append(r)
        print(f"  {mode:15} {100 * r['top1_agreement']:15.2f}% {100 * r['held_out_accuracy']:12.2f}% "
              f"{r['max_abs_logit_diff']:12.2e}")
    result["digits"] = {"model": "BiT-R26x0.5", "steps": args.steps, "images": len(x), "rows": rows,
                        "max_abs_logit": logits["fp32"].abs().max().item()}

    if not args.no_imagenet:
        images = foolbox_images()
        if args.imagenet_model:
            r50 = bt.create_model(args.imagenet_model, pretrained=True).eval()
        else:
            _, r50 = make_pair("R50x1")
        lg = logits_by_mode(r50, images, modes, 8, args.compile)
        scale = lg["fp32"].abs().max().item()
        ref = lg["fp32"].argmax(1)
        name = args.imagenet_model or "R50x1 (timm initialisation)"
        print(f"\n{name} on {len(images)} foolbox images at 224 px; max |fp32 logit| {scale:.3f}")
        print(f"  {'mode':15} {'max|dlogit|':>12} {'relative':>9} {'top-1 agreement':>16}")
        im_rows = []
        for mode, v in lg.items():
            d = (v - lg["fp32"]).abs().max().item()
            agree = (v.argmax(1) == ref).float().mean().item()
            im_rows.append({"mode": mode, "max_abs_logit_diff": d, "relative": d / scale, "top1_agreement": agree})
            print(f"  {mode:15} {d:12.2e} {d / scale:9.2e} {100 * agree:15.1f}%")
        result["imagenet"] = {"model": name, "images": len(images), "max_abs_logit": scale, "rows": im_rows}

    if args.run:
        result["run"] = run_agreement(Path(args.run), args.data, args.split, modes)

    write_results(args.out, result, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
