"""Evaluation: top-1/top-5, balanced accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..models.fast import prepare_for_inference
from .distributed import DistInfo, all_reduce_sum
from .sampling import shard


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (fp32 means none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def counts_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, int]:
    """(confusion matrix [true, predicted], number of top-5 hits) of one batch."""
    pred = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)
    k = min(5, logits.shape[1])
    top5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum().item()
    return confusion, int(top5)


def summarize(confusion: np.ndarray, top5_hits: int, classes: list[str] | None = None) -> dict:
    """Metrics (percent) from a confusion matrix; balanced accuracy averages the classes present."""
    confusion = np.asarray(confusion, dtype=np.int64)
    total = int(confusion.sum())
    support = confusion.sum(1)
    present = support > 0
    per_class = np.divide(np.diag(confusion), support, out=np.zeros(len(support)), where=present)
    return {
        "n": total,
        "top1": 100.0 * np.trace(confusion) / max(total, 1),
        "top5": 100.0 * top5_hits / max(total, 1),
        "balanced_accuracy": 100.0 * float(per_class[present].mean()) if present.any() else 0.0,
        "per_class": {(classes[i] if classes else str(i)): round(100.0 * float(a), 3)
                      for i, a in enumerate(per_class) if present[i]},
        "confusion": confusion.tolist(),
    }


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, *, batch_size: int = 64, workers: int = 0,
             device: torch.device | None = None, precision: str = "fp32", channels_last: bool = False,
             info: DistInfo | None = None, classes: list[str] | None = None, progress: bool = False,
             reference: torch.Tensor | None = None) -> dict:
    """Evaluate ``model`` on ``dataset`` (already transformed); under DDP each rank takes a shard. ``reference``
    (another model's predicted class of each example, in order) adds ``agreement``: the % predicted alike."""
    info = info or DistInfo()
    device = device or next(model.parameters()).device
    order = torch.as_tensor(shard(len(dataset), info.rank, info.world) if info.enabled else range(len(dataset)))
    subset = Subset(dataset, order.tolist()) if info.enabled else dataset
    loader = DataLoader(subset, batch_size=batch_size, num_workers=workers, shuffle=False)
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    hits, agree, seen = 0, 0, 0
    if progress and info.is_main:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for x, y in loader:
        x = x.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        with autocast(device, precision):
            logits = model(x).float().cpu()
        c, h = counts_from_logits(logits, torch.as_tensor(y), num_classes)
        confusion += c
        hits += h
        if reference is not None:
            agree += int((logits.argmax(1) == reference[order[seen:seen + len(logits)]]).sum())
        seen += len(logits)
    model.train(was_training)
    counts = all_reduce_sum(torch.cat([confusion.flatten(), torch.tensor([hits, agree])]), info)
    out = summarize(counts[:-2].view(num_classes, num_classes).numpy(), int(counts[-2]), classes)
    if reference is not None:
        out["agreement"] = 100.0 * int(counts[-1]) / max(out["n"], 1)
    return out


def run_mode(precision: str) -> str:
    """The inference mode that evaluates a run trained at ``precision`` (fp16 runs are evaluated in fp32)."""
    return "bf16" if precision == "bf16" else "fp32"


def evaluate_model(model: nn.Module, dataset: Dataset, num_classes: int, *, mode: str, batch_size: int = 64,
                   workers: int = 0, device: torch.device | None = None, info: DistInfo | None = None,
                   classes: list[str] | None = None, progress: bool = False,
                   reference: torch.Tensor | None = None) -> dict:
    """Metrics of ``model`` (untouched) through the inference path ``mode``; the trainer's evaluations and ``bit
    evaluate`` both come here, so one run reports one number."""
    device = device or next(model.parameters()).device
    net = prepare_for_inference(copy.deepcopy(model).to(device), mode)
    m = evaluate(net, dataset, num_classes, batch_size=batch_size, workers=workers, device=device, info=info,
                 classes=classes, progress=progress, reference=reference)
    return {**m, "mode": mode, "batch_size": batch_size}

