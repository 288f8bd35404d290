"""Shared inference loop: bucketing by token count, precision, int8 quantisation, bad input."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from scgpt_scvi import SCGPT
from scgpt_scvi.model._base import _bucketed_order, token_counts
from scgpt_scvi.nn import supported_precisions

SMALL = {"d_model": 64, "nhead": 4, "d_hid": 64, "nlayers": 2, "max_seq_len": 48, "dropout": 0.1}


def _ragged(n_obs: int = 70, n_vars: int = 60, seed: int = 0) -> ad.AnnData:
    """Cells expressing from 1 to ~55 genes, so minibatches pad very differently."""
    rng = np.random.default_rng(seed)
    X = rng.negative_binomial(3, 0.5, size=(n_obs, n_vars)).astype(np.float32) + 1
    keep = rng.random((n_obs, n_vars)) < rng.uniform(0.02, 0.95, size=(n_obs, 1))
    keep[:, 0] = True  # every cell expresses at least one gene
    X = X * keep
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_obs)])
    var = pd.DataFrame(index=[f"GENE{j}" for j in range(n_vars)])
    return ad.AnnData(X=sparse.csr_matrix(X), obs=obs, var=var)


@pytest.fixture(scope="module")
def model():
    adata = _ragged()
    SCGPT.setup_anndata(adata)
    torch.manual_seed(0)
    return SCGPT(adata, **SMALL)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_token_counts_streams_sparse_and_dense():
    adata = _ragged()
    columns = np.ones(adata.n_vars, dtype=bool)
    columns[::3] = False
    dense = adata.X.toarray()
    expected = (dense[:, columns] > 0).sum(1)
    np.testing.assert_array_equal(token_counts(adata.X, columns), expected)
    np.testing.assert_array_equal(token_counts(dense, columns), expected)


def test_bucketed_order_sorts_by_length_and_ascending_within_batches():
    lengths = np.array([3, 9, 1, 7, 7, 2, 8])
    run = _bucketed_order(lengths, batch_size=3)
    assert sorted(run.tolist()) == list(range(7))
    batches = [run[i : i + 3] for i in range(0, 7, 3)]
    expected = [[9, 8, 7], [7, 3, 2], [1]]
    assert [sorted(lengths[b].tolist(), reverse=True) for b in batches] == expected
    assert all((np.diff(b) > 0).all() for b in batches)


def test_bucketing_gives_identical_embeddings_in_the_asked_order(model):
    adata = model.adata
    indices = np.random.default_rng(1).permutation(adata.n_obs)[:50]
    lengths = model._token_lengths(adata, indices)
    assert lengths.min() < 5 and lengths.max() > 40  # the batches really are ragged
    plain = model._collect(lambda t: model.module.embed(t), adata, indices, 16, bucket=False)
    bucketed = model.get_latent_representation(indices=indices, batch_size=16)
    np.testing.assert_allclose(bucketed, plain, rtol=0, atol=2e-6)
    one_by_one = np.concatenate(
        [model.get_latent_representation(indices=[i], batch_size=1) for i in indices[:8]]
    )
    np.testing.assert_allclose(bucketed[:8], one_by_one, rtol=0, atol=2e-6)


def test_bucketing_on_backed_data_matches_in_memory(model, tmp_path):
    path = tmp_path / "ragged.h5ad"
    model.adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        SCGPT.setup_anndata(backed)
        got = model.get_latent_representation(backed, batch_size=16)
    finally:
        backed.file.close()
    expected = model.get_latent_representation(batch_size=16)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


@pytest.mark.skipif("bf16" not in supported_precisions("cpu"), reason="no CPU bf16 autocast")
def test_bf16_autocast_close_to_fp32(model):
    fp32 = model.get_latent_representation(precision="fp32")
    bf16 = model.get_latent_representation(precision="bf16")
    assert bf16.dtype == np.float32
    assert not np.array_equal(fp32, bf16)  # autocast really ran
    assert _cosine(fp32, bf16).min() >= 0.999


def test_int8_quantized_embeddings_close_to_fp32(model):
    fp32 = model.get_latent_representation()
    int8 = model.get_latent_representation(quantize="int8")
    assert not np.array_equal(fp32, int8)
    assert _cosine(fp32, int8).min() >= 0.99
    # the model itself stays fp32 and trainable
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.module.parameters())
    np.testing.assert_array_equal(model.get_latent_representation(), fp32)


def test_unsupported_precision_and_quantize_name_the_choices(model):
    with pytest.raises(ValueError, match=r"fp16.*cpu.*'fp32', 'bf16'"):
        model.get_latent_representation(precision="fp16")
    with pytest.raises(ValueError, match="Unknown precision 'fp8'.*'fp32', 'bf16', 'fp16'"):
        model.get_latent_representation(precision="fp8")
    with pytest.raises(ValueError, match="Unknown quantize 'int4'.*'int8'"):
        model.get_latent_representation(quantize="int4")


def test_flash_backend_without_cuda_warns_and_falls_back():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: no fallback")
    adata = _ragged(n_obs=12)
    SCGPT.setup_anndata(adata)
    with pytest.warns(UserWarning, match="flash"):
        flash = SCGPT(adata, attention_backend="flash", **SMALL)
    ref = SCGPT(adata, **SMALL)
    ref.module.load_state_dict(flash.module.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = flash.get_latent_representation()
    np.testing.assert_array_equal(got, ref.get_latent_representation())


def test_from_pretrained_quantize(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    adata = model.adata.copy()
    q = SCGPT.from_pretrained(tmp_path / "ckpt", adata, quantize="int8")
    assert q.quantize_ == "int8"
    z8 = q.get_latent_representation()
    q.quantize_ = None
    z32 = q.get_latent_representation()
    assert not np.array_equal(z8, z32)
    assert _cosine(z8, z32).min() >= 0.99
    with pytest.raises(ValueError, match="Unknown quantize 'int4'"):
        SCGPT.from_pretrained(tmp_path / "ckpt", adata, quantize="int4")


def test_the_family_shares_one_from_pretrained():
    """One ``from_pretrained(model_dir, data, quantize=None, **overrides)`` for the three."""
    import inspect

    from scgpt_scvi import SCGPT, SCGPTMultiomic, SCGPTPerturbation

    funcs = {cls.from_pretrained.__func__ for cls in (SCGPT, SCGPTMultiomic, SCGPTPerturbation)}
    assert len(funcs) == 1
    params = list(inspect.signature(SCGPT.from_pretrained).parameters)
    assert params == ["model_dir", "data", "quantize", "overrides"]
    with pytest.raises(TypeError, match="needs data"):
        SCGPTPerturbation.from_pretrained("some_folder")
