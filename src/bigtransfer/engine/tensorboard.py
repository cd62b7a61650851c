"""TensorBoard event files next to ``metrics.jsonl``: the same rows, as live curves in ``RUN/tensorboard``."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from .runs import METRICS, read_rows

log = logging.getLogger("bigtransfer")

TRAIN_KEYS = ("loss", "lr", "img_per_s")
EVAL_KEYS = ("top1", "top5", "balanced_accuracy")


def scalars(row: dict) -> dict[str, float]:
    """The TensorBoard tags and values of one metrics row: ``train/...`` for a training row, ``eval/...`` for one with
    accuracies."""
    keys, prefix = (EVAL_KEYS, "eval") if "top1" in row else (TRAIN_KEYS, "train")
    values = {key: row.get(key) for key in keys}
    return {f"{prefix}/{key}": float(v) for key, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


class EventLog:
    """Writes metrics rows as TensorBoard scalars (a no-op when disabled or without tensorboard); events written after
    ``resume_step`` are purged and the rows ``metrics.jsonl`` keeps at that step written again, so no step repeats."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / "tensorboard"
        self.enabled = bool(enabled)
        self._resume_step = int(resume_step)
        self._writer = None
        self._replayed: set[tuple[str, int]] = set()
        self._purged = False
        if self.enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                log.debug("tensorboard is not installed; no event files are written")
                self.enabled = False

    def _open(self):
        from torch.utils.tensorboard import SummaryWriter

        if self._purged:  # reopened after close(): append, purging nothing
            return SummaryWriter(log_dir=str(self.log_dir))
        self._purged = True
        writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._resume_step)
        if self._resume_step > 0:
            for row in self._kept_rows():
                for tag, value in scalars(row).items():
                    writer.add_scalar(tag, value, int(row["step"]))
                    self._replayed.add((tag, int(row["step"])))
        return writer

    def _kept_rows(self) -> list[dict]:
        """The rows ``metrics.jsonl`` holds at the resume step (a resumed run does not write them again)."""
        path = self.run_dir / METRICS
        return [row for row in read_rows(path) if row["step"] == self._resume_step] if path.is_file() else []

    def start(self) -> None:
        """Open the event file now (before ``metrics.jsonl`` gets new rows), purging what a resume replaces."""
        if self.enabled and self._writer is None:
            self._writer = self._open()

    def log(self, row: dict) -> None:
        """Write the scalars of one metrics row at its ``step`` and flush, so the curves are live."""
        if not self.enabled or "step" not in row:
            return
        self.start()
        step = int(row["step"])
        for tag, value in scalars(row).items():
            if (tag, step) not in self._replayed:
                self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file; a later ``log`` opens a new one."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
