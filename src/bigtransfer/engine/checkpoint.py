"""Crash-safe checkpoints: each a folder (``step_00000500/``: ``model.safetensors``, ``ema.safetensors`` with EMA, and
``state.pt``, loop state that loads with ``weights_only=True``) written aside, fsynced, then renamed into place.
``latest`` names the newest; the one before it is kept so a corrupt newest one can be skipped."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, error_reason
from ..weights.common import file_mode

log = logging.getLogger("bigtransfer")
LATEST = "latest"


def _fsync(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(root: Path) -> None:
    """Remove half-written folders that a killed earlier process left behind (they hold disk space)."""
    for old in root.glob(".tmp_step_*_*"):
        pid = old.name.rpartition("_")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # alive under another user: not ours to remove


def save_checkpoint(root: str | os.PathLike, step: int, model_state: dict, train_state: dict,
                    ema_state: dict | None = None, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically (mode 0o666 less the umask), keeping the newest ``keep``. A
    failure removes the partial folder, leaves earlier ones and ``latest`` as they were, raises a CheckpointError."""
    root = Path(root)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    pointer = root / f".{LATEST}.tmp"
    prev = read_latest_name(root)
    renamed = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(root)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, state in (("model.safetensors", model_state), ("ema.safetensors", ema_state)):
            if state is not None:
                cpu_state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
                save_file(cpu_state, tmp / name, metadata={"step": str(step)})
        torch.save({**train_state, "step": step}, tmp / "state.pt")
        mode = file_mode()
        for f in tmp.iterdir():
            os.chmod(f, mode)  # safetensors writes private files whatever the umask
            _fsync(f)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        renamed = True
        pointer.write_text(final.name + "\n")
        _fsync(pointer)
        os.replace(pointer, root / LATEST)
        _fsync(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            pointer.unlink(missing_ok=True)
        if renamed and prev != final.name and read_latest_name(root) != final.name:
            shutil.rmtree(final, ignore_errors=True)  # ``latest`` still names the previous one: keep it so
        if not isinstance(e, (OSError, RuntimeError, SafetensorError)):
            raise
        kept = f"the previous checkpoint {root / prev} is intact" if prev else "no earlier checkpoint exists"
        raise CheckpointError(f"could not save the checkpoint of step {step} in {root} ({error_reason(e)}); "
                              f"{kept}; free disk space or fix permissions, then run again to resume") from None
    for old in list_checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_latest_name(root: Path) -> str | None:
    try:
        return (root / LATEST).read_text().strip() or None
    except OSError:
        return None


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Checkpoint folders under ``root``, newest first (none when it is not a folder)."""
    return sorted((p for p in Path(root).glob("step_*") if p.is_dir()), key=lambda p: p.name, reverse=True)


def load_checkpoint_dir(path: Path) -> tuple[dict, dict, dict | None]:
    """(model state, train state, EMA state or None) of one checkpoint folder; raises CheckpointError."""
    try:
        model_state = load_file(path / "model.safetensors")
        train_state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        ema_file = path / "ema.safetensors"
        ema_state = load_file(ema_file) if ema_file.exists() else None
    except Exception as e:  # any corruption: truncated file, bad header, unpickling refused
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    return model_state, train_state, ema_state


def load_latest(root: str | os.PathLike) -> tuple[Path, dict, dict, dict | None] | None:
    """The newest readable checkpoint under ``root``; a corrupt one is skipped with a warning."""
    root = Path(root)
    candidates = list_checkpoints(root)
    latest = read_latest_name(root)
    candidates.sort(key=lambda p: p.name != latest)  # the pointed-to one first, order otherwise kept
    for path in candidates:
        try:
            return (path, *load_checkpoint_dir(path))
        except CheckpointError as e:
            log.warning("warning: %s; falling back to an earlier checkpoint", e)
    return None
