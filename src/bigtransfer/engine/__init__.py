"""One engine for fine-tuning, few-shot runs and upstream training."""

from .config import DEFAULTS, parse_overrides
from .evaluate import evaluate
from .trainer import Interrupted, RunResult, Trainer, TrainingDiverged, train

__all__ = ["DEFAULTS", "Interrupted", "RunResult", "Trainer", "TrainingDiverged", "evaluate", "parse_overrides",
           "train"]
