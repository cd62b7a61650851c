"""Distillation by function matching (Beyer et al., "A good teacher is patient and consistent", CVPR 2022).

The student matches the teacher's softmax on the very same augmented, mixed batch (consistent), over a long schedule
(patient). Labels are read only to evaluate."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.splits import load_run_data
from ..data.unlabeled import with_extra_images
from ..errors import BitError
from .config import RunConfig, as_run_config
from .evaluate import autocast, counts_from_logits, run_mode, summarize
from .runs import LoadedModel, load_run
from .sampling import SeededTransform
from .trainer import RunResult, Trainer

log = logging.getLogger("bigtransfer")


def kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                    reduction="batchmean") * (t * t)


class Distiller(Trainer):
    """The engine's training loop with the teacher's softmax as the target; the run folder is a normal run."""

    def __init__(self, cfg: RunConfig | Mapping[str, Any], run_dir: str | Path, *, teacher: LoadedModel | None = None,
                 train_set=None, eval_set=None, **kwargs) -> None:
        cfg = as_run_config(cfg)
        if teacher is None and not cfg.teacher:
            raise BitError("no teacher: pass --teacher RUN|CHECKPOINT|NAME (a run folder, a weights file or a model)")
        if cfg.head_only:
            raise BitError("distillation trains the whole student; drop --head-only")
        self.teacher = teacher or load_run(cfg.teacher, cfg.teacher_weights)
        # by default the student reads its inputs as the teacher does
        cfg = cfg.replace(num_classes=self.teacher.model.num_classes, mean=cfg.mean or self.teacher.cfg.mean,
                          std=cfg.std or self.teacher.cfg.std)
        if train_set is None:
            train_set, eval_set = load_run_data(cfg)
        _check_classes(self.teacher, train_set, eval_set)
        if cfg.extra_data:
            train_set = with_extra_images(train_set, cfg.extra_data, cfg.skip_corrupt)
            log.info("distilling on %d images (%d of them from %s)", len(train_set), len(train_set.extra),
                     cfg.extra_data)
        super().__init__(cfg, run_dir, train_set=train_set, eval_set=eval_set, **kwargs)
        self.classes = list(self.teacher.classes or self.classes)
        if not self.dry_run:
            self._prepare_teacher()

    def _prepare_teacher(self) -> None:
        from ..models.fast import prepare_for_inference

        self.teacher_net = prepare_for_inference(self.teacher.model.to(self.device), run_mode(self.cfg.precision))
        # The batch is normalised with the student's mean/std; the teacher gets it in its own.
        mean_s, std_s = (torch.tensor(v, dtype=torch.float32) for v in (self.cfg.mean, self.cfg.std))
        mean_t, std_t = (torch.tensor(v, dtype=torch.float32) for v in (self.teacher.cfg.mean, self.teacher.cfg.std))
        same = torch.equal(mean_s, mean_t) and torch.equal(std_s, std_t)
        self._to_teacher = None if same else ((std_s / std_t).view(1, 3, 1, 1).to(self.device),
                                              ((mean_s - mean_t) / std_t).view(1, 3, 1, 1).to(self.device))
        self._teacher_eval: dict | None = None

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits (float32) for a batch the student sees."""
        if self._to_teacher is not None:
            scale, shift = self._to_teacher
            x = x * scale + shift
        return self.teacher_net(x).float()

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
        """KL divergence to the teacher on this very (augmented, mixed) batch; the labels are not used."""
        target = self.teacher_logits(x)
        with autocast(self.device, self.cfg.precision):
            logits = self.model(x)
        return kl_loss(logits.float(), target, self.cfg.temperature)

    def _teacher_on_eval(self) -> dict:
        """The teacher's predictions and metrics on the (un-augmented) eval set, computed once."""
        if self._teacher_eval is None:
            loader = DataLoader(SeededTransform(self.eval_set, self.eval_tf), batch_size=64)
            logits = torch.cat([self.teacher_logits(x.to(self.device)).cpu() for x, _ in loader])
            confusion, top5 = counts_from_logits(logits, torch.as_tensor(self.eval_set.targets), self.cfg.num_classes)
            self._teacher_eval = {"pred": logits.argmax(1), **summarize(confusion.numpy(), top5, self.classes)}
        return self._teacher_eval

    def eval_reference(self) -> torch.Tensor:
        return self._teacher_on_eval()["pred"]

    def _evaluate(self, ema=None) -> tuple[dict, dict]:
        row, full = super()._evaluate(ema)
        teacher = self._teacher_on_eval()
        row.update(teacher_top1=teacher["top1"], teacher_balanced_accuracy=teacher["balanced_accuracy"])
        full.update({f"teacher_{k}": teacher[k] for k in ("top1", "top5", "balanced_accuracy")})
        return row, full


def _check_classes(teacher: LoadedModel, train_set, eval_set) -> None:
    """The teacher's head must cover the data's classes, in the same order when both are named."""
    n = teacher.model.num_classes
    if eval_set is not None and eval_set.num_classes != n:
        raise BitError(f"the teacher predicts {n} classes but the evaluation data has {eval_set.num_classes}; "
                       f"evaluate on data of the teacher's classes or pass --eval-split none")
    names = teacher.classes
    if eval_set is not None and names and list(names) != list(eval_set.classes):
        raise BitError(f"the teacher's classes ({', '.join(names[:4])}, ...) are not the evaluation data's "
                       f"({', '.join(eval_set.classes[:4])}, ...) in the same order; evaluate on the data the "
                       f"teacher was trained on or pass --eval-split none")
    if train_set.num_classes > n:
        log.warning("the training data has %d classes, the teacher %d; its labels are not used",
                    train_set.num_classes, n)


def distill(cfg: RunConfig | Mapping[str, Any], run_dir: str | Path, *, dry_run: bool = False, **kwargs) -> RunResult:
    """Resolve, distil and evaluate one run (resuming ``run_dir`` when it holds the same run)."""
    kwargs.setdefault("announce", not kwargs.get("quiet", False))
    distiller = Distiller(cfg, run_dir, dry_run=dry_run, **kwargs)
    return RunResult(Path(run_dir), distiller.cfg, distiller.model) if dry_run else distiller.fit()
