"""Official scGPT checkpoints: ``from_pretrained`` / ``save_pretrained`` (checkpoints issue)."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Literal

from anndata import AnnData

from ..checkpoint import (
    ARGS_FILE,
    SHARED_PREFIXES,
    VOCAB_FILE,
    args_to_kwargs,
    commit_files,
    head_prefixes,
    kwargs_to_args,
    load_pretrained_parts,
    load_state_dict_strict,
    read_args,
    read_state_dict,
    read_vocab,
    save_state_dict,
    state_options,
)
from ..data import GeneVocab
from ..nn import check_quantize

__all__ = ["PretrainedMixin", "with_pretrained_parts"]

_FILES = (ARGS_FILE, VOCAB_FILE, "best_model.pt", "best_model.safetensors")
#: The original's values of options whose from-scratch defaults differ here; a checkpoint's
#: ``args.json`` that does not state them means these.
ORIGINAL_DEFAULTS = {
    "nlayers_cls": 3,
    "dropout": 0.2,
    "max_seq_len": 1200,
    "n_bins": 51,
    "mask_ratio": 0.4,
}


def _model_kwargs(args: dict, state: dict, setup: dict, overrides: dict, source: str) -> dict:
    """Model keywords: ``args.json``, then options the weights show, sized by the registered
    labels / batches when there are any, ``<cls>`` value = ``pad_value`` (``embed_data``), then
    the user's ``overrides``."""
    kwargs = args_to_kwargs(args, source=source)
    for key, value in state_options(state).items():
        kwargs.setdefault(key, value)
    if setup.get("labels_key"):
        kwargs.pop("n_cls", None)
    if setup.get("batch_key") is not None:
        kwargs.pop("num_batch_labels", None)
    kwargs.setdefault("cls_value", kwargs.get("pad_value", -2.0))
    for key, value in ORIGINAL_DEFAULTS.items():  # not the models' from-scratch defaults
        kwargs.setdefault(key, value)
    return {**kwargs, **overrides}


def with_pretrained_parts(
    cls,
    data,
    model_dir: str | os.PathLike,
    arch_keys: tuple[str, ...],
    prefixes: tuple[str, ...] = SHARED_PREFIXES,
    **kwargs,
):
    """``cls(data, ...)`` built with ``arch_keys`` from the folder's ``args.json`` and its
    ``vocab.json`` (``kwargs`` win), then the parameters under ``prefixes`` loaded from its
    weights by token (:func:`~scgpt_scvi.checkpoint.load_pretrained_parts`); the load report is
    ``model.pretrained_report_``. Shared by the perturbation and multi-omic models."""
    arch = args_to_kwargs(read_args(model_dir), source=str(Path(model_dir) / ARGS_FILE))
    kwargs = {k: arch[k] for k in arch_keys if k in arch} | kwargs
    for key, value in ORIGINAL_DEFAULTS.items():  # what args.json leaves out: the original's
        if key in arch_keys:
            kwargs.setdefault(key, value)
    kwargs.setdefault("vocab", read_vocab(model_dir))
    model = cls(data, **kwargs)
    model.pretrained_report_ = load_pretrained_parts(
        model.module, model_dir, prefixes=tuple(prefixes), vocab=model.vocab_
    )
    model.pretrained_ = True  # train() then fine-tunes with scGPT's settings
    return model


