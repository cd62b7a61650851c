"""timm and Hugging Face transformers layouts: key maps, safetensors files, equal logits through every format."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import bigtransfer as bt
from bigtransfer.errors import CheckpointError
from bigtransfer.weights import load_checkpoint, read_safetensors, save_safetensors
from bigtransfer.weights.convert import read_checkpoint, write_checkpoint
from bigtransfer.weights.hf import load_hf_state, state_dict_to_hf
from bigtransfer.weights.timm import load_timm_state

TIMM_EPS = 1e-8  # timm and transformers standardize with eps 1e-8


def hf_from_timm(state: dict) -> dict:
    """transformers' names for a timm BiT state dict, by the renaming rules of its conversion script."""
    out = {}
    for k, v in state.items():
        name = k.replace("stem.conv", "bit.embedder.convolution").replace("blocks", "layers")
        name = name.replace("head.fc", "classifier.1")
        if name.startswith("norm"):
            name = "bit." + name
        if "bit" not in name and "classifier" not in name:
            name = "bit.encoder." + name
        out[name] = v.squeeze() if k.startswith("head") else v  # the Linear head is (K, C)
    return out


@pytest.fixture(scope="module")
def r50_files(timm_r50, tmp_path_factory):
    """The timm R50 written in each format we read, the way each ecosystem writes it."""
    d = tmp_path_factory.mktemp("r50")
    state = {k: v.contiguous() for k, v in timm_r50.state_dict().items()}
    save_file(state, d / "timm.safetensors", metadata={"format": "pt"})
    save_file(hf_from_timm(state), d / "hf.safetensors", metadata={"format": "pt"})
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, d / "timm_ddp.pth")
    ours = load_timm_state(bt.create_model("BiT-M-R50x1-ILSVRC2012"), state)
    files = {"timm": d / "timm.safetensors", "hf": d / "hf.safetensors", "pth": d / "timm_ddp.pth"}
    for to in ("npz", "safetensors", "ckpt"):
        files[to] = write_checkpoint(ours.state_dict(), d / f"ours.{to}", to)
    return files


@pytest.fixture(scope="module")
def small_batch():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def timm_logits(timm_r50, small_batch):
    with torch.no_grad():
        return timm_r50(small_batch)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["timm", "hf", "pth", "npz", "safetensors", "ckpt"])
def test_each_format_gives_timm_logits_and_converts_back_exactly(fmt, r50_files, timm_r50, timm_logits,
                                                                 small_batch, tmp_path):
    model = load_checkpoint(bt.create_model("BiT-M-R50x1-ILSVRC2012", ws_eps=TIMM_EPS), r50_files[fmt]).eval()
    with torch.no_grad():
        got = model(small_batch)
    assert timm_logits.abs().max() > 0.5
    assert (timm_logits - got).abs().max().item() < 1e-4
    # and back: the file re-written in timm's layout holds exactly timm's tensors (so exactly its logits)
    back = load_file(write_checkpoint(read_checkpoint(r50_files[fmt]).state, tmp_path / "back.safetensors", "timm"))
    want = timm_r50.state_dict()
    assert set(back) == set(want)
    assert all(torch.equal(back[k], want[k]) for k in want)


@pytest.mark.slow
def test_timm_model_accepts_our_timm_file(r50_files, timm_logits, small_batch, tmp_path):
    timm = pytest.importorskip("timm")
    loaded = read_checkpoint(r50_files["ckpt"])
    back = timm.create_model("resnetv2_50x1_bit", num_classes=1000).eval()
    back.load_state_dict(load_file(write_checkpoint(loaded.state, tmp_path / "t.safetensors", "timm")))  # strict
    with torch.no_grad():
        assert torch.equal(back(small_batch), timm_logits)


def test_hf_key_map_matches_the_transformers_renaming(timm_r50):
    ours = load_timm_state(bt.create_model("BiT-S-R50x1"), timm_r50.state_dict())
    got, want = state_dict_to_hf(ours), hf_from_timm(timm_r50.state_dict())
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert got["classifier.1.weight"].shape == (1000, 2048)
    for name in ("bit.embedder.convolution.weight", "bit.encoder.stages.0.layers.0.downsample.conv.weight",
                 "bit.encoder.stages.2.layers.5.norm3.bias", "bit.norm.weight", "classifier.1.bias"):
        assert name in got


def test_bare_bitmodel_keys_load_and_keep_a_zero_head(timm_r50):
    hf = hf_from_timm(timm_r50.state_dict())
    base = {k[len("bit."):]: v for k, v in hf.items() if k.startswith("bit.")}  # BitModel has no classifier
    assert "embedder.convolution.weight" in base
    model = load_hf_state(bt.create_model("BiT-S-R50x1", num_classes=5), base)
    assert torch.equal(model.root.conv.weight, timm_r50.stem.conv.weight)
    assert torch.count_nonzero(model.head.conv.weight) == 0


def test_unknown_hf_key_is_named(timm_r50):
    hf = hf_from_timm(timm_r50.state_dict())
    hf["bit.pooler.weight"] = torch.ones(3)
    with pytest.raises(CheckpointError, match="key 'bit.pooler.weight' is not a transformers"):
        load_hf_state(bt.create_model("BiT-S-R50x1"), hf)


@pytest.mark.slow
def test_our_safetensors_carry_model_name_and_head(tmp_path, small_batch):
    torch.manual_seed(0)
    model = bt.create_model("BiT-R14x0.5", num_classes=7)
    torch.nn.init.normal_(model.head.conv.weight, std=0.1)
    path = save_safetensors(model, tmp_path / "m.safetensors")
    tensors, meta = read_safetensors(path)
    assert meta["model"] == "BiT-R14x0.5" and meta["num_classes"] == "7" and meta["block_units"] == "1,1,1,1"
    assert set(tensors) == set(model.state_dict())
    again = load_checkpoint(bt.create_model("BiT-R14x0.5", num_classes=7), path)
    with torch.no_grad():
        assert torch.equal(again.eval()(small_batch), model.eval()(small_batch))


def test_damaged_safetensors_are_one_clear_error(tmp_path):
    model = bt.create_model("BiT-R14x0.5")
    path = save_safetensors(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(bt.create_model("BiT-R14x0.5"), cut)
    garbled = tmp_path / "garbled.safetensors"
    garbled.write_bytes(data[:8] + b"{" + b"\xff" * 40 + data[49:])
    with pytest.raises(CheckpointError, match="safetensors header"):
        load_checkpoint(bt.create_model("BiT-R14x0.5"), garbled)
