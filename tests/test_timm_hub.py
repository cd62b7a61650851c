"""timm model names as aliases, timm loading our converted files, and torch.hub entry points."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bigtransfer as bt
from bigtransfer.cli.main import main
from bigtransfer.errors import UnknownNameError
from bigtransfer.models.registry import TIMM_ARCH, timm_aliases
from bigtransfer.weights import load_checkpoint, save_safetensors
from conftest import fails, randomized

REPO = Path(__file__).resolve().parents[1]
TIMM_EPS = 1e-8


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(self, address):
        raise AssertionError(f"network access to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """TORCH_HOME and the weights cache in a temporary folder, so nothing is written to the user's home."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("BIGTRANSFER_HOME", str(tmp_path / "bit_cache"))
    return home


@pytest.mark.parametrize(("timm_name", "ours"), [
    ("resnetv2_50x1_bit.goog_in21k", "BiT-M-R50x1"),
    ("resnetv2_50x1_bit.goog_in21k_ft_in1k", "BiT-M-R50x1-ILSVRC2012"),
    ("resnetv2_50x1_bit.goog_distilled_in1k", "BiT-distilled-R50x1-224"),
    ("resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k", "BiT-teacher-R152x2-224"),
    ("resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k_384", "BiT-teacher-R152x2-384"),
    ("resnetv2_50x1_bit", "BiT-distilled-R50x1-224"),
    ("resnetv2_152x2_bit", "BiT-teacher-R152x2-224"),
    ("resnetv2_101x3_bit", "BiT-M-R101x3-ILSVRC2012"),
    ("ResNetV2_50x1_BiT.goog_in21k", "BiT-M-R50x1"),
])
def test_timm_names_are_aliases(timm_name, ours):
    assert bt.get_config(timm_name).name == ours


@pytest.mark.parametrize("arch", sorted(TIMM_ARCH))
def test_every_arch_has_its_in21k_and_in1k_aliases(arch):
    assert bt.get_config(f"{TIMM_ARCH[arch]}.goog_in21k").name == f"BiT-M-{arch}"
    assert bt.get_config(f"{TIMM_ARCH[arch]}.goog_in21k_ft_in1k").name == f"BiT-M-{arch}-ILSVRC2012"
    with torch.device("meta"):
        model = bt.create_model(f"{TIMM_ARCH[arch]}.goog_in21k_ft_in1k", num_classes=5)
    assert model.pretrained_cfg["name"] == f"BiT-M-{arch}-ILSVRC2012" and model.num_classes == 5


def test_aliases_match_timm_hub_ids_and_default_tags():
    timm = pytest.importorskip("timm")
    for alias, ours in timm_aliases().items():
        arch, _, tag = alias.partition(".")
        want = timm.models.get_pretrained_cfg(alias)
        assert want is not None, alias
        assert want.hf_hub_id == bt.get_config(ours).hf_hub_id, alias
        if not tag:  # a bare name means timm's default tag
            assert f"{arch}.{want.tag}" in timm_aliases() and timm_aliases()[f"{arch}.{want.tag}"] == ours


def test_unknown_timm_name_gets_a_suggestion(capsys):
    with pytest.raises(UnknownNameError, match=r"did you mean 'resnetv2_50x1_bit\.goog_in21k'"):
        bt.get_config("resnetv2_50x1_bit.goog_in21")
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnetv2_50x2_bit': did you mean 'resnetv2_50x3_bit'"):
        bt.create_model("resnetv2_50x2_bit")
    fails(["evaluate", "resnetv2_50x2_bit", "--data", "digits"], capsys, r"did you mean 'resnetv2_50x3_bit'\?")


def test_bit_models_shows_timm_names(capsys):
    assert main(["models", "--timm", "R50x1"]) == 0
    out = capsys.readouterr().out
    assert "resnetv2_50x1_bit.goog_distilled_in1k*" in out and "resnetv2_50x1_bit.goog_in21k_ft_in1k " in out
    assert "BiT-S-R101x1" not in out
    assert main(["models", "resnetv2_152x2"]) == 0  # a timm filter shows the column by itself
    out = capsys.readouterr().out
    assert "BiT-teacher-R152x2-384" in out and "goog_teacher_in21k_ft_in1k_384" in out and "BiT-S-R152x2" not in out
    assert main(["models", "R14x0.5"]) == 0
    assert "timm" not in capsys.readouterr().out


