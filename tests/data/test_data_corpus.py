"""Streaming corpus loader: order, sharding, resume, reading, faults."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import torch

from scgpt_scvi.data import (
    BlockPlan,
    Corpus,
    CorpusDataLoader,
    CorpusDataset,
    GeneVocab,
    corpus_files,
    iter_plan_cells,
)

FILES = (
    "pbmc68k_reduced_counts_700cells.h5ad",
    "cellbench_3celllines_celseq2_dropseq.h5ad",
    "perturbench_devel_norman19_mcfaline23.h5ad",
)


@pytest.fixture(scope="module")
def data_files(shared_dir):
    paths = [shared_dir / "data" / f for f in FILES]
    for p in paths:
        if not p.is_file():
            pytest.skip(f"{p} not found")
    return paths


# ---------------------------------------------------------------------- order and sharding
@pytest.mark.parametrize(
    ("n_cells", "batch_size", "world", "block"),
    [
        (1000, 16, 2, 16),
        (1001, 16, 2, 7),
        (37, 8, 2, 4),
        (65, 32, 2, 16),
        (5, 8, 2, 3),
        (97, 5, 3, 1),
    ],
)
def test_plan_every_cell_once_equal_steps(n_cells, batch_size, world, block):
    plan = BlockPlan(n_cells, batch_size, world, block, seed=3)
    for epoch in (0, 1):
        seen = {r: [] for r in range(world)}
        steps = {r: 0 for r in range(world)}
        for _, rank, cells in iter_plan_cells(plan, epoch):
            assert len(cells) > 0
            seen[rank].append(cells)
            steps[rank] += 1
        assert len(set(steps.values())) == 1  # every rank the same number of steps
        per_rank = [np.concatenate(v) for v in seen.values()]
        everything = np.concatenate(per_rank)
        assert len(everything) == n_cells  # nothing missing...
        assert np.array_equal(np.sort(everything), np.arange(n_cells))  # ...nothing twice
        assert not set(per_rank[0]) & set(per_rank[1])


def test_plan_blocks_stay_together_and_ranks_read_different_blocks():
    plan = BlockPlan(4096, 64, 2, 16, seed=0)
    cells = plan.cells(0, 5, 0)
    assert len(cells) == 64 and len(np.unique(cells // 16)) == 4  # four whole blocks
    other = plan.cells(0, 5, 1)
    assert not set(cells // 16) & set(other // 16)


def test_plan_deterministic_for_a_seed():
    a, b = BlockPlan(500, 8, 2, 4, seed=1), BlockPlan(500, 8, 2, 4, seed=1)
    assert all(np.array_equal(a.cells(0, s, 1), b.cells(0, s, 1)) for s in range(a.n_steps))
    c = BlockPlan(500, 8, 2, 4, seed=2)
    assert not all(np.array_equal(a.cells(0, s, 1), c.cells(0, s, 1)) for s in range(a.n_steps))
    assert not np.array_equal(a.cells(0, 0, 0), a.cells(1, 0, 0))  # reshuffled each epoch


def test_plan_without_shuffle_is_corpus_order():
    plan = BlockPlan(10, 3, 1, 4, shuffle=False)
    assert np.array_equal(
        np.concatenate([plan.cells(0, s, 0) for s in range(plan.n_steps)]), np.arange(10)
    )


def test_plan_bad_input():
    with pytest.raises(ValueError, match="fewer than"):
        BlockPlan(1, 4, world_size=2)
    with pytest.raises(ValueError, match=">= 1"):
        BlockPlan(10, 0)


# ---------------------------------------------------------------------- reading
def test_corpus_maps_gene_sets_and_symbol_column(data_files):
    corpus = Corpus(data_files)
    rep = corpus.report()
    assert corpus.n_cells == 700 + 499 + 5961 and rep["skipped"] == []
    by_name = {p["path"].split("/")[-1]: p for p in rep["files"]}
    assert by_name[FILES[1]]["gene_col"] == "gene_symbol"  # Ensembl var_names -> symbols
    assert by_name[FILES[0]]["gene_col"] is None
    assert "CD3E" in corpus.vocab
    symbols = ad.read_h5ad(data_files[1], backed="r").var["gene_symbol"].astype(str)
    # only the genes whose symbol column itself holds an Ensembl ID
    n_ensembl = sum(t.startswith("ENSG") for t in corpus.vocab)
    assert n_ensembl == symbols.str.startswith("ENSG").sum() < len(symbols) / 10


def test_batches_hold_the_files_values(data_files):
    corpus = Corpus(data_files)
    plan = BlockPlan(corpus.n_cells, 32, 1, 8, seed=0)
    ds = CorpusDataset(corpus, plan)
    cells = np.arange(690, 720)  # spans the first two files
    batch = ds.read(cells)
    X, tok = batch["X"].numpy(), batch["token_ids"].numpy()
    assert X.shape == (30, len(tok)) and (np.diff(tok) > 0).all()
    for f, lo, hi, rows in ((0, 690, 700, slice(0, 10)), (1, 0, 20, slice(10, 30))):
        a = ad.read_h5ad(data_files[f])
        ref = a.X[lo:hi].toarray()
        ids = corpus.files[f].token_ids
        expect = np.zeros((hi - lo, corpus.vocab.ntoken), np.float32)
        for j in np.flatnonzero(ids >= 0):  # genes sharing a symbol are summed
            expect[:, ids[j]] += ref[:, j]
        got = np.zeros_like(expect)
        got[:, tok] = X[rows]
        np.testing.assert_allclose(got, expect, rtol=1e-6)
    keys = batch["cell_key"].numpy()
    assert len(np.unique(keys)) == 30


def test_loader_resumes_mid_epoch_and_ignores_worker_count(data_files):
    corpus = Corpus(data_files[:2])
    plan = BlockPlan(corpus.n_cells, 64, 2, 16, seed=5)

    def keys(loader):
        return [b["cell_key"].numpy() for b in loader]

    full = keys(CorpusDataLoader(CorpusDataset(corpus, plan), rank=1))
    assert len(full) == plan.n_steps
    resumed = CorpusDataLoader(CorpusDataset(corpus, plan), rank=1, position_fn=lambda: (0, 7))
    state = resumed.state_dict()
    again = CorpusDataLoader(CorpusDataset(corpus, plan), rank=1)
    again.load_state_dict(state)
    rest = keys(again)
    assert len(rest) == plan.n_steps - 7
    assert all(np.array_equal(a, b) for a, b in zip(rest, full[7:]))
    workers = keys(CorpusDataLoader(CorpusDataset(corpus, plan), rank=1, num_workers=2))
    assert all(np.array_equal(a, b) for a, b in zip(workers, full))
    other = keys(CorpusDataLoader(CorpusDataset(corpus, plan), rank=0))
    assert not set(np.concatenate(other)) & set(np.concatenate(full))
    bad = CorpusDataLoader(CorpusDataset(corpus, BlockPlan(corpus.n_cells, 32, 2, 16)))
    with pytest.raises(ValueError, match="steps"):
        bad.load_state_dict(state)


def test_zarr_store_and_folder(data_files, tmp_path):
    a = ad.read_h5ad(data_files[0])
    (tmp_path / "sub").mkdir()
    a.write_zarr(tmp_path / "sub" / "pbmc.zarr")
    corpus = Corpus(tmp_path)
    assert corpus.n_cells == 700 and corpus.files[0].path.suffix == ".zarr"
    batch = CorpusDataset(corpus, BlockPlan(700, 16)).read(np.arange(16))
    assert torch.isclose(batch["X"].sum(), torch.tensor(float(a.X[:16].sum())))


# ---------------------------------------------------------------------- faults
def test_corrupt_file_skipped_or_strict(data_files, tmp_path):
    bad = tmp_path / "broken.h5ad"
    bad.write_bytes(b"not an hdf5 file" * 10)
    with pytest.warns(UserWarning, match="broken.h5ad"):
        corpus = Corpus([data_files[0], bad])
    assert corpus.n_cells == 700 and corpus.skipped[0]["path"].endswith("broken.h5ad")
    with pytest.raises(ValueError, match="broken.h5ad"):
        Corpus([data_files[0], bad], strict=True)


def test_file_without_gene_overlap_skipped(data_files):
    vocab = GeneVocab.from_genes(ad.read_h5ad(data_files[0], backed="r").var_names[:50])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corpus = Corpus([data_files[0], data_files[1]], vocab=vocab, gene_col="gene_ids")
    assert [s["reason"] for s in corpus.skipped] == [
        "no gene overlap with the vocabulary (15073 genes)"
    ]
    assert len(corpus.files) == 1


def test_empty_and_missing_corpus(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        corpus_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.h5ad"):
        Corpus(tmp_path / "nope.h5ad")
    bad = tmp_path / "x.h5ad"
    bad.write_bytes(b"junk")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="No usable file"):
        Corpus(bad)
