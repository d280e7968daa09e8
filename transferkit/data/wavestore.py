"""Recordings' samples for a run, and the windows the network sees, read from them when indexed.

The recordings of a split are one float16 sequence, each starting at its ``offset``: in memory (a 1-D tensor) or,
above :data:`~transferkit.data.pixelstore.MEMORY_LIMIT_BYTES`, an entry of the row cache on disk
(``cache_root()/"audio"/KEY.rows``, rows of :data:`BLOCK` samples, each recording starting on a row of its own;
written whole or not at all, checked before use, see :mod:`transferkit.data.pixelstore`). A window is a
``(start, valid)`` pair: ``valid`` samples from ``start``, zero-padded to the window length. With windows every half
window, holding the recordings rather than the windows halves the memory (or disk), and a different window length
(another run, ``--clip-seconds``) reads the same entry.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .pixelstore import PixelFile

BLOCK = 4096  # samples per row on disk (8 KB of float16): a recording wastes under 8 KB padding to its last row
FLOAT16_MAX = 65504.0


def as_float16(x: np.ndarray) -> np.ndarray:
    """Samples as float16, clipped to its range (a float WAV may hold values beyond +-1; inf would poison scores)."""
    return np.clip(x, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)


def read_span(source: torch.Tensor | PixelFile, start: int, length: int) -> torch.Tensor:
    """``length`` samples from ``start`` of a recordings' sequence (a 1-D tensor, or rows of :data:`BLOCK`)."""
    if isinstance(source, torch.Tensor):
        return source[start : start + length]
    if length <= 0:
        return torch.zeros(0, dtype=torch.float16)
    first, last = start // BLOCK, (start + length - 1) // BLOCK
    flat = source[np.arange(first, last + 1)].reshape(-1)
    at = start - first * BLOCK
    return flat[at : at + length]


def window_starts(length: int, n: int, hop: int) -> np.ndarray:
    """Where the windows of ``n`` samples every ``hop`` start in a recording of ``length`` samples: one window for a
    recording no longer than a window; otherwise every ``hop`` samples, plus one more (zero-padded) when the last
    samples would be left out."""
    if length <= n:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, length - n + 1, hop, dtype=np.int64)
    if starts[-1] + n < length:
        starts = np.append(starts, starts[-1] + hop)
    return starts


class Waves:
    """Windows of recordings that behave like the ``(M, n)`` float16 tensor they replace: ``len``, ``shape``,
    ``dtype``, and indexing with an int, a slice, a list, a numpy array or a LongTensor gives a fresh tensor (a
    window, or a batch of windows) read from ``source``, zero-padded past each window's ``valid`` samples.

    It pickles as its source (a file is reopened by each DataLoader worker) and its window table.

    Examples:

        >>> w = Waves(torch.ones(10, dtype=torch.float16), starts=[0, 4], valid=[6, 6], n=8)
        >>> w[1].tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    """

    dtype = torch.float16

    def __init__(self, source: torch.Tensor | PixelFile, starts: Any, valid: Any, n: int):
        self.source = source
        self.starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        self.valid = np.asarray(valid, dtype=np.int64).reshape(-1)
        self.n = int(n)
        if len(self.starts) != len(self.valid) or (self.valid > self.n).any() or (self.valid < 0).any():
            raise ValueError("every window needs a start and 0 to n valid samples")

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.n))

    def dim(self) -> int:
        return 2

    @property
    def on_disk(self) -> bool:
        return isinstance(self.source, PixelFile)

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        if isinstance(key, (int, np.integer)) or (isinstance(key, np.ndarray) and key.ndim == 0
                                                 and np.issubdtype(key.dtype, np.integer)):
            i = int(key)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of range for {len(self)} windows")
            return self._read(np.array([i % len(self)]))[0]
        return self._read(self.positions(key))

    def positions(self, key: Any) -> np.ndarray:
        """The window positions ``key`` (a slice, a list, a numpy array of ints or bools) picks."""
        if isinstance(key, slice):
            return np.arange(*key.indices(len(self)), dtype=np.int64)
        idx = np.asarray(key)
        if idx.dtype == bool:
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if len(idx) and (idx.max() >= len(self) or idx.min() < -len(self)):
            raise IndexError(f"index out of range for {len(self)} windows")
        return idx % max(1, len(self))

    def subset(self, idx: Any) -> Waves:
        """The windows at positions ``idx``: the same samples, another window table (nothing copied)."""
        pos = self.positions(idx)
        return Waves(self.source, self.starts[pos], self.valid[pos], self.n)

    def _read(self, idx: np.ndarray) -> torch.Tensor:
        out = torch.zeros((len(idx), self.n), dtype=torch.float16)
        starts, valid = self.starts[idx], self.valid[idx]
        if isinstance(self.source, torch.Tensor):
            for j, (s, v) in enumerate(zip(starts.tolist(), valid.tolist(), strict=True)):
                out[j, :v] = self.source[s : s + v]
            return out
        # every row the batch touches in one read (consecutive rows coalesce into one system call each run)
        firsts = starts // BLOCK
        counts = np.where(valid > 0, (starts + np.maximum(valid, 1) - 1) // BLOCK - firsts + 1, 0)
        if counts.sum() == 0:
            return out
        rows = np.concatenate([np.arange(f, f + c) for f, c in zip(firsts.tolist(), counts.tolist(), strict=True)])
        flat = self.source[rows].reshape(-1)
        at = 0
        for j, (s, v, f, c) in enumerate(zip(starts.tolist(), valid.tolist(), firsts.tolist(), counts.tolist(),
                                             strict=True)):
            off = at + s - f * BLOCK
            out[j, :v] = flat[off : off + v]
            at += c * BLOCK
        return out

    def __repr__(self) -> str:
        where = "disk" if self.on_disk else "memory"
        return f"Waves({len(self)} windows of {self.n} samples, {where})"
