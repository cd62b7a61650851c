"""Optimizers: SGD, a TensorFlow/MindSpore-style RMSProp and AdamW, with weight-decay filters."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .config import RunConfig


def param_groups(model: nn.Module, weight_decay: float, decay_filter: str = "norm_bias") -> list[dict]:
    """Trainable parameters in decayed and not-decayed groups: ``norm_bias`` as mindcv's ``filter_bias_and_bn``,
    ``conv_only`` decays only convolution kernels (the MindSpore BigTransfer recipe), ``none`` decays everything."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if decay_filter == "none":
            skip = False
        elif decay_filter == "conv_only":
            skip = p.ndim != 4 or name.startswith("head.")
        elif decay_filter == "norm_bias":
            skip = p.ndim <= 1
        else:
            raise ValueError(f"unknown weight_decay_filter '{decay_filter}' (none | norm_bias | conv_only)")
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# Not torch.optim.RMSprop, which adds eps outside the root: with the recipe's eps = 1.0 the two differ markedly.
class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow 1 and MindSpore define it: eps inside the root, lr inside the momentum buffer, the mean
    square starting at ``ms_init`` (1.0: MindSpore, TF1, timm's ``RMSpropTF``; 0.0: TF2/Keras)."""

    def __init__(self, params, lr: float = 0.01, rho: float = 0.9, momentum: float = 0.9, eps: float = 1.0,
                 weight_decay: float = 0.0, ms_init: float = 1.0) -> None:
        if ms_init < 0:
            raise ValueError(f"ms_init (rmsprop_init) must be >= 0 (1.0: TF1/MindSpore, 0.0: TF2/Keras), got {ms_init}")
        super().__init__(params, dict(lr=lr, rho=rho, momentum=momentum, eps=eps, weight_decay=weight_decay,
                                      ms_init=ms_init))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient; returns ``closure()``'s loss when given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["ms"] = torch.full_like(p, float(group.get("ms_init", 1.0)))
                    state["mom"] = torch.zeros_like(p)
                state["step"] += 1
                ms, mom = state["ms"], state["mom"]
                ms.mul_(group["rho"]).addcmul_(g, g, value=1 - group["rho"])
                mom.mul_(group["momentum"]).addcdiv_(g, (ms + group["eps"]).sqrt_(), value=group["lr"])
                p.sub_(mom)
        return loss


def _fusable(groups: list[dict]) -> bool | None:
    """Whether PyTorch's fused (one kernel per step) update applies: float parameters on CPU or CUDA."""
    params = [p for g in groups for p in g["params"]]
    ok = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
             for p in params)
    return True if ok and params else None


def build_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """SGD, RMSProp, Adam or AdamW over ``model``'s trainable parameters as a resolved recipe asks (``adamw``
    decays the weights decoupled from the gradient, ``adam`` adds ``weight_decay * w`` to it)."""
    groups = param_groups(model, cfg.weight_decay, cfg.weight_decay_filter)
    lr, name, fused = cfg.lr, cfg.optimizer.lower(), _fusable(groups)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)
    if name == "rmsprop":
        return RMSpropTF(groups, lr=lr, rho=cfg.rmsprop_rho, momentum=cfg.momentum, eps=cfg.rmsprop_eps,
                         ms_init=cfg.rmsprop_init)
    if name in ("adam", "adamw"):
        kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return kind(groups, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, fused=fused)
    raise ValueError(f"unknown optimizer '{name}' (sgd | rmsprop | adam | adamw)")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
