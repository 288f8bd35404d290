"""scGPT's per-cell value binning, vectorised over a minibatch."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["bin_values"]


def _quantile_edges(sorted_nz: torch.Tensor, n_nonzero: torch.Tensor, n_edges: int) -> torch.Tensor:
    """numpy's default ('linear') quantiles at ``linspace(0, 1, n_edges)`` of each row's non-zeros.

    Reproduces ``np.quantile`` bit for bit: the difference ``b - a`` is taken in the input dtype
    and the interpolation in float64, with numpy's two-sided lerp.
    """
    q = torch.from_numpy(np.linspace(0.0, 1.0, n_edges)).to(sorted_nz.device)
    vi = (n_nonzero.clamp(min=1) - 1).double().unsqueeze(1) * q
    prev = torch.floor(vi)
    gamma = vi - prev
    last = (n_nonzero.clamp(min=1) - 1).unsqueeze(1)
    prev_i = prev.long().clamp(max=last)
    next_i = (prev_i + 1).clamp(max=last)
    a, b = sorted_nz.gather(1, prev_i), sorted_nz.gather(1, next_i)
    diff = (b - a).double()
    a, b = a.double(), b.double()
    return torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def bin_values(x: torch.Tensor, n_bins: int, uniform: torch.Tensor) -> torch.Tensor:
    """Bin each row's non-zero values into ``1..n_bins-1`` by its own quantiles; zeros stay 0.

    The algorithm of ``scgpt.preprocess.binning``: ``n_bins - 1`` quantile edges over the row's
    non-zero values; ``bin = ceil(U * (digitize(v, right=True) - digitize(v)) + digitize(v))``
    so that ties are spread at random over the bins they span.

    Parameters
    ----------
    x
        ``(B, G)`` non-negative values (rows are cells); float32 matches scGPT exactly.
    n_bins
        Number of bins including the zero bin (scGPT: 51).
    uniform
        ``(B, G)`` uniform ``[0, 1)`` draws for tie spreading.

    Returns
    -------
    ``(B, G)`` float tensor of bins.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.data import bin_values
    >>> x = torch.tensor([[0.0, 1.0, 5.0, 2.0, 9.0]])
    >>> bin_values(x, n_bins=5, uniform=torch.zeros_like(x))
    tensor([[0., 1., 3., 2., 4.]])
    """
    nz = x > 0
    n_nonzero = nz.sum(1)
    sorted_nz = torch.sort(torch.where(nz, x, torch.full_like(x, float("inf"))), dim=1).values
    edges = _quantile_edges(sorted_nz, n_nonzero, n_bins - 1).contiguous()
    xd = x.double().contiguous()
    left = torch.searchsorted(edges, xd, right=True)
    right = torch.searchsorted(edges, xd, right=False)
    bins = torch.ceil(uniform * (right - left).double() + left.double())
    return torch.where(nz, bins, torch.zeros_like(bins)).to(x.dtype)
