"""``SCGPT``: the user-facing scvi-tools model around :class:`~scgpt_scvi.module.SCGPTModule`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import ArchesMixin, BaseModelClass, UnsupervisedTrainingMixin

from ..data import GeneVocab, check_gene_id_type
from ..module import SCGPTModule
from ._analysis import SCGPTAnalysisMixin
from ._base import (
    SCRATCH_MODULE_DEFAULTS,
    EmbeddingMixin,
    SCGPTBaseMixin,
    check_expression,
    reorder_token_ids,
    warn_unexpressed,
)
from ._checks import check_cells, check_obs_keys, layer_matrix
from ._fields import CellKeyObsField
from ._pretrain import pretrain_classmethod
from ._pretrained import SavePretrainedMixin
from ._save_load import SafeSaveLoadMixin, _torch_device
from ._training_plan import SCGPTTrainingPlan

logger = logging.getLogger(__name__)

__all__ = ["SCGPT"]


class SCGPT(
    SavePretrainedMixin,
    SCGPTAnalysisMixin,
    EmbeddingMixin,
    SCGPTBaseMixin,
    SafeSaveLoadMixin,
    ArchesMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """scGPT (Cui et al. 2024) as an scvi-tools model.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (raw counts or log-normalised values;
        tokens are binned per cell, so normalisation does not change them).
    vocab
        Gene vocabulary: a :class:`~scgpt_scvi.data.GeneVocab`, a token -> id mapping or a
        ``vocab.json`` path. Default: built from the registered genes.
    **module_options
        Architecture, tokenisation and objective options: the fields of
        :class:`~scgpt_scvi.module.SCGPTConfig` (scGPT's names: ``d_model``, ``nhead``,
        ``d_hid``, ``nlayers``, ``nlayers_cls``, ``dropout``, ``max_seq_len``, ``n_bins``,
        ``mask_ratio``, ``do_mvc``, ``do_dab``, ``use_batch_labels``,
        ``domain_spec_batchnorm``, ``input_emb_style``, ``cell_emb_style``,
        ``explicit_zero_prob``, ``mlm_loss``, ``attention_backend``, ...). The defaults are the
        from-scratch ones of :data:`~scgpt_scvi.model._base.SCRATCH_MODULE_DEFAULTS` (width 64,
        4 heads, feed-forward 128, 2 layers, no dropout, 11 bins, mask ratio 0.25, explained
        there) and ``max_seq_len=512`` (covers every expressed gene of typical droplet cells
        against a filtered gene panel, and bounds the quadratic attention cost); the rest are
        scGPT's. :meth:`from_pretrained` reads the checkpoint's instead.

    Examples
    --------
    >>> SCGPT.setup_anndata(adata, labels_key="cell_type")
    >>> model = SCGPT(adata)
    >>> model.train()
    >>> model.predict(query)
    >>> adata.obsm["X_scgpt"] = model.get_latent_representation()
    """

    _module_cls = SCGPTModule
    _training_plan_cls = SCGPTTrainingPlan
    _genes_matched_by_name = True
    _module_defaults = {**SCRATCH_MODULE_DEFAULTS, "max_seq_len": 512}
    pretrain = classmethod(pretrain_classmethod)

    def __init__(
        self,
        adata: AnnData | None = None,
        vocab: GeneVocab | Mapping[str, int] | str | os.PathLike | None = None,
        **module_options,
    ):
        super().__init__(adata)
        genes = self._gene_names(self.adata)
        vocab_obj, token_ids = self._vocabulary(vocab, genes)
        self.module = self._build_module(vocab_obj, token_ids, **module_options)
        self.normalize_embeddings_ = False
        overlap = self.gene_overlap_
        self._record_init(
            vocab_obj,
            f"{overlap['n_matched']} of {overlap['n_genes']} genes tokenised, max_seq_len "
            f"{self.module.max_seq_len}",
            locals(),
        )

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_symbols_key: str | None = None,
        gene_id_type: Literal["auto", "symbol", "ensembl"] = "auto",
        **kwargs,
    ) -> None:
        """Register an AnnData for SCGPT.

        Values are checked first (NaN, infinite or negative values raise an error naming the
        cells; cells with no expressed gene give a warning), so a failing call leaves ``adata``
        untouched. Registration adds scvi-tools' bookkeeping columns to ``obs`` and ``uns``,
        plus ``obs['_scgpt_cell_key']`` (a hash of ``obs_names`` that seeds tokenisation).

        Parameters
        ----------
        adata
            AnnData with counts (or log-normalised values) in ``X`` or ``layers[layer]``;
            dense, sparse or backed.
        layer
            Layer to use instead of ``X``.
        batch_key
            ``obs`` column of batches (enables the batch encoder, DSBN and DAB options).
        labels_key
            ``obs`` column of cell types (switches the CLS objective on).
        gene_symbols_key
            ``var`` column of gene symbols matched against the vocabulary (default:
            ``var_names``).
        gene_id_type
            What the gene names are: ``"symbol"``, ``"ensembl"`` (human or mouse Ensembl gene
            IDs, mapped to symbols with the packaged table, see
            :func:`~scgpt_scvi.data.ensembl_to_symbol`) or ``"auto"`` (Ensembl when most names
            look like Ensembl IDs). Unmapped IDs are left out of the tokens.
        """
        check_gene_id_type(gene_id_type)
        setup_method_args = cls._get_setup_method_args(**locals())
        check_cells(adata)
        X = layer_matrix(adata, layer)
        if gene_symbols_key is not None and gene_symbols_key not in adata.var:
            raise KeyError(f"gene_symbols_key {gene_symbols_key!r} is not a column of adata.var.")
        keys = {"batch_key": batch_key, "labels_key": labels_key}
        check_obs_keys(adata.obs, keys, transfer="source_registry" in kwargs)
        n_expressed = check_expression(X, adata.obs_names, f"layers[{layer!r}]" if layer else "X")
        warn_unexpressed(n_expressed, adata.obs_names, "express no gene")
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            CellKeyObsField(),
        ]
        cls._register(adata, fields, setup_method_args, **kwargs)

    # ------------------------------------------------------------------ outputs
    def _token_ids_of(self, adata: AnnData | None) -> torch.Tensor | None:
        """Vocabulary id of each of ``adata``'s genes when they come in another order than the
        module's (:meth:`_model_genes`), matched by name; ``None`` in the module's order."""
        return reorder_token_ids(
            self.module.gene_token_ids,
            self._model_genes(),
            self._gene_names(adata if adata is not None else self.adata),
            "adata's genes differ from the genes the model was set up with; align them with "
            "SCGPT.prepare_query_anndata(adata, model) or adata[:, model.adata.var_names].",
        )

    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Cell-type predictions of the CLS head.

        Returns
        -------
        Labels (``soft=False``) or a DataFrame of class probabilities, cells x classes.
        """
        mapping = self._label_categories()
        ids = self._token_ids_of(adata)
        p = self._collect(
            lambda t: self.module.cell_type_probabilities(t, gene_token_ids=ids),
            adata,
            indices,
            batch_size,
            bucket=True,
            gene_token_ids=ids,
        )
        if soft:
            obs = (adata if adata is not None else self.adata).obs_names
            index = obs if indices is None else obs[np.asarray(indices)]
            return pd.DataFrame(p, index=index, columns=mapping)
        return np.asarray(mapping)[p.argmax(1)]

    def _label_categories(self) -> np.ndarray:
        key = self.registry_["setup_args"].get("labels_key")
        if not key:
            raise ValueError("predict() needs a model set up with labels_key (a CLS head).")
        state = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        classes = np.asarray(state.categorical_mapping)
        if self.module.n_cls < 2:
            raise ValueError(
                f"predict() needs at least 2 cell types, but labels_key {key!r} held "
                f"{len(classes)} ({list(classes[:3])}) at setup, so no CLS head was trained."
            )
        return classes

    @torch.inference_mode()
    def get_gene_embeddings(self) -> pd.DataFrame:
        """Context-free gene embeddings (the ``encoder`` output), genes x ``d_model``.

        Rows are the registered genes that are in the vocabulary.
        """
        ids = self.module.gene_token_ids
        keep = (ids >= 0).cpu().numpy()
        emb = self.module.encoder(ids[ids >= 0].to(self.module.device)).float().cpu().numpy()
        return pd.DataFrame(emb, index=self._gene_names(self.adata)[keep])

    # ------------------------------------------------------------------ query mapping
    @classmethod
    def load_query_data(
        cls,
        adata: AnnData,
        reference_model: str | SCGPT,
        unfrozen: bool = False,
        trainable: Sequence[str] = ("batch_encoder.embedding",),
        accelerator: str = "auto",
        device: int | str = "auto",
        freeze_reference_batches: bool = True,
        allow_pickle: bool = False,
    ) -> SCGPT:
        """Map query data with new batches onto a trained reference (scArches style).

        Works the same on scvi-tools 1.4 and 1.5: new batch categories get new rows in the
        batch embedding (and new DSBN domains); by default only the batch embedding trains,
        and only its new rows change.

        Parameters
        ----------
        adata
            Query AnnData with the reference's genes (see :meth:`prepare_query_anndata`).
        reference_model
            A trained :class:`SCGPT` or the folder it was saved in.
        unfrozen
            Train every parameter.
        trainable
            Parameter-name prefixes left trainable when not ``unfrozen``.
        freeze_reference_batches
            Keep the reference batches' embedding rows fixed.
        allow_pickle
            Accept a reference folder in scvi-tools' pickle format (see :meth:`load`).
        """
        device = _torch_device(accelerator, device)
        attr_dict, var_names, ref_state = cls._reference_data(reference_model, device, allow_pickle)
        model = cls._from_saved(
            attr_dict,
            var_names,
            ref_state,
            adata,
            device,
            setup_kwargs={"extend_categories": True, "allow_missing_labels": True},
            strict=False,
        )
        model.to_device(device)
        state = model.module.state_dict()
        for key, ref in ref_state.items():
            new = state[key]
            if new.shape != ref.shape:  # new batches: the reference rows, then the new rows
                ref = torch.cat([ref.to(new.device), new[ref.shape[0] :]], dim=0)
            state[key] = ref
        model.module.load_state_dict(state)
        model.module.eval()
        if not unfrozen:
            for name, p in model.module.named_parameters():
                p.requires_grad = any(name.startswith(t) for t in trainable)
            n_ref = ref_state.get(_BATCH_EMBEDDING, torch.zeros(0)).shape[0]
            if freeze_reference_batches and n_ref:
                _freeze_reference_rows(model.module.batch_encoder, n_ref)
        model.is_trained_ = False
        return model


_BATCH_EMBEDDING = "batch_encoder.embedding.weight"


def _freeze_reference_rows(batch_encoder: torch.nn.Module, n_ref: int) -> None:
    """Keep the first ``n_ref`` rows of the batch embedding fixed in training, with
    scvi-tools' :meth:`scvi.nn.Embedding.extend` (its partial-freeze gradient hook)."""
    from scvi.nn import Embedding

    emb = batch_encoder.embedding
    n_new = emb.num_embeddings - n_ref
    if n_new <= 0:
        return
    reference = Embedding(n_ref, emb.embedding_dim, _weight=emb.weight.detach()[:n_ref].clone())
    extended = Embedding.extend(reference, init=n_new, freeze_prev=True)
    with torch.no_grad():  # the new rows keep the values the model was built with
        extended.weight[n_ref:] = emb.weight[n_ref:]
    extended.weight.requires_grad_(emb.weight.requires_grad)
    batch_encoder.embedding = extended
