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


def class_folders(root, sizes: dict[str, int]):
    """A flat folder of class folders with ``sizes[c]`` small random PNGs each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in sizes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def fails(argv: list[str], capsys, *needles: str) -> str:
    """``bit argv`` exits 2 with one ``error:`` line holding every needle (regex): no traceback, no usage block."""
    import re

    from bigtransfer.cli.main import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err and "usage:" not in err, err
    for needle in needles:
        assert re.search(needle, err), (needle, err)
    return err


@pytest.fixture(scope="module")
def r14_file(tmp_path_factory):
    """A BiT-R14x0.5 with a 10-class head saved in our safetensors layout."""
    import bigtransfer as bt
    from bigtransfer.weights import save_safetensors

    path = tmp_path_factory.mktemp("weights") / "r14.safetensors"
    save_safetensors(bt.create_model("BiT-R14x0.5", num_classes=10), path, "BiT-R14x0.5")
    return path
