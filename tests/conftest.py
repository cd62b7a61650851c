"""Shared fixtures: timm reference models with non-trivial weights."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


def randomize_norms_and_head(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give GroupNorm affine params and the head non-default values so every weight is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "head" in name:
                base = 1.0 if name.endswith("weight") and "norm" in name else 0.0
                p.copy_(base + 0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="session")
def timm_r50():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return randomize_norms_and_head(timm.create_model("resnetv2_50x1_bit", num_classes=1000).eval())


@pytest.fixture(scope="session")
def timm_r101():
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    return randomize_norms_and_head(timm.create_model("resnetv2_101x1_bit", num_classes=1000).eval(), seed=1)


@pytest.fixture(scope="session")
def image_batch():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(42))


def randomized(name: str = "BiT-R14x0.5", num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """A registry model with seeded weights and non-default norms and head, in eval mode."""
    import bigtransfer as bt

    torch.manual_seed(seed)
    model = bt.create_model(name, num_classes=num_classes)
    with torch.no_grad():
        for k, p in model.named_parameters():
            if p.ndim == 1 or k.startswith("head"):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if k.endswith("weight") and ".gn" in k else 0.0))
    return model.eval()
