"""The command line on the user's path: help and version, a parser that imports no PyTorch, one-line argument
errors, path-like names, folders given for files, ONNX opsets, file-system errors, interrupts and errors raised in
data-loader workers.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bigtransfer as bt
from bigtransfer.cli.main import main
from conftest import fails

TINY = ["--model", "BiT-R14x0.5", "--no-pretrained", "--workers", "0", "--quiet", "--batch-size", "8",
        "--set", "crop=32", "--set", "precrop=36", "--eval-split", "none"]




def images(root: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / name)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["finetune", "--data", "digits", "--steps", "1", "--out", str(out), *TINY]) == 0
    return out




# --- a: help, version, the package namespace ---------------------------------------------------------------------

def test_no_arguments_prints_help_and_version_prints_the_version(capsys):
    assert main([]) == 0
    assert capsys.readouterr().out.startswith("usage: bit")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"bit {bt.__version__}\n" == "bit 0.1.0\n"
    with pytest.raises(AttributeError):
        bt.importlib  # noqa: B018
    with pytest.warns(DeprecationWarning, match="use bigtransfer.create_model"):
        assert bt.create_model is bt.models.create_model  # the old name still works for one release


# --- b: the parser imports no PyTorch ----------------------------------------------------------------------------

def test_building_the_parser_imports_no_torch():
    code = "import sys, bigtransfer.cli.main as m; m.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]
    helped = subprocess.run([sys.executable, "-m", "bigtransfer.cli.main", "finetune", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and "--batch-size" in helped.stdout
    # the copies kept for the parser match the originals
    from bigtransfer.cli import common, convert
    from bigtransfer.models.fast import INFERENCE_MODES
    from bigtransfer.weights.convert import TARGETS

    assert common.INFERENCE_MODES == INFERENCE_MODES and convert.TARGETS == TARGETS


# --- c: argument errors are one line, numbers are checked at parse time ------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["finetune", "--batch-size", "0"], r"argument --batch-size: batch_size must be an integer above 0, got 0; "
                                        r"see 'bit finetune --help'$"),
    (["finetune", "--workers", "-1"], r"--workers: workers must be an integer of at least 0, got -1"),
    (["finetune", "--batch-split", "0"], r"--batch-split: .*above 0, got 0"),
    (["finetune", "--steps", "0"], r"--steps: steps must be an integer above 0, got 0"),
    (["finetune", "--steps", "many"], r"--steps: .*got 'many'"),
    (["finetune", "--epochs", "0"], r"--epochs: epochs must be a number above 0"),
    (["finetune", "--lr", "-1"], r"--lr: lr must be a number above 0, got -1\.0"),
    (["finetune", "--mixup", "-1"], r"--mixup: mixup must be a number of at least 0"),
    (["finetune", "--eval-every", "-1"], r"--eval-every: .*at least 0, got -1"),
    (["finetune", "--save-every", "-1"], r"--save-every: .*at least 0, got -1"),
    (["finetune", "--val-split", "1.5"], r"--val-split: .*fraction between 0 and 1 \(exclusive\), got 1\.5"),
    (["train", "--batch-size", "0"], r"see 'bit train --help'"),
    (["fewshot", "--steps", "0"], r"--steps: .*; see 'bit fewshot --help'"),
    (["evaluate", "run", "--batch-size", "0"], r"--batch-size: must be an integer above 0, got 0; see 'bit evaluate"),
    (["evaluate", "run", "--workers", "-1"], r"--workers: must be an integer of at least 0"),
    (["predict", "run", "a.png", "--top", "0"], r"--top: must be an integer above 0, got 0; see 'bit predict --help'"),
    (["predict", "run", "a.png", "--top", "-1"], r"--top: must be an integer above 0, got -1"),
    (["export", "run", "--onnx", "m.onnx", "--size", "0"], r"--size: must be an integer above 0"),
    (["export", "run", "--onnx", "m.onnx", "--opset", "0"], r"--opset: must be an integer above 0"),
    (["finetun"], r"invalid choice: 'finetun'.*; see 'bit --help'"),
    (["finetune", "--no-such-flag"], r"unrecognized arguments: --no-such-flag"),
    (["export", "run"], r"the following arguments are required: --onnx; see 'bit export --help'"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else None)
def test_argument_errors_are_one_line(argv, needle, capsys):
    fails(argv, capsys, needle)


# --- d: convert, predict and export messages ---------------------------------------------------------------------

def test_convert_refuses_a_folder_as_destination_and_a_missing_path(r14_file, capsys, tmp_path):
    (tmp_path / "out_dir").mkdir()
    fails(["convert", str(r14_file), str(tmp_path / "out_dir")], capsys,
          rf"DST '.*out_dir' is a folder; give a file name, e.g. {re.escape(str(tmp_path))}/out_dir/model\.safetensors")
    fails(["convert", str(r14_file), str(tmp_path / "out_dir"), "--to", "npz", "--overwrite"], capsys,
          r"is a folder; give a file name, e.g. .*/out_dir/model\.npz")
    fails(["convert", "BiT-M-R50x1.npz", str(tmp_path / "out.safetensors")], capsys,
          r"BiT-M-R50x1\.npz: no such file; check the path \(or give a registered model name to download its weights\)")
    assert not list((tmp_path / "out_dir").iterdir()) and not (tmp_path / "out.safetensors").exists()


def test_convert_checks_the_destination_before_it_downloads(capsys, tmp_path, monkeypatch):
    import bigtransfer.weights.download as download

    def fetch(*args, **kwargs):
        raise AssertionError("downloaded before the destination was checked")

    monkeypatch.setattr(download, "fetch_pretrained", fetch)
    (tmp_path / "old.npz").write_bytes(b"kept")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("kept")
    fails(["convert", "BiT-M-R50x1", str(tmp_path / "out.xyz")], capsys, r"cannot tell the target format of .*out\.xyz")
    fails(["convert", "BiT-M-R50x1", str(tmp_path / "old.npz")], capsys, r"old\.npz exists; pass --overwrite")
    fails(["convert", "BiT-M-R50x1", str(tmp_path / "full"), "--to", "hf"], capsys, r"folder .*full is not empty")
    assert (tmp_path / "old.npz").read_bytes() == b"kept"


def test_convert_reads_the_weights_file_of_a_folder(capsys, tmp_path):
    from bigtransfer.weights.convert import read_checkpoint, write_checkpoint

    model = bt.create_model("BiT-R14x0.5", num_classes=10)
    hf = tmp_path / "hf-download"
    hf.mkdir()
    write_checkpoint(model.state_dict(), hf / "model.safetensors", "hf")
    (hf / "config.json").write_text("{}\n")
    assert main(["convert", str(hf), str(tmp_path / "out.npz")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert read_checkpoint(tmp_path / "out.npz").state.keys() == model.state_dict().keys()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("nothing here\n")
    fails(["convert", str(tmp_path / "empty"), str(tmp_path / "x.npz")], capsys,
          r"folder '.*empty' holds no weights file \(looked for model\.safetensors, pytorch_model\.bin and \*\.npz")


def test_predict_path_like_sources_and_image_folders(run_dir, capsys, tmp_path):
    folder = images(tmp_path / "imgs", ["b.png", "sub/a.jpg"])
    (folder / "notes.txt").write_text("not an image\n")
    fails(["predict", str(tmp_path / "runs" / "typo"), str(folder / "b.png")], capsys,
          rf"no such run folder '{re.escape(str(tmp_path))}/runs/typo'; give a run folder \(with config\.yaml\)")
    fails(["predict", "./runs/typo", str(folder / "b.png")], capsys, r"no such run folder '\./runs/typo'")
    assert main(["predict", str(run_dir), str(folder), "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(folder / "b.png"), str(folder / "sub" / "a.jpg")]
    (tmp_path / "no-images").mkdir()
    fails(["predict", str(run_dir), str(tmp_path / "no-images")], capsys, r"no images in folder '.*no-images'")
    fails(["predict", str(run_dir), str(tmp_path / "missing.png")], capsys, r"no such image '.*missing\.png'")
    (tmp_path / "bad.png").write_bytes(b"garbage" * 10)
    err = fails(["predict", str(run_dir), str(tmp_path / "bad.png")], capsys, r"cannot read image '.*bad\.png'")
    assert err.endswith("replace the file, leave it out or pass --skip-corrupt")  # a flag predict has


@pytest.mark.slow
def test_export_writes_the_opset_asked_for(r14_file, capsys, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")

    def opset(path: Path) -> int:
        return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))

    for flags, want in [(["--opset", "13"], 13), (["--opset", "17"], 17), ([], 18)]:
        out = tmp_path / f"m{want}.onnx"
        assert main(["export", str(r14_file), "--onnx", str(out), "--size", "32", *flags]) == 0
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and f"opset {want}" in captured.out
        assert opset(out) == want
    fails(["export", str(r14_file), "--onnx", str(tmp_path / "x.onnx"), "--legacy", "--opset", "99"], capsys,
          r"the TorchScript exporter \(--legacy\) writes ONNX opsets \d+ to \d+, not 99")
    fails(["export", str(r14_file), "--onnx", str(tmp_path / "x.onnx"), "--opset", "99"], capsys,
          r"ONNX opset 99 cannot be written; choose an opset from \d+ to \d+")
    assert not (tmp_path / "x.onnx").exists()


# --- e: file-system errors, interrupts, errors from data-loader workers ------------------------------------------

@pytest.mark.parametrize("code,needle", [
    (errno.EROFS, r"cannot write '/mnt/ro/run' \(Read-only file system\); .*choose a writable folder$"),
    (errno.ENOSPC, r"cannot write '/mnt/ro/run' \(No space left on device\); .*free disk space"),
    (errno.EACCES, r"cannot write '/mnt/ro/run' \(Permission denied\); choose a writable folder or fix its perm"),
], ids=["EROFS", "ENOSPC", "EACCES"])
def test_file_system_errors_are_one_line(code, needle, monkeypatch, capsys):
    import bigtransfer.cli.models as models_cmd

    def broken(args):
        raise OSError(code, os.strerror(code), "/mnt/ro/run")

    monkeypatch.setattr(models_cmd, "run", broken)
    fails(["models"], capsys, needle)
    with pytest.raises(OSError):
        main(["--debug", "models"])


def test_a_file_where_a_folder_is_needed_is_one_line(run_dir, capsys, tmp_path):
    data = images(tmp_path / "data", ["a/0.png", "a/1.png", "b/0.png", "b/1.png"])
    (tmp_path / "a-file").write_text("keep me\n")
    fails(["evaluate", str(run_dir), "--data", f"imagefolder:{data}", "--split", "train", "--workers", "0", "--quiet",
           "--out", str(tmp_path / "a-file")], capsys, r"cannot write '.*a-file' \(File exists\); ")
    assert (tmp_path / "a-file").read_text() == "keep me\n"


def test_interrupted_is_handled_for_every_command(monkeypatch, capsys):
    import bigtransfer.cli.models as models_cmd
    from bigtransfer.engine import Interrupted as from_engine
    from bigtransfer.errors import BitError, Interrupted

    assert from_engine is Interrupted and not issubclass(Interrupted, BitError)

    def stopped(args):
        raise Interrupted(15, Path("ckpt"))

    monkeypatch.setattr(models_cmd, "run", stopped)
    assert main(["models"]) == 143
    assert "stopped by signal 15; checkpoint ckpt; run again to resume" in capsys.readouterr().out

    # a few-shot worker process sends it back through pickle
    back = pickle.loads(pickle.dumps(Interrupted(2, Path("run/checkpoints/step_7"))))
    assert isinstance(back, Interrupted) and back.code == 130 and back.checkpoint == Path("run/checkpoints/step_7")
    assert str(back) == "stopped by signal 2; checkpoint run/checkpoints/step_7; run again to resume"


def test_an_error_in_a_data_loader_worker_is_one_line(capsys, tmp_path):
    data = images(tmp_path / "data", [f"{c}/{i}.png" for c in "ab" for i in range(4)])
    (data / "a" / "bad.png").write_bytes(b"garbage" * 10)
    argv = ["finetune", "--data", f"imagefolder:{data}", "--steps", "2", "--out", str(tmp_path / "run"), *TINY]
    argv[argv.index("--workers") + 1] = "1"
    argv[argv.index("--batch-size") + 1] = "9"
    err = fails(argv, capsys, rf"^error: cannot read image '{re.escape(str(data))}/a/bad\.png': .*--skip-corrupt")
    assert "Caught" not in err and "worker" not in err


def test_convert_refuses_a_folder_with_several_weights_files(r14_file, capsys, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        (folder / name).write_bytes(r14_file.read_bytes())
    fails(["convert", str(folder), str(tmp_path / "out.npz")], capsys,
          r"folder '.*two' holds 2 weights files \(a\.safetensors, b\.safetensors\); give one of them")


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly():
    """``bit models | head -1``: the reader leaving early is no error and prints no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "bigtransfer.cli.main", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes a line
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode in (0, 141)
