"""Official scGPT checkpoints: one ``from_pretrained`` for the family, ``save_pretrained``."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Literal

from anndata import AnnData
from mudata import MuData

from ..checkpoint import (
    ARGS_FILE,
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
from ..module import config_fields
from ..nn import check_quantize

__all__ = ["PretrainedMixin", "SavePretrainedMixin", "original_defaults"]

_FILES = (ARGS_FILE, VOCAB_FILE, "best_model.pt", "best_model.safetensors")


def original_defaults(cls) -> dict:
    """The original's values (:class:`~scgpt_scvi.module.SCGPTConfig`'s defaults) of the options
    whose from-scratch defaults differ in model class ``cls`` (its ``_module_defaults``): what a
    checkpoint's ``args.json`` that does not state them means."""
    fields = config_fields()
    ours = getattr(cls, "_module_defaults", {})
    return {k: fields[k].default for k, v in ours.items() if v != fields[k].default}


def _model_kwargs(cls, args, state, setup: dict, overrides: dict, source: str) -> dict:
    """Model keywords for a whole checkpoint: ``args.json``, then options the weights show,
    sized by the registered labels / batches when there are any, ``<cls>`` value =
    ``pad_value`` (``embed_data``), then the user's ``overrides``."""
    kwargs = args_to_kwargs(args, source=source)
    for key, value in state_options(state).items():
        kwargs.setdefault(key, value)
    if setup.get("labels_key"):
        kwargs.pop("n_cls", None)
    if setup.get("batch_key") is not None:
        kwargs.pop("num_batch_labels", None)
    kwargs.setdefault("cls_value", kwargs.get("pad_value", -2.0))
    for key, value in original_defaults(cls).items():  # not the models' from-scratch defaults
        kwargs.setdefault(key, value)
    return {**kwargs, **overrides}


def _deprecated_spellings(cls, model_dir, data, overrides: dict):
    """``(model_dir, data)`` from the old spellings: ``from_pretrained(data, model_dir)`` and
    ``pretrained_dir=`` (the perturbation model's), each with a ``DeprecationWarning``."""
    if "pretrained_dir" in overrides:
        warnings.warn(
            f"{cls.__name__}.from_pretrained(pretrained_dir=...) is deprecated; pass the folder "
            "first: from_pretrained(model_dir, data).",
            DeprecationWarning,
            stacklevel=3,
        )
        data = model_dir if data is None else data
        model_dir = overrides.pop("pretrained_dir")
    elif isinstance(model_dir, AnnData | MuData):
        warnings.warn(
            f"{cls.__name__}.from_pretrained(data, model_dir) is deprecated; the folder comes "
            "first: from_pretrained(model_dir, data), as for every scGPT-family model.",
            DeprecationWarning,
            stacklevel=3,
        )
        model_dir, data = data, model_dir
    if data is None:
        raise TypeError(f"{cls.__name__}.from_pretrained(model_dir, data) needs data.")
    return Path(model_dir), data


