"""Reverse perturbation for :class:`~scgpt_scvi.model.SCGPTPerturbation`: which perturbation
explains an observed state?"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from ..data import holds_counts, log_normalize, parse_condition
from ..metrics import pearson_delta
from ._base import iter_rows

__all__ = ["SCGPTPerturbationAnalysisMixin", "RANK_METRICS"]

RankMetric = Literal["pearson_delta", "pearson", "mse"]
RANK_METRICS = ("pearson_delta", "pearson", "mse")


class SCGPTPerturbationAnalysisMixin:
    """``rank_perturbations`` for :class:`~scgpt_scvi.model.SCGPTPerturbation`."""

    def _perturbable_genes(self) -> list[str]:
        """Target genes of the registered conditions, in first-seen order."""
        genes = (parse_condition(c, *self._parse_args()) for c in self._conditions())
        return list(dict.fromkeys(g for t in genes for g in t))

    def _observed_mean(self, observed, layer: str | None) -> np.ndarray:
        """Mean log1p-normalised profile over the model's genes (AnnData or vector)."""
        var_names = self.adata.var_names
        if isinstance(observed, AnnData):
            missing = var_names.difference(observed.var_names)
            if len(missing):
                raise ValueError(
                    f"observed lacks {len(missing)} of the model's genes "
                    f"(e.g. {list(missing[:3])})."
                )
            if observed.n_obs == 0:
                raise ValueError("observed holds no cells.")
            X = observed.layers[layer] if layer is not None else observed.X
            counts = holds_counts(X)
            cols = observed.var_names.get_indexer(var_names)
            total = np.zeros(len(var_names), dtype=np.float64)
            for _, rows in iter_rows(X):
                dense = rows.toarray() if sparse.issparse(rows) else np.asarray(rows)
                # the model's genes first: the model normalises counts over its own genes
                dense = torch.from_numpy(np.asarray(dense, dtype=np.float64)[:, cols])
                if counts:
                    dense = log_normalize(dense)
                total += dense.numpy().sum(0)
            return total / observed.n_obs
        if isinstance(observed, pd.Series):
            observed = observed.reindex(var_names).to_numpy()
        vec = np.asarray(observed, dtype=np.float64).reshape(-1)
        if vec.shape != (len(var_names),) or not np.isfinite(vec).all():
            raise ValueError(
                f"observed must be an AnnData or a finite mean-expression vector over the "
                f"model's {len(var_names)} genes (log1p-normalised); got shape {vec.shape}."
            )
        return vec

    def rank_perturbations(
        self,
        observed: AnnData | np.ndarray | pd.Series,
        candidates: Sequence[str] | None = None,
        n_control_cells: int | None = 100,
        metric: RankMetric = "pearson_delta",
        max_genes: int = 2,
        layer: str | None = None,
        gene_selection: Literal["all", "batch-wise"] | None = None,
        batch_size: int = 64,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Rank candidate perturbations by how well their predicted response matches ``observed``.

        Each candidate is predicted with :meth:`predict_perturbation` on the same control cells
        and scored against the observed mean profile (log1p-normalised space, over the model's
        genes).

        Parameters
        ----------
        observed
            AnnData of perturbed cells (counts or log1p-normalised; its genes must include the
            model's; counts are normalised over the model's genes, as in training), or a mean
            log1p-normalised vector over the model's genes (array, or a Series indexed by
            gene).
        candidates
            Condition strings to rank (``"A"``, ``"A+B"``); default: every single and every
            pair (``max_genes=2``) of the genes targeted in the registered conditions.
        n_control_cells
            Control cells each candidate perturbs (``None``: all).
        metric
            ``"pearson_delta"``: correlation of predicted and observed change from the mean
            control; ``"pearson"``: of the profiles themselves; ``"mse"``: minus the mean
            squared error. Higher is better for all.
        max_genes
            Largest combination in the default candidates (1 or 2).
        layer
            Layer of ``observed`` to read (default ``X``).
        gene_selection
            Genes fed per prediction (see :meth:`predict_perturbation`).
        batch_size, seed
            Forwarded to :meth:`predict_perturbation`.

        Returns
        -------
        DataFrame with ``perturbation``, ``score`` and ``rank`` (1 = best), best first.

        Examples
        --------
        >>> observed = adata[adata.obs["condition"] == "KLF1+MAP2K6"]
        >>> model.rank_perturbations(observed).head(3)
        """
        if metric not in RANK_METRICS:
            raise ValueError(f"Unknown metric {metric!r}; choose one of {RANK_METRICS}.")
        target = self._observed_mean(observed, layer)
        if candidates is None:
            if max_genes not in (1, 2):
                raise ValueError(f"max_genes must be 1 or 2; got {max_genes}.")
            genes = self._perturbable_genes()
            delim = self._parse_args()[1]
            candidates = list(genes)
            if max_genes == 2:
                candidates += [f"{a}{delim}{b}" for a, b in itertools.combinations(genes, 2)]
        candidates = [candidates] if isinstance(candidates, str) else list(candidates)
        if not candidates:
            raise ValueError("No candidate perturbation to rank.")
        pred = self.predict_perturbation(
            candidates,
            n_control_cells=n_control_cells,
            batch_size=batch_size,
            seed=seed,
            gene_selection=gene_selection,
        )
        P = np.asarray(pred.X, dtype=np.float64)
        if metric == "pearson_delta":
            control = self.module._prepare(self.module.control_x).double().mean(0).cpu().numpy()
            scores = [pearson_delta(p, target, control) for p in P]
        elif metric == "pearson":
            scores = [float(np.corrcoef(p, target)[0, 1]) for p in P]
        else:
            scores = list(-((P - target) ** 2).mean(1))
        out = pd.DataFrame({"perturbation": candidates, "score": np.asarray(scores, float)})
        out = out.sort_values("score", ascending=False, kind="stable", na_position="last")
        out["rank"] = np.arange(1, len(out) + 1)
        return out.reset_index(drop=True)
