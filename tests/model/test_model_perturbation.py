"""SCGPTPerturbation: setup_anndata and its errors, training, prediction, from_pretrained,
save / load, the additive-interaction combination against the baselines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from scgpt_scvi import SCGPTPerturbation
from scgpt_scvi.checkpoint import to_torch_layout
from scgpt_scvi.data import log_normalize
from scgpt_scvi.metrics import perturbation_baselines

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers
from _helpers_perturbation import make_adata  # noqa: E402

torch.set_num_threads(1)

SMALL = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1, "nlayers_cls": 2}


@pytest.fixture(scope="module")
def trained() -> SCGPTPerturbation:
    adata = make_adata()
    SCGPTPerturbation.setup_anndata(adata, "cond")
    torch.manual_seed(0)
    model = SCGPTPerturbation(adata, **SMALL)
    model.train(max_epochs=2, batch_size=32, enable_progress_bar=False, plan_kwargs={"lr": 1e-3})
    return model


# ------------------------------------------------------------------ model
def test_counts_and_lognormalised_input_agree():
    """Counts are log-normalised inside the module: same weights -> same predictions."""
    counts = make_adata()
    logged = counts.copy()
    logged.X = log_normalize(torch.from_numpy(counts.X)).numpy()
    preds = []
    for adata in (counts, logged):
        SCGPTPerturbation.setup_anndata(adata, "cond")
        torch.manual_seed(1)
        model = SCGPTPerturbation(adata, **SMALL)
        preds.append(model.predict_perturbation(["g1", "g1+g3"], n_control_cells=10).X)
    assert model.module.normalize_counts is False
    np.testing.assert_allclose(preds[0], preds[1], atol=1e-5)


def test_counts_layer_registered():
    adata = make_adata()
    adata.layers["counts"] = adata.X.copy()
    adata.X = log_normalize(torch.from_numpy(adata.X)).numpy()
    SCGPTPerturbation.setup_anndata(adata, "cond", layer="counts")
    model = SCGPTPerturbation(adata, **SMALL)
    assert model.module.normalize_counts is True


def test_vocab_holds_measured_and_target_genes(trained):
    vocab = trained.vocab_
    assert [vocab[f"g{i}"] for i in range(12)] == list(range(12))
    assert vocab["X"] == 12
    assert {"<pad>", "<cls>", "<eoc>"} <= set(vocab)


def test_training_records_loss(trained):
    assert trained.is_trained_
    assert "loss_mlm_train" in trained.history
    assert np.isfinite(trained.history["train_loss"].to_numpy(dtype=float)).all()


def test_predict_names_seen_and_unseen(trained):
    perts = ["g1+g2", "g1", "g2+ctrl", "X", "g7", "g7+X", "ctrl"]
    pred = trained.predict_perturbation(perts, n_control_cells=8)
    assert pred.obs_names.tolist() == perts
    assert pred.var_names.equals(trained.adata.var_names)
    assert np.isfinite(pred.X).all()
    # different perturbations give different predictions
    assert np.abs(pred.X[0] - pred.X[-1]).max() > 0
    cells = trained.predict_perturbation(["g1", "X"], n_control_cells=5, return_type="cells")
    assert cells.shape == (10, 12)
    assert cells.obs["condition"].tolist() == ["g1"] * 5 + ["X"] * 5
    assert cells.obs_names.is_unique
    np.testing.assert_allclose(
        cells.X[:5].mean(0), trained.predict_perturbation("g1", n_control_cells=5).X[0], atol=1e-5
    )


def test_predict_independent_of_batch_size(trained):
    a = trained.predict_perturbation(["g1+g3"], n_control_cells=None, batch_size=7)
    b = trained.predict_perturbation(["g1+g3"], n_control_cells=None, batch_size=64)
    np.testing.assert_allclose(a.X, b.X, atol=1e-5)


def test_save_load_roundtrip(trained, tmp_path):
    trained.save(tmp_path / "m", overwrite=True)
    loaded = SCGPTPerturbation.load(tmp_path / "m", adata=trained.adata)
    perts = ["g1+g3", "X", "g7"]
    np.testing.assert_allclose(
        trained.predict_perturbation(perts, n_control_cells=6).X,
        loaded.predict_perturbation(perts, n_control_cells=6).X,
        atol=1e-6,
    )
    assert loaded.vocab_ == trained.vocab_


# ------------------------------------------------------------------ bad input
def test_predict_unknown_gene_names_it(trained):
    with pytest.raises(ValueError, match="NOTAGENE"):
        trained.predict_perturbation(["g1+NOTAGENE"])


@pytest.mark.parametrize("bad", ["g1++g2", "+g1", ""])
def test_predict_malformed_condition(trained, bad):
    with pytest.raises(ValueError, match=repr(bad).replace("+", r"\+")):
        trained.predict_perturbation([bad])


def test_predict_duplicates_and_return_type(trained):
    with pytest.raises(ValueError, match="twice"):
        trained.predict_perturbation(["g1", "g1"])
    with pytest.raises(ValueError, match="return_type"):
        trained.predict_perturbation(["g1"], return_type="median")


def test_setup_without_controls():
    adata = make_adata(conditions=["g1"] * 5 + ["g2"] * 5)
    with pytest.raises(ValueError, match="No control cells"):
        SCGPTPerturbation.setup_anndata(adata, "cond")
    assert "_scvi_uuid" not in adata.uns


def test_setup_malformed_condition_in_data():
    adata = make_adata(conditions=["ctrl"] * 5 + ["g1++g2"] * 5)
    with pytest.raises(ValueError, match=r"'g1\+\+g2'"):
        SCGPTPerturbation.setup_anndata(adata, "cond")


def test_setup_missing_column():
    with pytest.raises(KeyError, match="nope"):
        SCGPTPerturbation.setup_anndata(make_adata(), "nope")


def test_given_vocab_must_hold_targets():
    adata = make_adata()
    SCGPTPerturbation.setup_anndata(adata, "cond")
    vocab = {f"g{i}": i for i in range(12)} | {"<pad>": 12, "<cls>": 13, "<eoc>": 14}
    with pytest.raises(ValueError, match="'X'"):
        SCGPTPerturbation(adata, vocab=vocab, **SMALL)


# ------------------------------------------------------------------ pretrained initialisation
def _pbmc_adata(fixtures_dir, targets: tuple[str, str]) -> ad.AnnData:
    genes = list(json.loads((fixtures_dir / "generator" / "vocab.json").read_text()))[:10]
    conds = ["ctrl"] * 10 + [targets[0]] * 5 + [f"{targets[0]}+{targets[1]}"] * 5
    adata = make_adata(conditions=conds, n_genes=10)
    adata.var_names = genes
    return adata


def test_from_pretrained_loads_shared_parts(fixtures_dir):
    folder = fixtures_dir / "generator"
    vocab = json.loads((folder / "vocab.json").read_text())
    targets = (list(vocab)[20], list(vocab)[30])  # in the checkpoint vocabulary, not measured
    adata = _pbmc_adata(fixtures_dir, targets)
    SCGPTPerturbation.setup_anndata(adata, "cond")
    model = SCGPTPerturbation.from_pretrained(folder, adata)
    assert model.vocab_ == vocab
    assert model.module.d_model == 64
    sd = to_torch_layout(torch.load(folder / "best_model.pt", weights_only=True))
    own = model.module.state_dict()
    for key in (
        "encoder.embedding.weight",
        "transformer_encoder.layers.1.self_attn.in_proj_weight",
    ):
        assert torch.equal(own[key], sd[key])
    # the perturbation embedding and the heads are not loaded
    assert not torch.equal(own["pert_encoder.weight"], sd["pert_encoder.weight"])
    pred = model.predict_perturbation([f"{targets[1]}+{targets[0]}"], n_control_cells=4)
    assert pred.obs_names.tolist() == [f"{targets[1]}+{targets[0]}"]
    # the old argument order warns and builds the same model
    with pytest.warns(DeprecationWarning, match=r"from_pretrained\(model_dir, data\)"):
        torch.manual_seed(0)
        old = SCGPTPerturbation.from_pretrained(adata, folder)
    with pytest.warns(DeprecationWarning, match="pretrained_dir"):
        keyword = SCGPTPerturbation.from_pretrained(adata, pretrained_dir=folder)
    for other in (old, keyword):
        for key in ("encoder.embedding.weight", "transformer_encoder.layers.0.linear1.weight"):
            assert torch.equal(other.module.state_dict()[key], own[key])


def test_from_pretrained_needs_targets_in_vocab(fixtures_dir):
    adata = _pbmc_adata(fixtures_dir, ("NOT_IN_VOCAB", "ALSO_NOT"))
    SCGPTPerturbation.setup_anndata(adata, "cond")
    with pytest.raises(ValueError, match="NOT_IN_VOCAB"):
        SCGPTPerturbation.from_pretrained(fixtures_dir / "generator", adata)


# ------------------------------------------------------------------ additive + interaction
ADDITIVE = "additive_interaction"
PERTS = ["g1+g2", "g1", "g2+ctrl", "X", "g1+g3", "g7", "ctrl"]


def _additive_model(seed: int = 0) -> SCGPTPerturbation:
    adata = make_adata(seed)
    SCGPTPerturbation.setup_anndata(adata, "cond")
    torch.manual_seed(seed)
    return SCGPTPerturbation(adata, combination=ADDITIVE, **SMALL)


@pytest.fixture(scope="module")
def trained_additive() -> SCGPTPerturbation:
    model = _additive_model()
    model.train(max_epochs=3, batch_size=32, enable_progress_bar=False, plan_kwargs={"lr": 3e-3})
    return model


def _zero_residual(model: SCGPTPerturbation) -> None:
    with torch.no_grad():
        for head in (model.module.decoder.coeff_decoder, model.module.decoder.bias_decoder):
            head.fc[-1].weight.zero_()
            head.fc[-1].bias.zero_()


def test_additive_untrained_equals_additive_baseline():
    model = _additive_model()
    base = perturbation_baselines(model.adata, "cond", PERTS)["additive"].X
    for n in (None, 5):  # whatever control cells are perturbed
        pred = model.predict_perturbation(PERTS, n_control_cells=n).X
        np.testing.assert_allclose(pred, base, atol=1e-5)
    # and the additive expectation is not trivially the control mean
    assert np.abs(base[0] - base[-1]).max() > 0.5


def test_additive_zero_residual_equals_baseline_after_training(trained_additive):
    """The trained model departs from additive only through its residual head."""
    base = perturbation_baselines(trained_additive.adata, "cond", PERTS)["additive"].X
    pred = trained_additive.predict_perturbation(PERTS, n_control_cells=8).X
    assert np.abs(pred - base).max() > 1e-3  # training moved the residual off zero
    saved = {k: v.clone() for k, v in trained_additive.module.state_dict().items()}
    try:
        _zero_residual(trained_additive)
        zeroed = trained_additive.predict_perturbation(PERTS, n_control_cells=8).X
    finally:
        trained_additive.module.load_state_dict(saved)
    np.testing.assert_allclose(zeroed, base, atol=1e-5)


def test_additive_tiny_training_and_roundtrip(trained_additive, tmp_path):
    assert trained_additive.module.combination == ADDITIVE
    assert np.isfinite(trained_additive.history["train_loss"].to_numpy(dtype=float)).all()
    trained_additive.save(tmp_path / "m", overwrite=True)
    loaded = SCGPTPerturbation.load(tmp_path / "m", adata=trained_additive.adata)
    assert loaded.module.combination == ADDITIVE
    np.testing.assert_allclose(
        trained_additive.predict_perturbation(PERTS, n_control_cells=6).X,
        loaded.predict_perturbation(PERTS, n_control_cells=6).X,
        atol=1e-6,
    )


def test_combination_validated():
    adata = make_adata()
    SCGPTPerturbation.setup_anndata(adata, "cond")
    with pytest.raises(ValueError, match="'multiplicative'.*'direct', 'additive_interaction'"):
        SCGPTPerturbation(adata, combination="multiplicative", **SMALL)
    with pytest.raises(ValueError, match="explicit_zero_prob"):
        SCGPTPerturbation(adata, combination=ADDITIVE, explicit_zero_prob=True, **SMALL)


def test_model_saved_before_the_option_loads_as_direct(tmp_path):
    adata = make_adata()
    SCGPTPerturbation.setup_anndata(adata, "cond")
    model = SCGPTPerturbation(adata, combination="direct", **SMALL)
    del model.init_params_["non_kwargs"]["combination"]  # as saved by earlier versions
    model.save(tmp_path / "m", overwrite=True)
    loaded = SCGPTPerturbation.load(tmp_path / "m", adata=adata)
    assert loaded.module.combination == "direct"
    np.testing.assert_allclose(
        model.predict_perturbation(PERTS, n_control_cells=6).X,
        loaded.predict_perturbation(PERTS, n_control_cells=6).X,
        atol=1e-6,
    )
