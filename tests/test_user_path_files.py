"""Files at user-given paths: read-only targets, full disks while saving, file modes that follow the umask, and
what to do when pretrained weights cannot be downloaded. Each failure is one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from safetensors import SafetensorError

import bigtransfer as bt
from bigtransfer.cli.main import main
from bigtransfer.engine import checkpoint as ck
from bigtransfer.errors import CheckpointError, DownloadError
from bigtransfer.models import registry
from bigtransfer.weights import atomic_write
from bigtransfer.weights import download as dl
from conftest import closed_port, fails

TINY = ["--model", "BiT-R14x0.5", "--no-pretrained", "--workers", "0", "--quiet", "--batch-size", "8",
        "--set", "crop=32", "--set", "precrop=36", "--eval-split", "none"]
ROFS = os.strerror(errno.EROFS)  # "Read-only file system"
FULL_ST = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
FULL_PT = "[enforce fail at inline_container.cc:603] . unexpected pos 1472 vs 1366"


def finetune(out: Path) -> list[str]:
    """A one-step fine-tune of the tiny model on the embedded digits."""
    return ["finetune", "--data", "digits", "--steps", "1", "--out", str(out), *TINY]




def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if ".tmp" in p.name or p.name.endswith(".part"))


class umask:
    """Set the process umask for a block, restoring the previous one after."""

    def __init__(self, mask: int) -> None:
        self.mask = mask

    def __enter__(self) -> None:
        self.old = os.umask(self.mask)

    def __exit__(self, *exc) -> None:
        os.umask(self.old)


@pytest.fixture()
def read_only(monkeypatch):
    """``read_only(folder)`` makes writes under ``folder`` fail with EROFS, as a read-only mount does.

    Tests run as root, for whom chmod does not stop writes, so the file system calls are wrapped instead.
    """
    roots: list[str] = []
    real = {"mkdir": os.mkdir, "open": builtins.open, "os_open": os.open, "replace": os.replace,
            "rename": os.rename}

    def blocked(path) -> bool:
        if isinstance(path, int):
            return False
        p = os.path.abspath(os.fsdecode(path))
        return any(p == r or p.startswith(r + os.sep) for r in roots)

    def refuse(path) -> None:
        raise OSError(errno.EROFS, ROFS, os.fsdecode(path))

    def mkdir(path, *a, **k):
        if blocked(path) and not os.path.lexists(path):
            refuse(path)
        return real["mkdir"](path, *a, **k)

    def os_open(path, flags, *a, **k):
        if blocked(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            refuse(path)
        return real["os_open"](path, flags, *a, **k)

    def py_open(file, mode="r", *a, **k):
        if blocked(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real["open"](file, mode, *a, **k)

    def move(name):
        def moved(src, dst, *a, **k):
            for p in (src, dst):
                if blocked(p):
                    refuse(p)
            return real[name](src, dst, *a, **k)
        return moved

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", py_open)
    monkeypatch.setattr(io, "open", py_open)
    monkeypatch.setattr(os, "replace", move("replace"))
    monkeypatch.setattr(os, "rename", move("rename"))

    def add(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        roots.append(os.path.abspath(folder))
        return folder

    return add


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished one-step run, written under umask 0o022."""
    out = tmp_path_factory.mktemp("runs") / "run"
    with umask(0o022):
        assert main(finetune(out)) == 0
    return out




@pytest.fixture()
def offline(tmp_path, monkeypatch) -> Path:
    """No network: BiT-M-R50x1's URL and the hub point at closed ports; returns the (empty) cache folder."""
    home = tmp_path / "home"
    monkeypatch.setenv("BIGTRANSFER_HOME", str(home))
    monkeypatch.setenv("BIGTRANSFER_TIMEOUT", "3")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(dl, "_hub_cached", lambda repo_id: None)
    cfg = registry.get_config("BiT-M-R50x1")
    url = f"https://127.0.0.1:{closed_port()}/bit_models/BiT-M-R50x1.npz"
    monkeypatch.setitem(registry._REGISTRY, cfg.name, replace(cfg, url=url))
    return home


# --- A: read-only targets ------------------------------------------------------------------------------------

def test_read_only_out_folder_for_finetune(tmp_path, read_only, capsys):
    ro = read_only(tmp_path / "ro")
    fails(finetune(ro / "run"), capsys, re.escape(str(ro)), ROFS)
    assert list(ro.iterdir()) == []


