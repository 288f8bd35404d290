"""SCGPT analysis methods: attention maps, gene x gene attention, gene programs."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse
from torch import nn

from scgpt_scvi import SCGPT, tl

TINY = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 2, "max_seq_len": 12, "dropout": 0.0}


def _synthetic(n_obs=40, n_vars=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.negative_binomial(1, 0.7, size=(n_obs, n_vars)).astype(np.float32)
    obs = pd.DataFrame(
        {"group": pd.Categorical(rng.choice(["g1", "g2"], n_obs))},
        index=[f"cell{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame(index=[f"GENE{j}" for j in range(n_vars)])
    return ad.AnnData(X=sparse.csr_matrix(X), obs=obs, var=var)


@pytest.fixture(scope="module", params=[False, True], ids=["post_norm", "pre_norm"])
def model(request):
    torch.manual_seed(0)
    adata = _synthetic()
    SCGPT.setup_anndata(adata)
    return SCGPT(adata, pre_norm=request.param, **TINY)


def _reference_attention(model, rows, layer):
    """Weights of torch.nn.MultiheadAttention loaded with the layer's parameters, fed the
    layer's input from a plain forward through the earlier layers."""
    mod = model.module.eval()
    adata = model.adata
    x = torch.as_tensor(adata.X[rows].toarray())
    keys = torch.as_tensor(adata.obs["_scgpt_cell_key"].to_numpy()[rows]).long()
    tokens = mod.tokenize(x, keys, mod.seed)
    block = mod.transformer_encoder.layers[layer]
    with torch.no_grad():
        h = mod.encoder(tokens.gene_ids) + mod.value_encoder(tokens.values)
        for lay in mod.transformer_encoder.layers[: layer % len(mod.transformer_encoder.layers)]:
            h = lay(h, tokens.padding_mask)
        if block.pre_norm:
            h = block.norm1(h)
        d = h.shape[-1]
        mha = nn.MultiheadAttention(d, TINY["nhead"], batch_first=True).eval()
        mha.in_proj_weight.copy_(block.self_attn.in_proj_weight)
        mha.in_proj_bias.copy_(block.self_attn.in_proj_bias)
        _, w = mha(h, h, h, key_padding_mask=tokens.padding_mask, need_weights=True)
    return w, tokens


@pytest.mark.parametrize("layer", [0, -1])
def test_get_attention_matches_multihead_attention(model, layer):
    rows = [0, 3, 7, 11]
    att = model.get_attention(indices=rows, layer=layer, batch_size=3)
    assert list(att) == [model.adata.obs_names[r] for r in rows]
    ref, tokens = _reference_attention(model, rows, layer)
    for b, name in enumerate(att):
        real = ~tokens.padding_mask[b]
        expected = ref[b][real][:, real].numpy()
        df = att[name]
        assert df.shape == expected.shape and df.index[0] == "<cls>"
        np.testing.assert_allclose(df.to_numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(df.sum(1), 1.0, atol=1e-5)
        cols = tokens.gene_index[b][real][1:].numpy()
        assert list(df.index[1:]) == list(model.adata.var_names[cols])


def test_attention_independent_of_batch_size(model):
    a = model.get_attention(indices=range(6), batch_size=6)
    b = model.get_attention(indices=range(6), batch_size=2)
    for k in a:
        np.testing.assert_allclose(a[k].to_numpy(), b[k].to_numpy(), atol=1e-6)


def test_gene_attention_is_mean_over_cells_with_both_genes(model):
    att = model.get_attention()
    gene = model.get_gene_attention()
    assert gene.shape == (30, 30)
    g1, g2 = "GENE1", "GENE2"
    vals = [df.loc[g1, g2] for df in att.values() if g1 in df.index and g2 in df.index]
    if vals:
        np.testing.assert_allclose(gene.loc[g1, g2], np.mean(vals), rtol=1e-5)
    # pairs that never co-occur are NaN, and every other entry is a probability
    values = gene.to_numpy()
    finite = values[np.isfinite(values)]
    assert ((finite >= 0) & (finite <= 1)).all()


def test_gene_attention_groupby_and_genes(model):
    sub = model.get_gene_attention(groupby="group", genes=["GENE3", "GENE1", "GENE5"])
    assert set(sub) == {"g1", "g2"}
    assert list(sub["g1"].index) == ["GENE3", "GENE1", "GENE5"]
    # a group's matrix is the matrix of its cells
    rows = np.flatnonzero(model.adata.obs["group"] == "g2")
    direct = model.get_gene_attention(indices=rows, genes=["GENE3", "GENE1", "GENE5"])
    pd.testing.assert_frame_equal(sub["g2"], direct)
    ranked = tl.rank_attention_targets(sub["g1"], sub["g2"], "GENE1", n_top=2)
    assert set(ranked["target"]) <= {"GENE3", "GENE5"}


def test_attention_bad_input(model):
    with pytest.raises(KeyError, match="groupby 'nope' is not a column of adata.obs"):
        model.get_gene_attention(groupby="nope")
    with pytest.raises(IndexError, match="layer=5 is out of range for a 2-layer model"):
        model.get_attention(indices=[0], layer=5)
    with pytest.raises(KeyError, match="NOTAGENE"):
        model.get_gene_attention(genes=["NOTAGENE"])


def test_gene_programs_deterministic_and_partition(model):
    a = model.get_gene_programs(n_neighbors=5, resolution=1.0, min_size=2, random_state=1)
    b = model.get_gene_programs(n_neighbors=5, resolution=1.0, min_size=2, random_state=1)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.index) == list(model.adata.var_names)
    membership = model.adata.varm["scgpt_gene_programs"]
    assert membership.shape[0] == model.adata.n_vars
    # each gene in exactly one program, or unassigned
    per_gene = membership.to_numpy().sum(1)
    assert set(per_gene) <= {0, 1}
    np.testing.assert_array_equal(per_gene == 0, a["program"].isna().to_numpy())
    members = model.adata.uns["scgpt_gene_programs"]
    assert sum(len(v) for v in members.values()) == int(a["program"].notna().sum())
    sizes = a["program"].value_counts()
    assert (sizes[sizes > 0] >= 2).all()
    # a huge min_size leaves every gene unassigned
    none = model.get_gene_programs(n_neighbors=5, min_size=1000, inplace=False)
    assert none["program"].isna().all()
