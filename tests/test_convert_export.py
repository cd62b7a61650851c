"""``bit convert`` (detection by content, architecture inference) and ``bit export`` (ONNX, checked by onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bigtransfer as bt
from bigtransfer.cli.main import main
from bigtransfer.errors import CheckpointError
from bigtransfer.export import bake_standardized, export_onnx
from bigtransfer.models import StdConv2d
from bigtransfer.weights import read_npz, save_npz, save_safetensors
from bigtransfer.weights.convert import detect_format, infer_architecture, read_checkpoint, write_checkpoint
from conftest import randomized


@pytest.fixture()
def x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def test_cli_chain_through_every_format_is_lossless(tmp_path, capsys):
    model = randomized()
    first = save_npz(model, tmp_path / "start.npz")
    chain = [("a.ckpt", "ckpt"), ("b.safetensors", "hf"), ("c.safetensors", "timm"), ("d.safetensors", "safetensors"),
             ("e.pth.npz", "npz")]
    src = first
    for name, to in chain:
        assert main(["convert", str(src), str(tmp_path / name), "--to", to]) == 0
        src = tmp_path / name
    out = capsys.readouterr().out
    assert "R14x0.5, 10 classes" in out
    a, b = read_npz(first), read_npz(src)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert [detect_format(tmp_path / n) for n, _ in chain] == ["mindspore", "safetensors", "safetensors",
                                                                "safetensors", "npz"]
    assert [read_checkpoint(tmp_path / n).layout for n, _ in chain] == ["mindcv", "hf", "timm", "ours", "npz"]


@pytest.mark.parametrize("name", ["BiT-R14x0.5", "BiT-R26x0.5", "BiT-S-R50x3", "BiT-M-R101x1", "BiT-S-R152x2"])
def test_architecture_is_inferred_from_keys_and_shapes(name):
    with torch.device("meta"):
        model = bt.create_model(name, num_classes=17)
    arch = infer_architecture(model.state_dict())
    cfg = bt.get_config(name)
    assert arch == {"block_units": cfg.block_units, "width_factor": cfg.width_factor, "num_classes": 17}


def test_torch_state_dict_in_timm_layout_converts(tmp_path, x):
    model = randomized()
    timm_state = read_checkpoint(write_checkpoint(model.state_dict(), tmp_path / "t.safetensors", "timm")).state
    from bigtransfer.weights.timm import to_timm_key

    torch.save({"model": {"module." + to_timm_key(k): v for k, v in timm_state.items()}}, tmp_path / "t.pth")
    assert main(["convert", str(tmp_path / "t.pth"), str(tmp_path / "o.safetensors")]) == 0
    again = bt.create_model("BiT-R14x0.5", weights=str(tmp_path / "o.safetensors"), num_classes=10).eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_convert_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    model = randomized()
    src = save_safetensors(model, tmp_path / "m.safetensors")
    assert main(["convert", str(src), str(tmp_path / "x.npz"), "--model", "BiT-S-R50x1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "R14x0.5, not R50x1" in err
    assert not (tmp_path / "x.npz").exists()
    (tmp_path / "junk.npz").write_bytes(src.read_bytes()[:100])
    assert main(["convert", str(tmp_path / "junk.npz"), str(tmp_path / "y.ckpt")]) == 2
    assert "truncated" in capsys.readouterr().err and not (tmp_path / "y.ckpt").exists()
    (tmp_path / "keep.npz").write_bytes(b"precious")
    assert main(["convert", str(src), str(tmp_path / "keep.npz")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and (tmp_path / "keep.npz").read_bytes() == b"precious"
    assert main(["convert", str(src), str(tmp_path / "z.bin")]) == 2
    assert "pass --to" in capsys.readouterr().err


def test_missing_head_stays_missing(tmp_path):
    model = randomized()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.conv")}
    src = write_checkpoint(state, tmp_path / "nohead.safetensors", "safetensors")
    assert main(["convert", str(src), str(tmp_path / "nohead.ckpt")]) == 0
    assert "head.conv.weight" not in read_checkpoint(tmp_path / "nohead.ckpt").state


def test_baked_model_has_plain_convs_and_equal_logits(x):
    model = randomized()
    baked = bake_standardized(model)
    assert not any(isinstance(m, StdConv2d) for m in baked.modules())
    assert any(isinstance(m, StdConv2d) for m in model.modules())  # the original is untouched
    with torch.no_grad():
        assert (baked(x) - model(x)).abs().max().item() < 1e-5


@pytest.mark.slow
def test_export_run_folder_with_dynamic_batch(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = randomized(num_classes=4)
    run = tmp_path / "run"
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "config.yaml").write_text("model: BiT-R14x0.5\nnum_classes: 4\n")
    save_safetensors(model, run / "checkpoints" / "last" / "model.safetensors")
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--onnx", str(out), "--size", "48"]) == 0
    printed = capsys.readouterr().out
    assert "dynamic batch" in printed and "max |logit diff|" in printed
    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert not list(tmp_path.glob(".m.onnx.*"))  # no temporary left behind
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    xb = torch.randn(5, 3, 48, 48, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = model(xb).numpy()
    got = session.run(None, {session.get_inputs()[0].name: xb.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4 and np.abs(want).max() > 0.1


def test_export_legacy_exporter_and_refusals(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model = randomized()
    diff = export_onnx(model, tmp_path / "l.onnx", 32, dynamo=False)
    assert diff is not None and diff < 1e-4
    assert main(["export", str(tmp_path / "l.onnx"), "--onnx", str(tmp_path / "l.onnx")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    from bigtransfer.export import load_run_or_checkpoint

    (tmp_path / "emptyrun").mkdir()
    with pytest.raises(CheckpointError, match="config.yaml"):
        load_run_or_checkpoint(tmp_path / "emptyrun")
    (tmp_path / "emptyrun" / "config.yaml").write_text("model: BiT-R14x0.5\nnum_classes: 10\n")
    with pytest.raises(CheckpointError, match="not saved weights yet"):
        load_run_or_checkpoint(tmp_path / "emptyrun")


def test_run_folder_weights_final_first_then_newest_checkpoint(tmp_path):
    from bigtransfer.export import load_run_or_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000100").mkdir(parents=True)
    (run / "checkpoints" / "step_00000200").mkdir(parents=True)
    (run / "config.yaml").write_text("model: BiT-R14x0.5\nnum_classes: 3\neval_crop: 40\n")
    older, newer, final = randomized(num_classes=3, seed=1), randomized(num_classes=3, seed=2), randomized(
        num_classes=3, seed=3)
    save_safetensors(older, run / "checkpoints" / "step_00000100" / "model.safetensors")
    save_safetensors(newer, run / "checkpoints" / "step_00000200" / "model.safetensors")
    (run / "checkpoints" / "latest").write_text("step_00000200\n")
    model, size = load_run_or_checkpoint(run)
    assert size == 40 and torch.equal(model.head.conv.weight, newer.head.conv.weight)
    save_safetensors(final, run / "model.safetensors")
    model, _ = load_run_or_checkpoint(run)
    assert torch.equal(model.head.conv.weight, final.head.conv.weight) and model.num_classes == 3


def test_mindcv_input_stats_survive_conversion_to_our_safetensors(tmp_path):
    from bigtransfer.models.registry import IMAGENET_MEAN, IMAGENET_STD
    from bigtransfer.weights import load_checkpoint

    model = randomized()
    ckpt = write_checkpoint(model.state_dict(), tmp_path / "m.ckpt", "ckpt")
    assert main(["convert", str(ckpt), str(tmp_path / "m.safetensors"), "--model", "BiT-R14x0.5"]) == 0
    loaded = load_checkpoint(bt.create_model("BiT-R14x0.5"), tmp_path / "m.safetensors")
    assert loaded.pretrained_cfg["mean"] == IMAGENET_MEAN and loaded.pretrained_cfg["std"] == IMAGENET_STD
    plain = load_checkpoint(bt.create_model("BiT-R14x0.5"), save_safetensors(model, tmp_path / "p.safetensors"))
    assert plain.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
