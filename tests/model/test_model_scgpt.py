"""SCGPT user model: setup, train, embeddings, prediction, save/load, query mapping, bad input."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from scgpt_scvi import SCGPT

TINY = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1, "max_seq_len": 24, "dropout": 0.0}


def _synthetic(n_obs: int = 60, n_vars: int = 40, seed: int = 0, n_batch: int = 2) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = rng.negative_binomial(2, 0.6, size=(n_obs, n_vars)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"b{i % n_batch}" for i in range(n_obs)]),
            "cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], n_obs)),
        },
        index=[f"cell{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame(index=[f"GENE{j}" for j in range(n_vars)])
    return ad.AnnData(X=sparse.csr_matrix(X), obs=obs, var=var)


@pytest.fixture
def trained(tmp_path):
    adata = _synthetic()
    SCGPT.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCGPT(adata, use_batch_labels=True, do_mvc=True, **TINY)
    model.train(max_epochs=1, batch_size=16, enable_progress_bar=False)
    return model, adata


def _snapshot(adata: ad.AnnData) -> dict:
    return {
        "X": adata.X.copy(),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": set(adata.obsm),
        "layers": set(adata.layers),
    }


def _assert_unchanged(adata: ad.AnnData, snap: dict, allow_obs: tuple[str, ...] = ()) -> None:
    X = adata.X.toarray() if sparse.issparse(adata.X) else adata.X
    ref = snap["X"].toarray() if sparse.issparse(snap["X"]) else snap["X"]
    np.testing.assert_array_equal(X, ref)
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    extra = set(adata.obs.columns) - set(snap["obs"].columns)
    assert extra <= set(allow_obs), extra
    pd.testing.assert_frame_equal(adata.obs[snap["obs"].columns], snap["obs"])
    assert set(adata.obsm) == snap["obsm"] and set(adata.layers) == snap["layers"]


def test_setup_touches_only_registration_columns():
    adata = _synthetic()
    snap = _snapshot(adata)
    SCGPT.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCGPT(adata, **TINY)
    model.get_latent_representation()
    _assert_unchanged(adata, snap, ("_scvi_batch", "_scvi_labels", "_scgpt_cell_key"))


def test_train_history_and_embedding_shape(trained):
    model, adata = trained
    assert model.is_trained
    assert {"train_loss", "loss_mlm_train", "loss_mvc_train", "loss_cls_train"} <= set(
        model.history
    )
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, TINY["d_model"]) and np.isfinite(z).all()


def test_embeddings_identical_for_any_batch_size(trained):
    model, _ = trained
    z1 = model.get_latent_representation(batch_size=1)
    for bs in (7, 128):
        np.testing.assert_allclose(model.get_latent_representation(batch_size=bs), z1, atol=1e-6)


def test_embedding_of_a_cell_independent_of_subset(trained):
    model, adata = trained
    idx = np.array([3, 10, 41])
    full = model.get_latent_representation()
    np.testing.assert_allclose(model.get_latent_representation(indices=idx), full[idx], atol=1e-6)
    np.testing.assert_allclose(
        model.get_latent_representation(adata[idx].copy()), full[idx], atol=1e-6
    )


def test_predict_is_argmax_of_soft(trained):
    model, adata = trained
    soft = model.predict(soft=True)
    assert list(soft.columns) == sorted(adata.obs["cell_type"].cat.categories)
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(model.predict(), soft.columns[soft.to_numpy().argmax(1)])


def test_gene_embeddings(trained):
    model, adata = trained
    emb = model.get_gene_embeddings()
    assert emb.shape == (adata.n_vars, TINY["d_model"])
    assert list(emb.index) == list(adata.var_names)


def test_save_load_round_trip(trained, tmp_path):
    model, adata = trained
    z = model.get_latent_representation()
    model.save(tmp_path / "m", overwrite=True)
    loaded = SCGPT.load(tmp_path / "m", adata=adata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    assert loaded.vocab_ == model.vocab_


def test_dense_sparse_and_backed_give_same_embeddings(trained, tmp_path):
    model, adata = trained
    z = model.get_latent_representation()
    dense = adata.copy()
    dense.X = dense.X.toarray()
    np.testing.assert_allclose(model.get_latent_representation(dense), z, atol=1e-6)
    path = tmp_path / "backed.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    np.testing.assert_allclose(model.get_latent_representation(backed), z, atol=1e-6)


def test_genes_in_another_order_are_matched_by_name(trained):
    model, adata = trained
    z = model.get_latent_representation()
    shuffled = adata[:, adata.var_names[::-1]].copy()
    np.testing.assert_allclose(model.get_latent_representation(shuffled), z, atol=1e-6)
    other = adata[:, : adata.n_vars - 1].copy()
    with pytest.raises(ValueError, match="genes differ .*prepare_query_anndata"):
        model.get_latent_representation(other)


def test_unknown_batch_outside_load_query_data_is_an_error(trained):
    model, adata = trained
    query = adata[:5].copy()
    query.obs["batch"] = pd.Categorical(["new"] * 5)
    with pytest.raises(ValueError, match="new"):
        model.get_latent_representation(query)


def test_load_query_data_trains_only_new_batch_rows(trained):
    model, adata = trained
    query = _synthetic(n_obs=20, seed=1)
    query.obs["batch"] = pd.Categorical(["query_batch"] * 20)
    ref_state = {k: v.clone() for k, v in model.module.state_dict().items()}
    q = SCGPT.load_query_data(query, model)
    trainable = [n for n, p in q.module.named_parameters() if p.requires_grad]
    assert trainable == ["batch_encoder.embedding.weight"]
    q.train(max_epochs=2, batch_size=10, enable_progress_bar=False)
    new_state = q.module.state_dict()
    for key, ref in ref_state.items():
        if key == "batch_encoder.embedding.weight":
            torch.testing.assert_close(new_state[key][: ref.shape[0]], ref)
            assert new_state[key].shape[0] == ref.shape[0] + 1
        elif key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        else:
            torch.testing.assert_close(new_state[key], ref, msg=key)
    init = SCGPT.load_query_data(query, model).module.batch_encoder.embedding.weight[-1]
    assert not torch.allclose(new_state["batch_encoder.embedding.weight"][-1], init)
    assert q.get_latent_representation().shape == (20, TINY["d_model"])


def test_load_query_data_unfrozen(trained):
    model, _ = trained
    query = _synthetic(n_obs=10, seed=2)
    query.obs["batch"] = pd.Categorical(["q"] * 10)
    q = SCGPT.load_query_data(query, model, unfrozen=True)
    assert all(p.requires_grad for p in q.module.parameters())


@pytest.mark.parametrize(
    "value, match", [(np.nan, "NaN"), (np.inf, "infinite"), (-1.0, "negative")]
)
def test_bad_values_raise_and_leave_adata_unchanged(value, match):
    adata = _synthetic()
    adata.X = adata.X.toarray()
    adata.X[7, 3] = value
    snap = _snapshot(adata)
    with pytest.raises(ValueError, match="cell7"):
        SCGPT.setup_anndata(adata)
    _assert_unchanged(adata, snap)
    assert "_scvi_uuid" not in adata.uns


def test_empty_cells_warn_and_embed_from_cls():
    adata = _synthetic()
    adata.X = adata.X.toarray()
    adata.X[2] = 0
    with pytest.warns(UserWarning, match="express no gene"):
        SCGPT.setup_anndata(adata)
    z = SCGPT(adata, **TINY).get_latent_representation()
    assert np.isfinite(z).all()


def test_vocabulary_overlap_errors_and_warnings():
    adata = _synthetic()
    SCGPT.setup_anndata(adata)
    with pytest.raises(ValueError, match="GENE0"):
        SCGPT(adata, vocab={"OTHER": 0}, **TINY)
    partial = {f"GENE{j}": j for j in range(10)}
    with pytest.warns(UserWarning, match="25.0%"):
        model = SCGPT(adata, vocab=partial, **TINY)
    assert model.gene_overlap_["n_matched"] == 10
    assert (model.module.gene_token_ids[10:] == -1).all()


def test_gene_symbols_key():
    adata = _synthetic()
    adata.var["symbol"] = [f"SYM{j}" for j in range(adata.n_vars)]
    SCGPT.setup_anndata(adata, gene_symbols_key="symbol")
    model = SCGPT(adata, **TINY)
    assert "SYM0" in model.vocab_ and "GENE0" not in model.vocab_
    with pytest.raises(KeyError, match="'missing' is not a column of adata.var"):
        SCGPT.setup_anndata(_synthetic(), gene_symbols_key="missing")


def test_log_normalised_input_gives_same_tokens_as_counts():
    adata = _synthetic()
    SCGPT.setup_anndata(adata)
    model = SCGPT(adata, **TINY)
    lognorm = adata.copy()
    X = lognorm.X.toarray()
    lognorm.X = np.log1p(X / X.sum(1, keepdims=True).clip(1) * 1e4).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(
            model.get_latent_representation(lognorm), model.get_latent_representation(), atol=1e-5
        )


def test_batch_aware_options_train():
    adata = _synthetic()
    SCGPT.setup_anndata(adata, batch_key="batch")
    model = SCGPT(adata, domain_spec_batchnorm=True, do_dab=True, use_batch_labels=True, **TINY)
    model.train(
        max_epochs=1,
        batch_size=16,
        enable_progress_bar=False,
        plan_kwargs={"ecs_weight": 10.0, "cce_weight": 1.0, "dab_weight": 1.0},
    )
    assert {"loss_dab_train", "loss_ecs_train", "loss_cce_train"} <= set(model.history)


def test_setup_args_hold_only_the_arguments():
    adata = _synthetic()
    SCGPT.setup_anndata(adata, labels_key="cell_type")
    model = SCGPT(adata, **TINY)
    assert set(model.registry_["setup_args"]) == {
        "layer",
        "batch_key",
        "labels_key",
        "gene_symbols_key",
        "gene_id_type",
    }


def test_blank_symbols_are_unmatched_and_duplicates_warn():
    adata = _synthetic()
    symbols = [f"SYM{j}" for j in range(adata.n_vars)]
    symbols[0], symbols[1], symbols[3] = "", "nan", "SYM2"
    adata.var["symbol"] = symbols
    SCGPT.setup_anndata(adata, gene_symbols_key="symbol")
    with pytest.warns(UserWarning, match="occur more than once"):
        model = SCGPT(adata, **TINY)
    assert "" not in model.vocab_ and "nan" not in model.vocab_
    assert model.gene_overlap_["n_matched"] == adata.n_vars - 2
    ids = model.module.gene_token_ids
    assert ids[0] == ids[1] == -1 and ids[2] == ids[3]
