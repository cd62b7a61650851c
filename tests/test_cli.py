"""Every ``bit`` command end to end on a tiny model and the embedded digits set, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bigtransfer.cli.main import main

TINY = ["--model", "BiT-R14x0.5", "--no-pretrained", "--workers", "0", "--quiet", "--batch-size", "16",
        "--set", "crop=32", "--set", "precrop=36", "--set", "flip=false", "--set", "log_every=5"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["finetune", "--data", "digits", "--set", "shots=10", "--eval-split", "rest", "--steps", "20",
                 "--lr", "0.02", "--out", str(out), *TINY]) == 0
    return out


def test_models_lists_every_variant(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "BiT-M-R152x4" in out and "bit_resnet101" in out and "25.55M" in out and "448px" in out


def test_recipes_lists_and_shows(capsys):
    assert main(["recipes"]) == 0
    assert "bigtransfer_cifar10_r101x3" in capsys.readouterr().out
    assert main(["recipes", "bit_resnet50_imagenet"]) == 0
    assert "milestones:" in capsys.readouterr().out


@pytest.mark.slow
def test_finetune_writes_a_complete_run_folder(run_dir, capsys):
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors", "summary.json", "classes.json", "eval.json",
                 "training.png", "confusion.png"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["n_train"] == 100 and 0 <= summary["top1"] <= 100
    assert json.loads((run_dir / "eval.json").read_text())["n"] == 1797 - 100


@pytest.mark.slow
def test_same_folder_resumes_and_a_different_run_is_refused(run_dir, capsys):
    args = ["finetune", "--data", "digits", "--set", "shots=10", "--eval-split", "rest", "--lr", "0.02",
            "--out", str(run_dir), *TINY]
    assert main([*args, "--steps", "20"]) == 0  # finished run: reused, no error
    assert main([*args, "--steps", "25"]) == 2
    err = capsys.readouterr().err
    assert "holds a different run" in err and "steps" in err and "Traceback" not in err


@pytest.mark.slow
def test_evaluate_and_predict(run_dir, tmp_path, capsys):
    assert main(["evaluate", str(run_dir), "--data", "digits", "--split", "all", "--workers", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and (run_dir / "eval-all" / "metrics.json").exists()
    from sklearn.datasets import load_digits

    d = load_digits()
    img = tmp_path / "digit.png"
    Image.fromarray((d.images[0] * 16).clip(0, 255).astype(np.uint8)).save(img)
    assert main(["predict", str(run_dir), str(img)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(img)) and line.count("%") == 5


@pytest.mark.slow
def test_fewshot_sweep_with_scratch_baseline(tmp_path, capsys):
    out = tmp_path / "fs"
    scratch = tmp_path / "scratch.yaml"
    scratch.write_text("pretrained: false\noptimizer: adamw\nlr: 0.001\nlr_batch: 16\nschedule: cosine\n"
                       "warmup_steps: 1\nsteps: 4\n")
    args = ["fewshot", "--data", "digits", "--shots", "1,2", "--seeds", "0,1", "--baseline", "scratch",
            "--scratch-recipe", str(scratch), "--steps", "4", "--out", str(out), "--metric", "balanced_accuracy", *TINY]
    assert main(args) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]) == {"transfer", "scratch"} and len(res["results"]["scratch"]["2"]) == 2
    assert "| 1 |" in printed and (out / "fewshot.png").stat().st_size > 1000
    before = (out / "transfer" / "k1_s0" / "summary.json").stat().st_mtime
    assert main(args) == 0  # every cell is cached: nothing is retrained
    assert (out / "transfer" / "k1_s0" / "summary.json").stat().st_mtime == before


@pytest.mark.slow
def test_train_with_a_recipe_file(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("model: BiT-R14x0.5\npretrained: false\nhyperrule: false\ntransforms: recipe\ncrop: 32\n"
                      "eval_crop: 32\nepochs: 0.2\nlr: 0.05\nlr_batch: 16\nschedule: multistep\nwarmup_epochs: 0.05\n"
                      "milestones: [0.1]\ngamma: 0.5\nlabel_smoothing: 0.1\nema_decay: 0.9\nclip_grad_norm: 1.0\n"
                      "optimizer: rmsprop\nweight_decay: 0.00004\nweight_decay_filter: conv_only\n")
    out = tmp_path / "up"
    assert main(["train", "--recipe", str(recipe), "--data", "digits", "--eval-split", "none", "--out", str(out),
                 "--workers", "0", "--quiet", "--batch-size", "16"]) == 0
    assert (out / "model.safetensors").exists() and (out / "checkpoints" / "latest").exists()
    assert json.loads((out / "summary.json").read_text())["steps"] == 23  # ceil(0.2 * 1797 / 16)


@pytest.mark.parametrize("argv,needle", [
    (["finetune", "--model", "BiT-M-R50x2", "--data", "digits"], "did you mean"),
    (["finetune", "--data", "nosuchset:/x", *TINY], "unknown data set"),
    (["finetune", "--data", "imagefolder:/no/such/dir", *TINY], "/no/such/dir"),
    (["finetune", "--data", "digits", "--set", "shots=500", *TINY], "500"),
    (["finetune", "--recipe", "hyperule", "--data", "digits"], "did you mean 'hyperrule'"),
    (["evaluate", "/no/such/run", "--data", "digits"], "no such run folder '/no/such/run'"),
])
def test_user_errors_are_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err and "Traceback" not in err
