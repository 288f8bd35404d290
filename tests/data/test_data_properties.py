"""Property-based tests (hypothesis) of binning, tokenisation and padding invariance.

Inputs: random sparse count matrices with many ties, all-zero rows, huge values, integer /
float16 / float32 / float64 input, columns without a vocabulary id, and random gene orders.
Example counts are bounded so the file runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from scgpt_scvi.data import bin_values, keyed_uniform, tokenize  # noqa: E402
from scgpt_scvi.data._random import STREAM_TIES  # noqa: E402
from scgpt_scvi.module import SCGPTModule  # noqa: E402

N_BINS = 11
CLS_ID, PAD_ID = 1000, 1001
FAST = settings(max_examples=40, deadline=None, database=None, derandomize=True)


@st.composite
def count_matrices(draw, max_cells: int = 6, max_genes: int = 24):
    """``(x, token_ids, cell_keys)``: sparse integer counts with ties and all-zero rows."""
    n_cells = draw(st.integers(1, max_cells))
    n_genes = draw(st.integers(1, max_genes))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    levels = draw(st.sampled_from([(1,), (1, 2), (1, 2, 3, 50), (1, 10**6, 10**9)]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = sparse.random(n_cells, n_genes, density=density, random_state=rng, format="csr")
    x.data = rng.choice(levels, size=x.nnz).astype(np.float64)  # few levels: many ties
    dense = x.toarray()
    if n_cells > 1 and draw(st.booleans()):
        dense[rng.integers(n_cells)] = 0  # an all-zero cell
    token_ids = rng.permutation(n_genes + 5)[:n_genes]
    token_ids[rng.random(n_genes) < 0.15] = -1  # genes without a vocabulary id
    keys = rng.choice(2**24, size=n_cells, replace=False)
    return dense, torch.as_tensor(token_ids), torch.as_tensor(keys)


def _bins(dense: np.ndarray, token_ids: torch.Tensor, keys: torch.Tensor, dtype) -> torch.Tensor:
    x = torch.as_tensor(dense.astype(dtype)).float()  # what the model feeds (float32)
    u = keyed_uniform(0, keys, token_ids.clamp(min=0), STREAM_TIES)
    return bin_values(x, N_BINS, u)


# ---------------------------------------------------------------------- binning
@FAST
@given(count_matrices())
def test_bins_in_range_zero_iff_zero_and_monotone(data):
    dense, token_ids, keys = data
    bins = _bins(dense, token_ids, keys, np.float32)
    x = torch.as_tensor(dense)
    assert torch.equal(bins == 0, x == 0)
    assert bool(((bins >= 1) & (bins <= N_BINS - 1))[x > 0].all())
    for row_x, row_b in zip(x, bins):  # a larger value never gets a lower bin (ties: any)
        larger = row_x[:, None] > row_x[None, :]
        assert bool((row_b[:, None] >= row_b[None, :])[larger & (row_x[None, :] > 0)].all())


@FAST
@given(count_matrices(), st.sampled_from([np.int32, np.int64, np.float16, np.float64]))
def test_bins_do_not_depend_on_input_dtype(data, dtype):
    dense, token_ids, keys = data
    largest = dense.max(initial=0)
    if (dtype == np.float16 and largest > 2048) or (dtype == np.int32 and largest >= 2**31):
        return  # not representable exactly in that dtype
    assert torch.equal(_bins(dense, token_ids, keys, dtype), _bins(dense, token_ids, keys, "f4"))


@FAST
@given(count_matrices(), st.integers(-20, 60))
def test_bins_are_scale_invariant(data, power):
    """Per-cell quantiles: scaling a cell by 2**power (exact in float32) keeps its bins."""
    dense, token_ids, keys = data
    scaled = dense * 2.0**power
    if not np.isfinite(scaled.astype(np.float32)).all():
        return
    assert torch.equal(
        _bins(scaled, token_ids, keys, np.float32), _bins(dense, token_ids, keys, np.float32)
    )


@FAST
@given(count_matrices())
def test_bins_of_a_cell_do_not_depend_on_the_batch(data):
    dense, token_ids, keys = data
    batch = _bins(dense, token_ids, keys, np.float32)
    for i in range(dense.shape[0]):
        alone = _bins(dense[i : i + 1], token_ids, keys[i : i + 1], np.float32)
        assert torch.equal(alone[0], batch[i])


# ---------------------------------------------------------------------- tokenizer
def _tokens(dense, token_ids, keys, max_seq_len, **kwargs):
    x = torch.as_tensor(dense, dtype=torch.float32)
    return tokenize(
        x,
        token_ids,
        keys,
        max_seq_len=max_seq_len,
        cls_id=CLS_ID,
        pad_id=PAD_ID,
        n_bins=N_BINS,
        **kwargs,
    )


def _cell(tok, i):
    keep = ~tok.padding_mask[i]
    return tok.gene_ids[i][keep], tok.values[i][keep]


@FAST
@given(count_matrices(), st.integers(2, 12))
def test_cls_first_pads_last_sorted_and_sized(data, max_seq_len):
    dense, token_ids, keys = data
    tok = _tokens(dense, token_ids, keys, max_seq_len)
    assert bool((tok.gene_ids[:, 0] == CLS_ID).all()) and not bool(tok.padding_mask[:, 0].any())
    assert tok.gene_ids.shape[1] <= max_seq_len
    pads = tok.padding_mask.int()
    assert bool((torch.diff(pads, dim=1) >= 0).all())  # once padding starts it never stops
    assert bool((tok.gene_ids[tok.padding_mask] == PAD_ID).all())
    assert bool((tok.values[tok.padding_mask] == -2.0).all())
    expressed = ((torch.as_tensor(dense) > 0) & (token_ids >= 0)).sum(1)
    n_tokens = (~tok.padding_mask).sum(1) - 1
    assert torch.equal(n_tokens, expressed.clamp(max=max_seq_len - 1))
    for i in range(dense.shape[0]):
        genes = tok.gene_ids[i][~tok.padding_mask[i]][1:]
        assert bool((torch.diff(genes) > 0).all())  # ordered by vocabulary id, no repeats
        cols = tok.gene_index[i][~tok.padding_mask[i]][1:]
        assert bool((torch.as_tensor(dense)[i, cols] > 0).all())
        assert torch.equal(token_ids[cols], genes)


@FAST
@given(count_matrices(), st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_tokens_do_not_depend_on_gene_order_or_batch(data, max_seq_len, perm_seed):
    dense, token_ids, keys = data
    tok = _tokens(dense, token_ids, keys, max_seq_len)
    perm = np.random.default_rng(perm_seed).permutation(dense.shape[1])
    shuffled = _tokens(dense[:, perm], token_ids[perm], keys, max_seq_len)
    for i in range(dense.shape[0]):
        for a, b in zip(_cell(tok, i), _cell(shuffled, i)):
            assert torch.equal(a, b)
        alone = _tokens(dense[i : i + 1], token_ids, keys[i : i + 1], max_seq_len)
        for a, b in zip(_cell(tok, i), _cell(alone, 0)):
            assert torch.equal(a, b)


@FAST
@given(count_matrices(), st.integers(2, 12))
def test_tokenization_is_deterministic(data, max_seq_len):
    dense, token_ids, keys = data
    a, b = (_tokens(dense, token_ids, keys, max_seq_len) for _ in range(2))
    for field in ("gene_ids", "values", "padding_mask", "gene_index"):
        assert torch.equal(getattr(a, field), getattr(b, field))


# ---------------------------------------------------------------------- padding invariance
_MODULE: dict = {}


def _module() -> SCGPTModule:
    if not _MODULE:
        torch.manual_seed(0)
        arch = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 2, "dropout": 0.0}
        module = SCGPTModule(
            ntoken=40, pad_id=38, cls_id=39, max_seq_len=12, gene_token_ids=torch.arange(24), **arch
        )
        _MODULE["m"] = module.eval()
    return _MODULE["m"]


@settings(max_examples=15, deadline=None, database=None, derandomize=True)
@given(count_matrices(max_cells=5, max_genes=24))
def test_cell_embedding_does_not_depend_on_padding(data):
    """A cell's embedding alone equals its embedding in a batch padded to a longer cell."""
    dense, _, keys = data
    module = _module()
    x = torch.zeros(dense.shape[0], 24)
    x[:, : dense.shape[1]] = torch.as_tensor(dense, dtype=torch.float32)
    torch.set_num_threads(1)
    with torch.inference_mode():
        batch = module.inference(x, cell_keys=keys)["cell_emb"]
        for i in range(x.shape[0]):
            alone = module.inference(x[i : i + 1], cell_keys=keys[i : i + 1])["cell_emb"]
            torch.testing.assert_close(alone[0], batch[i], rtol=1e-5, atol=1e-5)
