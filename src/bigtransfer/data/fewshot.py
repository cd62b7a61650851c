"""Few-shot sampling: k examples per class, per class without replacement, from a seeded PCG64 generator."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from .base import ImageDataset, SubsetDataset


def fewshot_indices(targets: Sequence[int] | np.ndarray, k: int, seed: int,
                    classes: Sequence[str] | None = None) -> np.ndarray:
    """Sorted indices of ``k`` examples of every class (with ``classes``, of each listed one), drawn in label order
    from one generator: the same ``seed`` gives the same indices on any machine."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f"examples per class must be a positive integer, got {k!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"the few-shot seed must be a non-negative integer, got {seed!r}")
    targets = np.asarray(targets, dtype=np.int64)
    labels = range(len(classes)) if classes is not None else np.unique(targets)
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    picks = []
    for label in labels:
        members = np.flatnonzero(targets == label)
        if len(members) < k:
            name = classes[label] if classes is not None else str(label)
            raise DataError(f"class '{name}' has only {len(members)} example(s), fewer than the {k} asked for; "
                            f"lower the number of shots to at most {len(members)}")
        picks.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(picks)) if picks else np.empty(0, dtype=np.int64)


def fewshot_subset(dataset: ImageDataset, k: int, seed: int) -> SubsetDataset:
    """The ``k``-per-class training subset of ``dataset`` for ``seed``."""
    return SubsetDataset(dataset, fewshot_indices(dataset.targets, k, seed, dataset.classes))


def fewshot_split(dataset: ImageDataset, k: int, seed: int) -> tuple[SubsetDataset, SubsetDataset]:
    """(k-per-class training subset, every other example): disjoint; the rest serves as the evaluation pool."""
    chosen = fewshot_indices(dataset.targets, k, seed, dataset.classes)
    rest = np.setdiff1d(np.arange(len(dataset), dtype=np.int64), chosen, assume_unique=True)
    return SubsetDataset(dataset, chosen), SubsetDataset(dataset, rest)


def rest_check(dataset: ImageDataset, k: int, context: str = "eval_split rest", flag: str = "--shots") -> list[str]:
    """The classes ``k`` per class leaves with no example to evaluate on; refuses a ``k`` that leaves none at all
    or that :func:`fewshot_indices` refuses."""
    fewshot_indices(dataset.targets, k, 0, dataset.classes)
    counts = np.bincount(np.asarray(dataset.targets, dtype=np.int64), minlength=len(dataset.classes))
    if len(counts) and int(counts.sum()) == k * len(counts):
        hint = f"lower {flag} to at most {k - 1} or use another --eval-split" if k > 1 else "use another --eval-split"
        raise DataError(f"k={k} per class leaves no image to evaluate on, as every class has exactly {k} "
                        f"({context}); {hint}")
    return [c for c, n in zip(dataset.classes, counts, strict=True) if n == k]


def holdout_split(dataset: ImageDataset, fraction: float, seed: int) -> tuple[SubsetDataset, SubsetDataset]:
    """(kept, held out): a seeded, class-stratified hold-out of about ``fraction`` of every class, at least one
    example and never all of it; the same seed gives the same split anywhere."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not 0 < fraction < 1:
        raise DataError(f"val_split must be a fraction between 0 and 1 (exclusive), e.g. --val-split 0.2; "
                        f"got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"the hold-out seed must be a non-negative integer, got {seed!r}")
    targets = np.asarray(dataset.targets, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    held = []
    for label, name in enumerate(dataset.classes):
        members = np.flatnonzero(targets == label)
        if len(members) < 2:
            raise DataError(f"class '{name}' has {len(members)} example(s); val_split needs at least two per class "
                            f"(one to train on, one to evaluate on); add images or use --eval-split none")
        n = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
        held.append(members[rng.permutation(len(members))[:n]])
    chosen = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(dataset), dtype=np.int64), chosen, assume_unique=True)
    return SubsetDataset(dataset, kept), SubsetDataset(dataset, chosen)
