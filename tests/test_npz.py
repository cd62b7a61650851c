"""Official .npz layout: exact key scheme, HWIO kernels, strict checks, safe loading."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import bigtransfer as bt
from bigtransfer.errors import CheckpointError
from bigtransfer.weights import load_checkpoint, load_npz, read_npz, save_npz
from bigtransfer.weights.timm import load_timm_state


def official_npz_from_timm(state: dict) -> dict[str, np.ndarray]:
    """Write timm weights in the official TF layout, spelled out here independently of the library."""
    out = {}
    for k, v in state.items():
        a = v.numpy()
        if a.ndim == 4:
            a = a.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        p = k.split(".")
        if k == "stem.conv.weight":
            name = "resnet/root_block/standardized_conv2d/kernel"
        elif p[0] == "norm":
            name = f"resnet/group_norm/{'gamma' if p[1] == 'weight' else 'beta'}"
        elif p[0] == "head":
            name = f"resnet/head/conv2d/{'kernel' if p[2] == 'weight' else 'bias'}"
        else:
            scope = f"resnet/block{int(p[1]) + 1}/unit{int(p[3]) + 1:02d}"
            if p[4] == "downsample":
                name = f"{scope}/a/proj/standardized_conv2d/kernel"
            else:
                sub = "abc"[int(p[4][-1]) - 1]
                if p[4].startswith("norm"):
                    name = f"{scope}/{sub}/group_norm/{'gamma' if p[5] == 'weight' else 'beta'}"
                else:
                    name = f"{scope}/{sub}/standardized_conv2d/kernel"
        out[name] = np.ascontiguousarray(a)
    return out


@pytest.fixture()
def small_npz(tmp_path):
    torch.manual_seed(0)
    model = bt.create_model("BiT-R14x0.5", num_classes=10)
    torch.nn.init.normal_(model.head.conv.weight, std=0.1)
    return model, save_npz(model, tmp_path / "small.npz")


@pytest.mark.slow
def test_official_layout_from_timm_loads_with_equal_logits(timm_r50, image_batch, tmp_path):
    arrays = official_npz_from_timm(timm_r50.state_dict())
    assert len(arrays) == 153  # R50: the published array count
    path = tmp_path / "BiT-M-R50x1-ILSVRC2012.npz"
    np.savez(path, **arrays)
    via_npz = load_npz(bt.create_model("BiT-M-R50x1-ILSVRC2012"), path).eval()
    via_dict = load_timm_state(bt.create_model("BiT-M-R50x1-ILSVRC2012"), timm_r50.state_dict()).eval()
    with torch.no_grad():
        a, b = via_npz(image_batch), via_dict(image_batch)
    assert torch.equal(a, b)


def test_round_trip_is_bit_exact(small_npz, tmp_path):
    model, path = small_npz
    again = load_npz(bt.create_model("BiT-R14x0.5", num_classes=10), path)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    save_npz(again, tmp_path / "again.npz")
    a, b = read_npz(path), read_npz(tmp_path / "again.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["resnet/root_block/standardized_conv2d/kernel"].shape == (7, 7, 3, 32)  # HWIO
    assert a["resnet/block1/unit01/a/group_norm/gamma"].ndim == 1
    assert "resnet/block1/unit01/a/proj/standardized_conv2d/kernel" in a


def test_head_of_another_size_is_kept_zero_with_a_notice(small_npz, caplog):
    _, path = small_npz
    with caplog.at_level(logging.INFO, logger="bigtransfer"):
        model = load_npz(bt.create_model("BiT-R14x0.5", num_classes=3), path)
    assert torch.count_nonzero(model.head.conv.weight) == 0
    assert any("new zero-initialised head of 3 classes replaces the checkpoint's head of 10 classes" in r.message
               for r in caplog.records)


def _write(path, arrays):
    np.savez(path, **arrays)
    return path


def test_truncated_file_is_one_clear_error(small_npz, tmp_path):
    _, path = small_npz
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bt.create_model("BiT-R14x0.5"), bad)


def test_wrong_key_is_named(small_npz, tmp_path):
    _, path = small_npz
    arrays = read_npz(path)
    arrays["resnet/block9/unit01/a/group_norm/gamma"] = np.ones(4, np.float32)
    with pytest.raises(CheckpointError, match="unexpected array 'resnet/block9/unit01/a/group_norm/gamma'"):
        load_npz(bt.create_model("BiT-R14x0.5"), _write(tmp_path / "k.npz", arrays))


def test_missing_key_names_key_and_shape(small_npz, tmp_path):
    _, path = small_npz
    arrays = read_npz(path)
    del arrays["resnet/block2/unit01/b/standardized_conv2d/kernel"]
    with pytest.raises(CheckpointError, match=r"missing array 'resnet/block2/unit01/b/standardized_conv2d/"
                                              r"kernel' with shape \(3, 3, 64, 64\)"):
        load_npz(bt.create_model("BiT-R14x0.5"), _write(tmp_path / "m.npz", arrays))


def test_wrong_shape_names_both_shapes(small_npz, tmp_path):
    _, path = small_npz
    arrays = read_npz(path)
    arrays["resnet/group_norm/gamma"] = np.ones(7, np.float32)
    with pytest.raises(CheckpointError, match=r"'resnet/group_norm/gamma' has shape \(7,\), expected \(1024,\)"):
        load_npz(bt.create_model("BiT-R14x0.5"), _write(tmp_path / "s.npz", arrays))


def test_object_arrays_are_refused_without_unpickling(small_npz, tmp_path):
    _, path = small_npz
    arrays = read_npz(path)
    arrays["resnet/group_norm/gamma"] = np.array([{"x": 1}], dtype=object)
    bad = tmp_path / "obj.npz"
    np.savez(bad, **arrays)  # object arrays are pickled inside the npz
    with pytest.raises(CheckpointError, match="pickled object arrays"):
        load_npz(bt.create_model("BiT-R14x0.5"), bad)


def test_another_architecture_is_refused(small_npz):
    _, path = small_npz
    with pytest.raises(CheckpointError, match="another architecture|another model"):
        load_npz(bt.create_model("BiT-R26x0.5"), path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(bt.create_model("BiT-R14x0.5"), tmp_path / "nope.npz")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint format"):
        load_checkpoint(bt.create_model("BiT-R14x0.5"), junk)


def test_create_model_with_local_weights(small_npz):
    model, path = small_npz
    loaded = bt.create_model("BiT-R14x0.5", weights=str(path))
    assert torch.equal(loaded.head.conv.weight, model.head.conv.weight)
