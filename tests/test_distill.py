"""Distillation mechanics on a tiny case: consistent inputs, the KL target, labels unused, exact resume."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from bigtransfer.data import ArrayDataset, fewshot_split, load_digits
from bigtransfer.engine import DEFAULTS
from bigtransfer.engine.config import merge
from bigtransfer.engine.distill import Distiller, kl_loss
from bigtransfer.engine.runs import LoadedModel
from bigtransfer.errors import BitError, Interrupted
from conftest import class_folders, fails, randomized

TINY = dict(model="BiT-R14x0.5", pretrained=False, crop=32, precrop=32, eval_crop=32, eval_resize=32, flip=True,
            transforms="recipe", scale=[0.5, 1.0], batch_size=8, workers=0, log_every=2, save_every=0, lr=1e-3,
            lr_batch=8, optimizer="adamw", schedule="cosine", warmup_steps=1, steps=4, mixup=1.0, hyperrule=False,
            clip_grad_norm=1.0, fast_path=False, channels_last=False, tensorboard=False, teacher="in-memory")


@pytest.fixture(scope="module")
def digits():
    train, rest = fewshot_split(load_digits("all"), 3, 0)
    return train, ArrayDataset(rest.parent.images[rest.indices[:60]], rest.targets[:60], rest.classes, "digits")


def teacher(seed: int = 1, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> LoadedModel:
    model = randomized("BiT-R14x0.5", 10, seed)
    return LoadedModel(model, {**DEFAULTS, "mean": list(mean), "std": list(std)}, [str(i) for i in range(10)])


def cfg(**kw) -> dict:
    return merge(DEFAULTS, {**TINY, **kw}, "test")


def make(tmp_path, digits, name="run", t=None, **kw) -> Distiller:
    train, rest = digits
    return Distiller(cfg(**kw), tmp_path / name, teacher=t or teacher(), train_set=train, eval_set=rest, quiet=True)


def test_kl_loss_is_zero_for_equal_logits_and_positive_otherwise():
    a = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    assert kl_loss(a, a.clone()).item() == 0.0
    assert kl_loss(a, a + 3.0).item() == pytest.approx(0.0, abs=1e-6)  # softmax ignores a shift
    b = torch.randn(5, 10, generator=torch.Generator().manual_seed(1))
    p, q = torch.softmax(b, 1), torch.softmax(a, 1)
    assert kl_loss(a, b).item() == pytest.approx((p * (p.log() - q.log())).sum(1).mean().item(), rel=1e-5)
    assert kl_loss(a * 2, b * 2, temperature=2.0).item() == pytest.approx(4 * kl_loss(a, b).item(), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("teacher_stats", [((0.5,) * 3, (0.5,) * 3), ((0.2, 0.3, 0.4), (0.25, 0.2, 0.3))])
def test_teacher_and_student_see_the_same_augmented_mixed_batch(tmp_path, digits, teacher_stats):
    d = make(tmp_path, digits, t=teacher(1, *teacher_stats))
    seen = {"student": [], "teacher": []}
    d.net.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].detach().clone()))
    d.teacher.model.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].detach().clone()))
    d.fit()
    assert len(seen["student"]) >= 4 and len(seen["teacher"]) >= 4  # 4 training steps, then the evaluations
    mean_s, std_s = torch.tensor(d.cfg["mean"]).view(1, 3, 1, 1), torch.tensor(d.cfg["std"]).view(1, 3, 1, 1)
    mean_t, std_t = (torch.tensor(v).view(1, 3, 1, 1) for v in teacher_stats)
    for s, t in zip(seen["student"][:4], seen["teacher"][:4], strict=True):
        assert torch.allclose(s * std_s + mean_s, t * std_t + mean_t, atol=1e-5)  # the same pixels
        assert s.std() > 0


def test_the_loss_is_zero_when_the_student_is_the_teacher(tmp_path, digits):
    t = teacher(3)
    d = make(tmp_path, digits, t=t)
    d.net.load_state_dict(copy.deepcopy(t.model.state_dict()))
    x = torch.stack([d.train_tf(d.train_set.load_image(i)) for i in range(8)])
    d.net.train()
    loss = d.compute_loss(x, torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long), 0.5)
    assert 0.0 <= loss.item() < 1e-9
    d.net.load_state_dict(randomized("BiT-R14x0.5", 10, 9).state_dict())
    assert d.compute_loss(x, torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long), 0.5).item() > 1e-3


@pytest.mark.slow
def test_labels_are_not_used(tmp_path, digits):
    train, rest = digits
    shuffled = copy.copy(train)
    shuffled.targets = np.random.default_rng(0).permutation(train.targets)
    assert not np.array_equal(shuffled.targets, train.targets)
    a = make(tmp_path, digits, "a").fit()
    b = Distiller(cfg(), tmp_path / "b", teacher=teacher(), train_set=shuffled, eval_set=rest, quiet=True).fit()
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], randomized("BiT-R14x0.5", 10, 0).state_dict()[k]) for k in sa)


@pytest.mark.slow
def test_an_interrupted_distillation_resumes_exactly(tmp_path, digits, monkeypatch):
    ref = make(tmp_path, digits, "ref", steps=6).fit().model.state_dict()
    original = Distiller.after_step

    def stop_at_3(self, loop, loss, stop):
        if loop.step == 3:
            stop.signum = 15
        original(self, loop, loss, stop)

    monkeypatch.setattr(Distiller, "after_step", stop_at_3)
    with pytest.raises(Interrupted):
        make(tmp_path, digits, "cut", steps=6).fit()
    monkeypatch.setattr(Distiller, "after_step", original)
    got = make(tmp_path, digits, "cut", steps=6).fit().model.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.slow
def test_evaluation_reports_teacher_and_agreement(tmp_path, digits):
    result = make(tmp_path, digits, eval_every=2).fit()
    m = result.metrics
    assert {"top1", "balanced_accuracy", "agreement", "teacher_top1", "teacher_balanced_accuracy"} <= set(m)
    assert 0.0 <= m["agreement"] <= 100.0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["agreement"] == m["agreement"]
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "agreement" in r] == [2, 4]
    # the agreement is the share of equal predictions, checked against the models themselves
    d = make(tmp_path, digits, "check")
    d.net.load_state_dict(result.model.state_dict())
    x = torch.stack([d.eval_tf(d.eval_set.load_image(i)) for i in range(len(d.eval_set))])
    with torch.no_grad():
        same = (d.net.eval()(x).argmax(1) == d.teacher.model.eval()(x).argmax(1)).float().mean().item()
    assert m["agreement"] == pytest.approx(100 * same, abs=100 / len(x) + 1e-6)


def test_extra_images_from_a_plain_folder_join_the_stream(tmp_path, digits):
    folder = tmp_path / "unlabeled" / "deeper"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    d = make(tmp_path, digits, extra_data=str(tmp_path / "unlabeled"))
    assert len(d.train_set) == len(digits[0]) + 5
    assert d.train_set.load_image(len(digits[0])).shape == (3, 12, 12)
    with pytest.raises(BitError, match="no such folder"):
        make(tmp_path, digits, "b", extra_data=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BitError, match="holds no images"):
        make(tmp_path, digits, "c", extra_data=str(tmp_path / "empty"))


def test_a_teacher_of_other_classes_is_one_clear_error(tmp_path, digits):
    t = teacher()
    t.classes = [f"c{i}" for i in range(10)]
    with pytest.raises(BitError, match="not the evaluation data's"):
        make(tmp_path, digits, t=t)
    small = LoadedModel(randomized("BiT-R14x0.5", 3, 0), {**DEFAULTS, "mean": [0.5] * 3, "std": [0.5] * 3}, None)
    with pytest.raises(BitError, match="teacher predicts 3 classes"):
        make(tmp_path, digits, "b", t=small)


@pytest.mark.slow
def test_bit_distill_end_to_end_from_a_run_folder(tmp_path, capsys):
    from bigtransfer.cli.main import main

    data = class_folders(tmp_path / "data", {"a": 6, "b": 6})
    common = ["--data", f"imagefolder:{data}", "--quiet", "--steps", "2", "--batch-size", "4",
              "--set", "crop=32", "--set", "precrop=32", "--set", "eval_crop=32", "--set", "eval_resize=32",
              "--set", "fast_path=false", "--set", "workers=0", "--val-split", "0.5"]
    assert main(["finetune", "--recipe", "demo_finetune", "--no-pretrained", "--out", str(tmp_path / "t"),
                 *common]) == 0
    assert main(["distill", "--teacher", str(tmp_path / "t"), "--student", "BiT-R14x0.5", "--no-pretrained",
                 "--out", str(tmp_path / "s"), *common]) == 0
    out = capsys.readouterr().out
    assert "agreement" in out and "teacher top-1" in out
    assert json.loads((tmp_path / "s" / "classes.json").read_text()) == ["a", "b"]
    assert main(["predict", str(tmp_path / "s"), str(data / "a" / "0.png")]) == 0
    fails(["distill", "--data", f"imagefolder:{data}", "--student", "BiT-R14x0.5", "--out", str(tmp_path / "x")],
          capsys, "no teacher: pass --teacher")
    fails(["distill", "--teacher", str(tmp_path / "t"), "--data", f"imagefolder:{data}", "--head-only"], capsys,
          "drop --head-only")
    fails(["distill", "--teacher", str(tmp_path / "t"), "--data", f"imagefolder:{data}", "--temperature", "0"],
          capsys, "temperature must be a number above 0")


@pytest.mark.slow
def test_torchrun_two_processes_distil_as_one(tmp_path):
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    common = ["--data", "digits", "--eval-split", "none", "--quiet", "--batch-size", "16", "--steps", "4",
              "--set", "crop=32", "--set", "precrop=32", "--set", "eval_crop=32", "--set", "eval_resize=32",
              "--set", "fast_path=false", "--set", "workers=0", "--set", "save_every=0", "--set", "warmup_steps=0"]
    cli = [sys.executable, "-m", "bigtransfer.cli.main"]
    subprocess.run([*cli, "finetune", "--recipe", "demo_finetune", "--no-pretrained", "--out", str(tmp_path / "t"),
                    *common], check=True, env=env, capture_output=True, timeout=600)
    distil = ["distill", "--teacher", str(tmp_path / "t"), "--student", "BiT-R14x0.5", "--no-pretrained",
              "--recipe", "demo_distill", *common]
    subprocess.run([*cli, *distil, "--batch-split", "2", "--out", str(tmp_path / "one")], check=True, env=env,
                   capture_output=True, timeout=600)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "bigtransfer.cli.main", *distil, "--out", str(tmp_path / "ddp")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ref, got = (load_file(tmp_path / name / "model.safetensors") for name in ("one", "ddp"))
    from bigtransfer import create_model

    torch.manual_seed(0)  # the student's initial weights, as the engine draws them for seed 0
    init = create_model("BiT-R14x0.5", num_classes=10).state_dict()
    # Equal to rounding: the weights as a whole agree to 1e-5 relative; Adam's step (about lr * sign(g) where a
    # gradient is near zero) can carry a rounding difference in such a gradient to a single weight, hence 1e-4 there.
    diff = sum((ref[k] - got[k]).double().pow(2).sum() for k in ref).sqrt()
    assert diff / sum(ref[k].double().pow(2).sum() for k in ref).sqrt() < 1e-5
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) < 1e-4
    assert max((ref[k] - init[k]).abs().max().item() for k in ref if "head" not in k) > 1e-3  # training moved them
