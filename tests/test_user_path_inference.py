"""The trained head reaches inference, fine-tuning starts from a zero head, one run reports one accuracy, and a run
says what it will do before it does it (plan, dry run, batch warnings, memory check)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bigtransfer as bt
from bigtransfer.cli.main import main
from bigtransfer.engine.trainer import Trainer

TINY = ["--model", "BiT-R14x0.5", "--no-pretrained", "--workers", "0", "--quiet", "--set", "crop=32",
        "--set", "precrop=36"]


def colour_folders(root: Path, n: int, seed: int = 0) -> Path:
    """Three classes told apart by their dominant colour channel: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
            a[..., c] += 150
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run3(tmp_path_factory) -> dict:
    """A 3-class run trained enough that its head is far from zero, with a test split."""
    root = tmp_path_factory.mktemp("colours")
    colour_folders(root / "data" / "train", 8)
    colour_folders(root / "data" / "test", 6, seed=1)
    out = root / "run"
    argv = ["finetune", "--data", f"imagefolder:{root / 'data'}", "--steps", "12", "--batch-size", "12",
            "--lr", "0.05", "--out", str(out), *TINY]
    assert main(argv) == 0
    return {"run": out, "data": root / "data", "image": root / "data" / "test" / "green" / "0.png"}


def predicted(out: str, image: Path) -> list[tuple[str, float]]:
    line = next(ln for ln in out.splitlines() if ln.startswith(str(image)))
    return [(m.group(1), float(m.group(2))) for m in re.finditer(r"(\w+) ([\d.]+)%", line.split(": ", 1)[1])]


# --- 1. the checkpoint defines the head at inference ---------------------------------------------------------------

@pytest.mark.slow
def test_create_model_with_weights_keeps_the_checkpoints_head(run3):
    state = bt.weights.read_safetensors(run3["run"] / "model.safetensors")[0]
    model = bt.create_model("BiT-R14x0.5", weights=str(run3["run"] / "model.safetensors"))
    assert model.num_classes == 3
    assert torch.equal(model.head.conv.weight, state["head.conv.weight"])
    assert model.head.conv.weight.abs().sum() > 0


@pytest.mark.slow
def test_predict_with_a_model_name_and_weights_uses_the_trained_head(run3, capsys):
    weights = str(run3["run"] / "model.safetensors")
    assert main(["predict", "BiT-R14x0.5", "--weights", weights, str(run3["image"]), "--mode", "fp32"]) == 0
    by_name = predicted(capsys.readouterr().out, run3["image"])
    assert main(["predict", str(run3["run"]), str(run3["image"]), "--mode", "fp32"]) == 0
    by_run = predicted(capsys.readouterr().out, run3["image"])
    assert by_name == by_run
    assert [c for c, _ in by_name] == sorted([c for c, _ in by_name], key=[c for c, _ in by_run].index)
    assert {c for c, _ in by_name} == {"red", "green", "blue"}  # class names, three of them, not ten indices
    assert len({p for _, p in by_name}) > 1  # not the uniform output of a zero head


@pytest.mark.slow
def test_a_bare_weights_file_rebuilds_the_model_with_its_head(run3, capsys):
    assert main(["predict", str(run3["run"] / "model.safetensors"), str(run3["image"]), "--mode", "fp32"]) == 0
    assert main(["predict", str(run3["run"]), str(run3["image"]), "--mode", "fp32"]) == 0
    a, b = capsys.readouterr().out.strip().splitlines()
    assert a.split(": ", 1)[1] == b.split(": ", 1)[1]


@pytest.mark.slow
def test_evaluate_with_a_model_name_and_weights_matches_the_run(run3, capsys):
    common = ["--data", f"imagefolder:{run3['data']}", "--split", "test", "--mode", "fp32", "--workers", "0",
              "--quiet"]
    assert main(["evaluate", "BiT-R14x0.5", "--weights", str(run3["run"] / "model.safetensors"), *common,
                 "--out", str(run3["run"].parent / "ev-name")]) == 0
    assert main(["evaluate", str(run3["run"]), *common, "--out", str(run3["run"].parent / "ev-run")]) == 0
    by_name = json.loads((run3["run"].parent / "ev-name" / "metrics.json").read_text())
    by_run = json.loads((run3["run"].parent / "ev-run" / "metrics.json").read_text())
    assert by_name["top1"] == by_run["top1"]
    assert by_name["top5"] == 100.0  # three classes: the true one is always among the top five


