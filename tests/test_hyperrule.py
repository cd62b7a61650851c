"""The BiT-HyperRule: every regime boundary, the learning-rate schedule, batch rescaling."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bigtransfer import hyperrule
from bigtransfer.errors import BitError
from bigtransfer.hyperrule import HyperParams, for_dataset


@pytest.mark.parametrize("n, expected", [
    (1, (100, 200, 300, 400, 500)),
    (19_999, (100, 200, 300, 400, 500)),
    (20_000, (500, 3000, 6000, 9000, 10_000)),
    (499_999, (500, 3000, 6000, 9000, 10_000)),
    (500_000, (500, 6000, 12_000, 18_000, 20_000)),
    (14_000_000, (500, 6000, 12_000, 18_000, 20_000)),
])
def test_schedule_regimes(n, expected):
    assert hyperrule.schedule(n) == expected
    hp = for_dataset(n, 32)
    assert (hp.warmup_steps, *hp.decay_steps, hp.total_steps) == expected


@pytest.mark.parametrize("n, alpha", [(10, 0.0), (19_999, 0.0), (20_000, 0.1), (1_281_167, 0.1)])
def test_mixup_regimes(n, alpha):
    assert hyperrule.mixup_alpha(n) == alpha
    assert for_dataset(n, 224).mixup_alpha == alpha


@pytest.mark.parametrize("size, code, paper", [
    ((95, 96), (160, 128), (160, 128)),
    ((96, 95), (160, 128), (160, 128)),
    ((96, 96), (512, 480), (448, 384)),
    (32, (160, 128), (160, 128)),
    ((8, 8), (160, 128), (160, 128)),
    ((50, 200), (512, 480), (448, 384)),  # area 10 000 >= 9 216: large, however thin
    (224, (512, 480), (448, 384)),
])
def test_resolution_rules(size, code, paper):
    assert hyperrule.resolution(size) == code
    assert hyperrule.resolution(size, "code") == code
    assert hyperrule.resolution(size, "paper") == paper
    hp = for_dataset(1000, size, resolution_rule="paper")
    assert (hp.precrop, hp.crop) == paper


def test_unknown_rule_and_empty_set_are_clear_errors():
    with pytest.raises(BitError, match="'code'.*'paper'"):
        hyperrule.resolution(32, "tpu")
    with pytest.raises(BitError, match="empty"):
        for_dataset(0, 32)
    with pytest.raises(BitError, match="batch size"):
        for_dataset(100, 32).rescaled(0)


def test_fewshot_cifar10_is_the_official_setting():
    # CIFAR-10 at 10 shots: 100 images of 32x32.
    hp = for_dataset(100, (32, 32))
    assert hp == HyperParams(precrop=160, crop=128, warmup_steps=100, decay_steps=(200, 300, 400), total_steps=500,
                             mixup_alpha=0.0, base_lr=0.003, batch_size=512, momentum=0.9)


def test_lr_warmup_decays_and_end():
    hp = for_dataset(50_000, 32)  # 500 warmup, decays after 3000, 6000, 9000, end at 10 000
    assert hp.lr_at(0) == 0.0
    assert hp.lr_at(250) == pytest.approx(0.0015)
    assert hp.lr_at(499) == pytest.approx(0.003 * 499 / 500)
    assert hp.lr_at(500) == pytest.approx(0.003)
    # The official rule divides only once the step is past a boundary.
    assert hp.lr_at(3000) == pytest.approx(0.003)
    assert hp.lr_at(3001) == pytest.approx(0.0003)
    assert hp.lr_at(6000) == pytest.approx(0.0003)
    assert hp.lr_at(6001) == pytest.approx(0.00003)
    assert hp.lr_at(9000) == pytest.approx(0.00003)
    assert hp.lr_at(9001) == pytest.approx(0.000003)
    assert hp.lr_at(9999) == pytest.approx(0.000003)
    assert hp.lr_at(10_000) is None
    assert hp.lr_at(12_345) is None


def test_lr_fewshot_schedule_every_phase():
    hp = for_dataset(10, 32)
    expected = {0: 0.0, 1: 0.00003, 50: 0.0015, 100: 0.003, 200: 0.003, 201: 0.0003, 300: 0.0003,
                301: 0.00003, 400: 0.00003, 401: 0.000003, 499: 0.000003}
    for step, lr in expected.items():
        assert hp.lr_at(step) == pytest.approx(lr), step
    assert hp.lr_at(500) is None


@given(n=st.integers(1, 2_000_000), step=st.integers(0, 25_000))
def test_lr_properties(n, step):
    hp = for_dataset(n, 32)
    lr = hp.lr_at(step)
    if step >= hp.total_steps:
        assert lr is None
        return
    assert 0.0 <= lr <= hp.base_lr
    if step < hp.warmup_steps:
        assert lr == pytest.approx(hp.base_lr * step / hp.warmup_steps)
    else:
        nxt = hp.lr_at(step + 1)
        assert nxt is None or nxt <= lr  # non-increasing after warmup


@pytest.mark.parametrize("batch, warm, decays, total, lr", [
    (128, 400, (800, 1200, 1600), 2000, 0.00075),
    (1024, 50, (100, 150, 200), 250, 0.006),
    (512, 100, (200, 300, 400), 500, 0.003),
    (4096, 13, (25, 38, 50), 63, 0.024),  # x 1/8 gives 12.5, 25, 37.5, 50, 62.5: halves round up
])
def test_rescaled_for_other_batch_sizes(batch, warm, decays, total, lr):
    hp = for_dataset(100, 32, batch_size=batch)
    assert (hp.warmup_steps, hp.decay_steps, hp.total_steps) == (warm, decays, total)
    assert hp.base_lr == pytest.approx(lr)
    assert hp.batch_size == batch
    # Rescaling is relative to the current batch size and round-trips where no rounding happened.
    assert for_dataset(100, 32).rescaled(128).rescaled(512) == for_dataset(100, 32)


def test_as_dict_is_json_ready():
    d = for_dataset(50_000, (32, 32), batch_size=128).as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["decay_steps"] == [12_000, 24_000, 36_000]
    assert d["total_steps"] == 40_000 and d["warmup_steps"] == 2000
    assert d["mixup_alpha"] == 0.1 and d["crop"] == 128 and d["precrop"] == 160
    assert set(d) == {"precrop", "crop", "warmup_steps", "decay_steps", "total_steps", "mixup_alpha", "base_lr",
                      "batch_size", "momentum"}


def test_hyperparams_are_frozen():
    hp = for_dataset(10, 32)
    with pytest.raises(AttributeError):
        hp.crop = 64  # type: ignore[misc]
