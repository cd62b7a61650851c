"""MindSpore .ckpt: the protobuf wire format read and written without MindSpore, mindcv names, safety."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
import torch

import bigtransfer as bt
from bigtransfer.errors import CheckpointError
from bigtransfer.models.registry import IMAGENET_MEAN, IMAGENET_STD
from bigtransfer.weights import load_checkpoint
from bigtransfer.weights.mindspore import encode_value, read_ckpt, save_mindspore, to_mindcv_key
from conftest import randomized

# --- a test-side encoder, spelled out from checkpoint.proto independently of the library ------------

MS_TYPE = {np.float32: "Float32", np.float16: "Float16", np.int32: "Int32", np.int64: "Int64"}


def varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += struct.pack("B", (n & 0x7F) | 0x80)
        n >>= 7
    return out + struct.pack("B", n)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint((field << 3) | 2) + varint(len(payload)) + payload


def value_msg(tag: str, dims, tensor_type: str, content: bytes, packed: bool = False) -> bytes:
    """One ``Checkpoint`` message: value { tag = 1; tensor = 2 { dims = 1; tensor_type = 2; content = 3 } }."""
    if packed:
        dims_bytes = ld(1, b"".join(varint(d) for d in dims))
    else:
        dims_bytes = b"".join(varint(1 << 3) + varint(d) for d in dims)
    tensor = dims_bytes + ld(2, tensor_type.encode()) + ld(3, content)
    return ld(1, ld(1, tag.encode()) + ld(2, tensor))


def tensor_msg(tag: str, arr: np.ndarray, packed: bool = False) -> bytes:
    arr = np.asarray(arr)  # (np.ascontiguousarray would turn a scalar into shape (1,))
    dims = list(arr.shape) or [0]
    return value_msg(tag, dims, MS_TYPE[arr.dtype.type], arr.astype(arr.dtype.newbyteorder("<")).tobytes(), packed)


def mindcv_name(key: str) -> str:
    """mindcv's name for one of our keys, written out here from mindcv's module tree."""
    p = key.split(".")
    gb = {"weight": "gamma", "bias": "beta"}
    if key == "root.conv.weight":
        return "conv1.weight"
    if p[0] == "head":
        return f"gn.{gb[p[2]]}" if p[1] == "gn" else f"classifier.{p[2]}"
    block, unit, mod = int(p[1][5:]), int(p[2][4:]) - 1, p[3]
    if mod == "downsample":
        return f"layer{block}.{unit}.down_sample.0.weight"
    if mod.startswith("gn"):
        return f"layer{block}.{unit}.{mod}.{gb[p[4]]}"
    return f"layer{block}.{unit}.{mod}.weight"


def ckpt_bytes(model: torch.nn.Module, dtype=np.float32, extra: bytes = b"") -> bytes:
    return b"".join(tensor_msg(mindcv_name(k), v.numpy().astype(dtype)) for k, v in model.state_dict().items()) + extra


@pytest.fixture()
def x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


# --- tests -------------------------------------------------------------------------------------------

def test_test_side_ckpt_loads_with_equal_logits_and_imagenet_stats(tmp_path, x):
    src = randomized()
    path = tmp_path / "bit.ckpt"
    path.write_bytes(ckpt_bytes(src))
    model = load_checkpoint(bt.create_model("BiT-R14x0.5", num_classes=10), path).eval()
    with torch.no_grad():
        want, got = src(x), model(x)
    assert want.abs().max() > 0.1
    assert torch.equal(want, got)
    assert model.pretrained_cfg["mean"] == IMAGENET_MEAN and model.pretrained_cfg["std"] == IMAGENET_STD


def test_float16_parameters_load_as_their_rounded_values(tmp_path):
    src = randomized()
    path = tmp_path / "half.ckpt"
    path.write_bytes(ckpt_bytes(src, dtype=np.float16))
    model = load_checkpoint(bt.create_model("BiT-R14x0.5", num_classes=10), path)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v.half().float()), k
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())  # really fp16


def test_optimizer_slots_scalars_and_ema_are_handled(tmp_path):
    src, ema_src = randomized(seed=0), randomized(seed=1)
    extra = b"".join([
        tensor_msg("learning_rate", np.array(0.1, np.float32)),  # scalar: dims [0]
        tensor_msg("global_step", np.array([1234], np.int32)),
        value_msg("random_op", [0], "random_op", b"\x01\x02"),
        *(tensor_msg("moments." + mindcv_name(k), np.ones(tuple(v.shape), np.float32))
          for k, v in src.state_dict().items()),
        *(tensor_msg("ema." + mindcv_name(k), v.numpy()) for k, v in ema_src.state_dict().items()),
    ])
    path = tmp_path / "train.ckpt"
    path.write_bytes(ckpt_bytes(src, extra=extra))
    plain = load_checkpoint(bt.create_model("BiT-R14x0.5", num_classes=10), path)
    ema = load_checkpoint(bt.create_model("BiT-R14x0.5", num_classes=10), path, ema=True)
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in src.state_dict().items())
    assert all(torch.equal(ema.state_dict()[k], v) for k, v in ema_src.state_dict().items())
    raw = read_ckpt(path)
    assert raw["learning_rate"].shape == () and raw["learning_rate"].item() == pytest.approx(0.1)
    assert raw["global_step"].dtype == torch.int32 and "random_op" not in raw


def test_ema_requested_but_absent_is_one_clear_error(tmp_path):
    path = tmp_path / "plain.ckpt"
    path.write_bytes(ckpt_bytes(randomized()))
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_checkpoint(bt.create_model("BiT-R14x0.5", num_classes=10), path, ema=True)


def test_split_parameter_packed_dims_and_dense_classifier(tmp_path):
    src = randomized()
    parts = []
    for k, v in src.state_dict().items():
        a = v.numpy()
        if k == "root.conv.weight":  # MindSpore splits big parameters into consecutive values, same tag and dims
            raw = a.tobytes()
            cut = len(raw) // 3
            parts += [value_msg("conv1.weight", a.shape, "Float32", raw[:cut]),
                      value_msg("conv1.weight", a.shape, "Float32", raw[cut:])]
        elif k == "head.conv.weight":
            parts.append(tensor_msg("classifier.weight", a.reshape(a.shape[0], a.shape[1]), packed=True))
        else:
            parts.append(tensor_msg(mindcv_name(k), a, packed=True))
    path = tmp_path / "split.ckpt"
    path.write_bytes(b"".join(parts))
    model = load_checkpoint(bt.create_model("BiT-R14x0.5", num_classes=10), path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())


def test_writer_matches_the_test_encoder_byte_for_byte(tmp_path):
    src = randomized()
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    assert encode_value("layer1.0.conv1.weight", a) == tensor_msg("layer1.0.conv1.weight", a)
    assert encode_value("s", np.array(2.5, np.float32)) == tensor_msg("s", np.array(2.5, np.float32))
    path = save_mindspore(src, tmp_path / "ours.ckpt")
    assert path.read_bytes() == ckpt_bytes(src)  # mindcv names, OIHW, 1x1-conv classifier, float32


def test_mindcv_names_cover_r50_exactly():
    with torch.device("meta"):
        model = bt.create_model("bit_resnet50")
    names = {to_mindcv_key(k) for k in model.state_dict()}
    assert len(names) == 153  # one name per official array
    assert names == {mindcv_name(k) for k in model.state_dict()}
    for expected in ("conv1.weight", "layer1.0.down_sample.0.weight", "layer3.5.gn3.beta", "layer4.2.conv3.weight",
                     "gn.gamma", "classifier.bias"):
        assert expected in names


def test_truncated_and_corrupt_files_are_one_clear_error(tmp_path):
    good = ckpt_bytes(randomized())
    for name, data in [("trunc.ckpt", good[: len(good) - 100]), ("half.ckpt", good[: len(good) // 2])]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match="corrupt or truncated MindSpore checkpoint"):
            load_checkpoint(bt.create_model("BiT-R14x0.5", num_classes=10), path)
    bad = tmp_path / "wire.ckpt"
    bad.write_bytes(good[:200] + b"\x0f" * 50)  # wire type 7 does not exist
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_ckpt(bad)


def test_a_header_claiming_a_huge_tensor_is_refused_before_allocation(tmp_path):
    path = tmp_path / "huge.ckpt"
    path.write_bytes(value_msg("conv1.weight", [1 << 20, 1 << 20, 1 << 10], "Float32", b"\x00" * 64))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"claims shape \[1048576, 1048576, 1024\] of Float32"):
        read_ckpt(path)
    assert time.perf_counter() - start < 2
    lying = tmp_path / "length.ckpt"
    lying.write_bytes(b"\x0a" + varint(1 << 40) + b"\x0a\x03abc")  # a Value claiming a terabyte
    with pytest.raises(CheckpointError, match="claims 1099511627776 bytes"):
        read_ckpt(lying)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "r14.ckpt"
    path.write_bytes(ckpt_bytes(randomized()))
    with pytest.raises(CheckpointError, match="another architecture|another model"):
        load_checkpoint(bt.create_model("BiT-R26x0.5", num_classes=10), path)
