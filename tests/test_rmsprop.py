"""RMSProp of the MindSpore CIFAR-10 recipe against MindSpore's documented update, run in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bigtransfer.engine.config import DEFAULTS, RunConfig
from bigtransfer.engine.optim import RMSpropTF, build_optimizer, set_lr
from bigtransfer.recipes import load_recipe

RECIPE = "bigtransfer_cifar10_r101x3"
LRS = [0.02 * k / 8 for k in range(1, 9)]  # eight steps of a linear warmup


class _Block(nn.Module):
    """One conv: its 4-D kernel is decayed under ``conv_only``, its bias is not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3).double()


def _grads(seed: int, shapes: list[torch.Size], scale: float) -> list[list[torch.Tensor]]:
    """Per-step float64 gradients whose magnitude varies by step and by element."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(len(LRS)):
        step_scale = scale * (0.2 + 1.8 * (k % 3) / 2)
        out.append([step_scale * torch.randn(s, generator=g, dtype=torch.float64)
                    * torch.rand(s, generator=g, dtype=torch.float64) for s in shapes])
    return out


def _mindspore_reference(weights: list[torch.Tensor], decays: list[float], grads: list[list[torch.Tensor]],
                         rho: float, momentum: float, eps: float, ms_init: float) -> list[torch.Tensor]:
    """``nn.RMSProp``: ``Optimizer.decay_weight`` adds ``wd*w`` to the gradient, then ``ApplyRMSProp`` updates."""
    w = [t.clone() for t in weights]
    ms = [torch.full_like(t, ms_init) for t in weights]
    mom = [torch.zeros_like(t) for t in weights]
    for lr, step_grads in zip(LRS, grads, strict=True):
        for i, g in enumerate(step_grads):
            g = g + decays[i] * w[i]
            ms[i] = rho * ms[i] + (1 - rho) * g * g
            mom[i] = momentum * mom[i] + lr * g / torch.sqrt(ms[i] + eps)
            w[i] = w[i] - mom[i]
    return w


def _run_ours(cfg: dict, grads: list[list[torch.Tensor]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(start weights, end weights) of the engine's optimizer for ``cfg`` fed ``grads``."""
    torch.manual_seed(0)
    block = _Block()
    start = [p.detach().clone() for p in block.parameters()]
    opt = build_optimizer(block, RunConfig.from_dict(cfg))
    for lr, step_grads in zip(LRS, grads, strict=True):
        set_lr(opt, lr)
        for p, g in zip(block.parameters(), step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return start, [p.detach().clone() for p in block.parameters()]


@pytest.mark.parametrize("weight_decay", [None, 0.05])  # the recipe's 4e-5, and a decay that dominates small grads
@pytest.mark.parametrize("scale", [1e-3, 1.0])
def test_recipe_rmsprop_matches_mindspore_in_float64(weight_decay, scale):
    cfg = load_recipe(RECIPE)
    assert (cfg["optimizer"], cfg["weight_decay_filter"]) == ("rmsprop", "conv_only")
    if weight_decay is not None:
        cfg["weight_decay"] = weight_decay
    wd = float(cfg["weight_decay"])
    shapes = [p.shape for p in _Block().parameters()]
    grads = _grads(1, shapes, scale)
    start, ours = _run_ours(cfg, grads)
    assert [t.ndim for t in start] == [4, 1]
    ref = _mindspore_reference(start, [wd, 0.0], grads, float(cfg["rmsprop_rho"]), float(cfg["momentum"]),
                               float(cfg["rmsprop_eps"]), ms_init=1.0)
    for w0, w, r in zip(start, ours, ref, strict=True):
        movement = (r - w0).abs().max().item()
        assert movement > 0
        assert (w - r).abs().max().item() <= 1e-6 * movement


def test_first_step_divides_by_root_of_rho_plus_eps():
    w = nn.Parameter(torch.tensor([0.5, -1.0], dtype=torch.float64))
    opt = RMSpropTF([w], lr=0.1, rho=0.9, momentum=0.9, eps=1.0, weight_decay=0.0)
    g = torch.tensor([1e-3, 2.0], dtype=torch.float64)
    w.grad = g.clone()
    opt.step()
    expected = torch.tensor([0.5, -1.0], dtype=torch.float64) - 0.1 * g / torch.sqrt(0.9 + 0.1 * g * g + 1.0)
    assert torch.allclose(w.detach(), expected, rtol=0, atol=1e-15)


def test_zero_start_is_an_option():
    cfg = {**DEFAULTS, "optimizer": "rmsprop", "lr": 0.02, "weight_decay": 0.05, "weight_decay_filter": "conv_only",
           "rmsprop_init": 0.0}
    shapes = [p.shape for p in _Block().parameters()]
    grads = _grads(2, shapes, 1e-3)
    start, ours = _run_ours(cfg, grads)
    ref = _mindspore_reference(start, [0.05, 0.0], grads, 0.9, 0.9, 1.0, ms_init=0.0)
    for w0, w, r in zip(start, ours, ref, strict=True):
        assert (w - r).abs().max().item() <= 1e-6 * (r - w0).abs().max().item()
    with pytest.raises(ValueError, match="rmsprop_init"):
        RMSpropTF([nn.Parameter(torch.zeros(2))], ms_init=-1.0)
