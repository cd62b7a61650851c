"""The few-shot and hold-out paths a user walks: empty evaluation pools refused, the cell cache keyed by every
setting, Ctrl-C and resume, one identity per data set whatever its spelling, and ``--val-split`` on a flat folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bigtransfer.cli.main import main
from bigtransfer.data import load_dataset
from bigtransfer.errors import DataError
from conftest import class_folders, fails

TINY = ["--model", "BiT-R14x0.5", "--no-pretrained", "--workers", "0", "--quiet", "--batch-size", "8",
        "--set", "crop=32", "--set", "precrop=36"]






def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- 1: a few-shot cell with nothing left to evaluate on --------------------------------------------------------

def test_shots_equal_to_the_class_size_with_eval_split_rest_is_refused_before_training(tmp_path, capsys):
    data = f"imagefolder:{class_folders(tmp_path / 'shapes', {'a': 4, 'b': 4})}"
    out = tmp_path / "sweep"
    fails(["fewshot", "--data", data, "--shots", "1,4", "--seeds", "0", "--steps", "1", "--eval-split", "rest",
           "--out", str(out), *TINY], capsys,
          r"^error: k=4 per class leaves no image to evaluate on, as every class has exactly 4 \(eval_split rest\); "
          r"lower --shots to at most 3 or use another --eval-split$")
    assert not list(out.rglob("model.safetensors"))  # refused before the k=1 cell trained
    fails(["finetune", "--data", data, "--set", "shots=4", "--eval-split", "rest", "--steps", "1",
           "--out", str(tmp_path / "run"), *TINY], capsys,
          r"leaves no image to evaluate on.*; lower shots to at most 3 or use another --eval-split$")
    assert not (tmp_path / "run").exists()


def test_a_class_with_none_left_to_evaluate_on_is_a_warning(tmp_path, caplog):
    from bigtransfer.data.fewshot import rest_check
    from bigtransfer.engine.config import DEFAULTS
    from bigtransfer.engine.trainer import load_data

    data = f"imagefolder:{class_folders(tmp_path / 'uneven', {'a': 4, 'b': 6})}"
    ds = load_dataset(data)
    assert rest_check(ds, 3) == []
    assert rest_check(ds, 4) == ["a"]  # class 'a' has no image left; 'b' still has two
    with caplog.at_level(logging.WARNING, logger="bigtransfer"):
        train, rest = load_data({**DEFAULTS, "data": data, "shots": 4, "eval_split": "rest"})
    assert (len(train), len(rest)) == (8, 2)
    assert ("k=4 per class leaves no image of class 'a' to evaluate on (eval_split rest); balanced accuracy averages "
            "the other classes") in caplog.text


# --- 2: the cell cache ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fewshot_cells_are_retrained_when_a_setting_changes_and_reused_when_nothing_does(tmp_path, capsys):
    data = f"imagefolder:{class_folders(tmp_path / 'shapes', {'a': 3, 'b': 3})}"
    out = tmp_path / "sweep"
    weights = out / "transfer" / "k1_s0" / "model.safetensors"

    def sweep(lr: str) -> tuple[str, int]:
        assert main(["fewshot", "--data", data, "--shots", "1", "--seeds", "0", "--steps", "1", "--eval-split",
                     "rest", "--lr", lr, "--out", str(out), "--keep-weights", *TINY]) == 0
        return digest(weights), weights.stat().st_mtime_ns

    first, _ = sweep("0.01")
    second, mtime = sweep("0.02")
    assert second != first  # another learning rate: the cell is trained again
    assert "lr: 0.02" in (weights.parent / "config.yaml").read_text()
    again, mtime_again = sweep("0.02")
    assert (again, mtime_again) == (second, mtime)  # the same settings: the finished cell is reused
    capsys.readouterr()


# --- 3: Ctrl-C ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigint_during_fewshot_exits_130_in_one_line_and_the_rerun_resumes(tmp_path, caplog):
    data = f"imagefolder:{class_folders(tmp_path / 'shapes', {'a': 3, 'b': 3})}"
    out = tmp_path / "sweep"
    argv = ["fewshot", "--data", data, "--shots", "1", "--seeds", "0", "--steps", "8", "--save-every", "1",
            "--eval-split", "rest", "--out", str(out), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bigtransfer.cli.main", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    cell = out / "transfer" / "k1_s0"
    end = time.monotonic() + 240
    while not (cell / "checkpoints" / "latest").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no checkpoint in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert re.search(r"stopped by signal 2; checkpoint .*; run again to resume", stdout + stderr), stdout + stderr
    assert not (cell / "summary.json").exists()
    with caplog.at_level(logging.INFO, logger="bigtransfer"):
        assert main(argv) == 0
    assert any(re.match(r"resuming .* at step \d+", r.getMessage()) for r in caplog.records)
    assert json.loads((out / "results.json").read_text())["results"]["transfer"]["1"]


# --- 4: one data set, one identity -------------------------------------------------------------------------------

def test_canonical_spec_spells_one_data_set_one_way(tmp_path, monkeypatch):
    from bigtransfer.data.spec import canonical_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    absolute = f"imagefolder:{(tmp_path / 'shapes').resolve()}"
    for spec in ("imagefolder:shapes", "imagefolder:shapes/", "ImageFolder:./shapes", f"{absolute}/",
                 "imagefolder:~/shapes", f"imagefolder:{tmp_path}/x/../shapes"):
        assert canonical_spec(spec) == absolute, spec
    assert canonical_spec("digits") == "digits"
    assert canonical_spec("mnist5k+digits") == "mnist5k+digits"


def test_a_relative_and_an_absolute_path_to_the_same_folder_are_the_same_run(tmp_path, monkeypatch, capsys, caplog):
    root = class_folders(tmp_path / "rel" / "shapes", {"a": 3, "b": 3})
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    base = ["finetune", "--steps", "1", "--eval-split", "none", "--out", str(out), *TINY]
    assert main([*base, "--data", "imagefolder:rel/shapes"]) == 0
    with caplog.at_level(logging.INFO, logger="bigtransfer"):
        assert main([*base, "--data", f"imagefolder:{root.resolve()}/"]) == 0, capsys.readouterr().err
    assert any(re.match(r"resuming .* at step 1", r.getMessage()) for r in caplog.records)


# --- 5: --val-split -----------------------------------------------------------------------------------------------

def test_val_split_holds_out_part_of_a_flat_folder_for_evaluation(tmp_path, capsys):
    data = f"imagefolder:{class_folders(tmp_path / 'flat', {'a': 5, 'b': 5})}"
    out = tmp_path / "run"
    assert main(["finetune", "--data", data, "--val-split", "0.2", "--steps", "1", "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_train"], summary["n"]) == (8, 2)  # one image of each class held out and evaluated
    fails(["finetune", "--data", data, "--set", "val_split=1.5", "--steps", "1", "--out", str(tmp_path / "bad"),
           *TINY], capsys,
          r"^error: val_split must be a fraction between 0 and 1 \(exclusive\), e\.g\. --val-split 0\.2; got 1\.5$")


def test_holdout_split_is_seeded_stratified_and_keeps_every_class(tmp_path):
    from bigtransfer.data.fewshot import holdout_split

    ds = load_dataset(f"imagefolder:{class_folders(tmp_path / 'flat', {'a': 10, 'b': 3, 'c': 2})}")
    kept, held = holdout_split(ds, 0.2, seed=0)
    assert sorted(np.bincount(held.targets, minlength=3)) == [1, 1, 2]
    assert set(kept.targets) == set(held.targets) == {0, 1, 2}
    assert not set(kept.indices) & set(held.indices) and len(kept) + len(held) == len(ds)
    assert np.array_equal(holdout_split(ds, 0.2, seed=0)[1].indices, held.indices)
    assert not np.array_equal(holdout_split(ds, 0.5, seed=1)[1].indices, holdout_split(ds, 0.5, seed=2)[1].indices)
    lone = load_dataset(f"imagefolder:{class_folders(tmp_path / 'lone', {'a': 3, 'b': 1})}")
    message = (r"^class 'b' has 1 example\(s\); val_split needs at least two per class \(one to train on, one to "
               r"evaluate on\); add images or use --eval-split none$")
    with pytest.raises(DataError, match=message):
        holdout_split(lone, 0.2, seed=0)


def test_a_flat_folder_without_an_eval_split_names_val_split_as_the_fix(tmp_path, capsys):
    data = f"imagefolder:{class_folders(tmp_path / 'flat', {'a': 3, 'b': 3})}"
    fails(["finetune", "--data", data, "--steps", "1", "--out", str(tmp_path / "run"), *TINY], capsys,
          r"has no split folders, only class folders .*; hold out part of it for evaluation with --val-split 0\.2, "
          r"or skip evaluation with --eval-split none$")


@pytest.mark.slow
def test_fewshot_says_when_each_cell_is_scored_on_the_rest_of_its_split(tmp_path, capsys):
    root = class_folders(tmp_path / "flat", {"a": 3, "b": 3})
    assert main(["fewshot", "--data", f"imagefolder:{root}", "--shots", "1", "--seeds", "0", "--steps", "1",
                 "--out", str(tmp_path / "sweep"), *TINY]) == 0
    err = capsys.readouterr().err
    assert f"no 'test' split in imagefolder:{root}: each cell is scored on the rest of its split" in err


# --- 6: cells side by side, after the upstream they start from -----------------------------------------------------

TINY_CFG = {"model": "BiT-R14x0.5", "pretrained": False, "weights": None, "workers": 0, "batch_size": 8, "crop": 32,
            "precrop": 36, "steps": 1, "tensorboard": False}


def _pretrain(data: str, run_dir: Path, quiet: bool) -> str:
    """A one-step upstream, reused once finished (at module level: a sweep's worker process imports it)."""
    from bigtransfer.engine.fewshot import is_finished
    from bigtransfer.engine.trainer import train
    from bigtransfer.recipes import load_recipe

    if not is_finished(run_dir):
        train({**load_recipe("hyperrule"), **TINY_CFG, "data": data, "eval_split": "none"}, run_dir, quiet=quiet)
    return f"upstream in {run_dir.name}"


@pytest.mark.slow
def test_a_parallel_sweep_starts_each_cell_after_its_upstream_and_a_second_sweep_reuses_everything(tmp_path):
    from functools import partial

    from bigtransfer.engine.fewshot import Dependency, sweep
    from bigtransfer.errors import BitError
    from bigtransfer.recipes import load_recipe

    data = f"imagefolder:{class_folders(tmp_path / 'shapes', {'a': 3, 'b': 3})}"
    ds, up, out = load_dataset(data), tmp_path / "up", tmp_path / "sweep"
    base = {**load_recipe("hyperrule"), **TINY_CFG, "data": data}
    methods = {"transfer": {"pretrained": True, "weights": str(up / "model.safetensors")}, "scratch": {}}
    deps = {"up": Dependency(partial(_pretrain, data, up), up, steps=1, label="a one-step upstream")}

    def run(jobs: int, needs: dict):
        return sweep(base, [1], [0, 1], out, ds, methods=methods, metric="balanced_accuracy", progress=False,
                     jobs=jobs, needs=needs, upstreams=deps, keep="weights")

    with pytest.raises(BitError, match="'nope' is neither a method nor a dependency"):
        run(2, {"transfer": {"nope"}})
    assert not out.exists()  # refused before anything ran

    first = run(2, {"transfer": {"up"}})
    assert first.upstreams == {"up": "upstream in up"}
    assert list(first.results) == ["transfer", "scratch"] and all(len(r[1]) == 2 for r in first.results.values())
    made = (up / "summary.json").stat().st_mtime_ns
    for row in first.cells:
        cell = Path(row["run"])
        assert cell == out / row["method"] / f"k1_s{row['seed']}" and 0 <= row["balanced_accuracy"] <= 100
        assert (cell / "model.safetensors").is_file() and not (cell / "checkpoints").exists()  # keep="weights"
        if row["method"] == "transfer":
            assert (cell / "config.yaml").stat().st_mtime_ns >= made  # started once its upstream had finished
    assert json.loads((out / "results.json").read_text())["cells"] == first.cells

    stamps = {p: p.stat().st_mtime_ns for p in [*out.rglob("model.safetensors"), up / "model.safetensors"]}
    second = run(1, {"transfer": {"up"}})
    assert second.results == first.results and second.upstreams == first.upstreams
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}  # nothing trained again
