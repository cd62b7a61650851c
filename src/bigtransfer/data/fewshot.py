"""Few-shot sampling: k examples per class, per class without replacement, from a seeded PCG64 generator."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from .base import ImageDataset, SubsetDataset


def fewshot_indices(targets: Sequence[int] | np.ndarray, k: int, seed: int,
                    classes: Sequence[str] | None = None) -> np.ndarray:
    """Sorted indices of ``k`` examples of every class; the same ``seed`` gives the same indices on any machine.

    Classes are visited in label order and each draws from the one generator, so a class's picks depend on
    the seed and the classes before it. With ``classes``, every listed class must be present.
    """
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
