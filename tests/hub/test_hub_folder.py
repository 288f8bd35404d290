"""scvi-hub folders: local round trip, model card filled from the model, bad input."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("huggingface_hub")

from scvi.hub import HubMetadata, HubModel  # noqa: E402

from scgpt_scvi import SCGPT  # noqa: E402
from scgpt_scvi.hub import HUB_MANIFEST, load_hub_model, write_hub_folder  # noqa: E402

ARCH = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1, "max_seq_len": 16, "dropout": 0.0}


def _pbmc_like(n_obs: int = 48, n_vars: int = 30) -> ad.AnnData:
    rng = np.random.default_rng(3)
    counts = rng.poisson(rng.gamma(0.6, 2.0, size=(1, n_vars)), size=(n_obs, n_vars))
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(rng.choice(["T", "B"], n_obs))},
        index=[f"c{i}" for i in range(n_obs)],
    )
    return ad.AnnData(
        counts.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(n_vars)])
    )


@pytest.fixture(scope="module")
def trained():
    adata = _pbmc_like()
    SCGPT.setup_anndata(adata, labels_key="cell_type")
    model = SCGPT(adata, **ARCH)
    model.train(max_epochs=2, batch_size=16, enable_progress_bar=False, enable_model_summary=False)
    return model


def test_round_trip_gives_identical_embeddings(trained, tmp_path):
    folder = write_hub_folder(trained, tmp_path / "hub", training_data="synthetic PBMC-like counts")
    hub_model = load_hub_model(folder)
    assert isinstance(hub_model, HubModel)
    assert isinstance(hub_model.metadata, HubMetadata)
    assert hub_model.metadata.model_cls_name == "SCGPT"
    loaded = hub_model.model
    assert type(loaded) is SCGPT
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), trained.get_latent_representation()
    )
    np.testing.assert_array_equal(loaded.predict(), trained.predict())


def test_released_layout_loads_with_from_pretrained(trained, tmp_path):
    folder = write_hub_folder(trained, tmp_path / "hub", training_data="synthetic")
    for name in ("args.json", "vocab.json", "best_model.pt"):
        assert (folder / "scgpt" / name).is_file()
    adata = trained.adata.copy()
    zero_shot = SCGPT.from_pretrained(folder / "scgpt", adata, cls_value=0.0)
    raw = trained.get_latent_representation(normalize=False)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(zero_shot.get_latent_representation(), expected, atol=1e-5)


def test_model_card_is_filled_from_the_model(trained, tmp_path):
    folder = write_hub_folder(
        trained, tmp_path / "hub", training_data="synthetic PBMC-like counts", tissues=["blood"]
    )
    card = (folder / "README.md").read_text()
    n_params = sum(p.numel() for p in trained.module.parameters())
    for needle in (
        "library_name: scvi-tools",
        "model_cls_name:SCGPT",
        "tissue:blood",
        "TransformerModel",
        "| d_model | `16` |",
        "| nlayers | `1` |",
        f"| parameters | `{n_params}` |",
        f"| tokens | `{len(trained.vocab_)}` |",
        "30 of 30 (100.0%)",
        "synthetic PBMC-like counts",
        "| cells | `48` |",
        "| setup: labels_key | `cell_type` |",
        "| epochs trained | `2` |",
        "10.1038/s41592-024-02201-0",
    ):
        assert needle in card, needle
    assert "not trained" not in card
    manifest = json.loads((folder / HUB_MANIFEST).read_text())
    assert "README.md" in manifest["files"] and "adata.h5ad" in manifest["files"]


def test_missing_file_is_named(trained, tmp_path):
    folder = write_hub_folder(trained, tmp_path / "hub", training_data="synthetic")
    (folder / "scgpt" / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"is missing scgpt/vocab\.json"):
        load_hub_model(folder)
    (folder / HUB_MANIFEST).unlink()
    with pytest.raises(FileNotFoundError, match=HUB_MANIFEST):
        load_hub_model(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hub_model(tmp_path / "nowhere")


def test_untrained_model_warns_and_card_says_so(tmp_path):
    adata = _pbmc_like()
    SCGPT.setup_anndata(adata)
    model = SCGPT(adata, **ARCH)
    with pytest.warns(UserWarning, match="SCGPT is not trained"):
        folder = write_hub_folder(model, tmp_path / "hub", training_data="synthetic")
    assert "**This model is not trained**" in (folder / "README.md").read_text()


def test_existing_folder_needs_overwrite(trained, tmp_path):
    (tmp_path / "hub").mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_hub_folder(trained, tmp_path / "hub", training_data="synthetic")
    write_hub_folder(trained, tmp_path / "hub", training_data="synthetic", overwrite=True)
    load_hub_model(tmp_path / "hub")
