"""What a run is about to do, said before it starts: the plan, its warnings and a memory check."""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import BitError
from .config import RunConfig
from .schedules import build_schedule

BATCH_WARN_RATIO = 10  # a batch this many times the training set is almost surely not what was meant
_ACTIVATION_FACTOR = 2  # saved activations and their gradients (measured: ~2x the outputs' size for R50x1)


def _schedule_line(cfg: RunConfig) -> str:
    steps, kind = cfg.steps, cfg.schedule
    sched = build_schedule(cfg, max(cfg.steps_per_epoch, 1e-9), steps)
    warm = f"warmup {sched.warmup}" if sched.warmup else "no warmup"
    if kind in ("hyperrule", "multistep"):
        drops = ", ".join(str(b) for b in sched.boundaries) or "none"
        shape = f"lr x{sched.gamma:g} at steps {drops}"
    elif kind == "exponential":
        shape = f"lr x{sched.gamma:g} every {sched.every:g} steps"
    elif kind == "cosine":
        shape = f"cosine decay to 0 at step {steps}"
    else:
        shape = "constant lr"
    at = f" ({cfg.lr:g} at batch {cfg.lr_batch})" if cfg.lr_batch != cfg.batch_size else ""
    return f"  schedule: {kind}, {warm}, {shape}; lr {sched.base_lr:.4g}{at}"


def describe(cfg: RunConfig, n_eval: int | None, device: torch.device, world: int = 1) -> list[str]:
    """The resolved run in a few lines: data, resolution, batch, schedule, regularisation, device."""
    batch, split, steps, n = cfg.batch_size, cfg.batch_split, cfg.steps, cfg.n_train
    evaluation = "none" if n_eval is None else f"{cfg.eval_split} split, {n_eval} images"
    if n_eval is not None and cfg.val_split:
        evaluation = f"{cfg.val_split:g} of the train split held out, {n_eval} images"
    if cfg.transforms == "hyperrule":
        res = f"resize {cfg.precrop}, random crop {cfg.crop}, evaluate at {cfg.eval_crop}"
    else:
        res = f"random resized crop {cfg.crop}, evaluate at {cfg.eval_crop}"
    micro = batch // (split * world)
    per = f"{split} micro-batches of {micro}" if split > 1 else f"micro-batch {micro}"
    if world > 1:
        per += f" on each of {world} processes"
    mix = f"MixUp alpha {cfg.mixup:g}" if cfg.mixup else "no MixUp"
    extras = [mix, f"label smoothing {cfg.label_smoothing:g}" if cfg.label_smoothing else "",
              f"EMA {cfg.ema_decay}" if cfg.ema_decay else "",
              f"clip {cfg.clip_grad_norm}" if cfg.clip_grad_norm else ""]
    source = "from scratch" if not (cfg.pretrained or cfg.weights) else (cfg.weights or "pretrained")
    return [
        f"plan: {cfg.model} ({source}) on {cfg.data}: {n} training images, {cfg.num_classes} classes; "
        f"evaluation: {evaluation}",
        f"  resolution: {res} ({cfg.transforms} transforms)",
        f"  batch {batch} ({per}); {steps} steps = {steps * batch / max(n, 1):.1f} epochs",
        *([f"  distilling {cfg.teacher} into it: KL to the teacher's softmax at temperature "
           f"{cfg.temperature:g} on the same augmented batch; labels unused"] if cfg.teacher else []),
        _schedule_line(cfg),
        f"  {cfg.optimizer}, weight decay {cfg.weight_decay:g}; " + ", ".join(e for e in extras if e),
        f"  device {device}, precision {cfg.precision}, {cfg.workers} data workers",
    ]


def warnings_for(cfg: RunConfig) -> list[str]:
    """Settings that run but are rarely what was meant."""
    batch, n = cfg.batch_size, cfg.n_train
    if batch <= BATCH_WARN_RATIO * n:
        return []
    return [f"warning: batch {batch} is {batch / max(n, 1):.0f}x the {n} training images, so every step "
            f"computes each image about {batch / max(n, 1):.0f} times; a smaller --batch-size (with the lr "
            f"rescaled for you) is about as good and much faster on a CPU"]


def activation_bytes(model: torch.nn.Module, size: int) -> int:
    """Bytes of the activations one image leaves for the backward pass at ``size`` px (counted on 'meta')."""
    total = 0

    def hook(module, inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * 4

    with torch.device("meta"):
        meta = type(model)(model.block_units, model.width_factor, num_classes=model.num_classes)
    handles = [m.register_forward_hook(hook) for m in meta.modules() if not list(m.children())]
    with torch.no_grad():
        meta(torch.empty(1, 3, size, size, device="meta"))
    for h in handles:
        h.remove()
    return total


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (MemAvailable on a CPU), or None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: RunConfig, model: torch.nn.Module, device: torch.device, world: int = 1) -> None:
    """Refuse a micro-batch whose activations cannot fit in the memory there is, naming a size that would."""
    free = available_bytes(device)
    if not free:
        return
    batch, split, crop = cfg.batch_size, cfg.batch_split, cfg.crop
    micro = batch // (split * world)
    per_image = activation_bytes(model, crop) * _ACTIVATION_FACTOR + 3 * crop * crop * 4 * 2
    need = micro * per_image
    if need <= free:
        return
    if per_image > free:
        raise BitError(f"one image at {crop} px needs about {_gb(per_image)} of memory for training, more than the "
                       f"{_gb(free)} free on {device.type}; lower the resolution (--set crop=... precrop=...)")
    fits = int(free // per_image)
    splits = [s for s in range(split, batch // world + 1) if batch % (s * world) == 0 and batch // (s * world) <= fits]
    fix = f"use --batch-split {splits[0]}" if splits else f"lower --batch-size to at most {fits * world}"
    raise BitError(f"a micro-batch of {micro} images at {crop} px needs about {_gb(need)} of memory, more than the "
                   f"{_gb(free)} free on {device.type}; {fix} (at most {fits} images per micro-batch fit)")


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n < 2**40 else f"{n / 2**40:.1f} TiB"


def eta_line(seconds_per_step: float, remaining: int) -> str:
    """A rough time estimate after the first steps."""
    total = seconds_per_step * remaining
    when = f"{total / 3600:.1f} h" if total >= 5400 else f"{total / 60:.1f} min" if total >= 90 else f"{total:.0f} s"
    return f"timing: {seconds_per_step:.2f} s/step over the first steps; about {when} for the {remaining} steps left"


__all__ = ["describe", "warnings_for", "check_memory", "eta_line", "activation_bytes", "available_bytes"]