@pytest.mark.slow
def test_timm_loads_converted_file_with_equal_logits(tmp_path, no_network):
    timm = pytest.importorskip("timm")
    ours = randomized("BiT-M-R50x1", num_classes=10)
    src = save_safetensors(ours, tmp_path / "r50.safetensors", "BiT-M-R50x1")
    out = tmp_path / "timm.safetensors"
    assert main(["convert", str(src), str(out), "--to", "timm", "--model", "resnetv2_50x1_bit.goog_in21k"]) == 0
    # num_classes in the overlay too: timm drops a checkpoint head whose size differs from the cfg's
    model = timm.create_model("resnetv2_50x1_bit.goog_in21k", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(out), num_classes=10)).eval()
    assert torch.equal(model.head.fc.weight, ours.head.conv.weight)
    same_eps = load_checkpoint(bt.create_model("BiT-M-R50x1", num_classes=10, ws_eps=TIMM_EPS), src).eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got, exact = ours(x), model(x), same_eps(x)
    assert want.abs().max() > 1.0
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-4  # eps 1e-8 (timm) vs 1e-10 (ours)
    assert (got - exact).abs().max().item() < 1e-5


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hub_load_local_by_name_and_identifier(torch_home, no_network):
    path_before = list(sys.path)
    for name in ("BiT-R14x0.5", "BiT_R14x0_5"):
        model = torch.hub.load(str(REPO), name, source="local", pretrained=False, num_classes=3)
        assert model.pretrained_cfg["name"] == "BiT-R14x0.5" and model.num_classes == 3
    model = torch.hub.load(str(REPO), "create_model", "resnetv2_50x1_bit.goog_in21k", source="local", num_classes=2)
    assert model.pretrained_cfg["name"] == "BiT-M-R50x1"
    with pytest.raises(RuntimeError, match="Cannot find callable"):
        torch.hub.load(str(REPO), "BiT-M-R50x7", source="local")
    assert sys.path == path_before and not torch_home.exists()


def test_hub_pretrained_from_a_weights_file(torch_home, r14_file, no_network):
    model = torch.hub.load(str(REPO), "BiT-R14x0.5", source="local", pretrained=True, weights=str(r14_file))
    want = load_checkpoint(bt.create_model("BiT-R14x0.5", num_classes=10), r14_file).state_dict()
    got = model.state_dict()
    assert model.num_classes == 10 and all(torch.equal(got[k], want[k]) for k in want)


def test_hub_list_and_load_from_a_cached_github_checkout(torch_home, no_network):
    (torch_home / "hub").mkdir(parents=True)
    (torch_home / "hub" / "owner_bigtransfer_main").symlink_to(REPO, target_is_directory=True)
    names = torch.hub.list("owner/bigtransfer:main", trust_repo=True, verbose=False)
    assert {"BiT-M-R50x1", "BiT_M_R50x1", "BiT_R14x0_5", "bit_resnet50", "create_model"} <= set(names)
    assert not any(n.startswith("_") for n in names) and "dependencies" not in names
    model = torch.hub.load("owner/bigtransfer:main", "BiT-M-R50x1", trust_repo=True, verbose=False, num_classes=4)
    assert model.pretrained_cfg["name"] == "BiT-M-R50x1" and model.num_classes == 4
    assert "BiT-M-R50x1-ILSVRC2012" in torch.hub.help("owner/bigtransfer:main", "BiT_M_R50x1_ILSVRC2012",
                                                      trust_repo=True)


def test_hubconf_entries_and_dependencies():
    hub = _hubconf()
    assert all(importlib.util.find_spec(dep) is not None for dep in hub.dependencies)
    for name in bt.list_models():
        entry = getattr(hub, name)
        assert callable(entry) and entry.__name__.isidentifier() and getattr(hub, entry.__name__) is entry
    with pytest.raises(AttributeError):
        hub.__wrapped__  # noqa: B018


@pytest.mark.slow
def test_hubconf_works_from_a_clone_that_is_not_installed(tmp_path):
    src = str(REPO / "src")
    code = (
        "import importlib.util, os, sys\n"
        f"sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != {src!r}]\n"
        "if importlib.util.find_spec('bigtransfer') is not None:\n"
        "    sys.exit(3)\n"
        "import torch\n"
        f"m = torch.hub.load({str(REPO)!r}, 'BiT-R14x0.5', source='local', num_classes=3)\n"
        "import bigtransfer\n"
        "print(m.num_classes, bigtransfer.__file__)\n"
    )
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"), "PYTHONPATH": ""}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    if run.returncode == 3:
        pytest.skip("bigtransfer is installed in a way that hides the clone's src folder")
    assert run.returncode == 0, run.stderr
    count, where = run.stdout.split()
    assert count == "3" and Path(where).resolve().is_relative_to(Path(src))