@pytest.mark.slow
def test_fine_tuning_on_another_class_count_says_the_head_is_replaced(run3, tmp_path, caplog):
    data = colour_folders(tmp_path / "two", 4)
    for d in ("blue",):
        for f in (data / d).iterdir():
            f.unlink()
        (data / d).rmdir()
    cfg = bt.recipes.load_recipe("hyperrule") | {"model": "BiT-R14x0.5", "pretrained": False,
                                                  "weights": str(run3["run"] / "model.safetensors"),
                                                  "data": f"imagefolder:{data}", "eval_split": "none", "steps": 1,
                                                  "batch_size": 4, "workers": 0, "crop": 32, "precrop": 36}
    with caplog.at_level(logging.INFO, logger="bigtransfer"):
        trainer = Trainer(cfg, tmp_path / "ft")
    assert trainer.model.num_classes == 2
    assert "new zero-initialised head of 2 classes replaces the checkpoint's head of 3 classes" in caplog.text


# --- 2. zero_head is honoured when the checkpoint's head already fits --------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("zero_head", [True, False])
def test_zero_head_applies_even_when_the_checkpoint_head_matches(run3, tmp_path, zero_head):
    weights = run3["run"] / "model.safetensors"
    cfg = bt.recipes.load_recipe("hyperrule") | {"model": "BiT-R14x0.5", "pretrained": False,
                                                  "weights": str(weights), "data": f"imagefolder:{run3['data']}",
                                                  "eval_split": "none", "steps": 1, "batch_size": 4, "workers": 0,
                                                  "crop": 32, "precrop": 36, "zero_head": zero_head}
    model = Trainer(cfg, tmp_path / "ft").model
    head = bt.weights.read_safetensors(weights)[0]["head.conv.weight"]
    if zero_head:
        assert model.head.conv.weight.abs().sum() == 0 and model.head.conv.bias.abs().sum() == 0
    else:
        assert torch.equal(model.head.conv.weight, head)


