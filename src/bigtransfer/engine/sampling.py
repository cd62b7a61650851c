"""Deterministic input streams: the sample order and every augmentation are functions of (seed, position).

Step ``s`` takes positions ``[s*B, (s+1)*B)`` of endless per-epoch permutations and rank ``r`` the r-th slice of that
batch, so a resumed run, or the same global batch over several processes, sees exactly the same images and
augmentations."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


def sample_seed(seed: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


class StepSampler(Sampler):
    """Yields ``(index, augmentation seed)`` for this rank's share of steps ``start .. total-1``."""

    def __init__(self, n: int, global_batch: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world: int = 1) -> None:
        if global_batch % world:
            raise ValueError(f"batch size {global_batch} is not divisible by the {world} processes")
        self.n, self.batch, self.seed = n, global_batch, seed
        self.start, self.total, self.rank, self.world = start_step, total_steps, rank, world
        self._perm: tuple[int, np.ndarray] | None = None

    def _index(self, position: int) -> int:
        epoch = position // self.n
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.n, self.seed, epoch))
        return int(self._perm[1][position % self.n])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        share = self.batch // self.world
        for step in range(self.start, self.total):
            first = step * self.batch + self.rank * share
            for position in range(first, first + share):
                yield self._index(position), sample_seed(self.seed, position)

    def __len__(self) -> int:
        return (self.total - self.start) * (self.batch // self.world)


class SeededTransform(Dataset):
    """Applies ``transform`` to ``base.load_image(i)`` under a per-sample seed, so augmentations depend neither on
    worker processes nor on history."""

    def __init__(self, base: Dataset, transform: Callable | None) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, label = self.base.load_image(index), int(self.base.targets[index])
        if self.transform is None:
            return image, label
        if seed is None:
            return self.transform(image), label
        # Only the CPU generator drives augmentations; torch.manual_seed would also seed (and, lazily,
        # record stack traces for) every accelerator, which costs more than the transform itself.
        gen = torch.default_generator
        if get_worker_info() is not None:  # a worker process: its global RNG is ours
            gen.manual_seed(seed)
            return self.transform(image), label
        state = gen.get_state()
        try:
            gen.manual_seed(seed)
            return self.transform(image), label
        finally:
            gen.set_state(state)


def shard(n: int, rank: int, world: int) -> list[int]:
    """Evaluation indices of one rank: every ``world``-th example, so ranks never overlap."""
    return list(range(rank, n, world))
