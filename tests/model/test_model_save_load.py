"""Safe model folders: no unpickling, exact round trips, genes by name, atomic writes."""

from __future__ import annotations

import builtins
import json

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse
from scvi.model.base import BaseModelClass

from scgpt_scvi import SCGPT, SCGPTMultiomic, SCGPTPerturbation
from scgpt_scvi.model import _save_load, convert_pickle_folder
from scgpt_scvi.model._save_load import from_json, to_json

TINY = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1, "dropout": 0.0}
FIT = {"max_epochs": 1, "batch_size": 16, "enable_progress_bar": False, "accelerator": "cpu"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(counts_adata):
    adata = counts_adata(40, 30)
    SCGPT.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    torch.manual_seed(0)
    model = SCGPT(adata, use_batch_labels=True, max_seq_len=20, **TINY)
    model.train(**FIT)
    return model, adata


class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _malicious_folder(path, marker):
    path.mkdir()
    torch.save({"attr_dict": _Payload(marker), "model_state_dict": {}}, path / "model.pt")
    return path


# ---------------------------------------------------------------------- no unpickling
def test_pickle_payload_is_refused_by_load_and_load_query_data(trained, tmp_path):
    model, adata = trained
    marker = tmp_path / "pwned"
    folder = _malicious_folder(tmp_path / "evil", marker)
    with pytest.raises(ValueError, match="pickle.*refused.*allow_pickle=True.*convert_pickle"):
        SCGPT.load(folder, adata=adata)
    with pytest.raises(ValueError, match="pickle.*refused"):
        SCGPT.load_query_data(adata.copy(), str(folder))
    assert not marker.exists()
    # the check would catch a payload: unpickling it (what scvi-tools does) creates the marker
    torch.load(folder / "model.pt", weights_only=False)
    assert marker.exists()


def test_scvi_pickle_folder_loads_with_allow_pickle_or_after_conversion(trained, tmp_path):
    model, adata = trained
    z = model.get_latent_representation()
    BaseModelClass.save(model, str(tmp_path / "old"))  # scvi-tools' pickle format
    with pytest.warns(UserWarning, match="arbitrary code"):
        loaded = SCGPT.load(tmp_path / "old", adata=adata, allow_pickle=True)
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    with pytest.warns(UserWarning, match="arbitrary code"):
        convert_pickle_folder(tmp_path / "old")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == [
        "model.json",
        "model.safetensors",
    ]
    np.testing.assert_array_equal(
        SCGPT.load(tmp_path / "old", adata=adata).get_latent_representation(), z
    )


def test_safe_folder_holds_no_pickle(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "model.json",
        "model.safetensors",
    ]
    manifest = json.loads((tmp_path / "m" / "model.json").read_text())
    assert manifest["format"] == "scgpt-scvi model" and len(manifest["weights"]["sha256"]) == 64


# ---------------------------------------------------------------------- round trips
def test_scgpt_round_trip_is_exact(trained, tmp_path):
    model, adata = trained
    z, labels = model.get_latent_representation(), model.predict()
    model.save(tmp_path / "m", save_anndata=True)
    loaded = SCGPT.load(tmp_path / "m", adata=adata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    np.testing.assert_array_equal(loaded.predict(), labels)
    for key, df in model.history_.items():
        pd.testing.assert_frame_equal(loaded.history_[key], df)
    np.testing.assert_array_equal(loaded.train_indices_, model.train_indices_)
    assert loaded.vocab_ == model.vocab_ and loaded.is_trained_
    assert not loaded.module.training
    # from the saved adata.h5ad
    np.testing.assert_array_equal(SCGPT.load(tmp_path / "m").get_latent_representation(), z)


def test_perturbation_round_trip_is_exact(tmp_path):
    conditions = ["ctrl"] * 12 + ["g1"] * 8 + ["g1+g2"] * 8
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        rng.poisson(2.0, (len(conditions), 8)).astype(np.float32),
        obs=pd.DataFrame({"cond": conditions}, index=[f"c{i}" for i in range(len(conditions))]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(8)]),
    )
    SCGPTPerturbation.setup_anndata(adata, "cond")
    model = SCGPTPerturbation(adata, **TINY)
    pred = model.predict_perturbation(["g1+g2", "g3"], n_control_cells=5).X
    model.save(tmp_path / "p")
    loaded = SCGPTPerturbation.load(tmp_path / "p", adata=adata)
    np.testing.assert_array_equal(
        loaded.predict_perturbation(["g1+g2", "g3"], n_control_cells=5).X, pred
    )
    shuffled = adata[:, adata.var_names[::-1]].copy()
    with pytest.raises(ValueError, match="another order.*SCGPTPerturbation needs"):
        SCGPTPerturbation.load(tmp_path / "p", adata=shuffled)


