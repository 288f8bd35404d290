"""Setup validation: every bad input is caught before registration, with a message naming it."""

from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch

from scgpt_scvi import SCGPT, SCGPTMultiomic, SCGPTPerturbation

TINY = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1, "max_seq_len": 16, "dropout": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def make_adata(counts_adata):
    return counts_adata


def _untouched(adata, obs_columns):
    assert list(adata.obs.columns) == obs_columns
    assert not any(k.startswith("_scvi") for k in adata.uns)


def test_missing_labels_column_leaves_adata_untouched(make_adata):
    adata = make_adata()
    cols = list(adata.obs.columns)
    with pytest.raises(KeyError, match="labels_key 'nope' is not a column of adata.obs"):
        SCGPT.setup_anndata(adata, labels_key="nope")
    _untouched(adata, cols)  # in particular no obs['_scvi_batch']


def test_zero_cells(make_adata):
    with pytest.raises(ValueError, match="0 cells"):
        SCGPT.setup_anndata(make_adata()[:0].copy())
    with pytest.raises(ValueError, match="0 cells"):
        SCGPTPerturbation.setup_anndata(make_adata()[:0].copy(), "batch")


def test_nan_in_batch_names_column_and_count(make_adata):
    adata = make_adata()
    adata.obs.loc[["cell3", "cell5"], "batch"] = np.nan
    cols = list(adata.obs.columns)
    with pytest.raises(ValueError, match=r"adata.obs\['batch'\] \(batch_key\) has 2 missing"):
        SCGPT.setup_anndata(adata, batch_key="batch")
    _untouched(adata, cols)


def test_nan_in_labels_is_an_error_naming_the_column(make_adata):
    adata = make_adata()
    adata.obs["cell_type"] = pd.Categorical(adata.obs["cell_type"])
    adata.obs.loc["cell0", "cell_type"] = np.nan
    with pytest.raises(ValueError, match=r"'cell_type'\] \(labels_key\) has 1 missing.*unknown"):
        SCGPT.setup_anndata(adata, labels_key="cell_type")


def test_missing_layer_lists_available_layers(make_adata):
    adata = make_adata()
    adata.layers["raw"] = adata.X.copy()
    with pytest.raises(KeyError, match=r"layer 'counts' is not in adata.layers.*\['raw'\]"):
        SCGPT.setup_anndata(adata, layer="counts")
    with pytest.raises(KeyError, match="layer 'counts'"):
        SCGPTPerturbation.setup_anndata(adata, "batch", control_category="b0", layer="counts")


def test_duplicated_obs_names_warn(make_adata):
    adata = make_adata()
    adata.obs_names = ["same"] * 2 + list(adata.obs_names[2:])
    with pytest.warns(UserWarning, match="1 duplicated names.*'same'.*obs_names_make_unique"):
        SCGPT.setup_anndata(adata)


def test_single_class_warns_at_setup_and_predict_says_why(make_adata):
    adata = make_adata()
    adata.obs["cell_type"] = "T"
    with pytest.warns(UserWarning, match="single class \\('T'\\).*predict"):
        SCGPT.setup_anndata(adata, labels_key="cell_type")
    model = SCGPT(adata, **TINY)
    with pytest.raises(ValueError, match="at least 2 cell types.*'cell_type' held 1"):
        model.predict()


def test_tiny_class_warns(make_adata):
    adata = make_adata()
    adata.obs["cell_type"] = ["rare"] * 2 + ["T"] * (adata.n_obs - 2)
    with pytest.warns(UserWarning, match=r"fewer than 3 cells: \{'rare': 2\}"):
        SCGPT.setup_anndata(adata, labels_key="cell_type")


def test_clean_setup_gives_no_warning(make_adata):
    adata = make_adata()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SCGPT.setup_anndata(adata, batch_key="batch", labels_key="cell_type")


# ---------------------------------------------------------------------- MuData layers
def _mdata():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(index=[f"c{i}" for i in range(10)])
    counts = rng.poisson(3.0, (10, 4)).astype(np.float32)
    rna = ad.AnnData(
        (counts - counts.mean(0)) / 2.0,  # scaled X with negative values
        obs=obs,
        var=pd.DataFrame(index=["CD4", "CD8A", "LYZ", "NKG7"]),
    )
    rna.layers["counts"] = counts
    return md.MuData({"rna": rna})


def test_setup_mudata_checks_the_layer_it_reads():
    mdata = _mdata()
    SCGPTMultiomic.setup_mudata(mdata, rna_layer="counts", modalities={"rna_layer": "rna"})
    with pytest.raises(ValueError, match=r"mdata\['rna'\].X must hold .*negative"):
        SCGPTMultiomic.setup_mudata(_mdata(), modalities={"rna_layer": "rna"})
    bad = _mdata()
    bad.mod["rna"].layers["counts"][4, 1] = np.nan
    with pytest.raises(ValueError, match=r"layers\['counts'\].*\['c4'\]"):
        SCGPTMultiomic.setup_mudata(bad, rna_layer="counts", modalities={"rna_layer": "rna"})
    with pytest.raises(KeyError, match=r"layer 'nope' is not in mdata\['rna'\].layers"):
        SCGPTMultiomic.setup_mudata(_mdata(), rna_layer="nope", modalities={"rna_layer": "rna"})


def test_setup_mudata_missing_labels_column():
    mdata = _mdata()
    with pytest.raises(KeyError, match="labels_key 'ct' is not a column of mdata.obs"):
        SCGPTMultiomic.setup_mudata(
            mdata, rna_layer="counts", labels_key="ct", modalities={"rna_layer": "rna"}
        )
    assert not any(c.startswith("_scvi") for c in mdata.obs.columns)


# ---------------------------------------------------------------------- training input
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def test_fewer_cells_than_batch_size_warns_and_trains(make_adata):
    adata = make_adata(n_obs=20)
    SCGPT.setup_anndata(adata)
    model = SCGPT(adata, **TINY)
    with pytest.warns(UserWarning, match=r"Only 18 training cells, fewer than batch_size=32"):
        model.train(max_epochs=1, **QUIET)
    assert model.is_trained_
    assert len(model.history["train_loss"]) == 1


def test_training_a_trained_model_says_it_continues(make_adata):
    adata = make_adata()
    SCGPT.setup_anndata(adata)
    model = SCGPT(adata, **TINY)
    model.train(max_epochs=1, batch_size=8, **QUIET)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.warns(UserWarning, match="already trained: train\\(\\) continues from its current"):
        model.train(max_epochs=1, batch_size=8, **QUIET)
    changed = [k for k, v in model.module.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the second call trained (it did not skip)
