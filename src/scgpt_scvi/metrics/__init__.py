"""Evaluation of predictions against observed data and the simple baselines they must beat.

Perturbation responses (GEARS / scGPT metrics): :func:`evaluate_perturbations` scores predicted
mean profiles (Pearson correlation of deltas, MSE, both also over the top DE genes) and
:func:`perturbation_baselines` gives the ``no_change``, ``mean`` and ``additive`` baselines.
"""

from ._perturbation import (
    BASELINES,
    condition_mean,
    evaluate_perturbations,
    pearson_delta,
    perturbation_baselines,
    single_gene_deltas,
    top_de_genes,
)

__all__ = [
    "BASELINES",
    "condition_mean",
    "top_de_genes",
    "pearson_delta",
    "single_gene_deltas",
    "perturbation_baselines",
    "evaluate_perturbations",
]
