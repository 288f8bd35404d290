"""``SCGPTMultiomic``: MuData setup and its errors, the vocabulary layout (against
``fixtures/multiomic``), tokens, training, embedding, save / load, from_pretrained."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from scgpt_scvi import SCGPTMultiomic
from scgpt_scvi.checkpoint import to_torch_layout
from scgpt_scvi.data import GeneVocab

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers
from _helpers_multiomic import _check_outputs, _fixture_kwargs, _load_fixture  # noqa: E402

SMALL = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1}
TRAIN = {
    "batch_size": 16,
    "accelerator": "cpu",
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
}


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- data
def _adata(names, n_cells: int, rng, obs_names=None, density: float = 0.5) -> ad.AnnData:
    x = rng.poisson(3.0, size=(n_cells, len(names))) * (rng.random((n_cells, len(names))) < density)
    obs = pd.DataFrame(
        index=obs_names if obs_names is not None else [f"c{i}" for i in range(n_cells)]
    )
    return ad.AnnData(
        sparse.csr_matrix(x.astype(np.float32)), obs=obs, var=pd.DataFrame(index=names)
    )


def _mdata(
    genes=("CD4", "CD8A", "MS4A1", "LYZ", "NKG7", "GNLY"),
    proteins=("CD4", "CD19", "CD14"),
    n_cells: int = 12,
    seed: int = 0,
) -> md.MuData:
    rng = np.random.default_rng(seed)
    rna = _adata(list(genes), n_cells, rng)
    prot = _adata(list(proteins), n_cells, rng, density=1.0)
    mdata = md.MuData({"rna": rna, "prot": prot})
    mdata.obs["batch"] = pd.Categorical(["a", "b"] * (n_cells // 2))
    return mdata


def _setup(mdata, **kwargs):
    kwargs.setdefault("modalities", {"rna_layer": "rna", "protein_layer": "prot"})
    SCGPTMultiomic.setup_mudata(mdata, **kwargs)


@pytest.fixture(scope="module")
def cite(shared_dir) -> md.MuData:
    """40 CITE-seq cells, 300 of the file's highly variable genes, 14 proteins."""
    path = shared_dir / "data" / "scvi_tests_pbmc_10k_protein_v3_200cells.h5mu"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.read_h5mu(path)
    rna = mdata["rna"][:40, np.flatnonzero(mdata["rna"].var["highly_variable"])[:300]].copy()
    return md.MuData({"rna": rna, "prot": mdata["prot"][:40].copy()})


@pytest.fixture(scope="module")
def multiome(shared_dir) -> md.MuData:
    """60 paired RNA (45 genes) + ATAC (174 peaks) cells, with two made-up batches."""
    path = shared_dir / "data" / "muon_pbmc_multiome_1000cells_rna_atac.h5mu"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.read_h5mu(path)
    out = md.MuData({"rna": mdata["rna"][:60].copy(), "atac": mdata["atac"][:60].copy()})
    out.obs["batch"] = pd.Categorical(np.repeat(["x", "y"], 30))
    return out


# ---------------------------------------------------------------------- parity
def test_model_vocab_layout_reproduces_fixture(fixture_dir):
    """The wrapper, given the fixture's vocabularies, builds the same token and modality ids:
    the modality of each position follows from its token, matching the original's mod_types."""
    vocab = GeneVocab.from_file(fixture_dir / "vocab.json")
    genes = [t for t in vocab if not t.startswith(("<", "p_"))]
    proteins = [t[2:] for t in vocab if t.startswith("p_")]
    mdata = _mdata(genes, proteins, n_cells=6)
    _setup(mdata, batch_key="batch")
    model = SCGPTMultiomic(
        mdata,
        vocab=fixture_dir / "vocab.json",
        vocab_mod=fixture_dir / "vocab_mod.json",
        **_fixture_kwargs(fixture_dir),
    )
    assert model.vocab_ == vocab.get_stoi()  # nothing appended: p_* tokens are in the file
    _load_fixture(model.module, fixture_dir)
    model.module.eval()
    case = torch.load(fixture_dir / "case.pt", weights_only=True)
    inp = case["inputs"]
    pad = inp["src_key_padding_mask"]
    assert torch.equal(model.module.modality_types(inp["gene_ids"])[~pad], inp["mod_types"][~pad])
    with torch.no_grad():
        out = model.module.forward_tokens(
            inp["gene_ids"], inp["values"], pad, inp["batch_labels"], MVC=True
        )
    _check_outputs(out, case)


