"""Gene-regulatory hints from attention: genes whose attention changes between two conditions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["rank_attention_targets"]


def rank_attention_targets(
    gene_attention_a: pd.DataFrame,
    gene_attention_b: pd.DataFrame,
    source_genes: str | Sequence[str],
    n_top: int = 20,
    axis: Literal["row", "column"] = "row",
    direction: Literal["both", "up", "down"] = "both",
) -> pd.DataFrame:
    """Rank the genes whose attention with each source gene changes most from ``a`` to ``b``.

    As in scGPT's attention-GRN tutorial: take the genes x genes attention of two conditions
    (e.g. control and perturbed cells, from :meth:`~scgpt_scvi.model.SCGPT.get_gene_attention`),
    and for each source gene rank the other genes by the change ``b - a`` of the attention
    between them. Gene pairs that never co-occur in one of the conditions (NaN) are left out.

    Parameters
    ----------
    gene_attention_a, gene_attention_b
        Genes x genes attention (row gene attends to column gene) of the reference and the
        changed condition. They are aligned on their shared genes.
    source_genes
        Gene(s) whose targets to rank (e.g. the perturbed gene or a transcription factor).
    n_top
        Targets kept per source gene.
    axis
        ``"row"``: attention *from* the source gene to each target (the source's row);
        ``"column"``: attention *to* the source gene from each target (its column).
    direction
        Rank by ``|b - a|`` (``"both"``), by ``b - a`` (``"up"``) or by ``a - b`` (``"down"``).

    Returns
    -------
    Long DataFrame with columns ``source``, ``target``, ``attention_a``, ``attention_b``,
    ``delta`` (``b - a``) and ``rank`` (1 = most changed), sorted by source, then rank.

    Examples
    --------
    >>> att = model.get_gene_attention(groupby="condition")
    >>> tl.rank_attention_targets(att["ctrl"], att["KLF1"], "KLF1", n_top=10)
    """
    if isinstance(source_genes, str):
        source_genes = [source_genes]
    if axis not in ("row", "column"):
        raise ValueError(f"axis must be 'row' or 'column'; got {axis!r}.")
    if direction not in ("both", "up", "down"):
        raise ValueError(f"direction must be 'both', 'up' or 'down'; got {direction!r}.")
    if n_top < 1:
        raise ValueError(f"n_top must be >= 1; got {n_top}.")
    for name, df in (
        ("gene_attention_a", gene_attention_a),
        ("gene_attention_b", gene_attention_b),
    ):
        if not isinstance(df, pd.DataFrame) or not df.index.equals(df.columns):
            raise ValueError(
                f"{name} must be a square genes x genes DataFrame (same rows/columns)."
            )
    genes = gene_attention_a.index.intersection(gene_attention_b.index, sort=False)
    missing = [g for g in source_genes if g not in genes]
    if missing:
        raise KeyError(
            f"Source genes {missing} are not in both attention matrices "
            f"({len(genes)} shared genes, e.g. {list(genes[:5])})."
        )
    a = gene_attention_a.loc[genes, genes]
    b = gene_attention_b.loc[genes, genes]
    if axis == "column":
        a, b = a.T, b.T
    frames = []
    for source in source_genes:
        row_a, row_b = a.loc[source].drop(source), b.loc[source].drop(source)
        delta = row_b - row_a
        score = {"both": delta.abs(), "up": delta, "down": -delta}[direction].dropna()
        top = score.sort_values(ascending=False, kind="stable").index[:n_top]
        frames.append(
            pd.DataFrame(
                {
                    "source": source,
                    "target": top,
                    "attention_a": row_a[top].to_numpy(),
                    "attention_b": row_b[top].to_numpy(),
                    "delta": delta[top].to_numpy(),
                    "rank": np.arange(1, len(top) + 1),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
