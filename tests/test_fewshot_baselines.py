"""bit fewshot --baseline scratch,probe,pixels on any data set, baseline recipes on record, and small cells."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bigtransfer.cli.main import main
from bigtransfer.engine.baselines import BASELINES, baseline_methods, parse_baselines, pixel_baseline, pixel_matrix
from bigtransfer.errors import BitError
from conftest import fails

TINY = ["--model", "BiT-R14x0.5", "--no-pretrained", "--workers", "0", "--quiet", "--batch-size", "8",
        "--set", "crop=32", "--set", "precrop=36", "--set", "flip=false", "--set", "log_every=5", "--steps", "2"]


def bright_dark_folder(root, per_class: int = 6):
    """Three classes an image's brightness tells apart: a linear model on pixels separates them."""
    rng = np.random.default_rng(0)
    for c, level in {"bright": 220, "dark": 30, "mid": 125}.items():
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(level + rng.normal(0, 20, (24, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def tiny_recipes(tmp_path) -> list[str]:
    scratch, probe = tmp_path / "scratch_tiny.yaml", tmp_path / "probe_tiny.yaml"
    scratch.write_text("pretrained: false\ntransforms: recipe\nscale: [0.5, 1.0]\noptimizer: adamw\nlr: 0.003\n"
                       "lr_batch: 8\nschedule: cosine\nwarmup_steps: 1\nsteps: 3\nmixup: 1.0\n")
    probe.write_text("head_only: true\noptimizer: sgd\nlr: 0.1\nlr_batch: 8\nschedule: constant\nsteps: 3\n")
    return ["--scratch-recipe", str(scratch), "--probe-recipe", str(probe)]


def test_parse_baselines_orders_names_and_refuses_unknown_ones():
    assert parse_baselines("pixels, scratch") == ["scratch", "pixels"]
    assert parse_baselines("") == [] and parse_baselines(None) == []
    with pytest.raises(BitError, match="unknown baseline 'linear'.*scratch, probe, pixels"):
        parse_baselines("scratch,linear")


def test_the_packaged_baseline_recipes_are_made_for_their_baseline():
    methods = baseline_methods(["scratch", "probe"])
    scratch, probe = methods[BASELINES["scratch"]], methods[BASELINES["probe"]]
    assert scratch["pretrained"] is False and scratch["weights"] is None and not scratch["head_only"]
    assert scratch["optimizer"] == "adamw" and scratch["schedule"] == "cosine" and scratch["mixup"] > 0
    assert scratch["steps"] >= 1000 and scratch["transforms"] == "recipe"  # long enough to converge from scratch
    assert probe["head_only"] is True and "pretrained" not in probe and "weights" not in probe  # the run's backbone


def test_pixel_baseline_matches_a_hand_computation_on_an_image_folder(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    from bigtransfer.data import fewshot_indices, load_dataset

    ds = load_dataset(f"imagefolder:{bright_dark_folder(tmp_path / 'd')}", "train")
    assert not hasattr(ds, "images")  # files on disk, not one in-memory array
    x = pixel_matrix(ds)
    assert x.shape == (len(ds), 3 * 32 * 32) and x.dtype == np.uint8
    score = pixel_baseline(ds, metric="top1")
    chosen = fewshot_indices(ds.targets, 2, 1, ds.classes)
    rest = np.setdiff1d(np.arange(len(ds)), chosen)
    clf = LogisticRegression(max_iter=2000).fit(x[chosen] / 255.0, ds.targets[chosen])
    expected = 100 * accuracy_score(ds.targets[rest], clf.predict(x[rest] / 255.0))
    assert score(2, 1) == pytest.approx(expected) and expected > 90  # brightness separates the classes
    held = load_dataset(f"imagefolder:{bright_dark_folder(tmp_path / 'e', 2)}", "train")
    on_eval = pixel_baseline(ds, held, metric="balanced_accuracy")
    assert on_eval(1, 0) == pytest.approx(100.0)  # scored on the given eval set, not on the rest


@pytest.mark.slow
def test_fewshot_runs_every_baseline_on_an_image_folder_and_records_their_recipes(tmp_path, capsys):
    data = f"imagefolder:{bright_dark_folder(tmp_path / 'd')}"
    out = tmp_path / "fs"
    argv = ["fewshot", "--data", data, "--shots", "1,2", "--seeds", "0", "--baseline", "scratch,probe,pixels",
            "--eval-split", "test", "--metric", "balanced_accuracy", "--out", str(out), *TINY, *tiny_recipes(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "no 'test' split" in captured.err and "scored on the rest of its split" in captured.err
    res = json.loads((out / "results.json").read_text())
    assert list(res["results"]) == ["transfer", "scratch", "linear probe", "raw-pixel LR"]
    assert all(len(res["results"][m][k]) == 1 for m in res["results"] for k in ("1", "2"))
    assert res["results"]["raw-pixel LR"]["2"][0] > 90
    assert res["methods"]["scratch"]["optimizer"] == "adamw" and res["methods"]["linear probe"]["head_only"]
    assert "logistic regression" in res["methods"]["raw-pixel LR"]["classifier"]
    scratch_cfg = (out / "scratch" / "k1_s0" / "config.yaml").read_text()
    transfer_cfg = (out / "transfer" / "k1_s0" / "config.yaml").read_text()
    assert "optimizer: adamw" in scratch_cfg and "steps: 3" in scratch_cfg and "optimizer: sgd" in transfer_cfg
    assert "head_only: true" in (out / "linear-probe" / "k1_s0" / "config.yaml").read_text()
    assert "| k | transfer | scratch | linear probe | raw-pixel LR |" in captured.out
    # a finished cell keeps its scores and config, not its weights, checkpoints or per-cell plots
    assert not list(out.rglob("model.safetensors")) and not list(out.rglob("checkpoints"))
    assert not [p for p in out.rglob("*.png") if p.parent != out] and (out / "fewshot.png").is_file()
    assert len(list(out.rglob("summary.json"))) == 6


@pytest.mark.slow
def test_keep_weights_keeps_each_cells_final_weights(tmp_path, capsys):
    data = f"imagefolder:{bright_dark_folder(tmp_path / 'd', 3)}"
    out = tmp_path / "fs"
    argv = ["fewshot", "--data", data, "--shots", "1", "--seeds", "0,1", "--eval-split", "rest", "--out", str(out),
            "--keep-weights", *TINY]
    assert main(argv) == 0
    assert len(list(out.rglob("model.safetensors"))) == 2 and not list(out.rglob("checkpoints"))
    capsys.readouterr()


def test_an_unknown_baseline_is_one_line(tmp_path, capsys):
    fails(["fewshot", "--data", "digits", "--baseline", "scratch,pixel", *TINY], capsys,
          "unknown baseline 'pixel'", "scratch, probe, pixels")


def test_fewshot_suite_runs_every_task_in_one_sweep_and_checks_the_claim(tmp_path, capsys, monkeypatch):
    from bigtransfer import demo

    whole = demo.downstream_data
    monkeypatch.setattr(demo, "downstream_data", lambda name: whole(name, per_class=4))  # 40 images a task
    out = tmp_path / "suite"
    argv = ["fewshot", "--suite", "--shots", "1", "--seeds", "0,1", "--baseline", "pixels", "--out", str(out),
            "--metric", "balanced_accuracy", *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["suite"] == ["digits", "glyphs", "shapes", "textures"] == list(res["tasks"])
    for task, payload in res["tasks"].items():
        assert list(payload["results"]) == ["transfer", "raw-pixel LR"]
        assert all(len(v["1"]) == 2 for v in payload["results"].values())
        assert (out / task / "table.md").is_file() and (out / task / "fewshot.png").stat().st_size > 0
        cfg = (out / "cells" / task / "transfer" / "k1_s0" / "config.yaml").read_text()
        assert f"data: suite:{task}" in cfg  # the task is part of each cell's identity
    assert "### suite mean over 4 tasks" in printed and "on 0 of 4 tasks" in printed  # k=1 is not a claim k
    assert (out / "fewshot.png").stat().st_size > 0


def test_fewshot_suite_refuses_data_and_unknown_models_in_one_line(capsys, monkeypatch):
    from bigtransfer import demo

    fails(["fewshot", "--suite", "--data", "digits", *TINY], capsys, "--suite runs the 4 tasks", "drop --data")
    monkeypatch.setattr(demo, "downstream_data", lambda name: pytest.fail("drew the tasks before checking the model"))
    fails(["fewshot", "--suite", "--model", "BiT-M-R50x9", "--quiet"], capsys, "unknown model 'BiT-M-R50x9'")


@pytest.mark.parametrize("keep", ["all", "results"])
def test_only_a_cell_that_keeps_everything_draws_its_plots(tmp_path, keep):
    from bigtransfer.data import ArrayDataset
    from bigtransfer.engine.fewshot import run_cell

    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), np.repeat([0, 1], 4), ["a", "b"])
    cfg = dict(model="BiT-R14x0.5", pretrained=False, crop=32, precrop=32, eval_crop=32, flip=False, batch_size=4,
               workers=0, steps=2, save_every=0, fast_path=False, tensorboard=False, shots=2, seed=0)
    summary = run_cell(cfg, tmp_path / "cell", data, None, keep=keep)
    assert summary["steps"] == 2 and (tmp_path / "cell" / "summary.json").is_file()
    drawn = sorted(p.name for p in (tmp_path / "cell").glob("*.png"))
    assert drawn == (["confusion.png", "training.png"] if keep == "all" else [])
