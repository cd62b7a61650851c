"""Shared fixtures and helpers: models with non-trivial weights, small image folders, CLI error checks."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest
import torch

from bigtransfer.models.randomize import randomize_

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def timm_r50():
    timm = pytest.importorskip("timm")
    return randomize_(timm.create_model("resnetv2_50x1_bit", num_classes=1000), seed=0).eval()


@pytest.fixture(scope="session")
def timm_r101():
    timm = pytest.importorskip("timm")
    return randomize_(timm.create_model("resnetv2_101x1_bit", num_classes=1000), seed=1).eval()


@pytest.fixture(scope="session")
def image_batch():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(42))


def randomized(name: str = "BiT-R14x0.5", num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """A registry model filled by ``randomize_(model, seed)``, in eval mode."""
    import bigtransfer as bt

    return randomize_(bt.create_model(name, num_classes=num_classes), seed).eval()


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


def latest_step(out: Path) -> int:
    """The step of a run's latest checkpoint, or -1 while there is none."""
    try:
        return int((out / "checkpoints" / "latest").read_text().strip().split("_")[1])
    except (OSError, IndexError, ValueError):
        return -1


def closed_port() -> int:
    """A local TCP port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def foolbox_files(pattern: str) -> list[Path]:
    """foolbox's real sample images matching ``pattern``, sorted; skips the test when foolbox is not installed."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("foolbox (real sample images) is not installed")
    return sorted((Path(next(iter(spec.submodule_search_locations))) / "data").glob(pattern))
