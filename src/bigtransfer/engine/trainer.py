"""The one training loop: BiT fine-tuning, few-shot runs and upstream recipes, single process or DDP."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data.mixup import MixUp
from ..data.transforms import build_transforms
from ..errors import BitError, Interrupted
from ..hub import create_model
from ..models import ResNetV2, get_config
from ..models.fast import standardize_once, use_fast_path
from . import config as C
from . import runs as R
from .checkpoint import load_latest, save_checkpoint
from .config import RunConfig, as_run_config
from .distributed import all_reduce_sum, barrier, init_distributed, resolve_device
from .ema import ModelEMA
from .evaluate import autocast, evaluate_model, run_mode
from .optim import build_optimizer, set_lr
from .plan import check_memory, describe, eta_line, warnings_for
from .resolve import resolve
from .runs import prepare_run_dir, write_final_weights
from .sampling import SeededTransform, StepSampler
from .schedules import build_schedule

log = logging.getLogger("bigtransfer")


class TrainingDiverged(BitError):
    """The loss became NaN or infinite."""


@dataclass
class RunResult:
    run_dir: Path
    config: RunConfig  # the resolved run config (``to_dict()`` is its config.yaml)
    model: nn.Module
    metrics: dict = field(default_factory=dict)
    steps_done: int = 0
    summary_line: str = ""
    train_seconds: float = 0.0  # wall time of the optimisation (for a head-only run: features and head)


def load_data(cfg: RunConfig | Mapping[str, Any]):
    """(train set, eval set or None) as the config names them (a plain dict is checked first)."""
    from ..data.splits import load_run_data

    return load_run_data(as_run_config(cfg))


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # only the main thread may set handlers
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """Fits one model on one data set as a resolved config says, writing everything into ``run_dir``; ``plots=False``
    leaves out the training-curve and confusion-matrix PNGs (a few-shot cell that keeps its scores)."""

    def __init__(self, cfg: RunConfig | Mapping[str, Any], run_dir: str | Path, *, train_set=None, eval_set=None,
                 model: ResNetV2 | None = None, overwrite: bool = False, quiet: bool = False, announce: bool = False,
                 dry_run: bool = False, plots: bool = True) -> None:
        cfg = as_run_config(cfg)  # a plain dict (recipe + flags + --set) is checked here, once
        self.device = resolve_device(cfg.device)
        self.info = init_distributed(self.device)
        self.quiet = quiet or not self.info.is_main
        self.run_dir = Path(run_dir)
        get_config(cfg.model)  # an unknown name fails before any data is read
        if train_set is None:
            train_set, eval_set = load_data(cfg)
        self.train_set, self.eval_set = train_set, eval_set
        self.classes = list(train_set.classes)
        torch.manual_seed(cfg.seed)
        if model is None:  # a dry run only plans: it neither downloads nor reads the weights
            model = create_model(cfg.model, pretrained=cfg.pretrained and not dry_run,
                                 num_classes=cfg.num_classes or len(self.classes),
                                 weights=None if dry_run else cfg.weights)
        self.cfg = resolve(cfg, len(train_set), tuple(train_set.image_size), len(self.classes), model.pretrained_cfg)
        if self.cfg.num_classes != model.num_classes:
            model.reset_classifier(self.cfg.num_classes)
        if self.cfg.zero_head:
            model.zero_head()  # as the official fine-tuning does, also when a checkpoint's head has the right size
        elif not (self.cfg.pretrained or self.cfg.weights):
            nn.init.normal_(model.head.conv.weight, std=0.01)
        self.announce = announce and self.info.is_main
        if self.announce or dry_run:
            lines = describe(self.cfg, len(eval_set) if eval_set is not None else None, self.device, self.info.world)
            for line in lines + warnings_for(self.cfg):
                log.info("%s", line)
        if not self.cfg.head_only:
            try:
                check_memory(self.cfg, model, self.device, self.info.world)
            except BitError as e:
                if not dry_run:
                    raise
                log.warning("warning: %s", e)  # a plan reports; the run itself would refuse
        self.dry_run, self.plots = dry_run, plots
        if dry_run:
            self.model = model
            return
        self.model = model.to(self.device)
        if self.cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.cfg.fast_path and self.device.type == "cpu" and isinstance(self.model, ResNetV2):
            use_fast_path(self.model)
        self.resumable = prepare_run_dir(self.run_dir, self.cfg, overwrite, self.info)
        self.train_tf, self.eval_tf = build_transforms(self.cfg)

    # -- pieces -----------------------------------------------------------------------------------------------
    @property
    def net(self) -> nn.Module:
        """The model without its DDP wrapper."""
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    def _loader(self, start: int) -> DataLoader:
        c, info = self.cfg, self.info
        sampler = StepSampler(len(self.train_set), c.batch_size, c.seed, start, c.steps, info.rank, info.world)
        per_rank, rem = divmod(c.batch_size, info.world * c.batch_split)
        if rem or per_rank < 1:
            raise BitError(f"batch_size {c.batch_size} must divide into {info.world} processes x "
                           f"batch_split {c.batch_split} micro-batches")
        return DataLoader(SeededTransform(self.train_set, self.train_tf), batch_size=per_rank, sampler=sampler,
                          num_workers=c.workers, persistent_workers=False, prefetch_factor=4 if c.workers else None)

    def log_row(self, row: dict) -> None:
        """Append one row to metrics.jsonl (and TensorBoard) on rank 0."""
        if self.info.is_main:
            if getattr(self, "_events", None) is None:  # opened before the row lands in metrics.jsonl
                from .tensorboard import EventLog

                self._events = EventLog(self.run_dir, self.cfg.tensorboard, getattr(self, "_first_step", 0))
                self._events.start()
            with open(self.run_dir / R.METRICS, "a") as f:
                f.write(json.dumps(row) + "\n")
            self._events.log(row)

    def _close_events(self) -> None:
        if getattr(self, "_events", None) is not None:
            self._events.close()

    def _trim_metrics(self, step: int) -> None:
        """Drop metric rows a killed run wrote after its last checkpoint, so resumed curves do not repeat."""
        path = self.run_dir / R.METRICS
        if self.info.is_main and path.exists():
            rows = [r for r in path.read_text().splitlines() if r.strip() and json.loads(r).get("step", 0) <= step]
            path.write_text("".join(r + "\n" for r in rows))

    def _save(self, loop: _Loop) -> Path | None:
        if not all(torch.isfinite(p).all() for p in self.net.parameters()):
            raise TrainingDiverged(f"weights became non-finite at step {loop.step}; {loop.kept()}; "
                                   "lower the learning rate")
        path = None
        if self.info.is_main:
            state = {"optimizer": loop.opt.state_dict(), "scaler": loop.scaler.state_dict() if loop.scaler else None,
                     "identity": C.identity(self.cfg)}
            path = save_checkpoint(self.run_dir / R.CHECKPOINTS, loop.step, self.net.state_dict(), state,
                                   loop.ema.state_dict() if loop.ema else None, keep=self.cfg.keep_checkpoints)
        barrier(self.info)
        loop.last_ckpt = path or loop.last_ckpt
        return path

    # -- the loop ---------------------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        """Train to the configured number of steps (resuming from the latest checkpoint), then finish."""
        if self.cfg.head_only:
            from .probe import fit_head

            return fit_head(self)
        fit_start = time.perf_counter()
        loop = self._start_loop()
        with _StopFlag() as stop:
            while loop.step < loop.total:
                loss = self.train_step(loop)
                self.after_step(loop, loss, stop)
        if loop.bar:
            loop.bar.close()
        if loop.start < loop.total or not loop.resumed:
            self._save(loop)
        return self.finish(loop.ema, loop.step, time.perf_counter() - fit_start)

    def _start_loop(self) -> _Loop:
        c, model = self.cfg, self.net
        loop = _Loop(opt=build_optimizer(model, c), total=c.steps,
                     schedule=build_schedule(c, max(c.steps_per_epoch, 1e-9), c.steps),
                     scaler=torch.amp.GradScaler(self.device.type) if c.precision == "fp16" else None,
                     ema=ModelEMA(model, c.ema_decay) if c.ema_decay else None)
        self._resume(loop)
        if self.info.enabled:
            self.model = DistributedDataParallel(model)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
        self.mixup = MixUp(c.mixup)
        if not self.quiet:
            from tqdm.auto import tqdm

            loop.bar = tqdm(total=c.steps, initial=loop.start, desc=self.run_dir.name, dynamic_ncols=True, unit="step")
        loop.batches = iter(self._loader(loop.start)) if loop.start < c.steps else iter(())
        self.model.train()
        return loop

    def _resume(self, loop: _Loop) -> None:
        found = load_latest(self.run_dir / R.CHECKPOINTS) if self.resumable else None
        if not found:
            self._trim_metrics(0)  # rows of an attempt that saved no checkpoint are redone
            return
        path, model_state, train_state, ema_state = found
        self.net.load_state_dict(model_state)
        loop.opt.load_state_dict(train_state["optimizer"])
        if loop.scaler and train_state.get("scaler"):
            loop.scaler.load_state_dict(train_state["scaler"])
        if loop.ema and ema_state:
            loop.ema.load_state_dict(ema_state)
        loop.start = loop.step = int(train_state["step"])
        loop.resumed = True
        self._trim_metrics(loop.start)
        self._first_step = loop.start  # TensorBoard events from this step on are purged and written again
        if self.info.is_main:
            log.info("resuming %s at step %d", path, loop.start)

    def train_step(self, loop: _Loop) -> float:
        """One optimizer step over ``batch_split`` micro-batches; returns the mean loss over all ranks."""
        split, seed = self.cfg.batch_split, self.cfg.seed
        loop.lr = loop.schedule(loop.step)
        set_lr(loop.opt, loop.lr)
        lam = self.mixup.sample(_generator(seed, loop.step))
        step_loss = torch.zeros((), dtype=torch.float64)
        # Micro-batches share one standardized weight per conv (the raw weights' gradients are
        # the same); under DDP the gradients must reach the raw weights inside each backward.
        once = standardize_once(self.net) if split > 1 and not self.info.enabled else contextlib.nullcontext()
        layout = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        with once:
            for micro in range(split):
                x, y = next(loop.batches)
                x, y = x.to(self.device, non_blocking=True, memory_format=layout), y.to(self.device)
                sync = micro == split - 1 or not self.info.enabled
                with contextlib.nullcontext() if sync else self.model.no_sync():
                    y_b = y
                    if self.mixup.enabled:
                        perm = self.mixup.permutation(x.shape[0], _generator(seed, loop.step,
                                                                             self.info.rank * split + micro))
                        x, y, y_b = self.mixup.mix(x, y, lam, perm)
                    loss = self.compute_loss(x, y, y_b, lam)
                    (loop.scaler.scale(loss / split) if loop.scaler else loss / split).backward()
                step_loss += loss.detach().double().cpu() / split
                loop.seen += x.shape[0]
        mean_loss = all_reduce_sum(step_loss.clone(), self.info).item() / self.info.world
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"loss became {mean_loss} at step {loop.step}; {loop.kept()}; "
                                   f"lower the learning rate or use --precision fp32")
        self._update(loop)
        return mean_loss

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
        """The training loss of one (mixed) micro-batch: cross-entropy against the mixed labels."""
        with autocast(self.device, self.cfg.precision):
            logits = self.model(x)
        return self.mixup.mixed_loss(self.criterion, logits.float(), y, y_b, lam)

    def _update(self, loop: _Loop) -> None:
        opt, scaler = loop.opt, loop.scaler
        if self.cfg.clip_grad_norm:
            if scaler:
                scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip_grad_norm)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if loop.ema:
            loop.ema.update(self.net)
        loop.step += 1

    def after_step(self, loop: _Loop, loss: float, stop: _StopFlag) -> None:
        """Timing, logging, periodic checkpoints and evaluations, and a clean stop on SIGINT/SIGTERM."""
        c, step = self.cfg, loop.step
        if step == loop.start + 1:
            loop.timed = time.perf_counter()  # the first step pays for start-up; time the next ones
        elif self.announce and step == loop.start + 3 and step < loop.total:
            log.info("%s", eta_line((time.perf_counter() - loop.timed) / 2, loop.total - step))
        loop.loss_sum, loop.loss_n = loop.loss_sum + loss, loop.loss_n + 1
        if loop.bar:
            loop.bar.update(1)
        if step % c.log_every == 0 or step == loop.total:
            self._log_progress(loop)
        if c.save_every and step % c.save_every == 0 and step < loop.total:
            self._save(loop)
        if c.eval_every and step % c.eval_every == 0 and step < loop.total and self.eval_set:
            self.log_row({"step": step, **self._evaluate(loop.ema)[0]})
        if stop.signum is not None:
            ckpt = self._save(loop)
            if loop.bar:
                loop.bar.close()
            self._close_events()
            raise Interrupted(stop.signum, ckpt)

    def _log_progress(self, loop: _Loop) -> None:
        ips = loop.seen * self.info.world / max(time.perf_counter() - loop.tick, 1e-9)
        row = {"step": loop.step, "loss": loop.loss_sum / loop.loss_n, "lr": loop.lr, "img_per_s": round(ips, 2)}
        self.log_row(row)
        if loop.bar:
            loop.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{loop.lr:.2e}", img_s=f"{ips:.1f}")
        loop.tick, loop.seen, loop.loss_sum, loop.loss_n = time.perf_counter(), 0, 0.0, 0

    def _evaluate(self, ema: ModelEMA | None = None) -> tuple[dict, dict]:
        """(the scalar metrics to log, the full evaluation) of the model or its EMA."""
        c = self.cfg
        m = evaluate_model(ema.module if ema else self.net, SeededTransform(self.eval_set, self.eval_tf),
                           c.num_classes, mode=run_mode(c.precision), workers=c.workers, device=self.device,
                           info=self.info, classes=self.classes, progress=not self.quiet,
                           reference=self.eval_reference())
        return {k: v for k, v in m.items() if k not in ("confusion", "per_class")}, m

    def eval_reference(self) -> torch.Tensor | None:
        """Another model's predicted class of every eval example, to report agreement with (none here)."""
        return None

    def finish(self, ema: ModelEMA | None, step: int, train_seconds: float = 0.0) -> RunResult:
        """Write the final weights, evaluate, plot and summarise."""
        from .plots import plot_confusion, plot_training

        net = ema.module if ema else self.net
        result = RunResult(self.run_dir, self.cfg, net, steps_done=step, train_seconds=round(train_seconds, 3))
        if self.info.is_main:
            write_final_weights(self.run_dir, net.state_dict(), self.cfg, self.classes)
        if self.eval_set is not None:
            result.metrics, full = self._evaluate(ema)
            self.log_row({"step": step, **result.metrics})
            if self.info.is_main:
                (self.run_dir / R.EVAL).write_text(json.dumps(full, indent=1))
                if self.plots and len(self.classes) <= 100:
                    plot_confusion(full["confusion"], self.classes, self.run_dir / R.CONFUSION_PLOT)
        summary = {"model": self.cfg.model, "steps": step, "n_train": len(self.train_set), **result.metrics}
        result.summary_line = one_line_summary(self.run_dir, summary)
        if self.info.is_main:
            if self.plots and (self.run_dir / R.METRICS).exists():
                plot_training(self.run_dir / R.METRICS, self.run_dir / R.TRAINING_PLOT)
            (self.run_dir / R.SUMMARY).write_text(json.dumps(summary, indent=1))
            (self.run_dir / R.SUMMARY_TEXT).write_text(result.summary_line + "\n")
        self._close_events()
        return result


