"""Count data: detecting it and log-normalising it."""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

__all__ = ["holds_counts", "log_normalize"]

#: Rows read at a time by :func:`holds_counts` (sparse and backed matrices are never densified).
_CHUNK_SIZE = 4096


def holds_counts(X) -> bool:
    """Whether a (dense, sparse or backed) matrix holds only non-negative integers."""
    if X.shape[0] == 0:
        return False
    for start in range(0, X.shape[0], _CHUNK_SIZE):
        rows = X[start : start + _CHUNK_SIZE]
        data = rows.data if sparse.issparse(rows) else np.asarray(rows)
        if not np.all(np.mod(data, 1) == 0):
            return False
    return True


def log_normalize(x: torch.Tensor, target_sum: float = 1e4) -> torch.Tensor:
    """``log1p`` of counts scaled to ``target_sum`` per cell (all-zero cells stay zero).

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.data import log_normalize
    >>> log_normalize(torch.tensor([[1.0, 3.0], [0.0, 0.0]]), target_sum=4.0)
    tensor([[0.6931, 1.3863],
            [0.0000, 0.0000]])
    """
    total = x.sum(1, keepdim=True)
    return torch.log1p(x * (target_sum / total.clamp(min=1e-12)))
