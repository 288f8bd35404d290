"""Shared user-side plumbing for the scGPT family: vocabularies, input checks, inference loops."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from ..data import GeneVocab, to_symbols

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURE_KEYS",
    "architecture",
    "as_vocab",
    "check_expression",
    "gene_overlap",
    "iter_rows",
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

    @torch.inference_mode()
    def _collect(
        self,
        fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        adata: AnnData | None = None,
        indices=None,
        batch_size: int | None = None,
        **loader_kwargs,
    ) -> np.ndarray:
        """Run ``fn(tensors)`` over minibatches in eval mode and stack the results (numpy)."""
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(
            adata=adata, indices=indices, batch_size=batch_size or 64, **loader_kwargs
        )
        was_training = self.module.training
        self.module.eval()
        try:
            outs = [fn(tensors).float().cpu() for tensors in loader]
        finally:
            self.module.train(was_training)
        return torch.cat(outs).numpy() if outs else np.zeros((0,), dtype=np.float32)