@dataclass
class _Loop:
    """What one ``fit`` carries from step to step."""

    opt: torch.optim.Optimizer
    schedule: Callable[[int], float]
    total: int
    scaler: torch.amp.GradScaler | None = None
    ema: ModelEMA | None = None
    batches: Iterator = field(default_factory=lambda: iter(()))
    start: int = 0
    step: int = 0
    resumed: bool = False
    last_ckpt: Path | None = None
    bar: Any = None
    lr: float = 0.0
    tick: float = field(default_factory=time.perf_counter)
    timed: float = field(default_factory=time.perf_counter)
    seen: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0

    def kept(self) -> str:
        return f"the last good checkpoint {self.last_ckpt} is kept" if self.last_ckpt else "no checkpoint was written"


def _generator(*key: int) -> torch.Generator:
    """A generator seeded by (seed, step[, global micro-batch ``rank * batch_split + m``]): the same draws on every
    rank layout and resume, so W processes with batch_split 1 mix exactly as one process with batch_split W."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def one_line_summary(run_dir: Path, summary: dict) -> str:
    acc = (f"top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%  balanced {summary['balanced_accuracy']:.2f}%"
           if "top1" in summary else "no evaluation")
    if "agreement" in summary:
        acc += f"  agreement {summary['agreement']:.2f}% (teacher top-1 {summary['teacher_top1']:.2f}%)"
    return f"{run_dir}: {summary['model']}, {summary['steps']} steps on {summary['n_train']} images: {acc}"


def train(cfg: RunConfig | Mapping[str, Any], run_dir: str | Path, *, dry_run: bool = False, **kwargs) -> RunResult:
    """Resolve, train and evaluate one run (resuming ``run_dir`` when it holds the same run). The plan is logged
    first unless ``quiet``; ``dry_run`` stops after it, writing nothing."""
    kwargs.setdefault("announce", not kwargs.get("quiet", False))
    trainer = Trainer(cfg, run_dir, dry_run=dry_run, **kwargs)
    return RunResult(Path(run_dir), trainer.cfg, trainer.model) if dry_run else trainer.fit()
