"""Shared user-side plumbing for the scGPT family: vocabularies, input checks, inference loops."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse
from scvi import REGISTRY_KEYS

from ..data import GeneVocab, to_symbols
from ..nn import autocast, quantize_int8, resolve_precision

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURE_KEYS",
    "architecture",
    "as_vocab",
    "check_expression",
    "gene_overlap",
    "iter_rows",
    "token_counts",
    "SCGPTBaseMixin",
]


def as_vocab(vocab: GeneVocab | Mapping[str, int] | str | os.PathLike | None, genes) -> GeneVocab:
    """A :class:`GeneVocab` from a vocabulary, a mapping, a ``vocab.json`` path, or ``genes``."""
    if vocab is None:
        return GeneVocab.from_genes(g for g in genes if _is_name(g))
    if isinstance(vocab, GeneVocab):
        return vocab
    if isinstance(vocab, Mapping):
        return GeneVocab(vocab)
    return GeneVocab.from_file(vocab)


#: Transformer options every scGPT-family model takes by name.
ARCHITECTURE_KEYS = ("d_model", "nhead", "d_hid", "nlayers", "nlayers_cls", "dropout")


def architecture(vocab: GeneVocab, options: Mapping) -> dict:
    """Module keywords shared by the family: vocabulary size and special ids plus the
    :data:`ARCHITECTURE_KEYS` picked from ``options`` (a model ``__init__``'s ``locals()``)."""
    return {
        "ntoken": vocab.ntoken,
        "pad_id": vocab.pad_id,
        "cls_id": vocab.cls_id,
        **{k: options[k] for k in ARCHITECTURE_KEYS},
    }


def _is_name(name) -> bool:
    """Whether a gene name can be a token (not empty, not a missing value)."""
    return bool(name) and str(name).strip() not in ("", "nan", "None")


def iter_rows(X, chunk_size: int = 4096) -> Iterator[tuple[int, np.ndarray | sparse.spmatrix]]:
    """Yield ``(start, rows)`` chunks of a dense, sparse or backed matrix without densifying it."""
    for start in range(0, X.shape[0], chunk_size):
        yield start, X[start : start + chunk_size]


def token_counts(X, columns: np.ndarray) -> np.ndarray:
    """Expressed genes per row among ``columns`` (bool, per column), streamed in chunks.

    Sparse and backed matrices are read chunk by chunk and never densified.
    """
    counts = np.zeros(X.shape[0], dtype=np.int64)
    for start, rows in iter_rows(X):
        if sparse.issparse(rows):
            rows = sparse.csr_matrix(rows)
            hit = columns[rows.indices] & (rows.data > 0)
            row_of = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
            n = np.bincount(row_of[hit], minlength=rows.shape[0])
        else:
            n = (np.asarray(rows)[:, columns] > 0).sum(1)
        counts[start : start + rows.shape[0]] = n
    return counts


def _bucketed_order(lengths: np.ndarray, batch_size: int) -> np.ndarray:
    """Positions sorted by ``lengths`` (longest first), then ascending within each minibatch
    (backed AnnData reads a minibatch's rows in ascending order)."""
    order = np.argsort(-lengths, kind="stable")
    chunks = [np.sort(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    return np.concatenate(chunks) if chunks else order


def check_expression(X, obs_names: pd.Index, what: str = "adata.X") -> np.ndarray:
    """Raise on NaN, infinite or negative values (naming cells); return per-cell non-zero counts.

    Streams the matrix in chunks, so sparse and backed data are never densified.
    """
    n_expressed = np.zeros(X.shape[0], dtype=np.int64)
    for start, rows in iter_rows(X):
        data = rows.data if sparse.issparse(rows) else np.asarray(rows)
        bad = ~np.isfinite(data) | (data < 0)
        if bad.any():
            dense = rows.toarray() if sparse.issparse(rows) else np.asarray(rows)
            bad_rows = np.flatnonzero((~np.isfinite(dense) | (dense < 0)).any(1))[:5] + start
            raise ValueError(
                f"{what} must hold finite, non-negative expression values; cells "
                f"{list(obs_names[bad_rows])} (indices {bad_rows.tolist()}) hold NaN, infinite "
                "or negative values."
            )
        n_expressed[start : start + rows.shape[0]] = (
            rows.getnnz(axis=1) if sparse.issparse(rows) else (np.asarray(rows) > 0).sum(1)
        )
    return n_expressed


def gene_overlap(genes: pd.Index, vocab: GeneVocab) -> tuple[np.ndarray, dict]:
    """Vocabulary id of each gene (-1: unmatched) and a summary of the overlap.

    Raises
    ------
    ValueError
        When no gene is in the vocabulary.
    """
    ids = np.asarray(vocab.lookup(genes), dtype=np.int64)
    ids[[not _is_name(g) for g in genes]] = -1
    matched = ids >= 0
    shared = pd.Index(genes[matched])
    if shared.has_duplicates:
        warnings.warn(
            f"{int(shared.duplicated().sum())} gene names occur more than once (e.g. "
            f"{list(shared[shared.duplicated()].unique()[:3])}); their columns share one token.",
            UserWarning,
            stacklevel=3,
        )
    unmatched = list(genes[~matched][:5])
    info = {
        "n_genes": int(len(genes)),
        "n_matched": int(matched.sum()),
        "n_unnamed": int(sum(not _is_name(g) for g in genes)),  # e.g. unmapped Ensembl IDs
        "n_ambiguous": int(pd.Index(genes[matched]).duplicated(keep=False).sum()),
        "fraction_matched": float(matched.mean()) if len(genes) else 0.0,
        "unmatched_examples": unmatched,
    }
    if not matched.any():
        raise ValueError(
            f"None of the {len(genes)} genes is in the vocabulary (e.g. {list(genes[:5])}). "
            "Pass gene symbols via setup_anndata(gene_symbols_key=...) if var_names are IDs."
        )
    if info["fraction_matched"] < 0.5:
        warnings.warn(
            f"Only {info['n_matched']} of {info['n_genes']} genes "
            f"({info['fraction_matched']:.1%}) are in the vocabulary; the rest are left out of "
            f"the tokens (e.g. {unmatched}).",
            UserWarning,
            stacklevel=3,
        )
    elif info["n_matched"] < info["n_genes"]:
        logger.info(
            "%d of %d genes (%.1f%%) are in the vocabulary.",
            info["n_matched"],
            info["n_genes"],
            100 * info["fraction_matched"],
        )
    return ids, info


class SCGPTBaseMixin:
    """Inference loops shared by the scGPT-family model wrappers."""

    def _gene_names(self, adata: AnnData) -> pd.Index:
        """Gene names used for the vocabulary: ``var[gene_symbols_key]`` or ``var_names``, as
        symbols (Ensembl IDs mapped by the registered ``gene_id_type``)."""
        setup = self.registry_["setup_args"]
        key = setup.get("gene_symbols_key")
        names = pd.Index((adata.var[key] if key else adata.var_names).astype(str))
        return to_symbols(names, setup.get("gene_id_type", "symbol"))

    def _model_genes(self) -> pd.Index:
        """Gene names in the order of the module's ``gene_token_ids``: the registered data's,
        or for a loaded model those it was saved with (``model_genes_``)."""
        genes = getattr(self, "model_genes_", None)
        return pd.Index(genes) if genes is not None else self._gene_names(self.adata)

    def _token_lengths(self, adata: AnnData, indices: np.ndarray) -> np.ndarray | None:
        """Tokens each cell of ``indices`` gets (before the ``max_seq_len`` cap), or ``None``
        when all cells get the same number (``include_zero_genes``)."""
        if getattr(self.module, "include_zero_genes", True):
            return None
        X = self.get_anndata_manager(adata, required=True).get_from_registry(REGISTRY_KEYS.X_KEY)
        columns = (self.module.gene_token_ids >= 0).cpu().numpy()
        return token_counts(X, columns)[indices]

    @contextlib.contextmanager
    def _inference_module(self, quantize: str | None):
        """``self.module``, or while inside, its int8 copy (cached until a parameter changes)."""
        if quantize is None:
            yield
            return
        key = (quantize, tuple((p.data_ptr(), p._version) for p in self.module.parameters()))
        cache = getattr(self, "_quantized_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, quantize_int8(self.module, quantize))
            self._quantized_cache = cache
        original = self.module
        self.module = cache[1]
        try:
            yield
        finally:
            self.module = original

    @torch.inference_mode()
    def _collect(
        self,
        fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        adata: AnnData | None = None,
        indices=None,
        batch_size: int | None = None,
        precision: str | None = None,
        quantize: str | None = None,
        bucket: bool = False,
        progress_bar: bool = False,
        **loader_kwargs,
    ) -> np.ndarray:
        """Run ``fn(tensors)`` over minibatches in eval mode and stack the results (numpy).

        With ``bucket``, cells are batched by token count (longest first, so minibatches carry
        few pads) and the results are put back in the order of ``indices``; results are the
        same as without it because a cell's tokens and embedding do not depend on its
        minibatch. ``precision`` runs under autocast (see :func:`~scgpt_scvi.nn.autocast`),
        ``quantize="int8"`` on a dynamic-int8 copy of the module (CPU).
        """
        adata = self._validate_anndata(adata)
        precision = resolve_precision(self.device, precision)
        positions = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        batch_size = batch_size or 64
        lengths = self._token_lengths(adata, positions) if bucket else None
        run = None if lengths is None else _bucketed_order(lengths, batch_size)
        loader = self._make_data_loader(
            adata=adata,
            indices=positions if run is None else positions[run],
            batch_size=batch_size,
            **loader_kwargs,
        )
        was_training = self.module.training
        self.module.eval()
        try:
            with self._inference_module(quantize), autocast(self.device, precision):
                batches = loader
                if progress_bar:
                    from tqdm.auto import tqdm

                    batches = tqdm(loader, total=len(loader), unit="batch", desc="embedding")
                outs = [fn(tensors).float().cpu() for tensors in batches]
        finally:
            self.module.train(was_training)
        if not outs:
            return np.zeros((0,), dtype=np.float32)
        out = torch.cat(outs).numpy()
        if run is not None:
            restored = np.empty_like(out)
            restored[run] = out
            out = restored
        return out
