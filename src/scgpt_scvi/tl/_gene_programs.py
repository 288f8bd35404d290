"""Gene programs: Leiden clusters of gene embeddings, and per-cell program scores."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from ._reference import ReferenceIndex

__all__ = ["gene_programs", "program_members", "score_gene_programs"]


def gene_programs(
    gene_embeddings: pd.DataFrame,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    min_size: int = 5,
    random_state: int = 0,
) -> pd.DataFrame:
    """Cluster gene embeddings into programs (cosine kNN graph + Leiden), as scGPT's GRN tutorial.

    Parameters
    ----------
    gene_embeddings
        Genes x dimensions (e.g. :meth:`~scgpt_scvi.model.SCGPT.get_gene_embeddings`).
    n_neighbors
        Neighbours per gene in the graph (edges weighted by cosine similarity, floored at 0,
        made symmetric).
    resolution
        Leiden resolution (higher: more, smaller programs).
    min_size
        Programs with fewer genes are dissolved: their genes are unassigned (``NaN``).
    random_state
        Leiden seed; the same seed gives the same programs.

    Returns
    -------
    DataFrame indexed by gene with ``program`` (categorical ``"0"``, ``"1"``, ..., largest first;
    ``NaN`` = unassigned) and ``program_size``.

    Examples
    --------
    >>> programs = tl.gene_programs(model.get_gene_embeddings(), resolution=2.0)
    >>> tl.program_members(programs)["0"]
    """
    try:
        import igraph as ig
        import leidenalg
    except ImportError as err:
        raise ImportError(
            "Gene programs need igraph and leidenalg: `pip install igraph leidenalg`."
        ) from err
    n = len(gene_embeddings)
    if n < 2:
        raise ValueError(f"Gene programs need at least 2 genes; got {n}.")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1; got {n_neighbors}.")
    k = min(n_neighbors + 1, n)
    idx, dist = ReferenceIndex(gene_embeddings.to_numpy(), backend="exact").query(
        gene_embeddings.to_numpy(), k=k
    )
    rows = np.repeat(np.arange(n), k)
    cols, sim = idx.ravel(), np.clip(1.0 - dist.ravel(), 0.0, None)
    keep = rows != cols
    # symmetric: an edge if either gene is among the other's neighbours, max weight
    lo, hi = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    edges = pd.DataFrame({"a": lo, "b": hi, "w": sim[keep]}).groupby(["a", "b"])["w"].max()
    graph = ig.Graph(n=n, edges=list(edges.index), directed=False)
    weights = edges.to_numpy().astype(float)
    partition = leidenalg.find_partition(
        graph,
        leidenalg.RBConfigurationVertexPartition,
        weights=np.maximum(weights, 1e-12).tolist(),
        resolution_parameter=resolution,
        seed=random_state,
    )
    membership = np.asarray(partition.membership)
    sizes = np.bincount(membership)
    order = sorted(range(len(sizes)), key=lambda c: (-sizes[c], c))
    big = [c for c in order if sizes[c] >= min_size]
    rename = {c: str(i) for i, c in enumerate(big)}
    labels = [rename.get(m) for m in membership]
    program = pd.Categorical(labels, categories=[str(i) for i in range(len(big))])
    out = pd.DataFrame({"program": program}, index=gene_embeddings.index.copy())
    out["program_size"] = out.groupby("program", observed=False)["program"].transform("size")
    out.loc[out["program"].isna(), "program_size"] = 0
    out["program_size"] = out["program_size"].astype(int)
    return out


def program_members(programs: pd.DataFrame | pd.Series) -> dict[str, list[str]]:
    """``{program: [genes]}`` from a :func:`gene_programs` table (unassigned genes left out)."""
    col = programs["program"] if isinstance(programs, pd.DataFrame) else programs
    col = col.dropna()
    return {str(p): list(col.index[col == p]) for p in pd.unique(col)} if len(col) else {}


def score_gene_programs(
    adata: AnnData,
    programs: Mapping[str, Sequence[str]] | pd.DataFrame | pd.Series,
    key_added: str = "gene_program_scores",
    layer: str | None = None,
    use_raw: bool | None = None,
    ctrl_size: int = 50,
    n_bins: int = 25,
    random_state: int = 0,
) -> pd.DataFrame:
    """Score each gene program in each cell with :func:`scanpy.tl.score_genes`.

    Writes ``adata.obsm[key_added]`` (cells x programs DataFrame) and
    ``adata.uns[key_added] = {program: genes used}``; nothing else of ``adata`` changes (scores
    are computed on a lightweight AnnData that shares ``X``). Expects log-normalised
    expression, as ``score_genes`` does.

    Parameters
    ----------
    adata
        Cells to score.
    programs
        ``{name: genes}``, or a :func:`gene_programs` table / its ``program`` column.
    key_added
        ``obsm`` and ``uns`` key.
    layer, use_raw, ctrl_size, n_bins, random_state
        Passed to :func:`scanpy.tl.score_genes`.

    Returns
    -------
    The scores (also in ``adata.obsm[key_added]``).

    Examples
    --------
    >>> programs = model.get_gene_programs()
    >>> tl.score_gene_programs(adata, programs)
    >>> adata.obsm["gene_program_scores"].head()
    """
    import scanpy as sc

    if isinstance(programs, pd.DataFrame | pd.Series):
        programs = program_members(programs)
    if not programs:
        raise ValueError("No gene program to score.")
    use_raw_ = use_raw if use_raw is not None else (adata.raw is not None and layer is None)
    var_names = adata.raw.var_names if use_raw_ else adata.var_names
    shell = AnnData(
        X=adata.X,
        obs=pd.DataFrame(index=adata.obs_names.copy()),
        var=pd.DataFrame(index=adata.var_names.copy()),
        layers={layer: adata.layers[layer]} if layer is not None else None,
    )
    if use_raw_:
        shell.raw = adata.raw
    scores, used = {}, {}
    for name, genes in programs.items():
        present = [g for g in genes if g in var_names]
        if not present:
            warnings.warn(
                f"Gene program {name!r}: none of its {len(genes)} genes is in adata; its "
                "score is NaN.",
                UserWarning,
                stacklevel=2,
            )
            scores[str(name)] = np.full(adata.n_obs, np.nan, dtype=np.float32)
            used[str(name)] = []
            continue
        sc.tl.score_genes(
            shell,
            present,
            ctrl_size=ctrl_size,
            n_bins=n_bins,
            score_name="_score",
            random_state=random_state,
            use_raw=use_raw_,
            layer=layer,
        )
        scores[str(name)] = shell.obs["_score"].to_numpy(dtype=np.float32)
        used[str(name)] = present
    df = pd.DataFrame(scores, index=adata.obs_names.copy())
    adata.obsm[key_added] = df
    adata.uns[key_added] = used
    return df
