"""A shuffling sampler whose order depends only on (seed, epoch).

Resuming at epoch k then replays exactly the order an uninterrupted run would have used, and every process
under ``accelerate launch`` draws the same permutation before Accelerate shards it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    def __init__(self, n: int, seed: int = 0):
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class EpochBalancedSampler(EpochShuffleSampler):
    """``n`` draws with replacement, each class equally likely (balanced sampling for imbalanced data); like
    :class:`EpochShuffleSampler`, the draws depend only on (seed, epoch). ``targets``: each example's class, as
    indices or as any names (a multi-label example's rarest label, an image's rarest object)."""

    def __init__(self, targets: torch.Tensor | Sequence, seed: int = 0):
        super().__init__(len(targets), seed)
        if not isinstance(targets, torch.Tensor):
            import numpy as np

            names = np.asarray([str(t) for t in targets])
            targets = torch.as_tensor(np.unique(names, return_inverse=True)[1].reshape(-1), dtype=torch.long)
        self.weights = (1.0 / torch.bincount(targets).double().clamp(min=1))[targets]

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist())
