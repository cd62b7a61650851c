"""The one training loop: BiT fine-tuning, few-shot runs and upstream recipes, single process or DDP."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data.mixup import MixUp
from ..errors import BitError, Interrupted
from ..models import ResNetV2, create_model, get_config
from ..models.fast import standardize_once, use_fast_path
from ..weights.common import atomic_write
from . import config as C
from .checkpoint import load_latest, save_checkpoint
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_object, init_distributed
from .ema import ModelEMA
from .evaluate import autocast, evaluate_model, run_mode
from .optim import build_optimizer, set_lr
from .plan import check_memory, describe, eta_line, warnings_for
from .resolve import resolve
from .sampling import SeededTransform, StepSampler
from .schedules import build_schedule

log = logging.getLogger("bigtransfer")


class TrainingDiverged(BitError):
    """The loss became NaN or infinite."""


@dataclass
class RunResult:
    run_dir: Path
    config: dict
    model: nn.Module
    metrics: dict = field(default_factory=dict)
    steps_done: int = 0
    summary_line: str = ""
    train_seconds: float = 0.0  # wall time of the optimisation (for a head-only run: features and head)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; a device that does not exist here is one clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise BitError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BitError(f"device '{name}' asked for, but no CUDA GPU is available here; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BitError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s), "
                       f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def build_transforms(cfg: dict):
    """(train, eval) transforms as the resolved config says."""
    from ..data import transforms as T

    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    ra = tuple(cfg["randaugment"]) if cfg.get("randaugment") else None
    if cfg["transforms"] == "hyperrule":
        train = T.hyperrule_train(cfg["precrop"], cfg["crop"], mean, std, flip=cfg["flip"], randaugment=ra)
        evaluation = T.hyperrule_eval(cfg["eval_crop"], mean, std)
    elif cfg["transforms"] == "recipe":
        train = T.train_recipe(cfg["crop"], mean, std, scale=tuple(cfg["scale"]), hflip=0.5 if cfg["flip"] else 0.0,
                               color_jitter=cfg["color_jitter"], randaugment=ra)
        evaluation = T.eval_recipe(cfg.get("eval_resize") or cfg["eval_crop"], cfg["eval_crop"], mean, std)
    else:
        raise BitError(f"unknown transforms '{cfg['transforms']}': use hyperrule or recipe")
    return train, evaluation


def load_data(cfg: dict):
    """(train set, eval set or None) as the config names them; few-shot when ``shots`` is set.

    With ``val_split`` the eval set is a seeded, class-stratified hold-out of the train split and ``eval_split`` is
    not read; ``shots`` then samples from the part that is kept.
    """
    from ..data import fewshot_split, load_dataset
    from ..data.fewshot import holdout_split, rest_check

    if not cfg.get("data"):
        raise BitError("no data: pass --data NAME:PATH (e.g. imagefolder:/data/pets, cifar10:/data/cifar)")
    train = load_dataset(cfg["data"], cfg["train_split"], skip_corrupt=cfg["skip_corrupt"])
    held = None
    if cfg.get("val_split") is not None:
        train, held = holdout_split(train, cfg["val_split"], cfg["seed"])
    split = cfg.get("eval_split") or "none"
    rest = None
    if cfg.get("shots") is not None:
        shots, seed = cfg["shots"], cfg["seed"]
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
            raise BitError(f"shots must be a positive number of examples per class, got {shots!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise BitError(f"seed must be an integer, got {seed!r}")
        if held is None and split == "rest":
            empty = rest_check(train, shots, flag="shots")
            if empty:
                log.warning("k=%d per class leaves no image of class %s to evaluate on (eval_split rest); balanced "
                            "accuracy averages the other classes", shots, ", ".join(f"'{c}'" for c in empty[:5]))
        train, rest = fewshot_split(train, shots, seed)
    if held is not None:
        return train, held
    if split == "none":
        return train, None
    if split == "rest":
        if rest is None:
            raise BitError("eval_split 'rest' needs shots (the rest of a few-shot split)")
        return train, rest
    return train, load_dataset(cfg["data"], split, skip_corrupt=cfg["skip_corrupt"])


def prepare_run_dir(run_dir: Path, cfg: dict, overwrite: bool, info: DistInfo) -> bool:
    """Create or reuse ``run_dir``; True when it holds this same run (so it resumes).

    Rank 0 decides and tells the others, so every rank takes the same branch and the same collectives.
    """
    outcome: tuple[bool, str | None] = (False, None)
    if info.is_main:
        try:
            outcome = (_prepare_run_dir(run_dir, cfg, overwrite), None)
        except BitError as e:
            outcome = (False, str(e))
    resumable, error = broadcast_object(outcome, info)
    if error:
        raise BitError(error)
    return resumable


def _prepare_run_dir(run_dir: Path, cfg: dict, overwrite: bool) -> bool:
    if run_dir.exists() and not run_dir.is_dir():
        raise BitError(f"--out {run_dir} is a file, not a folder; choose another --out")
    saved = run_dir / "config.yaml"
    if saved.exists():
        try:
            old = yaml.safe_load(saved.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            old = None
        # an unreadable config.yaml counts as another run; keys an older version did not write take their defaults
        old = {**C.DEFAULTS, **old} if isinstance(old, dict) and old else {}
        if C.identity(old) == C.identity(cfg):
            return True
        if not overwrite and not _has_progress(run_dir):
            log.info("%s holds a run that saved no weights yet; starting it again with the new settings", run_dir)
        elif not overwrite:
            diff = sorted(k for k in set(old) | set(cfg) if k not in C.NON_IDENTITY and old.get(k) != cfg.get(k))
            raise BitError(f"{run_dir} holds a different run (settings differ: {', '.join(diff[:5])}); "
                           f"use another --out, or --overwrite to replace it")
        for name in ("checkpoints", "metrics.jsonl", "summary.json", "model.safetensors", "tensorboard"):
            target = run_dir / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(saved, lambda tmp: Path(tmp).write_text(C.dump(cfg)))
    return False


def _has_progress(run_dir: Path) -> bool:
    """Whether a run folder holds anything a restart would lose: a checkpoint or final weights."""
    return (run_dir / "model.safetensors").exists() or any((run_dir / "checkpoints").glob("step_*"))


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
    """Fits one model on one data set as a resolved config says, writing everything into ``run_dir``."""

    def __init__(self, cfg: dict, run_dir: str | Path, *, train_set=None, eval_set=None, model: ResNetV2 | None = None,
                 overwrite: bool = False, quiet: bool = False, announce: bool = False, dry_run: bool = False) -> None:
        self.device = resolve_device(cfg["device"])
        self.info = init_distributed(self.device)
        self.quiet = quiet or not self.info.is_main
        self.run_dir = Path(run_dir)
        get_config(cfg["model"])  # an unknown name fails before any data is read
        if train_set is None:
            train_set, eval_set = load_data(cfg)
        self.train_set, self.eval_set = train_set, eval_set
        self.classes = list(train_set.classes)
        torch.manual_seed(int(cfg["seed"]))
        if model is None:  # a dry run only plans: it neither downloads nor reads the weights
            model = create_model(cfg["model"], pretrained=bool(cfg["pretrained"]) and not dry_run,
                                 num_classes=cfg.get("num_classes") or len(self.classes),
                                 weights=None if dry_run else cfg.get("weights"))
        self.cfg = resolve(cfg, len(train_set), tuple(train_set.image_size), len(self.classes), model.pretrained_cfg)
        if self.cfg["num_classes"] != model.num_classes:
            model.reset_classifier(self.cfg["num_classes"])
        if self.cfg["zero_head"]:
            model.zero_head()  # as the official fine-tuning does, also when a checkpoint's head has the right size
        elif not (self.cfg["pretrained"] or self.cfg.get("weights")):
            nn.init.normal_(model.head.conv.weight, std=0.01)
        self.announce = announce and self.info.is_main
        if self.announce or dry_run:
            lines = describe(self.cfg, len(eval_set) if eval_set is not None else None, self.device, self.info.world)
            for line in lines + warnings_for(self.cfg):
                log.info("%s", line)
        if not self.cfg["head_only"]:
            try:
                check_memory(self.cfg, model, self.device, self.info.world)
            except BitError as e:
                if not dry_run:
                    raise
                log.warning("warning: %s", e)  # a plan reports; the run itself would refuse
        self.dry_run = dry_run
        if dry_run:
            self.model = model
            return
        self.model = model.to(self.device)
        if self.cfg["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.cfg["fast_path"] and self.device.type == "cpu" and isinstance(self.model, ResNetV2):
            use_fast_path(self.model)
        self.resumable = prepare_run_dir(self.run_dir, self.cfg, overwrite, self.info)
        self.train_tf, self.eval_tf = build_transforms(self.cfg)

    # -- pieces -----------------------------------------------------------------------------------------------
    def _micro_batch(self) -> int:
        c = self.cfg
        per_rank, rem = divmod(int(c["batch_size"]), self.info.world * int(c["batch_split"]))
        if rem or per_rank < 1:
            raise BitError(f"batch_size {c['batch_size']} must divide into {self.info.world} processes x "
                           f"batch_split {c['batch_split']} micro-batches")
        return per_rank

    def _loader(self, start: int) -> DataLoader:
        c = self.cfg
        sampler = StepSampler(len(self.train_set), int(c["batch_size"]), int(c["seed"]), start, int(c["steps"]),
                              self.info.rank, self.info.world)
        workers = int(c["workers"])
        return DataLoader(SeededTransform(self.train_set, self.train_tf), batch_size=self._micro_batch(),
                          sampler=sampler, num_workers=workers, persistent_workers=False,
                          prefetch_factor=4 if workers else None)

    def _log(self, row: dict) -> None:
        if self.info.is_main:
            if getattr(self, "_events", None) is None:  # opened before the row lands in metrics.jsonl
                from .tensorboard import EventLog

                self._events = EventLog(self.run_dir, bool(self.cfg.get("tensorboard", True)),
                                        getattr(self, "_first_step", 0))
                self._events.start()
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            self._events.log(row)

    def _close_events(self) -> None:
        if getattr(self, "_events", None) is not None:
            self._events.close()

    def _trim_metrics(self, step: int) -> None:
        """Drop metric rows a killed run wrote after its last checkpoint, so resumed curves do not repeat."""
        path = self.run_dir / "metrics.jsonl"
        if self.info.is_main and path.exists():
            rows = [r for r in path.read_text().splitlines() if r.strip() and json.loads(r).get("step", 0) <= step]
            path.write_text("".join(r + "\n" for r in rows))

    def _save(self, step: int, opt, scaler, ema, last: Path | None = None) -> Path | None:
        if not all(torch.isfinite(p).all() for p in self._bare().parameters()):
            kept = f"the last good checkpoint {last} is kept" if last else "no checkpoint was written"
            raise TrainingDiverged(f"weights became non-finite at step {step}; {kept}; lower the learning rate")
        path = None
        if self.info.is_main:
            state = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                     "identity": C.identity(self.cfg)}
            path = save_checkpoint(self.run_dir / "checkpoints", step, self._bare().state_dict(), state,
                                   ema.state_dict() if ema else None, keep=int(self.cfg["keep_checkpoints"]))
        barrier(self.info)
        return path

    def _bare(self) -> nn.Module:
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    # -- the loop ---------------------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        if self.cfg["head_only"]:
            from .probe import fit_head

            return fit_head(self)
        c, device = self.cfg, self.device
        fit_start = time.perf_counter()
        model = self._bare()
        opt = build_optimizer(model, c)
        schedule = build_schedule(c, max(float(c["steps_per_epoch"]), 1e-9), int(c["steps"]))
        scaler = torch.amp.GradScaler(device.type) if c["precision"] == "fp16" else None
        ema = ModelEMA(model, float(c["ema_decay"])) if c.get("ema_decay") else None
        start = 0
        found = load_latest(self.run_dir / "checkpoints") if self.resumable else None
        if found:
            path, model_state, train_state, ema_state = found
            model.load_state_dict(model_state)
            opt.load_state_dict(train_state["optimizer"])
            if scaler and train_state.get("scaler"):
                scaler.load_state_dict(train_state["scaler"])
            if ema and ema_state:
                ema.load_state_dict(ema_state)
            start = int(train_state["step"])
            self._trim_metrics(start)
            self._first_step = start  # TensorBoard events from this step on are purged and written again
            if self.info.is_main:
                log.info("resuming %s at step %d", path, start)
        else:
            self._trim_metrics(0)  # rows of an attempt that saved no checkpoint are redone
        total = int(c["steps"])
        if self.info.enabled:
            self.model = DistributedDataParallel(model)
        split = int(c["batch_split"])
        criterion = nn.CrossEntropyLoss(label_smoothing=float(c["label_smoothing"]))
        mixup = MixUp(float(c["mixup"]))
        last_ckpt = None
        step = start
        bar = None
        if not self.quiet:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=start, desc=self.run_dir.name, dynamic_ncols=True, unit="step")
        batches = iter(self._loader(start)) if start < total else iter(())
        tick, seen, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
        timed = tick
        self.model.train()
        with _StopFlag() as stop:
            while step < total:
                lr = schedule(step)
                set_lr(opt, lr)
                seed = int(c["seed"])
                lam = mixup.sample(_generator(seed, step))
                step_loss = torch.zeros((), dtype=torch.float64)
                # Micro-batches share one standardized weight per conv (the raw weights' gradients are
                # the same); under DDP the gradients must reach the raw weights inside each backward.
                once = standardize_once(model) if split > 1 and not self.info.enabled else contextlib.nullcontext()
                with once:
                    for micro in range(split):
                        x, y = next(batches)
                        x = x.to(device, non_blocking=True,
                                 memory_format=torch.channels_last if c["channels_last"] else torch.contiguous_format)
                        y = y.to(device)
                        sync = micro == split - 1 or not self.info.enabled
                        ctx = contextlib.nullcontext() if sync else self.model.no_sync()
                        with ctx:
                            y_b = y
                            if mixup.enabled:
                                x, y, y_b = mixup.mix(x, y, lam, mixup.permutation(
                                    x.shape[0], _generator(seed, step, self.info.rank * split + micro)))
                            with autocast(device, c["precision"]):
                                logits = self.model(x)
                            loss = mixup.mixed_loss(criterion, logits.float(), y, y_b, lam)
                            (scaler.scale(loss / split) if scaler else loss / split).backward()
                        step_loss += loss.detach().double().cpu() / split
                        seen += x.shape[0]
                mean_loss = all_reduce_sum(step_loss.clone(), self.info).item() / self.info.world
                if not math.isfinite(mean_loss):
                    kept = f"the last good checkpoint {last_ckpt} is kept" if last_ckpt else "no checkpoint was written"
                    raise TrainingDiverged(f"loss became {mean_loss} at step {step}; {kept}; "
                                           f"lower the learning rate or use --precision fp32")
                if c.get("clip_grad_norm"):
                    if scaler:
                        scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(model.parameters(), float(c["clip_grad_norm"]))
                if scaler:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad(set_to_none=True)
                if ema:
                    ema.update(model)
                step += 1
                if step == start + 1:
                    timed = time.perf_counter()  # the first step pays for start-up; time the next ones
                elif self.announce and step == start + 3 and step < total:
                    log.info("%s", eta_line((time.perf_counter() - timed) / 2, total - step))
                loss_sum, loss_n = loss_sum + mean_loss, loss_n + 1
                if bar:
                    bar.update(1)
                if step % int(c["log_every"]) == 0 or step == total:
                    elapsed = time.perf_counter() - tick
                    ips = seen * self.info.world / max(elapsed, 1e-9)
                    row = {"step": step, "loss": loss_sum / loss_n, "lr": lr, "img_per_s": round(ips, 2)}
                    self._log(row)
                    if bar:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
                    tick, seen, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
                if c["save_every"] and step % int(c["save_every"]) == 0 and step < total:
                    last_ckpt = self._save(step, opt, scaler, ema, last_ckpt)
                if c["eval_every"] and step % int(c["eval_every"]) == 0 and step < total and self.eval_set:
                    row = self._evaluate(ema)
                    row.pop("_full")
                    self._log({"step": step, **row})
                if stop.signum is not None:
                    ckpt = self._save(step, opt, scaler, ema, last_ckpt)
                    if bar:
                        bar.close()
                    self._close_events()
                    raise Interrupted(stop.signum, ckpt)
        if bar:
            bar.close()
        if start < total or not found:
            self._save(step, opt, scaler, ema, last_ckpt)
        return self.finish(ema, step, time.perf_counter() - fit_start)

    def _evaluate(self, ema: ModelEMA | None = None) -> dict:
        net = ema.module if ema else self._bare()
        c = self.cfg
        eval_ds = SeededTransform(self.eval_set, self.eval_tf)
        m = evaluate_model(net, eval_ds, int(c["num_classes"]), mode=run_mode(c["precision"]),
                           workers=int(c["workers"]), device=self.device, info=self.info, classes=self.classes,
                           progress=not self.quiet)
        return {k: v for k, v in m.items() if k not in ("confusion", "per_class")} | {"_full": m}

    def finish(self, ema: ModelEMA | None, step: int, train_seconds: float = 0.0) -> RunResult:
        """Write the final weights, evaluate, plot and summarise."""
        from safetensors.torch import save_file

        from .plots import plot_confusion, plot_training

        net = ema.module if ema else self._bare()
        result = RunResult(self.run_dir, self.cfg, net, steps_done=step,
                           train_seconds=round(train_seconds, 3))
        if self.info.is_main:
            state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            meta = run_metadata(self.cfg, self.classes)
            atomic_write(self.run_dir / "model.safetensors", lambda p: save_file(state, p, metadata=meta))
            atomic_write(self.run_dir / "classes.json", lambda p: Path(p).write_text(json.dumps(self.classes)))
        if self.eval_set is not None:
            m = self._evaluate(ema)
            full = m.pop("_full")
            result.metrics = m
            self._log({"step": step, **m})
            if self.info.is_main:
                (self.run_dir / "eval.json").write_text(json.dumps(full, indent=1))
                if len(self.classes) <= 100:
                    plot_confusion(full["confusion"], self.classes, self.run_dir / "confusion.png")
        if self.info.is_main:
            if (self.run_dir / "metrics.jsonl").exists():
                plot_training(self.run_dir / "metrics.jsonl", self.run_dir / "training.png")
            summary = {"model": self.cfg["model"], "steps": step, "n_train": len(self.train_set), **result.metrics}
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        result.summary_line = one_line_summary(self.run_dir, {"model": self.cfg["model"], "steps": step,
                                                              "n_train": len(self.train_set), **result.metrics})
        if self.info.is_main:
            (self.run_dir / "summary.txt").write_text(result.summary_line + "\n")
        self._close_events()
        return result


def run_metadata(cfg: dict, classes: list[str]) -> dict[str, str]:
    """What a run's ``model.safetensors`` records, so the bare file rebuilds the model, its head and its inputs."""
    from ..models import get_config

    mc = get_config(cfg["model"])
    meta = {"bigtransfer": "bigtransfer", "format": "pt", "model": mc.name, "num_classes": str(cfg["num_classes"]),
            "block_units": ",".join(str(u) for u in mc.block_units), "width_factor": str(mc.width_factor),
            "classes": json.dumps(classes), "transforms": str(cfg["transforms"]), "eval_crop": str(cfg["eval_crop"]),
            "mean": ",".join(str(float(v)) for v in cfg["mean"]), "std": ",".join(str(float(v)) for v in cfg["std"]),
            "precision": str(cfg["precision"])}
    if cfg.get("eval_resize"):
        meta["eval_resize"] = str(cfg["eval_resize"])
    return meta


def _generator(*key: int) -> torch.Generator:
    """A generator seeded by (seed, step[, global micro-batch]): the same draws on every rank layout and resume.

    Micro-batch ``m`` of rank ``r`` is global micro-batch ``r * batch_split + m``, so W processes with batch_split 1
    mix exactly as one process with batch_split W.
    """
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def one_line_summary(run_dir: Path, summary: dict) -> str:
    acc = (f"top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%  balanced {summary['balanced_accuracy']:.2f}%"
           if "top1" in summary else "no evaluation")
    return f"{run_dir}: {summary['model']}, {summary['steps']} steps on {summary['n_train']} images: {acc}"


def train(cfg: dict, run_dir: str | Path, *, dry_run: bool = False, **kwargs) -> RunResult:
    """Resolve, train and evaluate one run (resuming ``run_dir`` when it holds the same run).

    The plan is logged first unless ``quiet``; ``dry_run`` stops after it, writing nothing.
    """
    kwargs.setdefault("announce", not kwargs.get("quiet", False))
    trainer = Trainer(cfg, run_dir, dry_run=dry_run, **kwargs)
    if dry_run:
        return RunResult(Path(run_dir), trainer.cfg, trainer.model)
    return trainer.fit()
