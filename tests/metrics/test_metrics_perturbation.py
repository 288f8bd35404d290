"""Perturbation metrics and baselines (GEARS / scGPT): Pearson delta, top DE genes, the three
baselines, scoring; and the deprecated ``scgpt_scvi.perturbation_metrics`` alias."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scgpt_scvi import metrics
from scgpt_scvi.data import log_normalize
from scgpt_scvi.metrics import (
    evaluate_perturbations,
    pearson_delta,
    perturbation_baselines,
    top_de_genes,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers
from _helpers_perturbation import make_adata  # noqa: E402


def _exact_adata() -> ad.AnnData:
    """Log-space values where every cell equals its condition's profile."""
    ctrl = np.array([1.0, 2.0, 0.5, 0.0])
    d_a, d_b = np.array([0.5, 0.0, -0.2, 0.1]), np.array([0.0, -1.0, 0.3, 0.4])
    profiles = {"ctrl": ctrl, "A": ctrl + d_a, "B+ctrl": ctrl + d_b, "C": ctrl + 2 * d_b}
    profiles["A+B"] = ctrl + d_a + d_b + np.array([0.05, 0.0, 0.0, -0.05])
    conds = [c for c in profiles for _ in range(3)]
    X = np.stack([profiles[c] for c in conds]) + 1e-3  # not integers
    X[1::3] += 0.01  # some spread for the t-test
    X[2::3] -= 0.01
    obs = pd.DataFrame({"cond": conds}, index=[f"c{i}" for i in range(len(conds))])
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=list("wxyz"))), profiles


def test_baselines_on_synthetic_data():
    adata, prof = _exact_adata()
    train = adata[adata.obs["cond"] != "A+B"].copy()
    base = perturbation_baselines(train, "cond", ["A+B", "B", "D"])
    ctrl = prof["ctrl"] + 1e-3
    for name in ("no_change", "mean", "additive"):
        assert base[name].obs_names.tolist() == ["A+B", "B", "D"]
        assert base[name].var_names.tolist() == list("wxyz")
    np.testing.assert_allclose(base["no_change"].X, np.tile(ctrl, (3, 1)), atol=1e-6)
    mean = np.mean([prof[c] + 1e-3 for c in ("A", "B+ctrl", "C")], 0)
    np.testing.assert_allclose(base["mean"].X[0], mean, atol=1e-6)
    add = base["additive"]
    np.testing.assert_allclose(
        add.X[0], prof["A"] + prof["B+ctrl"] - prof["ctrl"] + 1e-3, atol=1e-6
    )
    np.testing.assert_allclose(add.X[1], prof["B+ctrl"] + 1e-3, atol=1e-6)
    np.testing.assert_allclose(add.X[2], ctrl, atol=1e-6)  # D never perturbed alone
    assert add.obs["n_singles_found"].tolist() == [2, 1, 0]


def test_evaluate_scores_perfect_and_baselines():
    adata, prof = _exact_adata()
    truth = ad.AnnData(
        adata[adata.obs["cond"] == "A+B"].X.mean(0, keepdims=True),
        obs=pd.DataFrame(index=["A+B"]),
        var=adata.var.copy(),
    )
    base = perturbation_baselines(adata[adata.obs["cond"] != "A+B"].copy(), "cond", ["A+B"])
    scores = evaluate_perturbations({"truth": truth, **base}, adata, "cond", n_top_de=2)
    s = scores.set_index("method")
    assert s.loc["truth", "pearson_delta"] == pytest.approx(1.0)
    assert s.loc["truth", "mse"] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(s.loc["no_change", "pearson_delta"])
    assert 0.9 < s.loc["additive", "pearson_delta"] < 1.0
    assert s.loc["additive", "mse"] == pytest.approx(0.05**2 / 2, rel=1e-3)


def test_pearson_delta_and_de_genes():
    ctrl = np.zeros(5)
    assert pearson_delta(np.arange(5.0), 2 * np.arange(5.0), ctrl) == pytest.approx(1.0)
    assert pearson_delta(-np.arange(5.0), np.arange(5.0), ctrl) == pytest.approx(-1.0)
    adata, _ = _exact_adata()
    de = top_de_genes(adata, "cond", "C", n_top=2)
    # C shifts genes x (-2.0), z (+0.8), y (+0.6): the two largest |t| are x and z
    assert sorted(adata.var_names[de]) == ["x", "z"]


def test_evaluate_rejects_unknown_condition():
    adata, _ = _exact_adata()
    pred = pd.DataFrame(np.zeros((1, 4)), index=["E"], columns=list("wxyz"))
    with pytest.raises(ValueError, match="'E'"):
        evaluate_perturbations({"m": pred}, adata, "cond")


def test_metrics_normalise_counts_like_the_model():
    counts = make_adata()
    logged = counts.copy()
    logged.X = log_normalize(torch.from_numpy(counts.X)).numpy()
    a = perturbation_baselines(counts, "cond", ["g1+g2"])["additive"].X
    b = perturbation_baselines(logged, "cond", ["g1+g2"])["additive"].X
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a - perturbation_baselines(counts, "cond", ["ctrl"])["additive"].X).max() > 0.1


def test_old_module_path_warns_and_returns_the_same_objects():
    old = importlib.import_module("scgpt_scvi.perturbation_metrics")
    assert sorted(old.__all__) == sorted(metrics.__all__)
    for name in metrics.__all__:
        with pytest.warns(DeprecationWarning, match="scgpt_scvi.perturbation_metrics moved to"):
            obj = getattr(old, name)
        assert obj is getattr(metrics, name)
    with pytest.warns(DeprecationWarning, match="moved to scgpt_scvi.metrics"):
        from scgpt_scvi.perturbation_metrics import evaluate_perturbations as alias
    assert alias is evaluate_perturbations
    with pytest.raises(AttributeError, match="no_such_metric"):
        _ = old.no_such_metric