# ---------------------------------------------------------------------- setup errors
def test_unknown_modality_lists_available():
    mdata = _mdata()
    with pytest.raises(ValueError, match=r"'protein'.*available modalities: \['rna', 'prot'\]"):
        _setup(mdata, modalities={"rna_layer": "rna", "protein_layer": "protein"})
    with pytest.raises(ValueError, match=r"\['rna', 'prot'\]"):
        SCGPTMultiomic.setup_mudata(mdata)
    with pytest.raises(ValueError, match="at least one of rna_layer"):
        _setup(mdata, modalities={"batch_key": "rna"})
    with pytest.raises(NotImplementedError, match="setup_mudata"):
        SCGPTMultiomic.setup_anndata(mdata["rna"])


def test_modalities_with_different_cells_raise_and_leave_mdata_untouched():
    rng = np.random.default_rng(1)
    rna = _adata(["A", "B", "C"], 6, rng)
    prot = _adata(["P1", "P2"], 4, rng, obs_names=["c0", "c1", "c2", "c9"])
    mdata = md.MuData({"rna": rna, "prot": prot})
    columns = list(mdata.obs.columns)
    with pytest.raises(ValueError, match=r"holds \d+ cells \(\d+ of the MuData's 7.*intersect_obs"):
        _setup(mdata)
    assert list(mdata.obs.columns) == columns
    # same cells in another order are refused too (rows would be misread)
    mdata = _mdata(n_cells=4)
    mdata.mod["prot"] = mdata["prot"][::-1].copy()
    with pytest.raises(ValueError, match="another order"):
        _setup(mdata)


def test_bad_values_and_token_budget_names():
    mdata = _mdata()
    mdata["prot"].X = mdata["prot"].X.toarray()
    mdata["prot"].X[2, 1] = -1.0
    with pytest.raises(ValueError, match="c2"):
        _setup(mdata)
    mdata = _mdata()
    _setup(mdata)
    with pytest.raises(ValueError, match="not registered modalities"):
        SCGPTMultiomic(mdata, max_tokens_per_modality={"atac": 10}, **SMALL)
    with pytest.raises(ValueError, match="vocab_mod lacks"):
        SCGPTMultiomic(mdata, vocab_mod={"RNA": 0}, **SMALL)


# ---------------------------------------------------------------------- tokens
def test_protein_named_like_a_gene_gets_its_own_token():
    mdata = _mdata(genes=("CD4", "LYZ"), proteins=("CD4", "CD14"), n_cells=4)
    mdata["rna"].X = sparse.csr_matrix(np.full((4, 2), 5.0, dtype=np.float32))
    mdata["prot"].X = sparse.csr_matrix(np.full((4, 2), 9.0, dtype=np.float32))
    _setup(mdata)
    model = SCGPTMultiomic(mdata, **SMALL)
    vocab, vocab_mod = model.vocab_, model.vocab_mod_
    assert vocab["CD4"] != vocab["p_CD4"]
    rna_ids, prot_ids = model.module.gene_token_ids[:2], model.module.gene_token_ids[2:]
    assert rna_ids.tolist() == [vocab["CD4"], vocab["LYZ"]]
    assert prot_ids.tolist() == [vocab["p_CD4"], vocab["p_CD14"]]
    table = model.module.token_mod_ids
    assert table[vocab["CD4"]] == vocab_mod["RNA"] and table[vocab["p_CD4"]] == vocab_mod["Protein"]
    tokens = model.module.tokenize(torch.cat([torch.full((4, 2), 5.0), torch.full((4, 2), 9.0)], 1))
    assert tokens.gene_ids[0].tolist() == [
        vocab["<cls>"],
        vocab["CD4"],
        vocab["LYZ"],
        vocab["p_CD4"],
        vocab["p_CD14"],
    ]