def test_read_only_out_folder_for_evaluate(run, tmp_path, read_only, capsys):
    data = tmp_path / "data"
    for k in range(2):
        (data / f"c{k}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((20, 20, 3), 60 * k + i, dtype=np.uint8)).save(data / f"c{k}" / f"{i}.png")
    ro = read_only(tmp_path / "ro")
    fails(["evaluate", str(run), "--data", f"imagefolder:{data}", "--split", "all", "--out", str(ro / "x"),
           "--workers", "0", "--quiet"], capsys,
          re.escape(str(ro)), ROFS)
    assert list(ro.iterdir()) == []


def test_read_only_onnx_target_for_export(run, tmp_path, read_only, capsys):
    ro = read_only(tmp_path / "ro")
    fails(["export", str(run), "--onnx", str(ro / "m.onnx"), "--size", "32"], capsys, re.escape(str(ro)), ROFS)
    assert list(ro.iterdir()) == []


def test_read_only_convert_target(r14_file, tmp_path, read_only, capsys):
    ro = read_only(tmp_path / "ro")
    target = ro / "x.safetensors"
    fails(["convert", str(r14_file), str(target)], capsys,
          rf"cannot write '{re.escape(str(target))}' \({ROFS}\); choose a writable folder")
    assert list(ro.iterdir()) == []


class _Response(io.BytesIO):
    status = 200

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


@pytest.mark.parametrize("sub", ["cache", ""], ids=["new-cache-folder", "existing-cache-folder"])
def test_read_only_download_cache(sub, offline, tmp_path, read_only, monkeypatch, capsys):
    ro = read_only(tmp_path / "ro")
    home = ro / sub if sub else ro
    monkeypatch.setenv("BIGTRANSFER_HOME", str(home))
    monkeypatch.setattr(dl, "_request", lambda url, start: _Response(b"weights"))  # the server answers
    target = home if sub else home / "BiT-M-R50x1.npz.part"
    fails(["convert", "BiT-M-R50x1", str(tmp_path / "out.npz")], capsys,
          rf"cannot write '{re.escape(str(target))}' \({ROFS}\); set BIGTRANSFER_HOME to a writable folder")
    assert list(ro.iterdir()) == [] and not (tmp_path / "out.npz").exists()


# --- B: full disk while saving -------------------------------------------------------------------------------

def _half_then(exc: BaseException):
    """A writer that leaves some bytes behind and then fails as a full disk does."""

    def write(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"\0" * 100)
        else:
            Path(f).write_bytes(b"\0" * 100)
        raise exc

    return write


def _state(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 3), v), "b": torch.zeros(3)}


