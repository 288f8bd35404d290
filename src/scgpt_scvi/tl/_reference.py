"""Nearest-neighbour index of reference cell embeddings, and label transfer through it."""

from __future__ import annotations

import json
import os
from typing import Literal, get_args

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

__all__ = ["ReferenceIndex", "transfer_labels", "INDEX_BACKENDS", "INDEX_METRICS"]

Backend = Literal["auto", "exact", "pynndescent", "faiss"]
Metric = Literal["cosine", "euclidean"]
INDEX_BACKENDS: tuple[str, ...] = get_args(Backend)
INDEX_METRICS: tuple[str, ...] = get_args(Metric)

#: ``"auto"`` searches exactly up to this many reference cells, approximately beyond.
AUTO_EXACT_MAX = 100_000
#: ``"auto"`` prefers faiss (when installed) from this many reference cells on.
AUTO_FAISS_MIN = 1_000_000
#: Distance-matrix entries the exact backend holds at once (``query chunk x reference``).
EXACT_BLOCK = 2**24
_FORMAT_VERSION = 1


def _import_faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "backend='faiss' needs the faiss library, which is not installed. Install it with "
            "`pip install faiss-cpu` (or `pip install 'scgpt-scvi[faiss]'`), or use "
            "backend='exact' or 'pynndescent'."
        ) from err
    return faiss


def _faiss_available() -> bool:
    try:
        _import_faiss()
    except ImportError:
        return False
    return True


def _as_matrix(x, what: str) -> np.ndarray:
    """A finite float32 ``(n, d)`` copy-free view of ``x`` (array, DataFrame or sparse)."""
    if hasattr(x, "toarray"):
        x = x.toarray()
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2:
        raise ValueError(
            f"{what} must be a 2-D (cells x dimensions) matrix; got shape {arr.shape}."
        )
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(1))[:5].tolist()
        raise ValueError(f"{what} holds NaN or infinite values (rows {bad}).")
    return arr


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


