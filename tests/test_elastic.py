"""Elastic restart under torchrun: one rank killed mid-run, the group restarted, the run finished as if never hit.

``torchrun --max-restarts 1`` restarts every worker when one dies; they find the run folder holds the same
run and resume from its newest checkpoint. The final weights must equal an uninterrupted torchrun run's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import latest_step

pytestmark = pytest.mark.slow

STEPS = 12
KILL_AFTER = 4  # the first checkpoint
RUN = ["finetune", "--model", "BiT-R14x0.5", "--no-pretrained", "--data", "digits", "--eval-split", "none",
       "--steps", str(STEPS), "--batch-size", "16", "--batch-split", "1", "--lr", "0.05", "--workers", "0",
       "--save-every", "4", "--quiet", "--set", "crop=32", "--set", "precrop=36", "--set", "log_every=4",
       "--set", "mixup=0.2"]


def env() -> dict:
    # torchrun's default shared rendezvous store: each restart attempt gets its own key space from the engine.
    return {**{k: v for k, v in os.environ.items() if k != "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"},
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(out: Path, *launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *launcher,
            "-m", "bigtransfer.cli.main", *RUN, "--out", str(out)]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (parent ids in /proc/<pid>/stat)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended meanwhile
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        kids = [p for p, parent in parents.items() if parent == current]
        found += kids
        todo += kids
    return found


def worker_of_local_rank(launcher_pid: int, rank: int) -> int | None:
    for pid in descendants(launcher_pid):
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={rank}".encode() in environ:
            return pid
    return None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("elastic-ref") / "run"
    done = subprocess.run(torchrun(out), env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_rank_killed_then_elastic_restart_resumes_and_matches_an_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "torchrun.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(torchrun(out, "--max-restarts", "1"), env=env(), stdout=sink,
                                stderr=subprocess.STDOUT, text=True)
        try:
            end = time.monotonic() + 300
            while latest_step(out) < KILL_AFTER:
                assert proc.poll() is None, f"run ended early:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < end, "no checkpoint in time"
                time.sleep(0.05)
            victim = worker_of_local_rank(proc.pid, 1)
            assert victim is not None, "no worker with LOCAL_RANK=1 under torchrun"
            killed_at = latest_step(out)
            os.kill(victim, signal.SIGKILL)
            code = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert killed_at < STEPS
    resumed = [int(s) for s in re.findall(r"resuming \S+ at step (\d+)", text)]
    assert resumed and KILL_AFTER <= resumed[-1] < STEPS, text[-4000:]  # restarted from a checkpoint, not from 0
    assert not Path(f"/proc/{victim}").exists()
    ref, got = load_file(uninterrupted / "model.safetensors"), load_file(out / "model.safetensors")
    assert ref.keys() == got.keys()
    diff = max((ref[k] - got[k]).abs().max().item() for k in ref)
    assert diff <= 1e-6, diff
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in got.values())
    steps = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no repeated rows after the restart