class PretrainedMixin:
    """Loading and exporting scGPT checkpoint folders (``args.json``, ``vocab.json``,
    ``best_model.pt``)."""

    @classmethod
    def _setup_parameters(cls) -> tuple[str, ...]:
        params = inspect.signature(cls.setup_anndata).parameters.values()
        return tuple(p.name for p in params if p.name != "adata" and p.kind != p.VAR_KEYWORD)

    @classmethod
    def _registered_setup(cls, adata: AnnData, setup_kwargs: dict) -> dict:
        """Setup arguments of ``adata``; runs ``setup_anndata`` when asked to or when needed."""
        try:
            manager = cls._get_most_recent_anndata_manager(adata)
        except ValueError:  # set up on another object (a copy)
            manager = None
        if manager is None or any(v is not None for v in setup_kwargs.values()):
            cls.setup_anndata(adata, **setup_kwargs)
            manager = cls._get_most_recent_anndata_manager(adata, required=True)
        return manager.registry["setup_args"]

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        adata: AnnData,
        gene_symbols_key: str | None = None,
        quantize: Literal["int8"] | None = None,
        **overrides,
    ):
        """Build a model from an scGPT checkpoint folder (e.g. the released whole-human model).

        Reads ``args.json`` (architecture; training bookkeeping keys are ignored), ``vocab.json``
        and ``best_model.pt`` (``torch.load(weights_only=True)``) or ``best_model.safetensors``.
        Genes are matched to the vocabulary by symbol (see ``model.gene_overlap_``). Options
        ``args.json`` does not state are read off the weights (MVC, zero-probability, batch,
        DSBN, DAB and CLS heads). Loading is strict: every missing, unexpected or mis-shaped
        tensor is named in one error, except heads the model adds on purpose, which are left
        initialised for training and listed in ``model.checkpoint_report_``:

        * a cell-type head when ``labels_key`` gives another number of classes than the
          checkpoint's ``n_cls`` (the checkpoint's ``cls_decoder`` is replaced);
        * a batch encoder / DSBN / DAB head when ``batch_key`` and ``use_batch_labels`` /
          ``domain_spec_batchnorm`` / ``do_dab`` are asked for (or the number of batches
          differs); with a batch embedding the decoders' first layers widen and are replaced.

        The model is ready for zero-shot use: :meth:`get_latent_representation` returns what
        ``scgpt.tasks.embed_data`` returns (``<cls>`` embedding, ``<cls>`` value = ``pad_value``,
        L2-normalised; ``normalize=False`` for the raw embedding).

        Parameters
        ----------
        model_dir
            Checkpoint folder.
        adata
            AnnData with expression (raw counts or normalised; binned per cell). Set up with
            :meth:`setup_anndata` here unless already set up for this class; ``layer``,
            ``batch_key`` and ``labels_key`` in ``overrides`` (re-)run the setup.
        gene_symbols_key
            ``var`` column of gene symbols (default ``var_names``), as ``embed_data``'s
            ``gene_col``.
        quantize
            ``"int8"``: embed with dynamic int8 linear layers by default (CPU; sets
            ``model.quantize_``, the default of :meth:`get_latent_representation`; the weights
            stay fp32, so the model can still be fine-tuned).
        **overrides
            Setup arguments (``layer``, ``batch_key``, ``labels_key``) and model options that
            win over ``args.json`` (e.g. ``max_seq_len``, ``use_batch_labels=True``,
            ``domain_spec_batchnorm=True``, ``cls_value=0``, ``attention_backend``).

        Returns
        -------
        The model, with ``checkpoint_report_`` (``source``, ``changed_options``
        and lists ``loaded``, ``new``, ``replaced``, ``skipped``).

        Examples
        --------
        >>> model = SCGPT.from_pretrained("scGPT_human", adata, gene_symbols_key="feature_name")
        >>> adata.obsm["X_scGPT"] = model.get_latent_representation()
        """
        if quantize is not None:
            check_quantize(quantize)
        model_dir = Path(model_dir)
        args, vocab, state = read_args(model_dir), read_vocab(model_dir), read_state_dict(model_dir)
        setup_kwargs = {k: overrides.pop(k) for k in cls._setup_parameters() if k in overrides}
        setup = cls._registered_setup(adata, {**setup_kwargs, "gene_symbols_key": gene_symbols_key})
        kwargs = _model_kwargs(args, state, setup, overrides, str(model_dir / ARGS_FILE))
        model = cls(adata, vocab=vocab, **kwargs)
        changed, renew = head_prefixes(state, model.module.state_dict())
        report = load_state_dict_strict(model.module, state, renew=renew, source=str(model_dir))
        model.checkpoint_report_ = {**report, "changed_options": changed}
        model.is_trained_ = True
        model.pretrained_ = True  # train() then fine-tunes with scGPT's settings
        model.normalize_embeddings_ = True
        model.quantize_ = quantize
        return model

    def _checkpoint_kwargs(self) -> dict:
        """The module's constructor options (defaults, init arguments, what the weights show)."""
        params = inspect.signature(self._module_cls.__init__).parameters.values()
        config = {p.name: p.default for p in params if p.default is not p.empty}
        config.update(self.init_params_["non_kwargs"])
        config.update(self.init_params_["kwargs"].get("module_kwargs", {}))
        config.update(state_options(self.module.state_dict()))
        return config

    def save_pretrained(
        self, dir_path: str | os.PathLike, overwrite: bool = False, safetensors: bool = False
    ) -> None:
        """Write the model as an scGPT checkpoint folder, loadable by the original scGPT.

        ``args.json`` (released key names: ``embsize``, ``nheads``, ``d_hid``, ``nlayers``,
        ``n_layers_cls``, ``MVC``, ..., plus the tutorials' ``DSBN``, ``DAB``, ``n_cls``, ...),
        ``vocab.json`` and ``best_model.pt``: a plain state dict in the released layout
        (``self_attn.Wqkv.*``; without our ``gene_token_ids`` buffer). The registered AnnData's
        setup (labels, batches) is not part of this format; use :meth:`save` for that.

        Parameters
        ----------
        dir_path
            Folder to write (created if needed).
        overwrite
            Replace checkpoint files already in ``dir_path``.
        safetensors
            Write ``best_model.safetensors`` instead of ``best_model.pt``.
        """
        dir_path = Path(dir_path)
        existing = [f for f in _FILES if (dir_path / f).exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"{dir_path} already holds {existing}; pass overwrite=True to replace them."
            )
        dir_path.mkdir(parents=True, exist_ok=True)
        args = {"data_source": f"scgpt-scvi {type(self).__name__}"}
        args.update(kwargs_to_args(self._checkpoint_kwargs()))
        weights = "best_model.safetensors" if safetensors else "best_model.pt"
        state = self.module.state_dict()
        commit_files(  # all or nothing: a failed write leaves the earlier checkpoint intact
            dir_path,
            {
                ARGS_FILE: lambda tmp: tmp.write_text(json.dumps(args, indent=2)),
                VOCAB_FILE: GeneVocab(self.vocab_).save_json,
                weights: lambda tmp: save_state_dict(state, tmp, suffix=Path(weights).suffix),
            },
        )
        for name in existing:  # the other weights format would shadow or confuse readers
            if name not in (ARGS_FILE, VOCAB_FILE, weights):
                (dir_path / name).unlink()