def test_multiomic_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)

    def mod(names):
        x = rng.poisson(3.0, (12, len(names))).astype(np.float32)
        obs = pd.DataFrame(index=[f"c{i}" for i in range(12)])
        return ad.AnnData(sparse.csr_matrix(x), obs=obs, var=pd.DataFrame(index=names))

    mdata = md.MuData({"rna": mod(["CD4", "CD8A", "LYZ", "NKG7"]), "prot": mod(["CD4", "CD19"])})
    SCGPTMultiomic.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "prot"})
    model = SCGPTMultiomic(mdata, **TINY)
    z = model.get_latent_representation()
    model.save(tmp_path / "mm", save_anndata=True)
    loaded = SCGPTMultiomic.load(tmp_path / "mm", adata=mdata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    assert loaded.vocab_mod_ == model.vocab_mod_
    assert (tmp_path / "mm" / "mdata.h5mu").is_file()


def test_reordered_genes_after_load_give_identical_embeddings(trained, tmp_path):
    model, adata = trained
    z = model.get_latent_representation()
    model.save(tmp_path / "m")
    shuffled = adata[:, np.random.default_rng(1).permutation(adata.n_vars)].copy()
    loaded = SCGPT.load(tmp_path / "m", adata=shuffled)
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    np.testing.assert_array_equal(loaded.get_latent_representation(adata), z)
    # saving the loaded model keeps the module's gene order: loading again is still exact
    loaded.save(tmp_path / "m2")
    again = SCGPT.load(tmp_path / "m2", adata=adata)
    np.testing.assert_array_equal(again.get_latent_representation(), z)
    with pytest.raises(ValueError, match="genes differ from the saved model's.*missing e.g."):
        SCGPT.load(tmp_path / "m", adata=adata[:, 1:].copy())


# ---------------------------------------------------------------------- atomic writes
def _listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_failed_save_leaves_earlier_save_loadable(trained, tmp_path, monkeypatch):
    model, adata = trained
    z = model.get_latent_representation()
    model.save(tmp_path / "m")
    before = _listing(tmp_path)
    bytes_before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def full_disk(state, path):
        path.write_bytes(b"\0" * 100)  # a partial file, as a full disk leaves
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_save_load, "_save_tensors", full_disk)
    with pytest.raises(OSError, match="No space left"):
        model.save(tmp_path / "m", overwrite=True, save_anndata=True)
    assert _listing(tmp_path) == before  # no stray temporary file anywhere
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == bytes_before
    monkeypatch.undo()
    np.testing.assert_array_equal(
        SCGPT.load(tmp_path / "m", adata=adata).get_latent_representation(), z
    )


def test_mixed_save_is_detected_by_checksum(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "a")
    other = SCGPT(adata, use_batch_labels=True, max_seq_len=20, **TINY)
    other.save(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes(
        (tmp_path / "b" / "model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="model.safetensors does not match model.json"):
        SCGPT.load(tmp_path / "a", adata=adata)


def test_save_refuses_existing_folder_without_overwrite(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="already exists; pass overwrite=True"):
        model.save(tmp_path / "m")


# ---------------------------------------------------------------------- tagged JSON
def test_tagged_json_round_trip_and_unknown_types():
    value = {
        "a": (1, 2.5, "x", None),
        3: np.arange(4, dtype=np.int16),
        "obj": np.array(["T", "B"], dtype=object),
        "df": pd.DataFrame({"loss": [0.5, 0.25]}, index=pd.Index([0, 1], name="epoch")),
    }
    back = from_json(json.loads(json.dumps(to_json(value))))
    assert back["a"] == value["a"] and back[3].dtype == np.int16
    np.testing.assert_array_equal(back["obj"], value["obj"])
    pd.testing.assert_frame_equal(back["df"], value["df"])
    with pytest.raises(TypeError, match=r"attr\['f'\] is a builtins.function"):
        to_json({"f": lambda: 0}, "attr")