class ReferenceIndex:
    """A k-nearest-neighbour index of reference embeddings, optionally with their labels.

    Parameters
    ----------
    embeddings
        ``(n_ref, d)`` reference embeddings (e.g. ``adata.obsm["X_scgpt"]``).
    labels
        Optional ``(n_ref,)`` labels of the reference cells (for :meth:`predict` and
        :func:`transfer_labels`).
    metric
        ``"cosine"`` (distance ``1 - cos``) or ``"euclidean"``.
    backend
        ``"exact"``: brute force in torch, queried in chunks so memory stays flat in the number
        of query cells. ``"pynndescent"``: approximate (NN-descent graph). ``"faiss"``:
        approximate (HNSW; needs ``pip install faiss-cpu``), for references of millions of
        cells. ``"auto"``: exact up to 100,000 reference cells, then pynndescent, or faiss from
        1,000,000 cells when it is installed.
    random_state
        Seed of the approximate backends.

    Examples
    --------
    >>> index = ReferenceIndex(ref.obsm["X_scgpt"], labels=ref.obs["cell_type"])
    >>> idx, dist = index.query(query.obsm["X_scgpt"], k=10)
    >>> labels, confidence = index.predict(query.obsm["X_scgpt"], k=10)
    >>> index.save("atlas_index.npz"); index = ReferenceIndex.load("atlas_index.npz")
    """

    def __init__(
        self,
        embeddings,
        labels=None,
        metric: Metric = "cosine",
        backend: Backend = "auto",
        random_state: int = 0,
    ):
        if metric not in INDEX_METRICS:
            raise ValueError(f"Unknown metric {metric!r}; choose one of {INDEX_METRICS}.")
        if backend not in INDEX_BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}; choose one of {INDEX_BACKENDS}.")
        self.embeddings = _as_matrix(embeddings, "Reference embeddings")
        if len(self.embeddings) == 0:
            raise ValueError("The reference holds no cells.")
        self.labels = None
        if labels is not None:
            labels = np.asarray(pd.Series(labels).astype(str), dtype=str)
            if labels.shape != (len(self.embeddings),):
                raise ValueError(
                    f"labels has {labels.shape[0]} entries but the reference has "
                    f"{len(self.embeddings)} cells."
                )
            self.labels = labels
        self.metric = metric
        self.random_state = random_state
        self.backend = self._resolve(backend)
        self._search = self._unit(self.embeddings)
        self._ann = None
        if self.backend == "faiss":
            self._ann = self._build_faiss()
        elif self.backend == "pynndescent":
            self._ann = self._build_pynndescent()

    # ------------------------------------------------------------------ construction
    def _resolve(self, backend: str) -> str:
        n = len(self.embeddings)
        if backend == "faiss":
            _import_faiss()
        if backend != "auto":
            return backend
        if n <= AUTO_EXACT_MAX:
            return "exact"
        return "faiss" if n >= AUTO_FAISS_MIN and _faiss_available() else "pynndescent"

    def _unit(self, x: np.ndarray) -> np.ndarray:
        return _unit_rows(x) if self.metric == "cosine" else x

    def _build_pynndescent(self):
        from pynndescent import NNDescent

        n_neighbors = min(30, len(self._search) - 1) if len(self._search) > 1 else 1
        index = NNDescent(
            self._search,
            metric="euclidean",  # on unit rows for cosine: same order, and faster
            n_neighbors=max(n_neighbors, 2),
            random_state=self.random_state,
            low_memory=True,
        )
        index.prepare()
        return index

    def _build_faiss(self, serialized: np.ndarray | None = None):
        faiss = _import_faiss()
        if serialized is not None:
            return faiss.deserialize_index(serialized)
        index = faiss.IndexHNSWFlat(self._search.shape[1], 32)
        index.hnsw.efConstruction = 80
        faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
        index.add(self._search)
        return index

    # ------------------------------------------------------------------ queries
    @property
    def n_obs(self) -> int:
        """Number of reference cells."""
        return len(self.embeddings)

    def query(self, embeddings, k: int = 10, chunk_size: int | None = None):
        """The ``k`` nearest reference cells of each query embedding.

        Parameters
        ----------
        embeddings
            ``(n_query, d)`` query embeddings, in the reference's space.
        k
            Neighbours per query cell (at most the number of reference cells).
        chunk_size
            Query cells per exact-search block (default: as many as keep the block's distance
            matrix near 16M entries).

        Returns
        -------
        ``(indices, distances)``: ``(n_query, k)`` reference row numbers, nearest first, and
        their distances (``1 - cos`` for cosine, Euclidean otherwise).
        """
        q = _as_matrix(embeddings, "Query embeddings")
        if q.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"Query embeddings have {q.shape[1]} dimensions; the reference has "
                f"{self.embeddings.shape[1]}."
            )
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}.")
        if k > self.n_obs:
            raise ValueError(f"k={k} is larger than the reference ({self.n_obs} cells).")
        q = self._unit(q)
        if self.backend == "exact":
            idx, dist = self._query_exact(q, k, chunk_size)
        elif self.backend == "pynndescent":
            # search 2k candidates (they come back sorted) for recall, keep the nearest k
            idx, dist = self._ann.query(q, k=min(2 * k, self.n_obs), epsilon=0.3)
            idx, dist = idx[:, :k], dist[:, :k].astype(np.float32)
            if self.metric == "cosine":
                dist = dist**2 / 2  # unit rows: |a - b|^2 = 2 (1 - cos)
        else:
            self._ann.hnsw.efSearch = max(64, 2 * k)
            dist, idx = self._ann.search(q, k)
            dist = np.maximum(dist, 0)  # squared L2
            dist = dist / 2 if self.metric == "cosine" else np.sqrt(dist)
        return np.asarray(idx, dtype=np.int64), np.asarray(dist, dtype=np.float32)

    def _query_exact(self, q: np.ndarray, k: int, chunk_size: int | None):
        ref = torch.from_numpy(self._search)
        ref_sq = (ref * ref).sum(1)
        step = chunk_size or max(1, EXACT_BLOCK // self.n_obs)
        idx = np.empty((len(q), k), dtype=np.int64)
        dist = np.empty((len(q), k), dtype=np.float32)
        for start in range(0, len(q), step):
            block = torch.from_numpy(q[start : start + step])
            if self.metric == "cosine":
                d = 1.0 - block @ ref.T
            else:
                d = ((block * block).sum(1, keepdim=True) - 2 * block @ ref.T + ref_sq).clamp_min(0)
            top = torch.topk(d, k, dim=1, largest=False, sorted=True)
            values = top.values if self.metric == "cosine" else top.values.sqrt()
            idx[start : start + step] = top.indices.numpy()
            dist[start : start + step] = values.clamp_min(0).numpy()
        return idx, dist

    def predict(self, embeddings, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Majority vote of the ``k`` nearest reference labels.

        Ties go to the label of the nearer neighbours.

        Returns
        -------
        ``(labels, confidence)``: the winning label of each query cell and the share of its
        ``k`` neighbours that carry it.
        """
        if self.labels is None:
            raise ValueError("This ReferenceIndex has no labels; pass labels= when building it.")
        idx, _ = self.query(embeddings, k=k)
        categories, codes = np.unique(self.labels, return_inverse=True)
        neighbour_codes = codes[idx]
        votes = np.zeros((len(idx), len(categories)), dtype=np.float64)
        rows = np.repeat(np.arange(len(idx)), k)
        # one vote each, plus a tie-break < 1 in total that favours nearer neighbours
        weight = 1.0 + (k - np.arange(k)) / (k * (k + 1))
        np.add.at(votes, (rows, neighbour_codes.ravel()), np.tile(weight, len(idx)))
        best = votes.argmax(1)
        confidence = (neighbour_codes == best[:, None]).mean(1)
        return categories[best], confidence.astype(np.float32)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to one ``.npz`` file (arrays and JSON metadata; no pickle).

        A faiss index is stored serialised; a pynndescent graph is rebuilt (with the same
        seed) by :meth:`load`.
        """
        meta = {
            "format_version": _FORMAT_VERSION,
            "metric": self.metric,
            "backend": self.backend,
            "random_state": self.random_state,
            "has_labels": self.labels is not None,
        }
        arrays = {"embeddings": self.embeddings, "meta": np.array(json.dumps(meta))}
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.backend == "faiss":
            arrays["faiss_index"] = _import_faiss().serialize_index(self._ann)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceIndex:
        """Read an index written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format_version") != _FORMAT_VERSION:
                raise ValueError(
                    f"{path}: unsupported ReferenceIndex format {meta.get('format_version')!r}."
                )
            embeddings = data["embeddings"]
            labels = data["labels"] if meta["has_labels"] else None
            serialized = data["faiss_index"] if "faiss_index" in data else None
        obj = cls.__new__(cls)
        obj.embeddings, obj.labels = embeddings, labels
        obj.metric, obj.backend = meta["metric"], meta["backend"]
        obj.random_state = meta["random_state"]
        obj._search = obj._unit(obj.embeddings)
        obj._ann = None
        if obj.backend == "faiss":
            obj._ann = obj._build_faiss(serialized)
        elif obj.backend == "pynndescent":
            obj._ann = obj._build_pynndescent()
        return obj

    def __repr__(self) -> str:
        labels = "" if self.labels is None else f", {len(np.unique(self.labels))} labels"
        return (
            f"ReferenceIndex({self.n_obs} cells x {self.embeddings.shape[1]} dims, "
            f"metric={self.metric!r}, backend={self.backend!r}{labels})"
        )


def _rep(adata: AnnData, use_rep: str, which: str) -> np.ndarray:
    if use_rep not in adata.obsm:
        raise KeyError(
            f"use_rep {use_rep!r} is not in {which}.obsm; available keys: {list(adata.obsm)}."
        )
    return adata.obsm[use_rep]


def transfer_labels(
    query: AnnData,
    reference: AnnData | ReferenceIndex,
    labels_key: str,
    use_rep: str = "X_scgpt",
    k: int = 10,
    backend: Backend = "auto",
    metric: Metric = "cosine",
) -> ReferenceIndex:
    """Label query cells by a majority vote of their nearest reference cells.

    Works from any embedding in ``obsm`` (scGPT's, PCA, scVI, ...), as long as query and
    reference share it. Writes ``query.obs[f"{labels_key}_transferred"]`` (categorical) and
    ``query.obs[f"{labels_key}_confidence"]`` (the share of the ``k`` neighbour votes won by
    that label); nothing else of ``query`` changes.

    Parameters
    ----------
    query
        Cells to label; their embedding is ``query.obsm[use_rep]``.
    reference
        Labelled AnnData (``obs[labels_key]``, ``obsm[use_rep]``; cells with a missing label are
        left out), or a :class:`ReferenceIndex` built with labels (then ``backend`` and
        ``metric`` are the index's).
    labels_key
        ``obs`` column of the reference labels; also names the output columns.
    use_rep
        ``obsm`` key of the embedding.
    k
        Neighbours that vote.
    backend, metric
        See :class:`ReferenceIndex`.

    Returns
    -------
    The :class:`ReferenceIndex` used (save it to map more queries later).

    Examples
    --------
    >>> ref.obsm["X_scgpt"] = model.get_latent_representation(ref)
    >>> query.obsm["X_scgpt"] = model.get_latent_representation(query)
    >>> scgpt_scvi.tl.transfer_labels(query, ref, "cell_type")
    >>> query.obs[["cell_type_transferred", "cell_type_confidence"]]
    """
    q = _rep(query, use_rep, "query")
    if isinstance(reference, ReferenceIndex):
        index = reference
        if index.labels is None:
            raise ValueError("The ReferenceIndex has no labels; build it with labels=.")
    else:
        emb = _rep(reference, use_rep, "reference")
        if labels_key not in reference.obs:
            raise KeyError(
                f"labels_key {labels_key!r} is not a column of reference.obs; columns: "
                f"{list(reference.obs.columns)}."
            )
        labels = reference.obs[labels_key]
        keep = labels.notna().to_numpy()
        if not keep.any():
            raise ValueError(f"reference.obs[{labels_key!r}] has no labelled cell.")
        emb = np.asarray(emb.toarray() if hasattr(emb, "toarray") else emb)[keep]
        index = ReferenceIndex(emb, labels[keep].to_numpy(), metric=metric, backend=backend)
    predicted, confidence = index.predict(q, k=k)
    categories = None
    if not isinstance(reference, ReferenceIndex) and hasattr(reference.obs[labels_key], "cat"):
        categories = [str(c) for c in reference.obs[labels_key].cat.categories]
    query.obs[f"{labels_key}_transferred"] = pd.Categorical(
        predicted, categories=categories if categories else sorted(set(index.labels))
    )
    query.obs[f"{labels_key}_confidence"] = confidence
    return index
