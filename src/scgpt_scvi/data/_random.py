"""Counter-based random numbers keyed on (seed, cell key, column, stream).

scGPT draws tie-spreading, gene sampling and masking from numpy's global generator, so a cell's
tokens depend on its minibatch. Here every random number is a hash of who asks for it, computed
for a whole minibatch at once: a cell's draws never depend on its neighbours or on chunking.
"""

from __future__ import annotations

import torch

__all__ = ["keyed_uniform", "STREAM_TIES", "STREAM_SAMPLE", "STREAM_MASK"]

STREAM_TIES, STREAM_SAMPLE, STREAM_MASK = 1, 2, 3
_M32 = 0xFFFFFFFF


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values in ``[0, 2**32)``."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


def _mix(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    return _fmix32((a * 0x9E3779B1 + _fmix32(torch.as_tensor(b, device=a.device) & _M32)) & _M32)


def keyed_uniform(
    seed: int, cell_keys: torch.Tensor, columns: torch.Tensor, stream: int
) -> torch.Tensor:
    """Uniform ``[0, 1)`` draws of shape ``(n_cells, n_columns)``, float64.

    Parameters
    ----------
    seed
        Global seed (the training plan adds the epoch to redraw each epoch).
    cell_keys
        ``(B,)`` integer keys identifying cells (stable across minibatches).
    columns
        ``(B, C)`` or ``(C,)`` integer column ids (gene index or position).
    stream
        Which use the numbers are for (ties, sampling, masking).

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.data import keyed_uniform
    >>> u = keyed_uniform(0, cell_keys=torch.tensor([11, 12]), columns=torch.arange(4), stream=1)
    >>> u.shape, bool((u == keyed_uniform(0, torch.tensor([11]), torch.arange(4), 1)[0]).all())
    (torch.Size([2, 4]), False)
    """
    base = _mix(torch.tensor(seed & _M32, dtype=torch.int64), stream)
    cells = _mix(cell_keys.long().reshape(-1, 1) & _M32, base.to(cell_keys.device))
    hi = _mix(cells, columns.long() & _M32)
    lo = _mix(hi, 0x5BD1E995)
    return (hi.double() * 2.0**21 + (lo >> 11).double()) / 2.0**53
