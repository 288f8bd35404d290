"""gene_programs (kNN + Leiden on embeddings) and score_gene_programs (scanpy score_genes)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scgpt_scvi.tl import gene_programs, program_members, score_gene_programs


def _clustered_embeddings(n_per=12, n_groups=3, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, d)) * 5
    emb = np.concatenate([c + rng.normal(size=(n_per, d)) * 0.3 for c in centres])
    genes = [f"G{i}" for i in range(len(emb))]
    return pd.DataFrame(emb, index=genes), np.repeat(np.arange(n_groups), n_per)


def test_recovers_planted_programs_deterministically():
    emb, truth = _clustered_embeddings()
    a = gene_programs(emb, n_neighbors=5, resolution=0.5, min_size=3, random_state=0)
    b = gene_programs(emb, n_neighbors=5, resolution=0.5, min_size=3, random_state=0)
    pd.testing.assert_frame_equal(a, b)
    # the planted groups come back (up to names)
    table = pd.crosstab(a["program"], truth)
    assert (table.gt(0).sum(1) == 1).all() and len(table) == 3
    assert a["program_size"].tolist() == [12] * 36
    members = program_members(a)
    assert sorted(len(v) for v in members.values()) == [12, 12, 12]


def test_min_size_unassigns_small_clusters():
    rng = np.random.default_rng(0)
    axes = np.eye(8) * 5
    emb = np.concatenate(
        [axes[0] + rng.normal(size=(12, 8)) * 0.3, axes[1] + rng.normal(size=(12, 8)) * 0.3]
        + [axes[2] + rng.normal(size=(2, 8)) * 0.1]  # a 2-gene cluster of its own
    )
    emb = pd.DataFrame(emb, index=[f"G{i}" for i in range(24)] + ["X1", "X2"])
    out = gene_programs(emb, n_neighbors=3, resolution=0.5, min_size=5)
    assert out.loc[["X1", "X2"], "program"].isna().all()
    assert (out.loc[["X1", "X2"], "program_size"] == 0).all()
    assert out["program"].notna().sum() == 24
    kept = gene_programs(emb, n_neighbors=3, resolution=0.5, min_size=2)
    assert kept.loc["X1", "program"] == kept.loc["X2", "program"] == "2"


def test_score_gene_programs_writes_obsm_only():
    rng = np.random.default_rng(0)
    X = np.log1p(rng.poisson(1.0, size=(60, 80)).astype(np.float32))
    X[:30, :10] += 3.0  # program "up" is high in the first half
    adata = ad.AnnData(X, var=pd.DataFrame(index=[f"G{i}" for i in range(80)]))
    obs_before = adata.obs.copy()
    programs = {"up": [f"G{i}" for i in range(10)], "missing": ["NOPE"]}
    with pytest.warns(UserWarning, match="none of its 1 genes"):
        scores = score_gene_programs(adata, programs)
    assert list(adata.obsm["gene_program_scores"].columns) == ["up", "missing"]
    assert scores["up"].iloc[:30].mean() > scores["up"].iloc[30:].mean() + 2
    assert scores["missing"].isna().all()
    assert adata.uns["gene_program_scores"]["up"] == programs["up"]
    pd.testing.assert_frame_equal(adata.obs, obs_before)
    # a gene_programs table works as input too
    table = pd.DataFrame(
        {"program": pd.Categorical(["a"] * 10 + [None] * 70)}, index=adata.var_names
    )
    out = score_gene_programs(adata, table, key_added="s2")
    np.testing.assert_allclose(out["a"], scores["up"], rtol=1e-5)
