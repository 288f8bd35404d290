"""Shared user-side plumbing for the scGPT family: vocabularies, input checks, inference loops."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse
from scvi import REGISTRY_KEYS

from ..data import GeneVocab, to_symbols
from ..nn import autocast, quantize_int8, resolve_precision
from ._pretrained import PretrainedMixin
from ._training import fault_tolerant_train

logger = logging.getLogger(__name__)

__all__ = [
    "TRAINING_FLOP_BUDGET",
    "MIN_STEPS",
    "SCRATCH_MODULE_DEFAULTS",
    "default_max_epochs",
    "as_vocab",
    "check_expression",
    "warn_unexpressed",
    "gene_overlap",
    "iter_rows",
    "reorder_token_ids",
    "token_counts",
    "EmbeddingMixin",
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


#: Architecture and tokenisation of a model trained from scratch (scGPT's own defaults,
#: :class:`~scgpt_scvi.module.SCGPTConfig`'s, are for a pretrained 51M-parameter model). Sized
#: to learn from thousands of cells in minutes on a laptop CPU:
#:
#: - width 64, 4 heads, a 128-wide feed-forward, 2 layers: a cell's few hundred expressed genes
#:   are a short sequence, and deeper models need far more cells to beat two layers (the
#:   released whole-human model is ``d_model=512, nhead=8, d_hid=512, nlayers=12``);
#: - no dropout: small data and few epochs, and attention dropout makes CPU attention several
#:   times slower (the original: 0.2);
#: - 11 value bins: each bin holds more genes, so a small model learns faster and more
#:   reliably (the original and its checkpoints: 51);
#: - mask ratio 0.25: the original's 0.4 removes too much of a short cell for the CLS objective.
#:
#: Checkpoints keep their own values (``from_pretrained``).
SCRATCH_MODULE_DEFAULTS = {
    "d_model": 64,
    "nhead": 4,
    "d_hid": 128,
    "nlayers": 2,
    "dropout": 0.0,
    "n_bins": 11,
    "mask_ratio": 0.25,
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


def reorder_token_ids(
    token_ids: torch.Tensor, ref: pd.Index, new: pd.Index, error: str
) -> torch.Tensor | None:
    """``token_ids`` (one per name of ``ref``) in the order of ``new``, the same names matched
    by name; ``None`` when ``new`` is already ``ref``'s order.

    Raises
    ------
    ValueError
        With message ``error`` when ``new`` holds other names than ``ref``.
    """
    if new.equals(ref):
        return None
    if len(new) != len(ref) or set(new) != set(ref):
        raise ValueError(error)
    return token_ids[torch.as_tensor(ref.get_indexer(new))]


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


def warn_unexpressed(n_expressed: np.ndarray, obs_names: pd.Index, what: str) -> None:
    """Warn about the cells with no expressed feature (``n_expressed == 0``), which are embedded
    from ``<cls>`` alone; ``what`` completes "N cells ...", e.g. ``"express no gene"``."""
    if (n_expressed == 0).any():
        empty = obs_names[n_expressed == 0]
        warnings.warn(
            f"{len(empty)} cells {what} (e.g. {list(empty[:3])}); they are embedded from <cls> "
            "alone.",
            UserWarning,
            stacklevel=3,
        )


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


#: Default training budget in FLOPs (forward + backward over every training cell and epoch):
#: about 2 minutes of a small model on 2 CPU cores. ``train(max_epochs=None)`` sizes the epochs
#: to it.
TRAINING_FLOP_BUDGET = 2e12
#: Epochs that ``train(max_epochs=None)`` never goes below / above (from scratch).
EPOCHS_MIN, EPOCHS_MAX = 5, 100
#: Optimisation steps that ``train(max_epochs=None)`` gives a model from scratch at least (within
#: ``EPOCHS_MAX``): a small dataset has few minibatches an epoch, and its embedding keeps
#: gaining structure long after the budget's epochs. On the 200-cell CITE-seq set (6 steps an
#: epoch) the protein-group silhouette was 0.29 after the budget's 35 epochs and 0.78 after 100
#: (seed 2), with the validation loss flat from epoch 30.
MIN_STEPS = 600
#: Fine-tuning a pretrained model: scGPT's settings (few epochs, lr 1e-4).
FINETUNE_EPOCHS_MAX, FINETUNE_LR, SCRATCH_LR = 10, 1e-4, 1e-3


def default_max_epochs(
    n_cells: int,
    flop_per_cell: float,
    pretrained: bool = False,
    budget: float | None = None,
    batch_size: int = 32,
) -> int:
    """Epochs for ``train(max_epochs=None)``, the scvi-tools way: from the data and model size.

    scvi-tools' ``get_max_epochs_heuristic`` caps the epochs and decays them with the number of
    cells. A transformer's cost per cell is far higher and grows with the model, so here the
    epochs fill a compute budget instead: ``budget / (n_cells * flop_per_cell)`` (``budget``
    defaults to :data:`TRAINING_FLOP_BUDGET`, minutes on a laptop CPU). From scratch, small data
    get at least :data:`MIN_STEPS` optimisation steps (minibatches of ``batch_size``), as
    scvi-tools gives small data more epochs; the result is clipped to
    ``[EPOCHS_MIN, EPOCHS_MAX]``. Fine-tuning a pretrained model is clipped to
    ``[1, FINETUNE_EPOCHS_MAX]``. Early stopping on the validation loss may end training sooner.

    Parameters
    ----------
    n_cells
        Training cells.
    flop_per_cell
        Training FLOPs per cell (forward and backward), e.g. from :func:`training_flop_per_cell`.
    pretrained
        The model starts from pretrained weights.
    budget
        FLOP budget.
    batch_size
        Cells per minibatch.

    Examples
    --------
    >>> default_max_epochs(10_000, 3e8)  # the budget's epochs
    5
    >>> default_max_epochs(1000, 3e8)  # 32 steps an epoch: MIN_STEPS needs 19 epochs
    19
    """
    budget = TRAINING_FLOP_BUDGET if budget is None else budget
    epochs = round(budget / max(n_cells * flop_per_cell, 1.0))
    if pretrained:
        return int(min(max(epochs, 1), FINETUNE_EPOCHS_MAX))
    steps_per_epoch = math.ceil(max(n_cells, 1) / batch_size)
    epochs = max(epochs, math.ceil(MIN_STEPS / steps_per_epoch))
    return int(min(max(epochs, EPOCHS_MIN), EPOCHS_MAX))


def training_flop_per_cell(module: torch.nn.Module, n_tokens: float) -> float:
    """Forward + backward FLOPs of one cell of ``n_tokens`` tokens (PERFORMANCE_NOTES' count).

    Two FLOPs per weight of every transformer matrix per token, plus ``4 L d`` per layer for the
    attention scores, times 3 for the backward pass.
    """
    layers = module.transformer_encoder.layers
    weights = sum(p.numel() for n, p in layers.named_parameters() if p.dim() == 2)
    d_model = module.d_model
    return 3.0 * n_tokens * (2.0 * weights + len(layers) * 4.0 * n_tokens * d_model)


def mean_tokens_per_cell(X, max_tokens: int, n_sample: int = 2000) -> float:
    """Mean expressed features per cell (+1 for ``<cls>``), capped at ``max_tokens``.

    Reads at most ``n_sample`` evenly spaced rows, never the whole matrix.
    """
    n = X.shape[0]
    if n == 0:
        return float(max_tokens)
    rows = np.unique(np.linspace(0, n - 1, min(n, n_sample)).astype(np.int64))
    sub = X[rows]
    nnz = sub.getnnz(axis=1) if sparse.issparse(sub) else (np.asarray(sub) > 0).sum(1)
    return float(np.minimum(np.asarray(nnz) + 1, max_tokens).mean())


class SCGPTBaseMixin(PretrainedMixin):
    """What the scGPT-family model wrappers share: module construction, ``from_pretrained``,
    training defaults and the evaluation loop. Each wrapper adds its setup method and the
    outputs unique to it."""

    #: Default minibatch size of :meth:`train`.
    _default_batch_size = 32
    #: Module options a model from scratch gets unless given (beside its signature's).
    _module_defaults: Mapping = {}

    @classmethod
    def _register(cls, data, fields: list, setup_method_args: dict, **kwargs) -> None:
        """Register ``fields`` of ``data`` (AnnData or MuData) with a new ``AnnDataManager``:
        the last step of every setup method."""
        from scvi.data import AnnDataManager

        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(data, **kwargs)
        cls.register_manager(adata_manager)

    def _vocabulary(self, vocab, genes: pd.Index) -> tuple[GeneVocab, np.ndarray]:
        """The vocabulary (:func:`as_vocab`) and the token id of each of ``genes``; keeps the
        overlap summary in ``gene_overlap_`` (:func:`gene_overlap`)."""
        vocab_obj = as_vocab(vocab, genes)
        token_ids, self.gene_overlap_ = gene_overlap(genes, vocab_obj)
        return vocab_obj, token_ids

    def _record_init(self, vocab: GeneVocab, summary: str, init_locals: Mapping) -> None:
        """Keep the vocabulary (``vocab_``), the model summary (architecture, vocabulary size,
        then ``summary``) and the init parameters (with the vocabulary itself, not a path)."""
        m = self.module
        self.vocab_ = vocab.get_stoi()
        self._model_summary_string = (
            f"{type(self).__name__}: d_model {m.d_model}, nlayers {m.nlayers}, nhead {m.nhead}, "
            f"vocabulary {len(vocab)} tokens; {summary}."
        )
        self.init_params_ = self._get_init_params({**init_locals, "vocab": self.vocab_})

    def _build_module(self, vocab: GeneVocab, gene_token_ids, **options):
        """``self._module_cls`` for ``vocab`` and each input column's token id
        ``gene_token_ids``, sized by the registered labels and batches and with
        ``_module_defaults`` (``options`` win)."""
        setup = self.registry_["setup_args"]
        if setup.get("labels_key"):
            options.setdefault("n_cls", self.summary_stats.n_labels)
        if setup.get("batch_key") is not None:
            options.setdefault("num_batch_labels", self.summary_stats.n_batch)
        for key, value in self._module_defaults.items():
            options.setdefault(key, value)
        return self._module_cls(
            ntoken=vocab.ntoken,
            pad_id=vocab.pad_id,
            cls_id=vocab.cls_id,
            gene_token_ids=torch.as_tensor(np.asarray(gene_token_ids), dtype=torch.long),
            **options,
        )

    def _tokens_per_cell(self) -> float:
        """Tokens a cell is expected to have: expressed genes up to ``max_seq_len``."""
        from scvi import REGISTRY_KEYS

        X = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        return mean_tokens_per_cell(X, int(getattr(self.module, "max_seq_len", X.shape[1] + 1)))

    @fault_tolerant_train
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        early_stopping: bool | None = None,
        plan_kwargs: dict | None = None,
        **kwargs,
    ):
        """Train with scvi-tools' machinery and :class:`~scgpt_scvi.model.SCGPTTrainingPlan`.

        The defaults learn without tuning: the epochs come from the number of cells and the model
        size (:func:`default_max_epochs`), early stopping on the validation loss is on whenever
        there is a validation split, the learning-rate warm-up and cosine decay are sized to the
        run, and the objectives are on one scale with weights that follow what was registered
        (see the module's ``loss``). A model from ``from_pretrained`` fine-tunes with scGPT's
        settings instead (lr 1e-4, at most 10 epochs).

        Parameters
        ----------
        max_epochs
            Passes over the training cells; ``None``: :func:`default_max_epochs`.
        batch_size
            Cells per minibatch (default 32; 64 for the perturbation model).
        accelerator, devices
            Lightning device selection (``devices=2, strategy="ddp_find_unused_parameters_true"``
            for DDP).
        train_size, validation_size
            Split of the cells (default: 90% train, 10% validation).
        early_stopping
            Stop when the validation loss has not improved for ``early_stopping_patience``
            epochs (default: a fifth of ``max_epochs``, at least 3). ``None``: on when there is
            a validation split.
        plan_kwargs
            :class:`~scgpt_scvi.model.SCGPTTrainingPlan` options: ``lr`` (default 1e-3 from
            scratch, 1e-4 pretrained), ``optimizer``, ``warmup_ratio``, ``lr_schedule``, and
            objective weights (``mlm_weight``, ``mvc_weight``, ``cls_weight``, ``cce_weight``,
            ``ecs_weight``, ``dab_weight``).
        **kwargs
            Other ``UnsupervisedTrainingMixin.train`` / Lightning ``Trainer`` arguments
            (``precision``, ``strategy``, ``early_stopping_patience``, ...);
            ``gradient_clip_val`` defaults to 1.0.

        Examples
        --------
        >>> model.train()                      # defaults sized to the data
        >>> model.train(max_epochs=20, plan_kwargs={"lr": 3e-4})
        """
        pretrained = bool(getattr(self, "pretrained_", False))
        n_cells = self.adata.n_obs
        if n_cells == 0:
            raise ValueError("The registered data has no cells to train on.")
        if max_epochs is not None and max_epochs < 1:
            raise ValueError(
                f"max_epochs must be >= 1 (or None for a default sized to the data); got "
                f"{max_epochs}."
            )
        n_train = max(int(round(n_cells * (train_size if train_size is not None else 0.9))), 1)
        batch_size = batch_size or self._default_batch_size
        if n_train < batch_size:
            warnings.warn(
                f"Only {n_train} training cells, fewer than batch_size={batch_size}: each epoch "
                "is a single minibatch of all of them.",
                UserWarning,
                stacklevel=2,
            )
        if self.is_trained_ and self.history_ is not None:
            warnings.warn(
                "This model is already trained: train() continues from its current weights "
                "(the optimizer and learning-rate schedule start afresh).",
                UserWarning,
                stacklevel=2,
            )
        if self.is_trained_ and self.history_ is None:
            # from_pretrained: trained weights but no history; the runner would otherwise
            # treat the fine-tuning run as a continuation and record no history.
            self.is_trained_ = False
        if max_epochs is None:
            flop = training_flop_per_cell(self.module, self._tokens_per_cell())
            max_epochs = default_max_epochs(
                n_train, flop, pretrained=pretrained, batch_size=batch_size
            )
            logger.info("max_epochs=%d (sized to %d cells and the model).", max_epochs, n_train)
        has_validation = (validation_size or 0) > 0 or (
            train_size is not None and train_size < 1 and n_cells - n_train > 0
        )
        if early_stopping is None:
            early_stopping = has_validation and kwargs.get("strategy") is None
        if early_stopping:
            kwargs.setdefault("early_stopping_monitor", "validation_loss")
            kwargs.setdefault("early_stopping_patience", max(3, round(max_epochs / 5)))
        plan_kwargs = {"lr": FINETUNE_LR if pretrained else SCRATCH_LR, **(plan_kwargs or {})}
        kwargs.setdefault("gradient_clip_val", 1.0)
        return super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            accelerator=accelerator,
            devices=devices,
            train_size=train_size,
            validation_size=validation_size,
            early_stopping=early_stopping,
            plan_kwargs=plan_kwargs,
            **kwargs,
        )

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

    def _token_lengths(
        self, adata: AnnData, indices: np.ndarray, gene_token_ids: torch.Tensor | None = None
    ) -> np.ndarray | None:
        """Tokens each cell of ``indices`` gets (before the ``max_seq_len`` cap), or ``None``
        when all cells get the same number (``include_zero_genes``) or the tokens come from
        more than the registered ``X`` (several modalities). ``gene_token_ids``: each column's
        vocabulary id when the columns are not in the module's order."""
        manager = self.get_anndata_manager(adata, required=True)
        if getattr(self.module, "include_zero_genes", True) or (
            REGISTRY_KEYS.X_KEY not in manager.data_registry
        ):
            return None
        X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        ids = self.module.gene_token_ids if gene_token_ids is None else gene_token_ids
        if ids.numel() != X.shape[1]:
            return None
        return token_counts(X, (ids >= 0).cpu().numpy())[indices]

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
        gene_token_ids: torch.Tensor | None = None,
        progress_bar: bool = False,
        **loader_kwargs,
    ) -> np.ndarray:
        """Run ``fn(tensors)`` over minibatches in eval mode and stack the results (numpy).

        With ``bucket``, cells are batched by token count (longest first, so minibatches carry
        few pads) and the results are put back in the order of ``indices``; results are the
        same as without it because a cell's tokens and embedding do not depend on its
        minibatch (``gene_token_ids``: the columns' vocabulary ids, when not the module's
        order, for counting tokens). ``precision`` runs under autocast (see
        :func:`~scgpt_scvi.nn.autocast`), ``quantize="int8"`` on a dynamic-int8 copy of the
        module (CPU).
        """
        adata = self._validate_anndata(adata)
        precision = resolve_precision(self.device, precision)
        positions = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        batch_size = batch_size or 64
        lengths = self._token_lengths(adata, positions, gene_token_ids) if bucket else None
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


class EmbeddingMixin:
    """Cell embeddings of the models that embed cells (:class:`~scgpt_scvi.model.SCGPT`,
    :class:`~scgpt_scvi.model.SCGPTMultiomic`)."""

    #: Embeddings are L2-normalised by default (set by ``from_pretrained``, as ``embed_data``).
    normalize_embeddings_ = False

    def _token_ids_of(self, data) -> torch.Tensor | None:
        """Vocabulary id of each of ``data``'s columns when they come in another order than
        the module's (``None``: the module's own order)."""
        return None

    def get_latent_representation(
        self,
        adata=None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        normalize: bool | None = None,
        precision: Literal["fp32", "bf16", "fp16"] | None = None,
        quantize: Literal["int8"] | None = None,
        progress_bar: bool = False,
    ) -> np.ndarray:
        """Cell embeddings ``(n_obs, d_model)`` (by the module's ``cell_emb_style``).

        Deterministic: a cell's tokens are keyed on its name and the fixed seed, and padding
        does not change the result, so any ``batch_size`` gives the same numbers. Cells are
        batched by token count (few pads) and returned in the order asked for.

        Parameters
        ----------
        adata
            AnnData (MuData for the multi-omic model) with the same genes (any order for
            :class:`~scgpt_scvi.model.SCGPT`); default: the registered one.
        indices
            Cells to embed; default all.
        batch_size
            Cells per minibatch (default 64).
        normalize
            L2-normalise each embedding (what ``scgpt.tasks.embed_data`` returns). Default:
            ``model.normalize_embeddings_`` (True for models from ``from_pretrained``).
        precision
            Matmul precision under ``torch.autocast``: default ``"bf16"`` on GPUs that support
            it (``"fp16"`` on older GPUs, where flash-attn, if installed, is then used), ``"fp32"``
            on CPU (CPU ``"bf16"`` is allowed but emulated on CPUs without native bf16).
        quantize
            ``"int8"``: dynamic int8 linear layers (CPU; an inference copy of the module, the
            model is unchanged). Default: ``model.quantize_`` (set by ``from_pretrained``).
        progress_bar
            Show a progress bar over minibatches.

        Examples
        --------
        >>> adata.obsm["X_scgpt"] = model.get_latent_representation()
        >>> z8 = model.get_latent_representation(quantize="int8")  # CPU, ~2x faster
        >>> z16 = model.get_latent_representation(precision="bf16")  # GPU default
        """
        if normalize is None:
            normalize = self.normalize_embeddings_
        if quantize is None:
            quantize = getattr(self, "quantize_", None)
        ids = self._token_ids_of(adata)
        return self._collect(
            lambda t: self.module.embed(t, normalize=normalize, gene_token_ids=ids),
            adata,
            indices,
            batch_size,
            precision=precision,
            quantize=quantize,
            bucket=True,
            gene_token_ids=ids,
            progress_bar=progress_bar,
        )
