"""Perturbation data shared by the perturbation tests (module, model, data, metrics): counts
with perturbation-specific shifts."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

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
