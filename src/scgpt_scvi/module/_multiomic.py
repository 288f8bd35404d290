"""``SCGPTMultiomicModule``: scGPT's ``MultiOmicTransformerModel`` on the family backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scvi import REGISTRY_KEYS

from ..nn import BatchLabelEncoder, ExprDecoder, MVCDecoder
from ._common import adopt_config
from ._config import SCGPTConfig
from ._masked import MaskedValueModule
from ._objectives import HeadSpec, build_heads

__all__ = ["SCGPTMultiomicModule"]

#: Heads conditioned on ``[batch_emb +] mod_emb``: the expression decoder reads
#: ``[h, cond]`` (``2 d``), the MVC decoder ``[gene_embs, cond]`` queries (``2 d``).
_MODALITY_HEADS = {
    "mlm": lambda s: ExprDecoder(s.config.d_model, s.config.explicit_zero_prob, True),
    "mvc": lambda s: MVCDecoder(
        2 * s.config.d_model, s.config.mvc_decoder_style, s.config.explicit_zero_prob
    ),
}


class SCGPTMultiomicModule(MaskedValueModule):
    """scGPT's ``MultiOmicTransformerModel``: RNA, protein and ATAC features in one sequence.

    The backbone (:class:`~scgpt_scvi.nn.TokenBackbone`), the heads (from the objectives
    registry, :data:`~scgpt_scvi.module.OBJECTIVES`) and the pipeline
    (:class:`~scgpt_scvi.module.MaskedValueModule`) are :class:`SCGPTModule`'s; this module
    provides the pipeline's hooks. A modality encoder ``mod_encoder`` embeds each position's
    modality, and the expression and MVC decoders are conditioned on it (plus the batch
    embedding when used), as in the original:

    * expression head: ``[h, batch_emb + mod_emb]`` (width ``2 * d_model``);
    * MVC cell side: ``[cell_emb, batch_emb + mod_emb[:, 0]]`` (the ``<cls>`` modality);
    * MVC gene side: ``[gene_embs, batch_emb + mod_emb]``, so the MVC decoder is built at width
      ``2 * d_model``.

    By default (as in the original) the modality embedding is not added to the transformer
    input; ``mod_in_input=True`` adds it.

    Tokenisation (:meth:`tokenize`): the input columns are the modalities side by side
    (``modality_sizes``). Each modality is tokenised on its own with
    :func:`~scgpt_scvi.data.tokenize` (values binned within the modality of each cell, at most
    ``modality_max_tokens[m]`` tokens, randomly drawn per cell when more are expressed), and the
    sequence is ``<cls>`` + RNA tokens + protein tokens + ATAC tokens (the modality order of
    ``modality_sizes``), right-padded.

    Parameters
    ----------
    ntoken
        Vocabulary size (features of every modality plus the special tokens).
    ntokens_mod
        Size of the modality vocabulary (scGPT's ``vocab_mod``, e.g. ``Protein``, ``RNA``,
        ``<pad>``, ``<cls>``, ``<eoc>``).
    mod_pad_id
        Id of ``<pad>`` in the modality vocabulary (its embedding row stays zero).
    token_mod_ids
        ``(ntoken,)`` modality id of every vocabulary token, a buffer. It gives the modality of
        each position from the token ids; when absent, :meth:`forward_tokens` needs
        ``mod_types``.
    modality_sizes
        Number of input columns of each modality, in input (and sequence) order.
    modality_max_tokens
        Maximum tokens of each modality per cell (``<cls>`` not counted).
    modality_keys
        Registry keys of the modalities' data, in input order (default: ``X`` alone).
    mod_in_input
        Also add the modality embedding to the transformer input (the original does not).
    use_mod
        Condition the decoders on the modality (scGPT's ``use_mod``, default True). ``False``:
        no modality encoder; the decoders are :class:`SCGPTModule`'s (batch-conditioned only).
    **options
        :class:`~scgpt_scvi.module.SCGPTConfig` options (``d_model``, ``do_mvc``,
        ``use_batch_labels``, ...). ``max_seq_len`` defaults to
        ``1 + sum(modality_max_tokens)``.

    Examples
    --------
    >>> from scgpt_scvi import SCGPTMultiomic
    >>> SCGPTMultiomic.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "prot"})
    >>> model = SCGPTMultiomic(mdata, d_model=64, nlayers=2)
    >>> model.module  # SCGPTMultiomicModule
    """

    def __init__(
        self,
        ntoken: int,
        ntokens_mod: int = 5,
        mod_pad_id: int = 2,
        token_mod_ids: torch.Tensor | None = None,
        modality_sizes: Sequence[int] = (),
        modality_max_tokens: Sequence[int] = (),
        modality_keys: Sequence[str] = (),
        mod_in_input: bool = False,
        use_mod: bool = True,
        gene_token_ids: torch.Tensor | None = None,
        **options,
    ):
        super().__init__()
        if len(modality_sizes) != len(modality_max_tokens):
            raise ValueError(
                f"modality_sizes ({len(modality_sizes)}) and modality_max_tokens "
                f"({len(modality_max_tokens)}) need one entry per modality."
            )
        if modality_keys and len(modality_keys) != len(modality_sizes):
            raise ValueError("modality_keys needs one registry key per modality.")
        if mod_in_input and not use_mod:
            raise ValueError("mod_in_input=True needs use_mod=True (a modality encoder).")
        options.setdefault("max_seq_len", 1 + sum(int(n) for n in modality_max_tokens))
        config = SCGPTConfig.from_options({"ntoken": ntoken, **options})
        adopt_config(self, config, gene_token_ids)
        n_cols = self.gene_token_ids.numel()
        if modality_sizes and n_cols and sum(modality_sizes) != n_cols:
            raise ValueError(
                f"modality_sizes add up to {sum(modality_sizes)} columns but gene_token_ids has "
                f"{n_cols}."
            )
        self.modality_sizes = [int(n) for n in modality_sizes]
        self.modality_max_tokens = [int(n) for n in modality_max_tokens]
        self.modality_keys = list(modality_keys) or [REGISTRY_KEYS.X_KEY]
        self.mod_in_input, self.use_mod = mod_in_input, use_mod
        cond_width = config.d_model if use_mod or config.use_batch_labels else 0
        builders = _MODALITY_HEADS if use_mod else None
        build_heads(self, self.OBJECTIVE_NAMES, HeadSpec(config, cond_width), builders)
        if use_mod:
            self.mod_encoder = BatchLabelEncoder(
                ntokens_mod, config.d_model, padding_idx=mod_pad_id
            )
        if token_mod_ids is None:
            token_mod_ids = torch.zeros(0, dtype=torch.long)
        self.register_buffer("token_mod_ids", torch.as_tensor(token_mod_ids, dtype=torch.long))
        self.backbone.reset_gene_embedding()