# --- 5. one run, one accuracy ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bit_evaluate_reports_the_trainers_number_for_the_same_run(run3, capsys):
    saved = json.loads((run3["run"] / "eval.json").read_text())
    out = run3["run"].parent / "ev-default"
    assert main(["evaluate", str(run3["run"]), "--split", "test", "--workers", "0", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    again = json.loads((out / "metrics.json").read_text())
    assert again["mode"] == saved["mode"]
    assert again["top1"] == saved["top1"] and again["balanced_accuracy"] == saved["balanced_accuracy"]
    assert again["confusion"] == saved["confusion"]
    assert f"inference {saved['mode']}" in printed


# --- 8. a run that saved nothing can be started again with other settings --------------------------------------

def test_a_run_that_never_saved_restarts_with_other_settings(tmp_path, capsys):
    data = colour_folders(tmp_path / "data", 4)
    (data / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "run"
    argv = ["finetune", "--data", f"imagefolder:{data}", "--steps", "1", "--batch-size", "13", "--eval-split", "none",
            "--out", str(out), *TINY]  # one batch holds all 13 images, the broken one too
    assert main(argv) == 2
    assert "--skip-corrupt" in capsys.readouterr().err
    assert main([*argv, "--skip-corrupt"]) == 0
    assert (out / "model.safetensors").is_file()


def test_a_run_with_a_checkpoint_is_still_protected(tmp_path, capsys):
    data = colour_folders(tmp_path / "data", 4)
    out = tmp_path / "run"
    argv = ["finetune", "--data", f"imagefolder:{data}", "--steps", "1", "--batch-size", "4", "--eval-split", "none",
            "--out", str(out), *TINY]
    assert main(argv) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main([*argv, "--lr", "0.5"]) == 2
    assert "holds a different run" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before


# --- 11. a batch that cannot fit is refused up front ---------------------------------------------------------------

def test_an_absurd_batch_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bigtransfer.engine.plan.available_bytes", lambda device: 8 * 2**30)
    data = colour_folders(tmp_path / "data", 16)
    out = tmp_path / "run"
    argv = ["finetune", "--data", f"imagefolder:{data}", "--steps", "1", "--batch-size", "100000",
            "--eval-split", "none", "--out", str(out), *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: a micro-batch of 100000 images at 32 px needs about") and "\n" not in err
    assert "free on cpu; use --batch-split" in err
    assert not out.exists()


def test_the_memory_check_lets_a_normal_batch_through(tmp_path, monkeypatch):
    monkeypatch.setattr("bigtransfer.engine.plan.available_bytes", lambda device: 8 * 2**30)
    data = colour_folders(tmp_path / "data", 4)
    cfg = bt.recipes.load_recipe("hyperrule") | {"model": "BiT-R14x0.5", "pretrained": False,
                                                  "data": f"imagefolder:{data}", "eval_split": "none",
                                                  "workers": 0, "crop": 32, "precrop": 36}
    assert Trainer(cfg, tmp_path / "run", dry_run=True).cfg["batch_size"] == 512


# --- 14. the plan, --dry-run, the batch warning and the time estimate --------------------------------------------

def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, caplog):
    data = colour_folders(tmp_path / "data", 16)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="bigtransfer"):
        assert main(["finetune", "--data", f"imagefolder:{data}", "--eval-split", "none", "--out", str(out),
                     "--dry-run", *TINY]) == 0
    text = caplog.text
    assert "plan: BiT-R14x0.5 (from scratch) on imagefolder:" in text and "48 training images, 3 classes" in text
    assert "resolution: resize 36, random crop 32, evaluate at 32" in text
    assert "batch 512 (micro-batch 512); 500 steps" in text
    assert "schedule: hyperrule, warmup 100, lr x0.1 at steps 200, 300, 400; lr 0.003" in text
    assert "device cpu, precision fp32" in text
    assert "warning: batch 512 is 11x the 48 training images" in text
    assert not out.exists()


@pytest.mark.slow
def test_a_training_run_prints_its_plan_and_a_time_estimate(tmp_path, caplog):
    data = colour_folders(tmp_path / "data", 4)
    with caplog.at_level(logging.INFO, logger="bigtransfer"):
        assert main(["finetune", "--data", f"imagefolder:{data}", "--eval-split", "none", "--steps", "5",
                     "--batch-size", "4", "--out", str(tmp_path / "run"), *TINY]) == 0
    assert "plan: BiT-R14x0.5" in caplog.text
    assert re.search(r"timing: [\d.]+ s/step over the first steps; about \d+ s for the 2 steps left", caplog.text)
    assert "warning: batch" not in caplog.text


@pytest.mark.slow
def test_a_run_folder_of_an_older_version_still_resumes(tmp_path, capsys):
    """Settings added since a run was written take their defaults, so the same command still picks it up."""
    import yaml

    data = colour_folders(tmp_path / "data", 4)
    out = tmp_path / "run"
    argv = ["finetune", "--data", f"imagefolder:{data}", "--steps", "1", "--batch-size", "4", "--eval-split", "none",
            "--out", str(out), *TINY]
    assert main(argv) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    for key in ("val_split", "rmsprop_init"):
        saved.pop(key, None)
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert main(argv) == 0, capsys.readouterr().err


@pytest.mark.slow
def test_convert_keeps_the_checkpoints_head(run3, tmp_path):
    dst = tmp_path / "r14.npz"
    assert main(["convert", str(run3["run"] / "model.safetensors"), str(dst), "--model", "BiT-R14x0.5"]) == 0
    model = bt.create_model("BiT-R14x0.5", weights=str(dst))
    want = bt.weights.read_safetensors(run3["run"] / "model.safetensors")[0]["head.conv.weight"]
    assert model.num_classes == 3 and torch.allclose(model.head.conv.weight, want)


def test_a_dry_run_reads_no_weights(tmp_path, caplog):
    """Planning a fine-tune of a model whose weights are not cached needs no download."""
    data = colour_folders(tmp_path / "data", 4)
    with caplog.at_level(logging.INFO, logger="bigtransfer"):
        assert main(["finetune", "--model", "BiT-M-R50x1", "--data", f"imagefolder:{data}", "--eval-split", "none",
                     "--out", str(tmp_path / "run"), "--dry-run", "--workers", "0", "--quiet"]) == 0
    assert "plan: BiT-M-R50x1 (pretrained)" in caplog.text and "resize 160, random crop 128" in caplog.text


def test_a_resolution_too_large_for_one_image_names_the_resolution(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bigtransfer.engine.plan.available_bytes", lambda device: 8 * 2**30)
    data = colour_folders(tmp_path / "data", 4)
    argv = ["finetune", "--data", f"imagefolder:{data}", "--steps", "1", "--batch-size", "4", "--eval-split", "none",
            "--out", str(tmp_path / "run"), *TINY, "--set", "crop=100000", "--set", "precrop=100000"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: one image at 100000 px needs about") and "lower the resolution" in err
