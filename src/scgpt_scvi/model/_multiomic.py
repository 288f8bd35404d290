"""``SCGPTMultiomic``: scGPT's multi-omic model set up straight from MuData modalities."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scvi import REGISTRY_KEYS
from scvi.data.fields import MuDataCategoricalObsField, MuDataLayerField, MuDataWrapper
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from ..checkpoint import SHARED_PREFIXES
from ..data import (
    MODALITIES,
    GeneVocab,
    extend_vocab,
    modality_vocab,
    token_modalities,
)
from ..module import SCGPTMultiomicModule
from ._base import (
    SCRATCH_MODULE_DEFAULTS,
    EmbeddingMixin,
    SCGPTBaseMixin,
    as_vocab,
    check_expression,
    gene_overlap,
    reorder_token_ids,
    warn_unexpressed,
)
from ._checks import check_cells, check_obs_keys, layer_matrix
from ._fields import CellKeyObsField
from ._save_load import SafeSaveLoadMixin
from ._training_plan import SCGPTTrainingPlan

logger = logging.getLogger(__name__)

__all__ = ["SCGPTMultiomic", "MODALITIES", "MuDataCellKeyObsField"]

#: ``obs['_scgpt_cell_key']`` on the MuData itself (seeds tokenisation, keyed on cell names).
MuDataCellKeyObsField = MuDataWrapper(CellKeyObsField)


class SCGPTMultiomic(
    EmbeddingMixin, SCGPTBaseMixin, SafeSaveLoadMixin, UnsupervisedTrainingMixin, BaseModelClass
):
    """scGPT's multi-omic model (``MultiOmicTransformerModel``) on MuData.

    Every feature of every registered modality is its own token; a cell's sequence is
    ``<cls>`` + its RNA tokens + protein tokens + ATAC tokens, each modality binned on its own
    and capped at ``max_tokens_per_modality`` tokens (expressed features drawn at random per
    cell, keyed on the cell's name, when there are more). A modality embedding conditions the
    expression and MVC decoders (see :class:`~scgpt_scvi.module.SCGPTMultiomicModule`).

    Vocabulary: RNA genes are tokens under their own names (so a pretrained RNA vocabulary
    applies; genes missing from it are left out, as in :class:`~scgpt_scvi.model.SCGPT`).
    Protein features are tokens ``"p_" + name`` and ATAC features ``"a_" + name``, so a protein
    ``CD4`` never shares the gene ``CD4``'s token; those missing from the vocabulary are
    appended after its last id (the layout of scGPT's multi-omic tutorial and checkpoints).

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    vocab
        Token vocabulary (:class:`~scgpt_scvi.data.GeneVocab`, mapping or ``vocab.json`` path),
        e.g. a pretrained RNA model's; default: built from the registered features.
    vocab_mod
        Modality vocabulary (mapping or path; needs ``RNA`` / ``Protein`` / ``ATAC`` for the
        registered modalities). Default: their names sorted, then ``<pad>``, ``<cls>``,
        ``<eoc>`` (RNA + protein: ``{"Protein": 0, "RNA": 1, "<pad>": 2, ...}`` as scGPT's
        tutorial).
    max_tokens_per_modality
        Tokens per modality per cell (``<cls>`` not counted): one number for every modality, or
        a mapping from MuData modality name to number (modalities left out are not capped).
    mod_in_input
        Also add the modality embedding to the transformer input (scGPT does not).
    **module_options
        :class:`~scgpt_scvi.module.SCGPTConfig` options (``d_model``, ``nlayers``,
        ``do_mvc``, ``do_dab``, ``use_batch_labels``, ``n_bins``, ``cell_emb_style``,
        ``mask_ratio``, ...) and ``use_mod``. The defaults are
        :class:`~scgpt_scvi.model.SCGPT`'s from-scratch ones
        (:data:`~scgpt_scvi.model._base.SCRATCH_MODULE_DEFAULTS`: width 64, 4 heads,
        feed-forward 128, 2 layers, no dropout, 11 bins, mask ratio 0.25) with the MVC
        objective on (it is what makes the ``<cls>`` embedding summarise the cell when no labels
        are registered). :meth:`from_pretrained` takes the checkpoint's architecture instead.

    Examples
    --------
    >>> SCGPTMultiomic.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "prot"})
    >>> model = SCGPTMultiomic(mdata)
    >>> model.train()
    >>> mdata.obsm["X_scgpt"] = model.get_latent_representation()
    """

    _module_cls = SCGPTMultiomicModule
    _training_plan_cls = SCGPTTrainingPlan
    _module_defaults = {**SCRATCH_MODULE_DEFAULTS, "do_mvc": True}
    _pretrained_parts = SHARED_PREFIXES
    _pretrained_options = (
        "d_model",
        "nhead",
        "d_hid",
        "nlayers",
        "nlayers_cls",
        "dropout",
        "pad_value",
        "mask_value",
        "input_emb_style",
        "n_input_bins",
        "n_bins",
        "pre_norm",
        "cell_emb_style",
        "do_mvc",
    )

    def __init__(
        self,
        mdata: MuData | None = None,
        vocab: GeneVocab | Mapping[str, int] | str | os.PathLike | None = None,
        vocab_mod: Mapping[str, int] | str | os.PathLike | None = None,
        max_tokens_per_modality: int | Mapping[str, int] = 512,
        mod_in_input: bool = False,
        **module_options,
    ):
        super().__init__(mdata)
        mods = self._registered_modalities()
        features = {arg: self._feature_tokens(arg, name) for arg, name in mods.items()}
        vocab_obj = extend_vocab(
            as_vocab(vocab, features.get("rna_layer", [])),
            [t for arg, tokens in features.items() if arg != "rna_layer" for t in tokens],
        )
        vocab_mod_obj = modality_vocab(vocab_mod, [MODALITIES[a].name for a in mods])
        token_ids, self.gene_overlap_ = self._token_ids(features, vocab_obj)
        budgets = _budgets(max_tokens_per_modality, mods, features)
        self.module = self._build_module(
            vocab_obj,
            np.concatenate([token_ids[a] for a in mods]),
            ntokens_mod=vocab_mod_obj.ntoken,
            mod_pad_id=vocab_mod_obj.pad_id,
            token_mod_ids=token_modalities(vocab_obj, vocab_mod_obj, features, token_ids),
            modality_sizes=[len(features[a]) for a in mods],
            modality_max_tokens=budgets,
            modality_keys=[MODALITIES[a].registry_key for a in mods],
            mod_in_input=mod_in_input,
            **module_options,
        )
        self.vocab_mod_ = vocab_mod_obj.get_stoi()
        vocab_mod = self.vocab_mod_  # saved init params hold the table itself, not a path
        modalities = ", ".join(
            f"{n} ({len(features[a])} features, <= {k} tokens)"
            for (a, n), k in zip(mods.items(), budgets)
        )
        self._record_init(vocab_obj, f"modalities {modalities}", locals())

    @classmethod
    def from_pretrained_rna(
        cls, mdata: MuData, model_dir: str | os.PathLike, **kwargs
    ) -> SCGPTMultiomic:
        """Deprecated: ``SCGPTMultiomic.from_pretrained(model_dir, mdata, **kwargs)``, the
        family's one signature (a ``DeprecationWarning``; removed in the next release)."""
        warnings.warn(
            "SCGPTMultiomic.from_pretrained_rna(mdata, model_dir) is deprecated; use "
            "SCGPTMultiomic.from_pretrained(model_dir, mdata).",
            DeprecationWarning,
            stacklevel=2,
        )
        return cls.from_pretrained(model_dir, mdata, **kwargs)

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        *,
        modalities: dict[str, str] | None = None,
        rna_layer: str | None = None,
        protein_layer: str | None = None,
        atac_layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register a MuData: each modality is read from it as it is (no concatenation).

        Any combination of RNA, protein and ATAC works; name the MuData modality of each in
        ``modalities``. Every registered modality must hold the MuData's cells in its order
        (paired measurements); otherwise subset first (e.g. ``muon.pp.intersect_obs``). Values
        are checked before anything is written, so a failing call leaves ``mdata`` untouched.
        Registration adds scvi-tools' bookkeeping columns and ``obs['_scgpt_cell_key']`` (a
        hash of the cell names that seeds tokenisation) to ``mdata.obs``.

        Parameters
        ----------
        mdata
            MuData with raw counts (or normalised values; tokens are binned per cell).
        modalities
            Setup argument -> MuData modality, e.g. ``{"rna_layer": "rna", "protein_layer":
            "prot"}``; at least one of ``rna_layer``, ``protein_layer``, ``atac_layer``.
        rna_layer, protein_layer, atac_layer
            Layer of each modality to use (``None``: its ``X``).
        batch_key
            ``obs`` column of batches (in the modality ``modalities["batch_key"]``, default
            ``mdata.obs``).
        labels_key
            ``obs`` column of cell types (switches the CLS objective on).
        **kwargs
            Passed to ``AnnDataManager.register_fields``.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if not modalities:
            raise ValueError(
                "Pass modalities, e.g. {'rna_layer': 'rna', 'protein_layer': 'prot'}; the "
                f"MuData holds {list(mdata.mod)}."
            )
        mods = cls._create_modalities_attr_dict(modalities, setup_method_args)
        layers = {"rna_layer": rna_layer, "protein_layer": protein_layer, "atac_layer": atac_layer}
        check_cells(mdata, "mdata")
        _check_modalities(mdata, mods, layers)
        for arg, key in (("batch_key", batch_key), ("labels_key", labels_key)):
            owner = mdata if mods[arg] is None else mdata.mod[mods[arg]]
            what = "mdata.obs" if mods[arg] is None else f"mdata[{mods[arg]!r}].obs"
            check_obs_keys(owner.obs, {arg: key}, what, transfer="source_registry" in kwargs)
        fields = [
            MuDataLayerField(
                m.registry_key,
                layers[arg],
                mod_key=mods[arg],
                is_count_data=False,
                mod_required=True,
            )
            for arg, m in MODALITIES.items()
            if mods[arg] is not None
        ]
        fields += [
            MuDataCategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key, mod_key=mods.batch_key),
            MuDataCategoricalObsField(
                REGISTRY_KEYS.LABELS_KEY, labels_key, mod_key=mods.labels_key
            ),
            MuDataCellKeyObsField(),
        ]
        cls._register(mdata, fields, setup_method_args, **kwargs)

    @classmethod
    def setup_anndata(cls, adata, *args, **kwargs) -> None:
        """Not supported: register a MuData with :meth:`setup_mudata` (RNA-only AnnData:
        :class:`~scgpt_scvi.model.SCGPT`)."""
        raise NotImplementedError(
            "SCGPTMultiomic reads MuData: use SCGPTMultiomic.setup_mudata(mdata, modalities="
            "{...}); for RNA-only AnnData use SCGPT."
        )

    def _registered_modalities(self) -> dict[str, str]:
        """Setup argument -> MuData modality name, in sequence order."""
        mods = self.registry_["setup_args"]["modalities"]
        return {arg: mods[arg] for arg in MODALITIES if mods.get(arg)}

    def _feature_tokens(self, arg: str, name: str, mdata: MuData | None = None) -> list[str]:
        data = self.adata if mdata is None else mdata
        return [MODALITIES[arg].prefix + str(v) for v in data.mod[name].var_names]

    def _token_ids_of(self, mdata: MuData | None) -> torch.Tensor | None:
        """Vocabulary id of each input column of ``mdata`` (its modalities side by side) when a
        modality's features come in another order than the registered ones, matched by name;
        ``None`` in the registered order."""
        if mdata is None or mdata is self.adata:
            return None
        blocks, start, reordered = [], 0, False
        for arg, name in self._registered_modalities().items():
            ref = pd.Index(self._feature_tokens(arg, name))
            new = pd.Index(self._feature_tokens(arg, name, mdata))
            block = self.module.gene_token_ids[start : start + len(ref)]
            start += len(ref)
            error = (
                f"mdata[{name!r}] holds other features than the model was set up with; subset "
                "it to the model's features first."
            )
            moved = reorder_token_ids(block, ref, new, error)
            reordered |= moved is not None
            blocks.append(block if moved is None else moved)
        return torch.cat(blocks) if reordered else None

    def _token_ids(
        self, features: dict[str, list[str]], vocab: GeneVocab
    ) -> tuple[dict[str, np.ndarray], dict]:
        """Vocabulary id of every feature (-1: RNA gene not in the vocabulary) and the RNA
        overlap summary."""
        ids = {a: np.asarray(vocab.lookup(t), dtype=np.int64) for a, t in features.items()}
        overlap = {}
        if "rna_layer" in features:
            ids["rna_layer"], overlap = gene_overlap(pd.Index(features["rna_layer"]), vocab)
        return ids, overlap


