"""Bad input through the CLI: one clear line on stderr naming the fix, exit code 2, no traceback, nothing
overwritten; ``--debug`` shows the traceback; the exit codes 0 / 1 / 2 / 130 of the command-line contract.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bigtransfer as bt
from bigtransfer.cli.main import main
from bigtransfer.errors import BitError
from bigtransfer.weights import save_safetensors
from bigtransfer.weights.mindspore import save_mindspore
from conftest import class_folders, fails

TINY = ["--model", "BiT-R14x0.5", "--no-pretrained", "--workers", "0", "--quiet", "--batch-size", "8",
        "--set", "crop=32", "--set", "precrop=36", "--eval-split", "none"]


def digits(out: Path, *extra: str) -> list[str]:
    """A one-step fine-tune of the tiny model on the embedded digits."""
    return ["finetune", "--data", "digits", "--steps", "1", "--out", str(out), *TINY, *extra]






@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    out = {"three": class_folders(root / "three", {"a": 4, "b": 4, "c": 4}),
           "one": class_folders(root / "one", {"only": 4}),
           "small": class_folders(root / "small", {"a": 6, "b": 6, "c": 2}),
           "r26": root / "r26.safetensors", "ckpt": root / "mindcv.ckpt", "file": root / "a-file"}
    save_safetensors(bt.create_model("BiT-R26x0.5", num_classes=10), out["r26"], "BiT-R26x0.5")
    save_mindspore(bt.create_model("BiT-R14x0.5", num_classes=10), out["ckpt"])
    out["file"].write_text("not a folder\n")
    run = root / "run3"
    assert main(["finetune", "--data", f"imagefolder:{out['three']}", "--steps", "1", "--out", str(run), *TINY]) == 0
    out["run3"] = run
    return out


# --- names ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["finetune", "--model", "BiT-M-R50x7", "--data", "digits"],
     r"unknown model 'BiT-M-R50x7': did you mean 'BiT-M-R50x3'\?"),
    (["evaluate", "bit_resnet51", "--data", "digits"], r"unknown model 'bit_resnet51': did you mean 'bit_resnet50'\?"),
    (["train", "--recipe", "bit_resnet50_imagnet", "--data", "digits"],
     r"unknown recipe 'bit_resnet50_imagnet': did you mean 'bit_resnet50_imagenet'\?"),
    (["finetune", "--data", "digits", "--set", "lrr=0.1", *TINY], r"unknown setting .*'lrr': did you mean 'lr'\?"),
    (["finetune", "--data", "cifar1:/data/cifar", *TINY], r"unknown data set 'cifar1': did you mean 'cifar10'\?"),
], ids=["model", "mindcv-model", "recipe", "setting", "data-set"])
def test_unknown_names_suggest_the_closest(argv, needle, capsys):
    fails(argv, capsys, needle)


def test_train_without_a_recipe_asks_for_one(capsys):
    fails(["train", "--data", "digits"], capsys, r"the following arguments are required: --recipe")


# --- --data syntax -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,needle", [
    ("cifar10=/data/cifar", r"NAME:PATH with a colon: write cifar10:/data/cifar"),
    ("/data/pets", r"--data takes NAME:PATH, not '/data/pets'.*write imagefolder:/data/pets"),
    ("imagefolder", r"data set 'imagefolder' needs a path: write imagefolder:PATH"),
    ("digits:/tmp/x", r"data set 'digits' ships with its package and takes no path"),
    ("imagefolder:/no/such/folder", r"no such folder '/no/such/folder'"),
    ("digits+imagefolder:/x", r"only in-memory data sets \(not imagefolder\) can be joined"),
])
def test_wrong_data_syntax(spec, needle, capsys, tmp_path):
    fails(["finetune", "--data", spec, "--out", str(tmp_path / "run"), *TINY], capsys, needle)
    assert not (tmp_path / "run").exists()


# --- the data itself ---------------------------------------------------------------------------------------------

def test_image_folder_with_one_class(files, capsys, tmp_path):
    fails(["finetune", "--data", f"imagefolder:{files['one']}", "--out", str(tmp_path / "r"), *TINY], capsys,
          r"has a single class folder 'only'; classification needs at least two classes")


def test_k_larger_than_a_class(files, capsys, tmp_path):
    data = f"imagefolder:{files['small']}"
    fails(["finetune", "--data", data, "--set", "shots=3", "--out", str(tmp_path / "r"), *TINY], capsys,
          r"class 'c' has only 2 example\(s\), fewer than the 3 asked for; lower the number of shots to at most 2")
    fails(["fewshot", "--data", data, "--shots", "1,3", "--seeds", "0", "--steps", "1", "--out",
           str(tmp_path / "fs"), *TINY], capsys, r"class 'c' has only 2 example\(s\).*at most 2")
    assert not (tmp_path / "r").exists()


# --- heads and architectures -------------------------------------------------------------------------------------

def test_evaluating_data_with_more_classes_than_the_head(files, capsys):
    fails(["evaluate", str(files["run3"]), "--data", "digits", "--split", "all", "--workers", "0", "--quiet"], capsys,
          r"the data has 10 classes but the model's head has 3; evaluate a model fine-tuned on this data")
    assert not (files["run3"] / "eval-all").exists()


@pytest.mark.parametrize("command", ["finetune", "evaluate", "convert"])
def test_weights_of_another_architecture(files, command, capsys, tmp_path):
    r26 = str(files["r26"])
    argv = {"finetune": ["finetune", "--data", "digits", "--weights", r26, "--out", str(tmp_path / "r"), *TINY],
            "evaluate": ["evaluate", str(files["run3"]), "--weights", r26, "--workers", "0"],
            "convert": ["convert", r26, str(tmp_path / "x.npz"), "--model", "BiT-R14x0.5"]}[command]
    fails(argv, capsys, r"another architecture|the weights are R26x0\.5, not R14x0\.5")
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "r" / "model.safetensors").exists()


# --- resolution and normalisation --------------------------------------------------------------------------------

@pytest.mark.parametrize("sets,needle", [
    (["crop=8", "precrop=8"], r"crop 8 px is below the network's minimum of 32 px \(its total stride\); "
                              r"use --set crop=32 or more"),
    (["eval_crop=16"], r"eval_crop 16 px is below the network's minimum of 32 px"),
    (["crop=40", "precrop=34"], r"precrop 34 px is smaller than crop 40 px"),
], ids=["crop", "eval_crop", "precrop"])
def test_resolution_below_the_network_stride(sets, needle, capsys, tmp_path):
    argv = digits(tmp_path / "r")
    for s in sets:
        argv += ["--set", s]
    fails(argv, capsys, needle)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_32_px_is_enough(capsys, tmp_path):
    assert main(digits(tmp_path / "r", "--set", "crop=32", "--set", "precrop=32")) == 0


def test_mean_std_that_differ_from_the_weights_warn_once(files, caplog, capsys, tmp_path):
    """ImageNet-normalised (mindcv) weights fine-tuned with [-1, 1] inputs: a one-line warning; the run goes on."""
    weights = ["--weights", str(files["ckpt"])]
    with caplog.at_level(logging.WARNING, logger="bigtransfer"):
        assert main(digits(tmp_path / "plain", *weights)) == 0
    assert not [r for r in caplog.records if "differ from" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bigtransfer"):
        assert main(digits(tmp_path / "shifted", *weights, "--set", "mean=[0.5,0.5,0.5]", "--set",
                           "std=[0.5,0.5,0.5]")) == 0
    warnings = [r.getMessage() for r in caplog.records if "differ from" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "mean [0.5, 0.5, 0.5] / std [0.5, 0.5, 0.5] differ from the mean [0.485, 0.456, 0.406]" in warnings[0]
    assert "drop --set mean/std" in warnings[0]
    import yaml

    assert yaml.safe_load((tmp_path / "plain" / "config.yaml").read_text())["mean"] == [0.485, 0.456, 0.406]


# --- settings the engine would trip over later -------------------------------------------------------------------

@pytest.mark.parametrize("extra,needle", [
    (["--steps", "0"], r"steps must be an integer above 0, got 0"),
    (["--steps", "-5"], r"steps must be an integer above 0, got -5"),
    (["--epochs", "0"], r"epochs must be a number above 0"),
    (["--lr", "-1"], r"lr must be a number above 0, got -1\.0"),
    (["--batch-size", "0"], r"batch_size must be an integer above 0, got 0"),
    (["--batch-size", "7", "--batch-split", "2"], r"batch_size 7 must be a positive multiple of batch_split 2"),
    (["--set", "mixup=abc"], r"mixup must be a number of at least 0, got 'abc'"),
    (["--workers", "-1"], r"workers must be an integer of at least 0, got -1"),
    (["--mixup", "-1"], r"mixup must be a number of at least 0"),
    (["--device", "gpu"], r"unknown device 'gpu': use auto, cpu, cuda or cuda:N"),
    (["--set", "randaugment=[2]"], r"randaugment must be \[num_ops, magnitude\]"),
    (["--set", "mean=[0.5,0.5]"], r"mean must be three numbers, one per RGB channel"),
    (["--set", "std=[0,0,0]"], r"std must be positive for every channel"),
    (["--set", "shots=0"], r"shots must be a positive number of examples per class, got 0"),
    (["--set", "shots=abc"], r"shots must be a positive number of examples per class, got 'abc'"),
    (["--set", "lr"], r"--set expects KEY=VALUE, got 'lr'"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else None)
def test_invalid_settings_fail_at_start_up(extra, needle, capsys, tmp_path):
    fails(digits(tmp_path / "r", *extra), capsys, needle)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_cuda_asked_for_without_a_gpu(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    fails(digits(tmp_path / "r", "--device", "cuda"), capsys, r"no CUDA GPU is available here; use --device cpu")


@pytest.mark.parametrize("flag,value", [("--shots", "a"), ("--shots", "0,1"), ("--seeds", "x")])
def test_fewshot_lists(flag, value, capsys, tmp_path):
    fails(["fewshot", "--data", "digits", flag, value, "--out", str(tmp_path / "fs"), *TINY], capsys,
          rf"{flag} takes comma-separated .*integers")


def test_out_is_a_file(files, capsys):
    fails(digits(files["file"]), capsys, r"--out .*a-file is a file, not a folder; choose another --out")
    assert files["file"].read_text() == "not a folder\n"


# --- the run folder ----------------------------------------------------------------------------------------------

def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_holding_another_run_is_refused_unless_overwrite(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(digits(out, "--lr", "0.01")) == 0
    before = _digest(out)
    fails(digits(out, "--lr", "0.02"), capsys,
          rf"{re.escape(str(out))} holds a different run \(settings differ: lr\); use another --out, or --overwrite")
    assert _digest(out) == before  # nothing was touched
    capsys.readouterr()
    assert main(digits(out, "--lr", "0.01")) == 0  # the same run: picked up again, no error
    assert main(digits(out, "--lr", "0.02", "--overwrite")) == 0
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 0.02


# --- --debug and the exit codes ----------------------------------------------------------------------------------

def test_debug_shows_the_traceback(capsys):
    with pytest.raises(BitError, match="did you mean 'BiT-M-R50x3'"):
        main(["--debug", "finetune", "--model", "BiT-M-R50x7", "--data", "digits"])


def _bit(*argv: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "bigtransfer.cli.main", *argv], env=env, capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.mark.slow
def test_debug_in_a_real_process_prints_the_traceback_and_exits_1():
    """Without --debug the same error is one line and exit 2 (checked in-process above, e.g. the unknown names)."""
    debug = _bit("--debug", "finetune", "--model", "BiT-M-R50x7", "--data", "digits")
    assert debug.returncode == 1  # the exception leaves the interpreter, as any uncaught one does
    assert "Traceback (most recent call last)" in debug.stderr and "UnknownNameError" in debug.stderr


def test_an_internal_error_is_not_hidden(monkeypatch):
    """Anything that is not a user error propagates (the interpreter prints it and exits 1)."""
    import bigtransfer.cli.models as models_cmd

    def broken(args):
        raise RuntimeError("internal")

    monkeypatch.setattr(models_cmd, "run", broken)
    with pytest.raises(RuntimeError, match="internal"):
        main(["models"])


@pytest.mark.slow
def test_sigint_exits_130_with_a_checkpoint_and_the_same_command_resumes(capsys, caplog, tmp_path):
    out = tmp_path / "run"
    argv = digits(out, "--save-every", "4")
    argv[argv.index("--steps") + 1] = "16"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bigtransfer.cli.main", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 240
    while not (out / "checkpoints" / "latest").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no checkpoint in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "stopped by signal 2" in stdout and "run again to resume" in stdout and "Traceback" not in stderr
    assert not (out / "model.safetensors").exists()
    with caplog.at_level(logging.INFO, logger="bigtransfer"):
        assert main(argv) == 0  # the same config in the same folder picks the run up again
    assert any(re.match(r"resuming .* at step \d+", r.getMessage()) for r in caplog.records)
    assert (out / "model.safetensors").exists()
