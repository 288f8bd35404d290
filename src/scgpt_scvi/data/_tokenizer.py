"""Count rows -> padded scGPT token sequences, vectorised over the minibatch in torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._binning import bin_values
from ._random import STREAM_MASK, STREAM_SAMPLE, STREAM_TIES, keyed_uniform

__all__ = ["TokenizedBatch", "tokenize", "mask_values", "check_values"]


@dataclass
class TokenizedBatch:
    """A minibatch of token sequences, ``<cls>`` first, right-padded.

    Attributes
    ----------
    gene_ids
        ``(B, L)`` vocabulary ids.
    values
        ``(B, L)`` input values (binned or raw), ``cls_value`` at 0, ``pad_value`` at pads.
    padding_mask
        ``(B, L)`` True at pads.
    gene_index
        ``(B, L)`` column of the input matrix each token came from (-1 for ``<cls>`` and pads).

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.data import tokenize
    >>> batch = tokenize(torch.tensor([[0.0, 3.0, 1.0]]), torch.tensor([3, 4, 5]),
    ...                  torch.tensor([7]), max_seq_len=4, cls_id=1, pad_id=0)
    >>> batch.gene_ids.shape, batch.padding_mask.tolist()
    (torch.Size([1, 3]), [[False, False, False]])
    """

    gene_ids: torch.Tensor
    values: torch.Tensor
    padding_mask: torch.Tensor
    gene_index: torch.Tensor


def check_values(x: torch.Tensor) -> None:
    """Raise ``ValueError`` naming minibatch rows with NaN, infinite or negative values.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.data import check_values
    >>> check_values(torch.tensor([[0.0, 2.0], [1.0, 5.0]]))  # fine: returns None
    >>> check_values(torch.tensor([[0.0, -1.0]]))
    Traceback (most recent call last):
        ...
    ValueError: Expression values must be finite and non-negative; minibatch rows [0] are not.
    """
    bad = ~torch.isfinite(x) | (x < 0)
    if bad.any():
        rows = torch.nonzero(bad.any(1)).flatten()[:5].tolist()
        raise ValueError(
            f"Expression values must be finite and non-negative; minibatch rows {rows} are not."
        )


def tokenize(
    x: torch.Tensor,
    token_ids: torch.Tensor,
    cell_keys: torch.Tensor,
    *,
    max_seq_len: int,
    cls_id: int,
    pad_id: int,
    n_bins: int | None = 51,
    include_zero_genes: bool = False,
    cls_value: float = 0.0,
    pad_value: float = -2.0,
    seed: int = 0,
) -> TokenizedBatch:
    """Tokenise count rows the way scGPT does, without a Python loop over cells.

    1. Genes with ``token_ids < 0`` (not in the vocabulary) are dropped.
    2. Values are binned per cell over its kept non-zero genes (``n_bins=None`` keeps them raw).
    3. The cell's non-zero genes (all kept genes with ``include_zero_genes``) are chosen; when
       more than ``max_seq_len - 1``, a random subset of that size; tokens are ordered by
       vocabulary id.
    4. ``<cls>`` (value ``cls_value``) goes first; rows are right-padded with ``pad_id`` /
       ``pad_value`` to the longest row of the minibatch.

    Every random draw is keyed on ``(seed, cell key, vocabulary id)``, so a cell's tokens do not
    depend on the other cells in the minibatch, nor on the order of the input columns.

    Parameters
    ----------
    x
        ``(B, G)`` dense non-negative expression.
    token_ids
        ``(G,)`` vocabulary id of each column, -1 where the gene has none.
    cell_keys
        ``(B,)`` integer cell keys for the random streams.
    max_seq_len
        Maximum sequence length including ``<cls>``.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.data import tokenize
    >>> counts = torch.tensor([[0.0, 3.0, 1.0, 8.0], [2.0, 0.0, 0.0, 0.0]])
    >>> batch = tokenize(counts, token_ids=torch.tensor([3, 4, 5, 6]),
    ...                  cell_keys=torch.tensor([1, 2]), max_seq_len=4, cls_id=1, pad_id=0,
    ...                  n_bins=5)
    >>> batch.gene_ids.tolist()
    [[1, 4, 5, 6], [1, 3, 0, 0]]
    """
    check_values(x)
    B, G = x.shape
    device = x.device
    in_vocab = (token_ids >= 0).to(device)
    x = torch.where(in_vocab, x, torch.zeros_like(x))
    token_ids = token_ids.to(device)
    columns = token_ids.clamp(min=0)
    if n_bins is not None:
        x = bin_values(x, n_bins, keyed_uniform(seed, cell_keys, columns, STREAM_TIES))
    chosen = in_vocab.expand(B, G) if include_zero_genes else x > 0
    k = int(min(max_seq_len - 1, int(chosen.sum(1).max()) if B else 0))
    score = keyed_uniform(seed, cell_keys, columns, STREAM_SAMPLE) + 1.0
    score = torch.where(chosen, score, torch.zeros_like(score))
    top = torch.topk(score, k, dim=1)
    valid = top.values > 0
    order = torch.where(valid, token_ids[top.indices], torch.iinfo(torch.long).max)
    order = torch.argsort(order, dim=1, stable=True)
    valid = valid.gather(1, order)
    idx = torch.where(valid, top.indices.gather(1, order), G)
    safe = idx.clamp(max=G - 1)
    gene_ids = torch.where(valid, token_ids[safe], torch.full_like(safe, pad_id))
    values = torch.where(valid, x.gather(1, safe), torch.full_like(safe, pad_value, dtype=x.dtype))
    cls_col = torch.full((B, 1), cls_id, dtype=torch.long, device=device)
    return TokenizedBatch(
        gene_ids=torch.cat([cls_col, gene_ids], 1),
        values=torch.cat([torch.full((B, 1), cls_value, dtype=x.dtype, device=device), values], 1),
        padding_mask=torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=device), ~valid], 1),
        gene_index=torch.cat([torch.full_like(cls_col, -1), torch.where(valid, idx, -1)], 1),
    )


def mask_values(
    batch: TokenizedBatch,
    cell_keys: torch.Tensor,
    mask_ratio: float,
    mask_value: float = -1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Choose MLM positions: ``floor(n * mask_ratio)`` of each cell's ``n`` gene tokens.

    ``<cls>`` and pads are never masked (scGPT may mask ``<cls>``). Draws are keyed on the cell
    and the gene's vocabulary id, so a cell's mask does not depend on its minibatch.

    Returns
    -------
    ``(B, L)`` bool, True at masked positions; the caller writes ``mask_value`` there.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.data import mask_values, tokenize
    >>> keys = torch.tensor([1])
    >>> batch = tokenize(torch.tensor([[4.0, 3.0, 1.0, 8.0]]), torch.tensor([3, 4, 5, 6]), keys,
    ...                  max_seq_len=5, cls_id=1, pad_id=0, n_bins=5)
    >>> masked = mask_values(batch, keys, mask_ratio=0.5)  # True where the value is masked
    >>> masked.shape, bool(masked[0, 0])  # <cls> is never masked
    (torch.Size([1, 5]), False)
    """
    eligible = ~batch.padding_mask
    eligible[:, 0] = False
    n_mask = torch.floor(eligible.sum(1).double() * mask_ratio).long()
    u = keyed_uniform(seed, cell_keys, batch.gene_ids, STREAM_MASK)
    u = torch.where(eligible, u, torch.full_like(u, 2.0))
    rank = torch.argsort(torch.argsort(u, dim=1), dim=1)
    return rank < n_mask.unsqueeze(1)