# ---------------------------------------------------------------------- helpers


def _check_modalities(mdata: MuData, mods, layers: dict[str, str | None]) -> None:
    """Named modalities exist and hold the MuData's cells, in its order; the matrices that
    will be read (``layers``, else ``X``) exist and hold valid values."""
    available = list(mdata.mod)
    chosen = {arg: mods[arg] for arg in MODALITIES if mods[arg] is not None}
    if not chosen:
        raise ValueError(
            "Map at least one of rna_layer, protein_layer, atac_layer to a modality in "
            f"modalities; the MuData holds {available}."
        )
    for arg in ("batch_key", "labels_key"):
        if mods[arg] is not None:
            chosen[arg] = mods[arg]
    for arg, name in chosen.items():
        if name not in mdata.mod:
            raise ValueError(
                f"Modality {name!r} (for {arg}) is not in the MuData; available modalities: "
                f"{available}."
            )
    for name in dict.fromkeys(chosen.values()):
        bdata = mdata.mod[name]
        if not bdata.obs_names.equals(mdata.obs_names):
            n_shared = len(bdata.obs_names.intersection(mdata.obs_names))
            raise ValueError(
                f"Modality {name!r} holds {bdata.n_obs} cells ({n_shared} of the MuData's "
                f"{mdata.n_obs}, or in another order); SCGPTMultiomic needs every modality "
                "measured on the same cells. Keep the shared cells first, e.g. "
                "muon.pp.intersect_obs(mdata), or mdata[shared_cells].copy()."
            )
    _check_values(mdata, {a: n for a, n in chosen.items() if a in MODALITIES}, layers)


