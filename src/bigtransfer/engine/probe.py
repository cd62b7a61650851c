"""Head-only training: features of the frozen backbone are computed once, then only the classifier is fitted."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from .evaluate import autocast
from .optim import build_optimizer, set_lr
from .sampling import SeededTransform, StepSampler
from .schedules import build_schedule


@torch.no_grad()
def extract_features(model: nn.Module, dataset, transform, *, device: torch.device, precision: str = "fp32",
                     channels_last: bool = False) -> torch.Tensor:
    """Pre-logit features (after the head's GN, ReLU and pooling) of every image, in order."""
    model.eval()
    loader = DataLoader(SeededTransform(dataset, transform), batch_size=64)
    out = []
    for x, _ in loader:
        x = x.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        with autocast(device, precision):
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.num_features)


def fit_head(trainer):
    """Train ``trainer.model``'s classifier on cached features with the run's optimizer and schedule."""
    c, model = trainer.cfg, trainer.net
    start = time.perf_counter()
    # Cached features cannot see augmentation, so the evaluation transform is used for training too.
    feats = extract_features(model, trainer.train_set, trainer.eval_tf, device=trainer.device,
                             precision=c.precision, channels_last=c.channels_last)
    labels = torch.as_tensor(trainer.train_set.targets)
    head = nn.Linear(feats.shape[1], c.num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = build_optimizer(head, c)
    total, batch = c.steps, c.batch_size
    schedule = build_schedule(c, max(c.steps_per_epoch, 1e-9), total)
    criterion = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
    sampler = iter(StepSampler(len(labels), batch, c.seed, 0, total))
    for step in range(total):
        set_lr(opt, schedule(step))
        idx = torch.tensor([next(sampler)[0] for _ in range(batch)])
        loss = criterion(head(feats[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % c.log_every == 0 or step + 1 == total:
            trainer.log_row({"step": step + 1, "loss": loss.item(), "lr": schedule(step)})
    with torch.no_grad():
        model.head.conv.weight.copy_(head.weight[:, :, None, None])
        model.head.conv.bias.copy_(head.bias)
    return trainer.finish(None, total, time.perf_counter() - start)
