"""Tokenisation and MLM masking: layout, minibatch invariance, seeds, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from scgpt_scvi.data import check_values, mask_values, tokenize

PAD_ID, CLS_ID = 90, 91
MAX_SEQ_LEN = 16
N_CELLS, N_GENES = 12, 60


def _data():
    """Poisson counts (many ties); a few columns without a vocabulary id; some big cells."""
    g = torch.Generator().manual_seed(0)
    rate = torch.rand(N_CELLS, 1, generator=g) * torch.rand(1, N_GENES, generator=g) * 3
    x = torch.poisson(rate, generator=g)
    x[0] = torch.poisson(torch.full((N_GENES,), 2.0), generator=g)  # > MAX_SEQ_LEN expressed
    x[1, :5] = torch.tensor([0.0, 3.0, 0.0, 0.0, 1.0])
    x[1, 5:] = 0  # a short cell
    token_ids = torch.randperm(N_GENES, generator=g)
    token_ids[[7, 21, 40]] = -1
    cell_keys = torch.arange(1000, 1000 + N_CELLS)
    return x, token_ids, cell_keys


def _tok(x, token_ids, cell_keys, seed=0, **kw):
    kw = {"max_seq_len": MAX_SEQ_LEN, "cls_id": CLS_ID, "pad_id": PAD_ID, "seed": seed, **kw}
    return tokenize(x, token_ids, cell_keys, **kw)


def _cell(batch, i):
    keep = ~batch.padding_mask[i]
    return (
        batch.gene_ids[i][keep].tolist(),
        batch.values[i][keep].tolist(),
        batch.gene_index[i][keep].tolist(),
        int(keep.sum()),
    )


def test_layout():
    x, token_ids, keys = _data()
    b = _tok(x, token_ids, keys, cls_value=0.5, pad_value=-2.0)
    B, L = b.gene_ids.shape
    assert L <= MAX_SEQ_LEN
    assert torch.all(b.gene_ids[:, 0] == CLS_ID) and torch.all(b.values[:, 0] == 0.5)
    assert not b.padding_mask[:, 0].any()
    assert torch.all(b.gene_ids[b.padding_mask] == PAD_ID)
    assert torch.all(b.values[b.padding_mask] == -2.0)
    assert torch.all(b.gene_index[b.padding_mask] == -1) and torch.all(b.gene_index[:, 0] == -1)
    n_expressed = ((x > 0) & (token_ids >= 0)).sum(1)
    for i in range(B):
        ids, vals, cols, n = _cell(b, i)
        assert n == min(int(n_expressed[i]), MAX_SEQ_LEN - 1) + 1
        # right padding: non-pad tokens come first
        assert not b.padding_mask[i, :n].any() and b.padding_mask[i, n:].all()
        cols = cols[1:]
        assert ids[1:] == sorted(ids[1:]), "tokens ordered by vocabulary id"
        assert len(set(ids[1:])) == len(ids) - 1
        assert all(x[i, c] > 0 and token_ids[c] >= 0 for c in cols)
        assert ids[1:] == token_ids[cols].tolist()
        assert all(1 <= v <= 50 and v == int(v) for v in vals[1:]), "bins 1..n_bins-1"
    assert int(n_expressed[0]) > MAX_SEQ_LEN - 1, "cell 0 must need sampling"


def test_include_zero_genes_and_raw_values():
    x, token_ids, keys = _data()
    b = _tok(x[1:2], token_ids, keys[1:2], include_zero_genes=True, n_bins=None, max_seq_len=200)
    ids, vals, cols, n = _cell(b, 0)
    in_vocab = sorted((c for c in range(N_GENES) if token_ids[c] >= 0), key=lambda c: token_ids[c])
    assert cols[1:] == in_vocab
    assert vals[1:] == x[1, in_vocab].tolist()


def test_cell_tokens_do_not_depend_on_column_order():
    """Draws are keyed on vocabulary ids: permuting the input columns changes nothing."""
    x, token_ids, keys = _data()
    perm = torch.randperm(N_GENES, generator=torch.Generator().manual_seed(1))
    a = _tok(x, token_ids, keys)
    b = _tok(x[:, perm], token_ids[perm], keys)
    for i in range(N_CELLS):
        ids_a, vals_a, cols_a, n_a = _cell(a, i)
        ids_b, vals_b, cols_b, n_b = _cell(b, i)
        assert (ids_a, vals_a, n_a) == (ids_b, vals_b, n_b), f"cell {i}"
        assert cols_a[1:] == perm[cols_b[1:]].tolist()
    assert _cell(a, 0)[3] == MAX_SEQ_LEN, "covers gene sampling"


def _chunked(x, token_ids, keys, order, chunk, seed=0):
    out = {}
    for s in range(0, len(order), chunk):
        idx = order[s : s + chunk]
        b = _tok(x[idx], token_ids, keys[idx], seed=seed)
        for j, i in enumerate(idx.tolist()):
            out[i] = (b, j)
    return out


@pytest.mark.parametrize("chunk", [1, 5])
def test_cell_tokens_do_not_depend_on_minibatch(chunk):
    x, token_ids, keys = _data()
    full = _tok(x, token_ids, keys)
    order = torch.randperm(N_CELLS, generator=torch.Generator().manual_seed(chunk))
    parts = _chunked(x, token_ids, keys, order, chunk)
    for i in range(N_CELLS):
        b, j = parts[i]
        assert _cell(b, j) == _cell(full, i), f"cell {i} changed with its minibatch"
    # the check covers both random streams: gene sampling and tie spreading
    assert _cell(full, 0)[3] == MAX_SEQ_LEN
    # a cell surrounded by all-zero cells
    b = _tok(
        torch.cat([torch.zeros(2, N_GENES), x[:1]]),
        token_ids,
        torch.cat([torch.tensor([5, 6]), keys[:1]]),
    )
    assert _cell(b, 2) == _cell(full, 0)


def test_seed_and_cell_key_change_the_draws():
    x, token_ids, keys = _data()
    a, b = _tok(x, token_ids, keys, seed=0), _tok(x, token_ids, keys, seed=1)
    # cell 0 is sub-sampled: the chosen genes change with the seed
    assert _cell(a, 0)[2] != _cell(b, 0)[2]
    # tie spreading: with all genes kept (no sampling), binned values still change
    big = dict(max_seq_len=N_GENES + 1)
    a, b = _tok(x, token_ids, keys, seed=0, **big), _tok(x, token_ids, keys, seed=1, **big)
    assert _cell(a, 0)[2] == _cell(b, 0)[2]
    assert _cell(a, 0)[1] != _cell(b, 0)[1]
    # same seed, same data, different cell key -> different draws
    c = _tok(x[:1], token_ids, keys[:1] + 7, seed=0, **big)
    assert _cell(c, 0)[1] != _cell(a, 0)[1]
    # same everything -> identical
    assert _cell(_tok(x, token_ids, keys, seed=1, **big), 0) == _cell(b, 0)


@pytest.mark.parametrize("ratio", [0.0, 0.15, 0.4, 1.0])
def test_mask_values_counts_and_eligibility(ratio):
    x, token_ids, keys = _data()
    b = _tok(x, token_ids, keys)
    m = mask_values(b, keys, ratio, seed=3)
    assert m.dtype == torch.bool and m.shape == b.gene_ids.shape
    assert not m[:, 0].any(), "<cls> is never masked"
    assert not (m & b.padding_mask).any(), "pads are never masked"
    n_genes = (~b.padding_mask).sum(1) - 1
    expected = torch.tensor([math.floor(int(n) * ratio) for n in n_genes])
    assert torch.equal(m.sum(1), expected)


def test_mask_values_invariant_to_minibatch_and_seeded():
    x, token_ids, keys = _data()
    full = _tok(x, token_ids, keys)
    m_full = mask_values(full, keys, 0.4, seed=5)

    def masked_cols(batch, mask, i):
        return sorted(batch.gene_index[i][mask[i]].tolist())

    order = torch.randperm(N_CELLS, generator=torch.Generator().manual_seed(0))
    for s in range(0, N_CELLS, 4):
        idx = order[s : s + 4]
        b = _tok(x[idx], token_ids, keys[idx])
        m = mask_values(b, keys[idx], 0.4, seed=5)
        for j, i in enumerate(idx.tolist()):
            assert masked_cols(b, m, j) == masked_cols(full, m_full, i)
    m_other = mask_values(full, keys, 0.4, seed=6)
    assert not torch.equal(m_other, m_full)


def test_mask_values_does_not_modify_batch():
    x, token_ids, keys = _data()
    b = _tok(x, token_ids, keys)
    pm = b.padding_mask.clone()
    mask_values(b, keys, 0.5)
    assert torch.equal(pm, b.padding_mask)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_tokenize_rejects_bad_values_naming_the_row(bad):
    x, token_ids, keys = _data()
    x[3, 10] = bad
    with pytest.raises(ValueError, match=r"rows \[3\]"):
        _tok(x, token_ids, keys)
    with pytest.raises(ValueError, match="finite and non-negative"):
        check_values(x)


def test_check_values_accepts_good_input():
    check_values(torch.tensor([[0.0, 1.5], [2.0, 0.0]]))