def _check_values(mdata: MuData, chosen: dict[str, str], layers: dict[str, str | None]) -> None:
    """Raise on bad values; warn about cells with no measured feature in any modality."""
    n_expressed = np.zeros(mdata.n_obs, dtype=np.int64)
    for arg, name in chosen.items():
        bdata, layer = mdata.mod[name], layers[arg]
        X = layer_matrix(bdata, layer, f"mdata[{name!r}]")
        what = f"mdata[{name!r}].layers[{layer!r}]" if layer else f"mdata[{name!r}].X"
        n_expressed += check_expression(X, bdata.obs_names, what)
    warn_unexpressed(n_expressed, mdata.obs_names, "have no measured feature")


def _budgets(
    max_tokens: int | Mapping[str, int], mods: dict[str, str], features: dict[str, list[str]]
) -> list[int]:
    if not isinstance(max_tokens, Mapping):
        return [min(int(max_tokens), len(features[a])) for a in mods]
    unknown = set(max_tokens) - set(mods.values())
    if unknown:
        raise ValueError(
            f"max_tokens_per_modality names {sorted(unknown)}, which are not registered "
            f"modalities ({list(mods.values())})."
        )
    return [
        min(int(max_tokens.get(n, len(features[a]))), len(features[a])) for a, n in mods.items()
    ]
