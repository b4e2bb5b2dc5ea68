"""TokenWindowDataset: fixed-length windows over a 1-D token stream, read lazily.

Each item is an int64 tensor of ``context + 1`` tokens: the language-model task takes
``item[:-1]`` as input and ``item[1:]`` as target. The token stream is never copied whole, so a
``np.memmap`` over a multi-gigabyte file costs only the windows actually read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .loader import Batched, epoch_seed


class TokenWindowDataset(Dataset):
    """Windows of ``context + 1`` tokens from ``tokens`` (any 1-D array-like: list, numpy array,
    ``np.memmap``, torch tensor).

    - sequential (default): windows at offsets ``0, stride, 2*stride, ...``; ``stride`` defaults to
      ``context`` (consecutive windows share one token, so every transition is a target once);
      only windows that fit entirely are used.
    - ``random_windows=N``: ``N`` windows per epoch at offsets drawn uniformly from every valid
      offset, a pure function of ``(seed, epoch)``; call ``set_epoch(epoch)`` to move to another epoch.
    """

    def __init__(self, tokens: Any, context: int, *, stride: int | None = None,
                 random_windows: int | None = None, seed: int = 0):
        if int(context) < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        if stride is not None and int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if random_windows is not None and int(random_windows) < 1:
            raise ValueError(f"random_windows must be >= 1 (or None for sequential windows), got {random_windows}")
        ndim = getattr(tokens, "ndim", 1)
        if ndim != 1:
            raise ValueError(f"tokens must be 1-D, got an array with {ndim} dimensions (flatten it first)")
        self.tokens = tokens
        self.context = int(context)
        self.stride = int(stride) if stride is not None else self.context
        self.random_windows = int(random_windows) if random_windows is not None else None
        self.seed = int(seed)
        self.epoch = 0
        self._offsets: np.ndarray | None = None  # random offsets of self.epoch, drawn on first use
        # number of valid start offsets: a window needs context + 1 tokens
        self.n_starts = len(tokens) - self.context
        if self.n_starts < 1:
            raise ValueError(
                f"a token stream of length {len(tokens)} is too short for windows of context {self.context} "
                f"(each needs context + 1 = {self.context + 1} tokens)"
            )

    def set_epoch(self, epoch: int) -> None:
        """Random windows only: draw the offsets of ``epoch`` (sequential windows do not change)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._offsets = None

    def offsets(self) -> np.ndarray:
        """The start offset of every item of the current epoch."""
        if self.random_windows is None:
            return np.arange(len(self), dtype=np.int64) * self.stride
        if self._offsets is None:
            rng = np.random.default_rng(epoch_seed(self.seed, self.epoch))
            self._offsets = rng.integers(0, self.n_starts, size=self.random_windows, dtype=np.int64)
        return self._offsets

    def __len__(self) -> int:
        if self.random_windows is not None:
            return self.random_windows
        return (self.n_starts - 1) // self.stride + 1

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"window {index} out of range for {n} windows")
        if self.random_windows is None:
            start = index * self.stride
        else:
            start = int(self.offsets()[index])
        return _as_int64(self.tokens[start:start + self.context + 1])

    def __getitems__(self, indices: list[int]) -> Batched:
        """A whole batch [B, context + 1] with one gather (DataLoader calls this with the batch's
        indices); the same values as stacking ``self[i]``, without a slice and a copy per window."""
        if not isinstance(self.tokens, (np.ndarray, torch.Tensor)):  # a plain list: per item
            return Batched(torch.stack([self[i] for i in indices]))
        n = len(self)
        index = np.asarray(indices, dtype=np.int64)
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"window index out of range for {n} windows")
        index = np.where(index < 0, index + n, index)
        starts = index * self.stride if self.random_windows is None else self.offsets()[index]
        gather = starts[:, None] + np.arange(self.context + 1, dtype=np.int64)
        if isinstance(self.tokens, torch.Tensor):
            return Batched(self.tokens[torch.from_numpy(gather)].to(torch.int64))
        return Batched(torch.from_numpy(self.tokens[gather].astype(np.int64)))

    def __repr__(self) -> str:
        mode = f"random_windows={self.random_windows}, seed={self.seed}, epoch={self.epoch}" \
            if self.random_windows is not None else f"stride={self.stride}"
        return f"TokenWindowDataset(len={len(self)}, context={self.context}, {mode})"


def _as_int64(window: Any) -> torch.Tensor:
    """A fresh int64 tensor from a slice (never a view into the token stream, so it cannot alias it)."""
    if isinstance(window, torch.Tensor):
        return window.to(torch.int64, copy=True)
    return torch.from_numpy(np.array(window, dtype=np.int64))
