"""GEARS-style condition strings and count detection (perturbation data)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scgpt_scvi.data import holds_counts, log_normalize, parse_condition

CONDITIONS = ["ctrl"] * 30 + ["g1"] * 12 + ["g2+ctrl"] * 12 + ["g1+g3"] * 12 + ["X"] * 12


def make_adata(seed: int = 0, conditions=CONDITIONS, n_genes: int = 12) -> ad.AnnData:
    """Counts for genes g0.. with perturbation-specific shifts; target X is not measured."""
    rng = np.random.default_rng(seed)
    rate = np.full((len(conditions), n_genes), 2.0)
    for i, c in enumerate(conditions):
        if "g1" in c:
            rate[i, 4] += 6
        if "X" in c:
            rate[i, 5] = 0.2
    obs = pd.DataFrame({"cond": conditions}, index=[f"cell{i}" for i in range(len(conditions))])
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    return ad.AnnData(rng.poisson(rate).astype(np.float32), obs=obs, var=var)


@pytest.mark.parametrize(
    ("condition", "genes"),
    [("ctrl", ()), ("A", ("A",)), ("A+ctrl", ("A",)), ("ctrl+A", ("A",)), ("A+B", ("A", "B"))],
)
def test_parse_condition(condition, genes):
    assert parse_condition(condition) == genes


@pytest.mark.parametrize("bad", ["", "A++B", "+A", "A+", " A", "A+A"])
def test_parse_condition_malformed(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("+", r"\+")):
        parse_condition(bad)


def test_parse_condition_custom_delimiter():
    assert parse_condition("A_B", control_category="control", delimiter="_") == ("A", "B")
    assert parse_condition("control", control_category="control") == ()


def test_holds_counts_tells_counts_from_log_values():
    adata = make_adata()
    assert holds_counts(adata.X)
    logged = adata.copy()
    logged.X = log_normalize(torch.from_numpy(adata.X)).numpy()
    assert not holds_counts(logged.X)
