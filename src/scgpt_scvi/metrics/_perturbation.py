"""Evaluation of perturbation predictions and the simple baselines they must beat.

Everything works in the log1p-normalised space of :class:`~scgpt_scvi.SCGPTPerturbation`: values
that are counts (integers) are normalised to 1e4 per cell and ``log1p``-ed, other values are used
as they are. Metrics follow GEARS / scGPT:

- Pearson correlation of deltas: ``corr(pred - ctrl, truth - ctrl)`` over all genes and over the
  condition's top-20 differentially expressed genes (``ctrl``: mean of the control cells);
- MSE of the predicted against the true mean expression (all genes and top-20 DE genes).

Baselines: ``no_change`` (the control mean; its delta is 0, so its Pearson-delta is undefined and
reported as NaN), ``mean`` (the average of the training perturbations' mean profiles, each
condition weighted equally) and ``additive`` (control mean plus the deltas of the single-gene
perturbations in the condition; a gene with no single-gene condition adds nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from ..data import holds_counts, log_normalize, parse_condition

__all__ = [
    "BASELINES",
    "condition_mean",
    "top_de_genes",
    "pearson_delta",
    "single_gene_deltas",
    "perturbation_baselines",
    "evaluate_perturbations",
]

BASELINES = ("no_change", "mean", "additive")


class _Expression:
    """Log1p-normalised rows of an AnnData by condition (counts detected once)."""

    def __init__(self, adata: AnnData, perturbation_key: str, layer: str | None = None):
        if perturbation_key not in adata.obs:
            raise KeyError(f"perturbation_key {perturbation_key!r} is not a column of adata.obs.")
        self.X = adata.layers[layer] if layer is not None else adata.X
        self.counts = holds_counts(self.X)
        self.key = perturbation_key
        self.conditions = adata.obs[perturbation_key].astype(str).to_numpy()
        self._rows: dict[str, np.ndarray] = {}

    def rows(self, condition: str) -> np.ndarray:
        """Dense ``(n_cells, n_vars)`` values of the cells of ``condition`` (read once)."""
        if condition not in self._rows:
            idx = np.flatnonzero(self.conditions == condition)
            if len(idx) == 0:
                raise ValueError(f"No cell has adata.obs[{self.key!r}] == {condition!r}.")
            rows = self.X[idx]
            rows = np.asarray(rows.toarray() if sparse.issparse(rows) else rows, dtype=np.float64)
            self._rows[condition] = (
                log_normalize(torch.from_numpy(rows)).numpy() if self.counts else rows
            )
        return self._rows[condition]

    def mean(self, condition: str) -> np.ndarray:
        return self.rows(condition).mean(0)

    def top_de(self, condition: str, control_category: str, n_top: int) -> np.ndarray:
        a, b = self.rows(condition), self.rows(control_category)
        var = sum(x.var(0, ddof=1) / len(x) for x in (a, b) if len(x) > 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(a.mean(0) - b.mean(0)) / np.sqrt(var)
        t = np.nan_to_num(t, nan=0.0, posinf=np.finfo(np.float64).max)
        return np.argsort(-t, kind="stable")[:n_top]


def condition_mean(
    adata: AnnData, perturbation_key: str, condition: str, layer: str | None = None
) -> np.ndarray:
    """Mean log1p-normalised profile of the cells of ``condition``.

    Raises
    ------
    ValueError
        When no cell has that condition.

    Examples
    --------
    >>> from scgpt_scvi.metrics import condition_mean
    >>> control = condition_mean(adata, "condition", "ctrl")  # (n_genes,)
    """
    return _Expression(adata, perturbation_key, layer).mean(condition)


def top_de_genes(
    adata: AnnData,
    perturbation_key: str,
    condition: str,
    control_category: str = "ctrl",
    n_top: int = 20,
    layer: str | None = None,
) -> np.ndarray:
    """Column indices of the ``n_top`` genes with the largest ``|Welch t|``, condition vs control.

    The statistic of scanpy's ``rank_genes_groups(method="t-test", rankby_abs=True)``, which
    GEARS uses to pick the top-20 DE genes. Genes constant in both groups rank last.

    Examples
    --------
    >>> from scgpt_scvi.metrics import top_de_genes
    >>> de = top_de_genes(adata, "condition", "KLF1+MAP2K6", control_category="ctrl", n_top=20)
    >>> adata.var_names[de]
    """
    return _Expression(adata, perturbation_key, layer).top_de(condition, control_category, n_top)


def pearson_delta(pred: np.ndarray, truth: np.ndarray, control: np.ndarray) -> float:
    """Pearson correlation of ``pred - control`` and ``truth - control``.

    NaN when either delta is constant up to float32 rounding (e.g. the no-change baseline,
    whose delta is rounding noise).

    Examples
    --------
    >>> import numpy as np
    >>> from scgpt_scvi.metrics import pearson_delta
    >>> control = np.array([1.0, 1.0, 1.0])
    >>> round(pearson_delta(np.array([2.0, 1.0, 0.5]), np.array([3.0, 1.0, 0.0]), control), 3)
    1.0
    """
    dp, dt = np.asarray(pred, np.float64) - control, np.asarray(truth, np.float64) - control
    tol = 1e-5 * max(1.0, float(np.abs(control).max(initial=0.0)))
    if np.ptp(dp) <= tol or np.ptp(dt) <= tol:
        return float("nan")
    return float(np.corrcoef(dp, dt)[0, 1])


def _single_deltas(expr: _Expression, parse, control: np.ndarray) -> dict[str, np.ndarray]:
    """Delta of each gene that has a single-gene condition (``A`` or ``A+ctrl``)."""
    deltas: dict[str, list[np.ndarray]] = {}
    for c in pd.unique(expr.conditions):
        genes = parse(c)
        if len(genes) == 1:
            deltas.setdefault(genes[0], []).append(expr.rows(c))
    return {g: np.concatenate(v).mean(0) - control for g, v in deltas.items()}


def single_gene_deltas(
    adata: AnnData,
    perturbation_key: str,
    control_category: str = "ctrl",
    layer: str | None = None,
    condition_delimiter: str = "+",
) -> dict[str, np.ndarray]:
    """Mean response of each gene perturbed alone: what the ``additive`` baseline adds up.

    A gene's delta is the mean log1p-normalised profile of its single-gene cells (conditions
    ``A`` and ``A+ctrl`` pooled) minus the control mean.

    Parameters
    ----------
    adata
        Cells with conditions in ``obs[perturbation_key]``, control cells among them.
    control_category, condition_delimiter
        As in :meth:`~scgpt_scvi.SCGPTPerturbation.setup_anndata`.
    layer
        Layer to use instead of ``X`` (counts are log-normalised).

    Returns
    -------
    Gene name -> ``(n_vars,)`` delta, for the genes that have a single-gene condition.

    Examples
    --------
    >>> from scgpt_scvi.metrics import single_gene_deltas
    >>> deltas = single_gene_deltas(adata, "condition", control_category="ctrl")
    >>> deltas["KLF1"].shape  # (n_genes,)
    """
    expr = _Expression(adata, perturbation_key, layer)
    return _single_deltas(
        expr,
        lambda c: parse_condition(c, control_category, condition_delimiter),
        expr.mean(control_category),
    )


def perturbation_baselines(
    adata: AnnData,
    perturbation_key: str,
    perturbations: Sequence[str],
    control_category: str = "ctrl",
    layer: str | None = None,
    condition_delimiter: str = "+",
) -> dict[str, AnnData]:
    """The three baselines' predictions of ``perturbations`` from training data ``adata``.

    Parameters
    ----------
    adata
        Training cells (controls and the seen perturbations), with conditions in
        ``obs[perturbation_key]``.
    perturbations
        Conditions to predict (strings as for
        :meth:`~scgpt_scvi.SCGPTPerturbation.predict_perturbation`).
    control_category, condition_delimiter
        As in :meth:`~scgpt_scvi.SCGPTPerturbation.setup_anndata`.
    layer
        Layer to use instead of ``X`` (counts are log-normalised).

    Returns
    -------
    ``{"no_change", "mean", "additive"}`` -> AnnData perturbations x genes (``obs_names`` = the
    strings as passed; ``additive`` also has ``obs['n_singles_found']``).

    Examples
    --------
    >>> from scgpt_scvi.metrics import perturbation_baselines
    >>> baselines = perturbation_baselines(
    ...     train, "condition", ["KLF1+MAP2K6"], control_category="ctrl"
    ... )
    >>> sorted(baselines)
    ['additive', 'mean', 'no_change']
    """

    def parse(c: str) -> tuple[str, ...]:
        return parse_condition(c, control_category, condition_delimiter)

    expr = _Expression(adata, perturbation_key, layer)
    control = expr.mean(control_category)
    perturbed = [c for c in pd.unique(expr.conditions) if parse(c)]
    mean = np.mean([expr.mean(c) for c in perturbed], 0) if perturbed else control
    singles = _single_deltas(expr, parse, control)
    zero = np.zeros_like(control)
    additive, found = [], []
    for p in perturbations:
        genes = parse(p)
        additive.append(control + sum((singles.get(g, zero) for g in genes), zero))
        found.append(sum(g in singles for g in genes))
    index = pd.Index(list(perturbations))
    var = pd.DataFrame(index=adata.var_names.copy())

    def make(X: np.ndarray, **obs) -> AnnData:
        return AnnData(X.astype(np.float32), obs=pd.DataFrame(obs, index=index), var=var.copy())

    n = len(index)
    return {
        "no_change": make(np.tile(control, (n, 1))),
        "mean": make(np.tile(mean, (n, 1))),
        "additive": make(np.asarray(additive).reshape(n, -1), n_singles_found=found),
    }


def evaluate_perturbations(
    predictions: Mapping[str, AnnData | pd.DataFrame],
    adata: AnnData,
    perturbation_key: str,
    control_category: str = "ctrl",
    layer: str | None = None,
    n_top_de: int = 20,
) -> pd.DataFrame:
    """Score predicted mean profiles against the observed cells.

    Parameters
    ----------
    predictions
        Method name -> perturbations x genes (AnnData or DataFrame; row names are conditions
        of ``adata``, columns its ``var_names`` in any order).
    adata
        Cells with the true responses and the control cells.
    perturbation_key, control_category, layer
        Where the conditions and values are (counts are log-normalised).
    n_top_de
        Number of top DE genes (condition vs control, ``|Welch t|``) for the ``*_de`` metrics.

    Returns
    -------
    DataFrame with columns ``method``, ``condition``, ``pearson_delta``, ``pearson_delta_de``,
    ``mse``, ``mse_de``; average with ``.groupby("method").mean(numeric_only=True)``.

    Examples
    --------
    >>> from scgpt_scvi.metrics import evaluate_perturbations
    >>> predictions = {"scGPT": model.predict_perturbation(["KLF1+MAP2K6"])}
    >>> scores = evaluate_perturbations(predictions, adata, "condition", control_category="ctrl")
    >>> scores.groupby("method").mean(numeric_only=True)
    """
    expr = _Expression(adata, perturbation_key, layer)
    control = expr.mean(control_category)
    truths: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rows = []
    for method, pred in predictions.items():
        frame = _as_frame(pred, adata.var_names)
        for condition, values in frame.iterrows():
            if condition not in truths:
                truths[condition] = (
                    expr.mean(condition),
                    expr.top_de(condition, control_category, n_top_de),
                )
            truth, de = truths[condition]
            p = values.to_numpy(dtype=np.float64)
            rows.append(
                {
                    "method": method,
                    "condition": condition,
                    "pearson_delta": pearson_delta(p, truth, control),
                    "pearson_delta_de": pearson_delta(p[de], truth[de], control[de]),
                    "mse": float(np.mean((p - truth) ** 2)),
                    "mse_de": float(np.mean((p[de] - truth[de]) ** 2)),
                }
            )
    return pd.DataFrame(rows)


def _as_frame(pred: AnnData | pd.DataFrame, var_names: pd.Index) -> pd.DataFrame:
    if isinstance(pred, AnnData):
        X = pred.X.toarray() if sparse.issparse(pred.X) else np.asarray(pred.X)
        pred = pd.DataFrame(X, index=pred.obs_names, columns=pred.var_names)
    missing = var_names.difference(pred.columns)
    if len(missing):
        raise ValueError(f"Predictions lack genes {list(missing[:5])} of adata.var_names.")
    return pred.loc[:, var_names]
