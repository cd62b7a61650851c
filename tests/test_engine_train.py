"""The engine learns, probes, diverges loudly and keeps what it had."""

from __future__ import annotations

import time

import pytest
import torch

from bigtransfer.data import fewshot_split, load_digits
from bigtransfer.engine import DEFAULTS, TrainingDiverged, train
from bigtransfer.engine.checkpoint import list_checkpoints, load_checkpoint_dir
from bigtransfer.engine.config import merge

TINY = dict(model="BiT-R14x0.5", pretrained=False, crop=32, precrop=36, flip=False, batch_size=32, workers=0,
            log_every=10, save_every=0, lr_batch=32)


@pytest.fixture(scope="module")
def digits_split():
    return fewshot_split(load_digits("all"), 30, 0)


def cfg(**kw) -> dict:
    return merge(DEFAULTS, {**TINY, **kw}, "test")


@pytest.mark.slow
def test_fine_tuning_goes_from_chance_to_well_above(digits_split, tmp_path):
    train_set, eval_set = digits_split
    res = train(cfg(steps=60, lr=0.02, schedule="constant", warmup_steps=5), tmp_path / "r", train_set=train_set,
                eval_set=eval_set, quiet=True)
    assert res.metrics["n"] == 1797 - 300
    assert res.metrics["top1"] > 60.0  # chance is 10 %


@pytest.mark.slow
def test_head_only_probe_is_fast_and_touches_only_the_head(digits_split, tmp_path):
    train_set, eval_set = digits_split
    torch.manual_seed(0)
    start = time.perf_counter()
    res = train(cfg(steps=200, lr=0.1, head_only=True, schedule="constant"), tmp_path / "p", train_set=train_set,
                eval_set=eval_set, quiet=True)
    elapsed = time.perf_counter() - start
    torch.manual_seed(0)  # the trainer seeds the same way before building the model
    from bigtransfer import create_model

    init = create_model("BiT-R14x0.5", num_classes=10).state_dict()
    trained = res.model.state_dict()
    assert all(torch.equal(init[k], trained[k]) for k in init if not k.startswith("head.conv"))
    assert trained["head.conv.weight"].abs().sum() > 0
    assert res.metrics["top1"] > 30.0  # random GN+WS features are still far better than chance
    assert elapsed < 120


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(digits_split, tmp_path):
    train_set, _ = digits_split
    with pytest.raises(TrainingDiverged, match=r"at step \d+; the last good checkpoint .*step_\d+ is kept"):
        train(cfg(steps=50, lr=1e9, schedule="constant", save_every=1, eval_split="none"), tmp_path / "n",
              train_set=train_set, quiet=True)
    ckpts = list_checkpoints(tmp_path / "n" / "checkpoints")
    assert ckpts
    model_state, _, _ = load_checkpoint_dir(ckpts[0])
    assert all(torch.isfinite(v).all() for v in model_state.values())


@pytest.mark.slow
def test_ema_and_label_smoothing_and_clipping_run(digits_split, tmp_path):
    train_set, eval_set = digits_split
    res = train(cfg(steps=12, lr=0.02, ema_decay=0.5, label_smoothing=0.1, clip_grad_norm=0.5, mixup=0.2,
                    precision="bf16", save_every=6), tmp_path / "e", train_set=train_set, eval_set=eval_set,
                quiet=True)
    _, _, ema_state = load_checkpoint_dir(list_checkpoints(tmp_path / "e" / "checkpoints")[0])
    assert ema_state is not None
    # the final model written is the EMA copy
    from safetensors.torch import load_file

    final = load_file(tmp_path / "e" / "model.safetensors")
    assert all(torch.equal(final[k], ema_state[k]) for k in final)
    assert 0 <= res.metrics["top1"] <= 100


@pytest.mark.slow
def test_batch_split_standardizes_once_per_step_and_matches_one_batch(digits_split, tmp_path, monkeypatch):
    """With --batch-split the weights are standardized once per optimizer step, not per micro-batch,
    and training ends where the same run in one batch ends."""
    import bigtransfer.models.fast as fast

    train_set, _ = digits_split
    steps = 4
    entered = []
    real = fast.standardize_once

    def counting(model):
        entered.append(1)
        return real(model)

    monkeypatch.setattr("bigtransfer.engine.trainer.standardize_once", counting)
    base = dict(steps=steps, lr=0.05, schedule="constant", warmup_steps=0, eval_split="none", fast_path=False)
    split = train(cfg(batch_split=4, **base), tmp_path / "s", train_set=train_set, quiet=True)
    assert len(entered) == steps  # one standardization block per optimizer step
    whole = train(cfg(batch_split=1, **base), tmp_path / "w", train_set=train_set, quiet=True)
    assert len(entered) == steps  # no block without micro-batches
    a, b = split.model.state_dict(), whole.model.state_dict()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    torch.manual_seed(0)  # the trainer seeds the same way before building the model
    from bigtransfer import create_model

    init = create_model("BiT-R14x0.5", num_classes=10).state_dict()
    moved = max((a[k] - init[k]).abs().max().item() for k in a)
    assert diff < 1e-5 and moved > 1e-3, (diff, moved)
