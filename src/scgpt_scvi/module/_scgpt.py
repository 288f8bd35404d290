"""``SCGPTModule``: scGPT's ``TransformerModel`` as an scvi-tools module."""

from __future__ import annotations

import torch
from scvi import REGISTRY_KEYS

from ..nn import pool_cells
from ._common import adopt_config
from ._config import SCGPTConfig
from ._masked import MaskedValueModule
from ._objectives import OBJECTIVES, HeadSpec, build_heads, head_groups

__all__ = ["CHECKPOINT_HEAD_GROUPS", "SCGPTModule", "pool_cells"]


class SCGPTModule(MaskedValueModule):
    """scGPT's ``TransformerModel``: gene + value tokens -> transformer -> heads and objectives.

    The pipeline (``inference``, ``generative``, ``loss``, ``forward_tokens``) is
    :class:`~scgpt_scvi.module.MaskedValueModule`'s; this module provides its hooks: one
    modality, decoders conditioned on the batch embedding when ``use_batch_labels``.

    Parameter and submodule names follow the released scGPT checkpoints (``encoder``,
    ``value_encoder``, ``transformer_encoder.layers.N``, ``decoder``, ``cls_decoder``,
    ``mvc_decoder``, ...), so their state dicts load after renaming ``self_attn.Wqkv.`` to
    ``self_attn.in_proj_``.

    Parameters
    ----------
    ntoken
        Vocabulary size (rows of the gene embedding).
    gene_token_ids
        ``(n_vars,)`` vocabulary id of each input column (-1: not in the vocabulary); a buffer,
        so it travels with the saved model.
    **options
        Architecture, tokenisation and objective options: the fields of
        :class:`~scgpt_scvi.module.SCGPTConfig` (``d_model``, ``nlayers``, ``do_mvc``,
        ``mlm_loss``, ...), with its defaults (scGPT's). scGPT's ``use_fast_transformer`` /
        ``fast_transformer_backend`` are accepted as deprecated aliases of
        ``attention_backend``.

    Examples
    --------
    >>> from scgpt_scvi import SCGPT, SCGPTModule
    >>> module = SCGPTModule(ntoken=1000, d_model=64, nhead=4, d_hid=64, nlayers=2, do_mvc=True)
    >>> model = SCGPT(adata, d_model=64, nlayers=2)  # the usual way: the model builds its module
    >>> isinstance(model.module, SCGPTModule)
    """

    def __init__(self, ntoken: int, gene_token_ids: torch.Tensor | None = None, **options) -> None:
        super().__init__()
        config = SCGPTConfig.from_options({"ntoken": ntoken, **options})
        adopt_config(self, config, gene_token_ids)
        # one modality: the registered X, whole, no modality embedding
        self.modality_sizes, self.modality_max_tokens = [], []
        self.modality_keys, self.token_mod_ids = [REGISTRY_KEYS.X_KEY], None
        self.use_mod = self.mod_in_input = False
        cond_width = config.d_model if config.use_batch_labels else 0
        build_heads(self, self.OBJECTIVE_NAMES, HeadSpec(config, cond_width))
        self.backbone.reset_gene_embedding()


_OWN_HEADS = head_groups(SCGPTModule.OBJECTIVE_NAMES)
_DAB, _MLM, _MVC = (f"{OBJECTIVES[n].head}." for n in ("dab", "mlm", "mvc"))
#: Module option -> the state-dict prefixes (or exact keys) of :class:`SCGPTModule` that change
#: with it. When a model differs from its checkpoint in one of these, the listed tensors are new
#: heads to train (read by :func:`scgpt_scvi.checkpoint.head_prefixes`). The objectives' own
#: heads come from the registry (:func:`~scgpt_scvi.module.head_groups`).
CHECKPOINT_HEAD_GROUPS = {
    "n_cls": _OWN_HEADS["n_cls"],
    "num_batch_labels": ("batch_encoder.", "dsbn.", _DAB),
    "use_batch_labels": (
        "batch_encoder.",
        f"{_MLM}fc.0.weight",
        f"{_MLM}zero_logit.0.weight",
        f"{_MVC}W.weight",
        f"{_MVC}W_zero_logit.weight",
    ),
    "domain_spec_batchnorm": ("dsbn.", "bn."),
    "do_dab": _OWN_HEADS["do_dab"],
    "explicit_zero_prob": (f"{_MLM}zero_logit.", f"{_MVC}W_zero_logit."),
    "do_mvc": _OWN_HEADS["do_mvc"],
}