def test_tokens_concatenate_modalities_with_per_modality_bins_and_budgets():
    mdata = _mdata(
        genes=[f"G{i}" for i in range(30)], proteins=[f"P{i}" for i in range(6)], n_cells=8
    )
    _setup(mdata)
    model = SCGPTMultiomic(mdata, max_tokens_per_modality={"rna": 5}, n_bins=11, **SMALL)
    module = model.module
    assert module.modality_max_tokens == [5, 6]
    rna = torch.tensor(mdata["rna"].X.toarray())
    # distinct protein values on another scale: each cell's protein bins still span 1..10
    prot = 1000.0 + torch.rand(8, 6, generator=torch.Generator().manual_seed(0))
    tokens = module.tokenize(torch.cat([rna, prot], 1), torch.arange(8))
    mods = module.modality_types(tokens.gene_ids)
    rna_id, prot_id = model.vocab_mod_["RNA"], model.vocab_mod_["Protein"]
    for i in range(8):
        keep = ~tokens.padding_mask[i]
        assert keep[: keep.sum()].all()  # pads only at the end
        m = mods[i][keep].tolist()
        assert m[0] == model.vocab_mod_["<cls>"]
        assert m[1:] == sorted(m[1:], key=[rna_id, prot_id].index)  # RNA block, then protein
        n_rna, n_prot = m.count(rna_id), m.count(prot_id)
        assert n_rna == min(5, int((rna[i] > 0).sum())) and n_prot == 6
        prot_bins = tokens.values[i][mods[i] == prot_id]
        assert prot_bins.max() == 10 and prot_bins.min() == 1  # binned within the modality
        rna_cols = tokens.gene_index[i][mods[i] == rna_id]
        assert (rna_cols < 30).all() and (tokens.gene_index[i][mods[i] == prot_id] >= 30).all()


# ---------------------------------------------------------------------- train / embed / save
def test_rna_protein_trains_embeds_and_round_trips(cite, tmp_path):
    mdata = cite.copy()
    _setup(mdata)
    model = SCGPTMultiomic(mdata, max_tokens_per_modality={"rna": 48}, do_mvc=True, **SMALL)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(max_epochs=2, plan_kwargs={"lr": 1e-3, "ecs_weight": 1.0}, **TRAIN)
    assert model.is_trained_
    changed = [k for k, v in model.module.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("mod_encoder.") for k in changed)
    assert any(k.startswith("mvc_decoder.") for k in changed)
    z = model.get_latent_representation()
    assert z.shape == (40, 16) and np.isfinite(z).all()
    np.testing.assert_allclose(model.get_latent_representation(batch_size=7), z, atol=1e-5)
    model.save(tmp_path / "m", save_anndata=False)
    loaded = SCGPTMultiomic.load(tmp_path / "m", adata=mdata, accelerator="cpu")
    assert loaded.vocab_ == model.vocab_ and loaded.vocab_mod_ == model.vocab_mod_
    np.testing.assert_allclose(loaded.get_latent_representation(), z, atol=1e-6)


