"""Options shared by the commands that train: recipe, data, model, schedule, numerics and the run folder."""

from __future__ import annotations

import argparse
import contextlib
import math
import re
from collections.abc import Callable
from pathlib import Path

# The choices of ``--mode``: ``models.fast.INFERENCE_MODES``, repeated here so building the parser needs no PyTorch.
INFERENCE_MODES = ("fp32", "channels_last", "bf16", "fastest", "auto")

# flags whose value, when given, is copied as given to the config key of the same name
FLAG_KEYS = ("data", "model", "weights", "batch_size", "batch_split", "steps", "epochs", "lr", "precision", "workers",
             "seed", "device", "train_split", "eval_split", "eval_every", "save_every", "resolution_rule", "mixup",
             "val_split", "pretrained", "skip_corrupt", "head_only", "tensorboard")


def _number(text: str, cast: type, ok: Callable[[float], bool], what: str) -> float:
    """``text`` as ``cast``, or an ``ArgumentTypeError`` saying what the flag takes."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got '{text}'") from None
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer above 0."""
    return _number(text, int, lambda v: v > 0, "an integer above 0")


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 0."""
    return _number(text, int, lambda v: v >= 0, "an integer of at least 0")


def positive_float(text: str) -> float:
    """An ``argparse`` type: a number above 0."""
    return _number(text, float, lambda v: v > 0, "a number above 0")


def non_negative_float(text: str) -> float:
    """An ``argparse`` type: a number of at least 0."""
    return _number(text, float, lambda v: v >= 0, "a number of at least 0")


def fraction(text: str) -> float:
    """An ``argparse`` type: a number strictly between 0 and 1."""
    return _number(text, float, lambda v: 0 < v < 1, "a fraction between 0 and 1 (exclusive)")


def setting(check: Callable[[str], float], key: str) -> Callable[[str], float]:
    """``check`` whose message names the recipe key, as ``--set KEY=VALUE`` errors do."""
    def parse(text: str) -> float:
        try:
            return check(text)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{key} {e}") from None

    parse.__name__ = check.__name__
    return parse


def add_run_args(p: argparse.ArgumentParser, default_recipe: str | None) -> None:
    """The training flags; every recipe key can also be set with ``--set KEY=VALUE``."""
    g = p.add_argument_group("run")
    if default_recipe is None:  # bit train: the recipe is the run's whole definition, so it has no default
        g.add_argument("--recipe", required=True, help="recipe name or YAML file ('bit recipes' lists them)")
    else:
        g.add_argument("--recipe", default=default_recipe, help=f"recipe name or YAML file (default: {default_recipe})")
    g.add_argument("--data", help="NAME:PATH, e.g. imagefolder:/data/pets, cifar10:/data/cifar, digits")
    g.add_argument("--model", help="registered model name ('bit models' lists them)")
    g.add_argument("--weights", help="local checkpoint (npz, safetensors, ckpt) instead of downloading")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None,
                   help="start from random weights")
    g.add_argument("--out", help="run folder (default: runs/<model>_<data>)")
    g.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    g.add_argument("--quiet", action="store_true", help="no progress bars, log lines only")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                   help="write no TensorBoard event files (RUN/tensorboard)")
    g.add_argument("--skip-corrupt", action="store_true", default=None, help="skip unreadable images, counting them")
    g.add_argument("--head-only", action="store_true", default=None,
                   help="train only the classifier on cached features of the frozen backbone (linear probe)")
    g.add_argument("--train-split")
    g.add_argument("--eval-split", help="split to evaluate on: test, val, rest (few-shot remainder) or none")
    g.add_argument("--val-split", type=setting(fraction, "val_split"), metavar="FRACTION",
                   help="hold out this fraction of the train split (seeded, per class) and evaluate on it")
    g.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit without training")
    g.add_argument("--resolution-rule", choices=["code", "paper"], help="HyperRule resolution: 512/480 or 448/384")
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=setting(positive_int, "batch_size"), help="global batch per optimizer step")
    o.add_argument("--batch-split", type=setting(positive_int, "batch_split"),
                   help="micro-batches per step (gradient accumulation)")
    o.add_argument("--steps", type=setting(positive_int, "steps"))
    o.add_argument("--epochs", type=setting(positive_float, "epochs"))
    o.add_argument("--lr", type=setting(positive_float, "lr"),
                   help="learning rate at this run's batch size (recipes give it at their lr_batch)")
    o.add_argument("--mixup", type=setting(non_negative_float, "mixup"), help="MixUp alpha (0 disables)")
    o.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    o.add_argument("--workers", type=setting(non_negative_int, "workers"), help="data loader worker processes")
    o.add_argument("--seed", type=int)
    o.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    o.add_argument("--eval-every", type=setting(non_negative_int, "eval_every"),
                   help="evaluate every N steps (0: only at the end)")
    o.add_argument("--save-every", type=setting(non_negative_int, "save_every"), help="checkpoint every N steps")
    o.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any recipe key (repeatable)")


def config_from_args(args: argparse.Namespace) -> dict:
    """Recipe, then flags, then ``--set`` overrides."""
    from ..engine.config import merge, parse_overrides  # the engine imports PyTorch: only once a command runs
    from ..recipes import load_recipe

    cfg = load_recipe(args.recipe)
    flags = {key: getattr(args, key) for key in FLAG_KEYS if getattr(args, key, None) is not None}
    if args.lr is not None:  # a learning rate given here is the one used, at the run's own batch size
        flags["lr_batch"] = flags.get("batch_size", cfg["batch_size"])
    cfg = merge(cfg, flags, "command line")
    cfg = merge(cfg, parse_overrides(getattr(args, "set", None)), "--set")
    if isinstance(cfg.get("data"), str):  # an absolute path, so the run folder works from any directory
        from ..data.spec import canonical_spec

        cfg["data"] = canonical_spec(cfg["data"])
    return cfg


def default_out(cfg: dict, prefix: str = "") -> Path:
    data = str(cfg.get("data") or "data").split(":", 1)
    name = data[0] if len(data) == 1 else f"{data[0]}-{Path(data[1]).name}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{prefix}{cfg['model']}_{name}").strip("-")[:60]
    return Path("runs") / (slug or "run")


def parse_ints(text: str, flag: str) -> list[int]:
    """``"1,2,5"`` -> [1, 2, 5] for ``--shots`` (positive) or ``--seeds`` (non-negative); else one clear error."""
    from ..errors import BitError

    least, kind, example = (1, "positive", "1,2,5,10") if flag == "--shots" else (0, "non-negative", "0,1,2")
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < least:
        raise BitError(f"{flag} takes comma-separated {kind} integers, e.g. {flag} {example}; got '{text}'")
    return values


def add_mode_argument(p: argparse.ArgumentParser) -> None:
    """``--mode``: the inference path of ``models.fast.prepare_for_inference``."""
    p.add_argument("--mode", default=None, choices=INFERENCE_MODES,
                   help="inference path (default: a run's own, as its eval.json reports it; auto for a pretrained "
                        "model): auto = fastest (bf16 autocast where the CPU has native bf16, keeping top-1 "
                        "agreement with fp32 above 99%%; see benchmarks/agreement.py), fp32 for the plain model")


@contextlib.contextmanager
def resumable(what: str):
    """Ctrl-C inside says what was kept and how to go on (``bit`` prints it as ``interrupted; ...``, exit 130)."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"{what} are kept: run the same command again to go on from them") from None
