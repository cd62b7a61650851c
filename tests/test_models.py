"""The model family: numerics against timm, the registry and the API."""

from __future__ import annotations

import pytest
import torch

import bigtransfer as bt
from bigtransfer.errors import UnknownNameError
from bigtransfer.models import StdConv2d
from bigtransfer.weights.timm import load_timm_state, state_dict_to_timm

TIMM_EPS = 1e-8  # timm's weight-standardization epsilon; ours defaults to the official 1e-10


@pytest.mark.parametrize("fixture,name", [("timm_r50", "BiT-M-R50x1-ILSVRC2012"),
                                          ("timm_r101", "BiT-M-R101x1-ILSVRC2012")])
def test_logits_equal_timm(request, fixture, name, image_batch):
    ref = request.getfixturevalue(fixture)
    ours = load_timm_state(bt.create_model(name, ws_eps=TIMM_EPS), ref.state_dict()).eval()
    with torch.no_grad():
        want, got = ref(image_batch), ours(image_batch)
    assert want.abs().max() > 0.5  # the comparison is not between two near-zero outputs
    assert (want - got).abs().max().item() < 1e-4


def test_key_map_round_trips(timm_r50):
    ours = load_timm_state(bt.create_model("BiT-S-R50x1"), timm_r50.state_dict())
    back = state_dict_to_timm(ours)
    ref = timm_r50.state_dict()
    assert set(back) == set(ref)
    assert all(torch.equal(back[k], ref[k]) for k in ref)


@pytest.mark.parametrize("name,published", [("BiT-S-R50x1", 25.55), ("BiT-S-R50x3", 217.31),
                                            ("BiT-S-R101x1", 44.54)])
def test_parameter_counts_match_mindcv(name, published):
    with torch.device("meta"):
        model = bt.create_model(name)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - published) < 0.01  # published to two decimals


@pytest.mark.parametrize("name", bt.list_models())
def test_every_registered_name_builds(name):
    cfg = bt.get_config(name)
    with torch.device("meta"):
        model = bt.create_model(name)
        out = model(torch.empty(1, 3, 64, 64))
    assert out.shape == (1, cfg.num_classes)
    assert model.pretrained_cfg["input_size"] == cfg.input_size
    assert len(cfg.mean) == 3 and len(cfg.std) == 3


def test_registry_has_the_catalogue():
    names = set(bt.list_models())
    for arch in ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4"):
        assert {f"BiT-S-{arch}", f"BiT-M-{arch}"} <= names
    assert {"bit_resnet50", "bit_resnet50x3", "bit_resnet101", "BiT-distilled-R50x1-224",
            "BiT-teacher-R152x2-384"} <= names
    assert bt.get_config("BiT-M-R50x1").num_classes == 21843
    assert bt.get_config("BiT-M-R50x1").url.endswith("/bit_models/BiT-M-R50x1.npz")
    assert bt.get_config("bit_resnet50").mean == (0.485, 0.456, 0.406)
    assert bt.get_config("bit-m-r50x1").name == "BiT-M-R50x1"  # case-insensitive


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="did you mean .BiT-M-R50x1-ILSVRC2012."):
        bt.create_model("BiT-M-R50x1-ILSVRC")


def test_api_features_head_and_reset():
    model = bt.create_model("BiT-R14x0.5", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 1, 1)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    logits = model(x)
    assert logits.shape == (2, 7) and torch.count_nonzero(logits) == 0  # zero-initialised head
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3


def test_stem_pads_with_zeros_not_minus_inf():
    model = bt.create_model("BiT-R14x0.5")
    assert isinstance(model.root.pad, torch.nn.ConstantPad2d) and model.root.pool.padding == 0
    assert model.root.conv.padding == (3, 3) and isinstance(model.root.conv, StdConv2d)


def test_standardized_weight_has_zero_mean_unit_var():
    conv = StdConv2d(8, 16, kernel_size=3)
    w = conv.standardized_weight()
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.zeros(16), atol=1e-6)
    assert torch.allclose(w.var(dim=(1, 2, 3), unbiased=False), torch.ones(16), atol=1e-4)