def test_embeddings_match_genes_and_proteins_by_name(cite):
    """Another feature order in each modality gives the same embeddings (matched by name);
    other features are an error naming the modality."""
    mdata = cite.copy()
    _setup(mdata)
    model = SCGPTMultiomic(mdata, max_tokens_per_modality={"rna": 48}, **SMALL)
    z = model.get_latent_representation()
    rna, prot = mdata["rna"], mdata["prot"]
    shuffled = md.MuData(
        {
            "rna": rna[:, rna.var_names[::-1]].copy(),
            "prot": prot[:, np.roll(np.arange(prot.n_vars), 3)].copy(),
        }
    )
    np.testing.assert_allclose(model.get_latent_representation(shuffled), z, atol=1e-5)
    other = shuffled.copy()
    other.mod["prot"].var_names = [f"X{i}" for i in range(prot.n_vars)]
    with pytest.raises(ValueError, match="'prot'"):
        model.get_latent_representation(other)


def test_rna_atac_with_batches_trains_with_dab(multiome):
    mdata = multiome.copy()
    _setup(mdata, batch_key="batch", modalities={"rna_layer": "rna", "atac_layer": "atac"})
    model = SCGPTMultiomic(
        mdata, max_tokens_per_modality=40, do_mvc=True, do_dab=True, use_batch_labels=True, **SMALL
    )
    assert model.vocab_mod_ == {"ATAC": 0, "RNA": 1, "<pad>": 2, "<cls>": 3, "<eoc>": 4}
    assert all(t in model.vocab_ for t in ("a_" + p for p in mdata["atac"].var_names))
    model.train(max_epochs=1, plan_kwargs={"lr": 1e-3, "ecs_weight": 1.0}, **TRAIN)
    z = model.get_latent_representation()
    assert z.shape == (60, 16) and np.isfinite(z).all()
    # the training step computes every requested objective
    tensors = next(iter(model._make_data_loader(mdata, batch_size=8)))
    model.module.train()
    _, _, loss = model.module(tensors, loss_kwargs={"ecs_weight": 1.0})
    assert {"loss_mlm", "loss_mvc", "loss_ecs", "loss_dab"} <= set(loss.extra_metrics)


def test_protein_only_trains_and_embeds():
    mdata = _mdata(n_cells=12)
    SCGPTMultiomic.setup_mudata(mdata, modalities={"protein_layer": "prot"})
    model = SCGPTMultiomic(mdata, do_mvc=True, **SMALL)
    assert model.module.modality_keys == ["proteins"]
    assert model.vocab_["p_CD19"] > model.vocab_["<eoc>"]  # appended after the specials
    model.train(max_epochs=1, **TRAIN)
    z = model.get_latent_representation()
    assert z.shape == (12, 16) and np.isfinite(z).all()


def test_from_pretrained_initialises_shared_parts(fixtures_dir):
    folder = fixtures_dir / "scgpt_pretrained_layout"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    vocab = GeneVocab.from_file(folder / "vocab.json")
    genes = [t for t in vocab if not t.startswith("<")][:50]
    mdata = _mdata(genes, ("CD3", "CD19"), n_cells=6)
    _setup(mdata)
    model = SCGPTMultiomic.from_pretrained(folder, mdata, max_tokens_per_modality=20)
    with pytest.warns(DeprecationWarning, match="from_pretrained_rna"):
        old = SCGPTMultiomic.from_pretrained_rna(mdata, folder, max_tokens_per_modality=20)
    assert old.pretrained_report_ == model.pretrained_report_
    sd = to_torch_layout(torch.load(folder / "best_model.pt", weights_only=True))
    own = model.module.state_dict()
    attn = "transformer_encoder.layers.0.self_attn.in_proj_weight"
    assert torch.equal(own[attn], sd[attn])
    emb = own["encoder.embedding.weight"]
    assert emb.shape[0] == len(vocab) + 2  # p_CD3, p_CD19 appended
    ids = torch.tensor([vocab[g] for g in genes])
    assert torch.equal(emb[ids], sd["encoder.embedding.weight"][ids])  # pretrained gene rows
    assert model.vocab_["p_CD3"] == len(vocab)
    assert own["mvc_decoder.W.weight"].shape[1] == 2 * own["encoder.embedding.weight"].shape[1]
