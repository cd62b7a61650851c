"""Options shared by the commands that train: recipe, data, model, schedule, numerics and the run folder."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..engine.config import merge, parse_overrides
from ..recipes import load_recipe

# flag -> config key, for flags whose value is copied as given
FLAG_KEYS = {"data": "data", "model": "model", "weights": "weights", "batch_size": "batch_size",
             "batch_split": "batch_split", "steps": "steps", "epochs": "epochs", "lr": "lr", "precision": "precision",
             "workers": "workers", "seed": "seed", "device": "device", "train_split": "train_split",
             "eval_split": "eval_split", "eval_every": "eval_every", "save_every": "save_every",
             "resolution_rule": "resolution_rule", "mixup": "mixup"}


def add_run_args(p: argparse.ArgumentParser, default_recipe: str | None) -> None:
    """The training flags; every recipe key can also be set with ``--set KEY=VALUE``."""
    g = p.add_argument_group("run")
    g.add_argument("--recipe", default=default_recipe, help=f"recipe name or YAML file (default: {default_recipe})")
    g.add_argument("--data", help="NAME:PATH, e.g. imagefolder:/data/pets, cifar10:/data/cifar, digits")
    g.add_argument("--model", help="registered model name ('bit models' lists them)")
    g.add_argument("--weights", help="local checkpoint (npz, safetensors, ckpt) instead of downloading")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None,
                   help="start from random weights")
    g.add_argument("--out", help="run folder (default: runs/<model>_<data>)")
    g.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    g.add_argument("--quiet", action="store_true", help="no progress bars, log lines only")
    g.add_argument("--skip-corrupt", action="store_true", default=None, help="skip unreadable images, counting them")
    g.add_argument("--head-only", action="store_true", default=None,
                   help="train only the classifier on cached features of the frozen backbone (linear probe)")
    g.add_argument("--train-split")
    g.add_argument("--eval-split", help="split to evaluate on: test, val, rest (few-shot remainder) or none")
    g.add_argument("--resolution-rule", choices=["code", "paper"], help="HyperRule resolution: 512/480 or 448/384")
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, help="global batch per optimizer step")
    o.add_argument("--batch-split", type=int, help="micro-batches per step (gradient accumulation)")
    o.add_argument("--steps", type=int)
    o.add_argument("--epochs", type=float)
    o.add_argument("--lr", type=float,
                   help="learning rate at this run's batch size (recipes give it at their lr_batch)")
    o.add_argument("--mixup", type=float, help="MixUp alpha (0 disables)")
    o.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    o.add_argument("--workers", type=int, help="data loader worker processes")
    o.add_argument("--seed", type=int)
    o.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    o.add_argument("--eval-every", type=int, help="evaluate every N steps (0: only at the end)")
    o.add_argument("--save-every", type=int, help="checkpoint every N steps")
    o.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any recipe key (repeatable)")


def config_from_args(args: argparse.Namespace) -> dict:
    """Recipe, then flags, then ``--set`` overrides."""
    cfg = load_recipe(args.recipe)
    flags = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag, None) is not None}
    for key in ("pretrained", "skip_corrupt", "head_only"):
        if getattr(args, key, None) is not None:
            flags[key] = getattr(args, key)
    if args.lr is not None:  # a learning rate given here is the one used, at the run's own batch size
        flags["lr_batch"] = flags.get("batch_size", cfg["batch_size"])
    cfg = merge(cfg, flags, "command line")
    return merge(cfg, parse_overrides(getattr(args, "set", None)), "--set")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "run"


def default_out(cfg: dict, prefix: str = "") -> Path:
    data = str(cfg.get("data") or "data").split(":", 1)
    name = data[0] if len(data) == 1 else f"{data[0]}-{Path(data[1]).name}"
    return Path("runs") / slug(f"{prefix}{cfg['model']}_{name}")


def parse_ints(text: str, flag: str) -> list[int]:
    """``"1,2,5"`` -> [1, 2, 5] for ``--shots`` (positive) or ``--seeds`` (non-negative); else one clear error."""
    from ..errors import BitError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < (1 if flag == "--shots" else 0):
        raise BitError(f"{flag} takes comma-separated {'positive' if flag == '--shots' else 'non-negative'} "
                       f"integers, e.g. {flag} {'1,2,5,10' if flag == '--shots' else '0,1,2'}; got '{text}'")
    return values


def add_mode_argument(p: argparse.ArgumentParser) -> None:
    """``--mode``: the inference path of ``models.fast.prepare_for_inference``."""
    from ..models.fast import INFERENCE_MODES

    p.add_argument("--mode", default="auto", choices=INFERENCE_MODES,
                   help="inference path: auto = fastest (bf16 autocast where the CPU has native bf16, "
                        "keeping top-1 agreement with fp32 above 99%%; see benchmarks/agreement.py), "
                        "fp32 for the plain model")
