"""Checkpoint writes never leave a broken latest state: full disks, read-only folders, corrupt files."""

from __future__ import annotations

import errno
import logging

import pytest
import torch

from bigtransfer.engine import checkpoint as ck
from bigtransfer.errors import CheckpointError


def state(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 3), v), "b": torch.zeros(3)}


def test_save_and_load_latest_keeps_two(tmp_path):
    for step in (10, 20, 30):
        ck.save_checkpoint(tmp_path, step, state(step), {"optimizer": {"lr": 0.1}}, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000030", "step_00000020"]
    path, model, train_state, ema = ck.load_latest(tmp_path)
    assert path.name == "step_00000030" and model["w"][0, 0] == 30 and train_state["step"] == 30 and ema is None
    assert not list(tmp_path.glob(".tmp*"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_full_or_read_only_keeps_the_previous_checkpoint(tmp_path, monkeypatch, code):
    ck.save_checkpoint(tmp_path, 10, state(1.0), {"optimizer": {}})

    def fail(*args, **kwargs):
        raise OSError(code, "simulated")

    monkeypatch.setattr(ck, "save_file", fail)
    with pytest.raises(CheckpointError, match=r"step 20 .* the previous checkpoint .*step_00000010 is intact"):
        ck.save_checkpoint(tmp_path, 20, state(2.0), {"optimizer": {}})
    monkeypatch.undo()
    path, model, _, _ = ck.load_latest(tmp_path)
    assert path.name == "step_00000010" and model["w"][0, 0] == 1.0
    assert not list(tmp_path.glob(".tmp*"))  # the half-written folder is gone


def test_corrupt_latest_falls_back_to_the_previous_with_a_warning(tmp_path, caplog):
    ck.save_checkpoint(tmp_path, 10, state(1.0), {"optimizer": {}})
    newest = ck.save_checkpoint(tmp_path, 20, state(2.0), {"optimizer": {}})
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="bigtransfer"):
        path, model, _, _ = ck.load_latest(tmp_path)
    assert path.name == "step_00000010" and model["w"][0, 0] == 1.0
    assert any("step_00000020" in r.message and "falling back" in r.message for r in caplog.records)


def test_state_file_with_a_pickled_payload_is_refused(tmp_path):
    newest = ck.save_checkpoint(tmp_path, 10, state(1.0), {"optimizer": {}})
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"step": 10, "x": Payload()}, newest / "state.pt")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        ck.load_checkpoint_dir(newest)
    assert not marker.exists()