class PretrainedMixin:
    """``from_pretrained``: one signature for every scGPT-family model."""

    #: What :meth:`from_pretrained` loads: ``None``, the whole checkpoint, strictly; key
    #: prefixes: only those parts (the model's own parts start from their initialisation).
    _pretrained_parts: tuple[str, ...] | None = None
    #: With ``_pretrained_parts``: the ``args.json`` options the model takes (the shapes and
    #: inputs of the loaded parts).
    _pretrained_options: tuple[str, ...] = ()

    @classmethod
    def _setup_parameters(cls) -> tuple[str, ...]:
        method = getattr(cls, cls._setup_method_name())
        params = inspect.signature(method).parameters.values()
        skip = ("adata", "mdata")
        return tuple(p.name for p in params if p.name not in skip and p.kind != p.VAR_KEYWORD)

    @classmethod
    def _setup_method_name(cls) -> str:
        return "setup_mudata" if "setup_mudata" in vars(cls) else "setup_anndata"

    @classmethod
    def _registered_setup(cls, data, setup_kwargs: dict) -> dict:
        """Setup arguments of ``data``; runs the setup method when asked to or when needed."""
        try:
            manager = cls._get_most_recent_anndata_manager(data)
        except ValueError:  # set up on another object (a copy)
            manager = None
        if manager is None or any(v is not None for v in setup_kwargs.values()):
            getattr(cls, cls._setup_method_name())(data, **setup_kwargs)
            manager = cls._get_most_recent_anndata_manager(data, required=True)
        return manager.registry["setup_args"]

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        data: AnnData | MuData | None = None,
        quantize: Literal["int8"] | None = None,
        **overrides,
    ):
        """Build a model from an scGPT checkpoint folder (e.g. the released whole-human model).

        One signature for :class:`~scgpt_scvi.model.SCGPT`,
        :class:`~scgpt_scvi.model.SCGPTPerturbation` and
        :class:`~scgpt_scvi.model.SCGPTMultiomic`. Reads ``args.json`` (architecture; training
        bookkeeping keys are ignored), ``vocab.json`` and ``best_model.pt``
        (``torch.load(weights_only=True)``) or ``best_model.safetensors``.

        :class:`~scgpt_scvi.model.SCGPT` loads the whole checkpoint. Genes are matched to the
        vocabulary by symbol (see ``model.gene_overlap_``). Options ``args.json`` does not state
        are read off the weights (MVC, zero-probability, batch, DSBN, DAB and CLS heads).
        Loading is strict: every missing, unexpected or mis-shaped tensor is named in one error,
        except heads the model adds on purpose, which are left initialised for training and
        listed in ``model.checkpoint_report_``:

        * a cell-type head when ``labels_key`` gives another number of classes than the
          checkpoint's ``n_cls`` (the checkpoint's ``cls_decoder`` is replaced);
        * a batch encoder / DSBN / DAB head when ``batch_key`` and ``use_batch_labels`` /
          ``domain_spec_batchnorm`` / ``do_dab`` are asked for (or the number of batches
          differs); with a batch embedding the decoders' first layers widen and are replaced.

        The model is ready for zero-shot use: ``get_latent_representation`` returns what
        ``scgpt.tasks.embed_data`` returns (``<cls>`` embedding, ``<cls>`` value = ``pad_value``,
        L2-normalised; ``normalize=False`` for the raw embedding).

        The perturbation and multi-omic models load the parts they share with scGPT's
        ``TransformerModel`` (gene encoder, value encoder, transformer; by token, so a
        vocabulary with more tokens gets the checkpoint's rows for those it knows) with
        :func:`~scgpt_scvi.checkpoint.load_pretrained_parts`; their own parts (perturbation or
        modality embeddings, heads) start fresh. The load report is
        ``model.pretrained_report_``.

        A model from here fine-tunes with scGPT's settings (``train()``: lr 1e-4, few epochs).

        Parameters
        ----------
        model_dir
            Checkpoint folder.
        data
            AnnData (MuData for :class:`~scgpt_scvi.model.SCGPTMultiomic`) with expression (raw
            counts or normalised; binned per cell). Set up here unless already set up for this
            class; setup arguments in ``overrides`` (``layer``, ``batch_key``, ``labels_key``,
            ``gene_symbols_key``, ...) (re-)run the setup.
        quantize
            ``"int8"``: embed with dynamic int8 linear layers by default (CPU; sets
            ``model.quantize_``, the default of ``get_latent_representation``; the weights
            stay fp32, so the model can still be fine-tuned).
        **overrides
            Setup arguments, and model options that win over ``args.json`` (e.g.
            ``max_seq_len``, ``use_batch_labels=True``, ``domain_spec_batchnorm=True``,
            ``cls_value=0``, ``attention_backend``; for the part-loading models ``vocab`` and
            ``prefixes``, the state-dict prefixes to load).

        Returns
        -------
        The model, with ``checkpoint_report_`` (whole checkpoints: ``source``,
        ``changed_options`` and lists ``loaded``, ``new``, ``replaced``, ``skipped``) or
        ``pretrained_report_`` (parts).

        Examples
        --------
        >>> model = SCGPT.from_pretrained("scGPT_human", adata, gene_symbols_key="feature_name")
        >>> adata.obsm["X_scGPT"] = model.get_latent_representation()
        >>> pert = SCGPTPerturbation.from_pretrained("scGPT_human", norman)
        >>> multi = SCGPTMultiomic.from_pretrained("scGPT_human", mdata)

        Notes
        -----
        The old spellings ``SCGPTPerturbation.from_pretrained(adata, pretrained_dir)`` and
        ``SCGPTMultiomic.from_pretrained_rna(mdata, model_dir)`` still work for one release,
        with a ``DeprecationWarning``.
        """
        model_dir, data = _deprecated_spellings(cls, model_dir, data, overrides)
        if quantize is not None:
            check_quantize(quantize)
        setup_kwargs = {k: overrides.pop(k) for k in cls._setup_parameters() if k in overrides}
        setup = cls._registered_setup(data, setup_kwargs)
        if cls._pretrained_parts is None:
            model = cls._from_whole_checkpoint(model_dir, data, setup, overrides)
        else:
            model = cls._from_checkpoint_parts(model_dir, data, overrides)
        model.pretrained_ = True  # train() then fine-tunes with scGPT's settings
        model.quantize_ = quantize
        return model

    @classmethod
    def _from_whole_checkpoint(cls, model_dir: Path, data, setup: dict, overrides: dict):
        args, vocab, state = read_args(model_dir), read_vocab(model_dir), read_state_dict(model_dir)
        kwargs = _model_kwargs(cls, args, state, setup, overrides, str(model_dir / ARGS_FILE))
        model = cls(data, vocab=vocab, **kwargs)
        changed, renew = head_prefixes(state, model.module.state_dict())
        report = load_state_dict_strict(model.module, state, renew=renew, source=str(model_dir))
        model.checkpoint_report_ = {**report, "changed_options": changed}
        model.is_trained_ = True
        model.normalize_embeddings_ = True
        return model

    @classmethod
    def _from_checkpoint_parts(cls, model_dir: Path, data, overrides: dict):
        args = args_to_kwargs(read_args(model_dir), source=str(model_dir / ARGS_FILE))
        prefixes = tuple(overrides.pop("prefixes", cls._pretrained_parts))
        kwargs = {k: args[k] for k in cls._pretrained_options if k in args} | overrides
        for key, value in original_defaults(cls).items():  # what args.json leaves out
            if key in cls._pretrained_options:
                kwargs.setdefault(key, value)
        kwargs.setdefault("vocab", read_vocab(model_dir))
        model = cls(data, **kwargs)
        model.pretrained_report_ = load_pretrained_parts(
            model.module, model_dir, prefixes=prefixes, vocab=model.vocab_
        )
        return model


class SavePretrainedMixin:
    """Exporting a model as an scGPT checkpoint folder (``args.json``, ``vocab.json``,
    ``best_model.pt``)."""

    def _checkpoint_kwargs(self) -> dict:
        """The module's options (its :class:`~scgpt_scvi.module.SCGPTConfig`, and what the
        weights show)."""
        return {**dataclasses.asdict(self.module.config), **state_options(self.module.state_dict())}

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
