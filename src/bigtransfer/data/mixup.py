"""MixUp with one lambda per optimizer step, applied alike to every micro-batch of that step."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class MixUp:
    """``lam * x + (1 - lam) * x[perm]``: :meth:`sample` once per optimizer step, then :meth:`permutation`, :meth:`mix`
    and :meth:`mixed_loss` per micro-batch. ``alpha <= 0`` disables mixing (lambda is always 1)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = float(alpha)

    @property
    def enabled(self) -> bool:
        return self.alpha > 0

    def sample(self, generator: torch.Generator) -> float:
        """One lambda ~ Beta(alpha, alpha), drawn from ``generator`` only (no global random state)."""
        if not self.enabled:
            return 1.0
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
        return float(np.random.Generator(np.random.PCG64(seed)).beta(self.alpha, self.alpha))

    @staticmethod
    def permutation(n: int, generator: torch.Generator) -> torch.Tensor:
        """The partner order for a micro-batch of ``n`` examples."""
        return torch.randperm(n, generator=generator)

    @staticmethod
    def mix(x: torch.Tensor, y: torch.Tensor, lam: float,
            perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mixed x, labels y_a, partner labels y_b) for one (micro-)batch."""
        perm = perm.to(x.device)
        return lam * x + (1.0 - lam) * x[perm], y, y[perm.to(y.device)]

    @staticmethod
    def mixed_loss(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], logits: torch.Tensor,
                   y_a: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
        """``lam * criterion(logits, y_a) + (1 - lam) * criterion(logits, y_b)``."""
        if lam == 1.0:
            return criterion(logits, y_a)
        return lam * criterion(logits, y_a) + (1.0 - lam) * criterion(logits, y_b)

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Sample a lambda and mix one whole batch: (mixed x, y_a, y_b, lam)."""
        lam = self.sample(generator)
        if not self.enabled:
            return x, y, y, lam
        return (*self.mix(x, y, lam, self.permutation(len(x), generator)), lam)

    def __repr__(self) -> str:
        return f"MixUp(alpha={self.alpha})"
