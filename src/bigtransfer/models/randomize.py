"""Deterministic non-trivial weights for tests and benchmarks."""

from __future__ import annotations

import math

import torch
from torch import nn

_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill a model with deterministic non-trivial weights for tests and benchmarks; returns the model.

    Every parameter is drawn from a generator seeded with ``seed`` (the global RNG is neither read nor advanced):
    norm scales are ``1 + 0.05 * noise``, norm shifts, biases and the ``head`` are ``0.05 * noise``, and the other
    weights are He-normal. No weight keeps a default (unit norms, zero head) that could hide a mismatch.
    """
    g = torch.Generator().manual_seed(seed)
    unit = {id(m.weight) for m in model.modules() if isinstance(m, _NORMS) and m.weight is not None}
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if id(p) in unit:
                noise = 1.0 + 0.05 * noise
            elif p.ndim < 2 or name.split(".")[0] == "head":
                noise = 0.05 * noise
            else:
                noise = noise * math.sqrt(2.0 / p[0].numel())
            p.copy_(noise)
    return model