@pytest.mark.parametrize("writer,exc,reason", [
    ("save_file", SafetensorError(FULL_ST), "No space left on device"),
    ("torch.save", RuntimeError(FULL_PT), "unexpected pos 1472 vs 1366"),
    ("save_file", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device"),
], ids=["safetensors", "torch-save", "enospc"])
def test_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(writer, exc, reason, tmp_path, monkeypatch):
    ck.save_checkpoint(tmp_path, 10, _state(1.0), {"optimizer": {}})
    if writer == "save_file":
        monkeypatch.setattr(ck, "save_file", _half_then(exc))
    else:
        monkeypatch.setattr(torch, "save", _half_then(exc))
    with pytest.raises(CheckpointError) as err:
        ck.save_checkpoint(tmp_path, 20, _state(2.0), {"optimizer": {}})
    monkeypatch.undo()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (f"could not save the checkpoint of step 20 in {tmp_path} ({reason}); the previous checkpoint "
                   f"{tmp_path / 'step_00000010'} is intact; free disk space or fix permissions, then run again "
                   f"to resume")
    assert leftovers(tmp_path) == [] and (tmp_path / "latest").read_text().strip() == "step_00000010"
    path, model, _, _ = ck.load_latest(tmp_path)
    assert path.name == "step_00000010" and model["w"][0, 0] == 1.0
    assert ck.save_checkpoint(tmp_path, 20, _state(2.0), {"optimizer": {}}).name == "step_00000020"  # space freed


def test_full_disk_during_finetune_is_one_line_and_leaves_no_temp_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(ck, "save_file", _half_then(SafetensorError(FULL_ST)))
    fails(finetune(out), capsys, rf"could not save the checkpoint of step 1 in {re.escape(str(out / 'checkpoints'))} "
          r"\(No space left on device\); no earlier checkpoint exists; free disk space or fix permissions, "
          r"then run again to resume")
    assert leftovers(out) == [] and ck.list_checkpoints(out / "checkpoints") == []


@pytest.mark.parametrize("suffix", ["safetensors", "npz"])
def test_full_disk_while_converting_keeps_the_old_file(suffix, r14_file, tmp_path, monkeypatch, capsys):
    target = tmp_path / f"out.{suffix}"
    target.write_bytes(b"the earlier file")
    if suffix == "safetensors":
        monkeypatch.setattr(safetensors.torch, "save_file", _half_then(SafetensorError(FULL_ST)))
    else:
        monkeypatch.setattr(np, "savez", lambda f, **arrays: _half_then(OSError(errno.ENOSPC, "No space left on "
                                                                               "device"))(None, f))
    fails(["convert", str(r14_file), str(target), "--overwrite"], capsys,
          rf"^error: cannot write '{re.escape(str(target))}' \(No space left on device\); free disk space, "
          r"then run again$")
    assert target.read_bytes() == b"the earlier file" and leftovers(tmp_path) == []


def test_atomic_write_failure_is_a_checkpoint_error_and_removes_the_temporary_file(tmp_path):
    target = tmp_path / "w.pt"

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(b"\0" * 100)
        raise RuntimeError(FULL_PT)

    with pytest.raises(CheckpointError, match=rf"^cannot write '{re.escape(str(target))}' \(unexpected pos "
                       r"1472 vs 1366\); free disk space or fix permissions, then run again$"):
        atomic_write(target, write)
    assert list(tmp_path.iterdir()) == []


# --- C: file modes follow the umask --------------------------------------------------------------------------

def test_written_files_follow_the_umask(run, r14_file, tmp_path):
    step = run / "checkpoints" / "step_00000001"
    files = [run / "config.yaml", run / "model.safetensors", run / "checkpoints" / "latest", *step.iterdir()]
    names = [str(f.relative_to(run)) for f in files]
    assert dict(zip(names, map(oct, map(mode, files)), strict=True)) == dict.fromkeys(names, oct(0o644))
    assert mode(step) == 0o755
    with umask(0o022):
        assert main(["convert", str(r14_file), str(tmp_path / "open.npz")]) == 0
    assert mode(tmp_path / "open.npz") == 0o644
    with umask(0o077):
        assert main(["convert", str(r14_file), str(tmp_path / "private.safetensors")]) == 0
        assert main(["convert", str(r14_file), str(tmp_path / "private.ckpt")]) == 0
        saved = ck.save_checkpoint(tmp_path / "ck", 5, _state(1.0), {"optimizer": {}})
    assert mode(tmp_path / "private.safetensors") == mode(tmp_path / "private.ckpt") == 0o600
    assert mode(saved) == 0o700 and {mode(f) for f in saved.iterdir()} == {0o600}


# --- D: offline, or no published weights ---------------------------------------------------------------------

def test_offline_download_error_names_the_ways_out(offline, tmp_path, capsys):
    err = fails(["finetune", "--model", "BiT-M-R50x1", "--data", "digits", "--out", str(tmp_path / "run"),
                 "--steps", "1", "--workers", "0", "--quiet", "--eval-split", "none"], capsys,
                r"^error: BiT-M-R50x1: cannot download ", re.escape(str(offline / "BiT-M-R50x1.npz")))
    assert err.endswith("or pass --weights FILE (a local checkpoint) or --no-pretrained "
                        "(weights=FILE or pretrained=False in Python)"), err
    with pytest.raises(DownloadError, match=r"--weights FILE .* --no-pretrained"):
        bt.create_model("BiT-M-R50x1", pretrained=True)


def test_model_without_published_weights_names_no_pretrained(tmp_path, capsys):
    msg = ("BiT-R14x0.5 has no published weights; pass --no-pretrained (pretrained=False in Python) "
           "or --weights FILE")
    with pytest.raises(DownloadError) as err:
        bt.create_model("BiT-R14x0.5", pretrained=True)
    assert str(err.value) == msg
    fails(["finetune", "--model", "BiT-R14x0.5", "--data", "digits", "--out", str(tmp_path / "run"),
           "--steps", "1", "--workers", "0", "--quiet", "--eval-split", "none"], capsys, f"^error: {re.escape(msg)}$")
