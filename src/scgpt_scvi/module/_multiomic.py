"""``SCGPTMultiomicModule``: scGPT's ``MultiOmicTransformerModel`` on the family backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from ..data import TokenizedBatch
from ..nn import BatchLabelEncoder, ExprDecoder, MVCDecoder
from ._common import (
    adopt_config,
    embed_cells,
    family_loss,
    generate,
    head_spec,
    masked_encode,
    parity_forward,
    tokenize_columns,
)
from ._config import SCGPTConfig
from ._constants import CELL_KEY, MODULE_KEYS
from ._objectives import build_heads

__all__ = ["SCGPTMultiomicModule"]

K = MODULE_KEYS
#: Heads conditioned on ``[batch_emb +] mod_emb``: the expression decoder reads
#: ``[h, cond]`` (``2 d``), the MVC decoder ``[gene_embs, cond]`` queries (``2 d``).
_MODALITY_HEADS = {
    "mlm": lambda s: ExprDecoder(s.d_model, s.explicit_zero_prob, use_batch_labels=True),
    "mvc": lambda s: MVCDecoder(2 * s.d_model, s.mvc_decoder_style, s.explicit_zero_prob),
}


class SCGPTMultiomicModule(BaseModuleClass):
    """scGPT's ``MultiOmicTransformerModel``: RNA, protein and ATAC features in one sequence.

    The backbone (:class:`~scgpt_scvi.nn.TokenBackbone`) and heads are :class:`SCGPTModule`'s
    (from the objectives registry, :data:`~scgpt_scvi.module.OBJECTIVES`). On top, a modality
    encoder ``mod_encoder`` embeds each position's modality, and the expression and MVC decoders are
    conditioned on it (plus the batch embedding when used), as in the original:

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

    #: Objectives (entries of :data:`~scgpt_scvi.module.OBJECTIVES`) this module trains.
    OBJECTIVE_NAMES = ("mlm", "cls", "mvc", "cce", "ecs", "dab")

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
        spec = head_spec(config, cond_width)
        build_heads(self, self.OBJECTIVE_NAMES, spec, vars(config), builders)
        if use_mod:
            self.mod_encoder = BatchLabelEncoder(
                ntokens_mod, config.d_model, padding_idx=mod_pad_id
            )
        if token_mod_ids is None:
            token_mod_ids = torch.zeros(0, dtype=torch.long)
        self.register_buffer("token_mod_ids", torch.as_tensor(token_mod_ids, dtype=torch.long))
        self.backbone.reset_gene_embedding()

    # ---------------------------------------------------------------- modalities
    def modality_types(self, gene_ids: torch.Tensor) -> torch.Tensor:
        """Modality id of every position, from the token ids (``token_mod_ids``)."""
        if self.token_mod_ids.numel() == 0:
            raise ValueError(
                "This module has no token_mod_ids table; pass mod_types (the modality id of "
                "every position) explicitly."
            )
        return self.token_mod_ids[gene_ids]

    def encode(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        batch_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's states and gene embeddings; with ``mod_in_input`` the modality
        embedding (from :meth:`modality_types`) is added to the transformer input."""
        extra = self.mod_encoder(self.modality_types(gene_ids)) if self.mod_in_input else None
        return self.backbone(gene_ids, values, padding_mask, batch_index, extra)

    def head_inputs(
        self,
        h: torch.Tensor,
        cell_emb: torch.Tensor,
        gene_embs: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        mod_types: torch.Tensor | None = None,
    ) -> dict[str, tuple]:
        """Arguments of each head, conditioned on ``cond = [batch_emb +] mod_emb``: the
        expression head reads ``[h, cond]``, MVC ``[cell_emb, cond[:, 0]]`` and
        ``[gene_embs, cond]``. Without ``use_mod``, ``cond`` is the batch embedding alone (as
        :meth:`SCGPTModule.head_inputs`)."""
        batch_emb = self.backbone.batch_emb(batch_index)
        if self.use_mod:
            if mod_types is None:
                raise ValueError("The multi-omic decoders need mod_types.")
            cond = self.mod_encoder(mod_types.long())
            if batch_emb is not None:
                cond = batch_emb.unsqueeze(1) + cond
        elif batch_emb is not None:
            cond = batch_emb.unsqueeze(1).expand(-1, h.shape[1], -1)
        else:
            return {
                "mlm": (h,),
                "cls": (cell_emb,),
                "mvc": (cell_emb, gene_embs),
                "dab": (cell_emb,),
            }
        genes = torch.cat([gene_embs, cond], dim=2) if self.use_mod else gene_embs
        return {
            "mlm": (torch.cat([h, cond], dim=2),),
            "cls": (cell_emb,),
            "mvc": (torch.cat([cell_emb, cond[:, 0]], dim=1), genes),
            "dab": (cell_emb,),
        }

    # ---------------------------------------------------------------- tokens
    def tokenize(
        self,
        x: torch.Tensor,
        cell_keys: torch.Tensor | None = None,
        seed: int | None = None,
        gene_token_ids: torch.Tensor | None = None,
    ) -> TokenizedBatch:
        """Tokenise ``(B, n_columns)`` (the modalities side by side) into one sequence per cell.

        Each modality is binned and sampled on its own (random draws keyed on cell and token,
        as in :func:`~scgpt_scvi.data.tokenize`); ``gene_index`` holds columns of the whole
        input. Pads are moved to the end of each row. ``gene_token_ids``: each column's
        vocabulary id, default the module's.
        """
        ids = self.gene_token_ids if gene_token_ids is None else gene_token_ids.to(x.device)
        if not self.modality_sizes:
            return tokenize_columns(self, x, ids, cell_keys, seed, self.max_seq_len)
        blocks, start = [], 0
        for size, budget in zip(self.modality_sizes, self.modality_max_tokens):
            columns = slice(start, start + size)
            block = tokenize_columns(self, x[:, columns], ids[columns], cell_keys, seed, budget + 1)
            index = block.gene_index[:, 1:]
            block.gene_index = torch.cat(
                [block.gene_index[:, :1], torch.where(index >= 0, index + start, index)], 1
            )
            blocks.append(block)
            start += size
        return _join_blocks(blocks)

    # ---------------------------------------------------------------- scvi hooks
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            K.X_KEY: torch.cat([tensors[k] for k in self.modality_keys], dim=1),
            K.BATCH_INDEX_KEY: tensors.get(REGISTRY_KEYS.BATCH_KEY),
            K.CELL_KEYS_KEY: tensors.get(CELL_KEY),
        }

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cell_keys: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        gene_token_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`SCGPTModule.inference`'s outputs plus ``mod_types`` (modality id of each
        position)."""
        out = masked_encode(self, x, batch_index, cell_keys, mask_ratio, gene_token_ids)
        out[K.MOD_TYPES_KEY] = self.modality_types(out[K.GENE_IDS_KEY])
        return out

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        keys = (K.H_KEY, K.CELL_EMB_KEY, K.GENE_EMBS_KEY, K.BATCH_INDEX_KEY, K.MOD_TYPES_KEY)
        return {k: inference_outputs[k] for k in keys}

    def generative(
        self,
        h: torch.Tensor,
        cell_emb: torch.Tensor,
        gene_embs: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        mod_types: torch.Tensor | None = None,
        do_mvc: bool | None = None,
        do_sample: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The heads' outputs (keys as :meth:`SCGPTModule.generative`), modality-conditioned."""
        inputs = self.head_inputs(h, cell_emb, gene_embs, batch_index, mod_types)
        return generate(self, inputs, do_mvc, do_sample)

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor],
        **weights: float | None,
    ) -> LossOutput:
        """:meth:`SCGPTModule.loss`, except that each modality's MLM / MVC error is normalised
        on its own and the modalities weigh equally (:meth:`loss_groups`)."""
        inf = inference_outputs
        target, mask = inf[K.TARGET_VALUES_KEY], inf[K.MLM_MASK_KEY]
        groups = self.loss_groups(inf)
        return family_loss(self, tensors, inf, generative_outputs, target, mask, groups, weights)

    def loss_groups(self, inference_outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The modality of each position: each modality's MLM / MVC error is normalised on its
        own and the modalities weigh equally, so 14 proteins beside 500 RNA tokens still count
        as much as the RNA (the original pools all positions)."""
        return inference_outputs[K.MOD_TYPES_KEY]

    @torch.inference_mode()
    def embed(
        self,
        tensors: dict[str, torch.Tensor],
        normalize: bool = False,
        gene_token_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cell embeddings ``(B, d)`` of a minibatch from all its modalities."""
        return embed_cells(self, tensors, normalize, gene_token_ids)

    def forward_tokens(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        batch_labels: torch.Tensor | None = None,
        mod_types: torch.Tensor | None = None,
        CLS: bool = False,
        CCE: bool = False,
        MVC: bool = False,
        ECS: bool = False,
        do_sample: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``MultiOmicTransformerModel.forward`` on ready-made tokens (the parity entry point).

        ``mod_types`` ``(B, L)`` defaults to :meth:`modality_types` of ``gene_ids``; the flags
        are as in :meth:`SCGPTModule.forward_tokens`.
        """
        if mod_types is None and self.use_mod:
            mod_types = self.modality_types(gene_ids)
        h, gene_embs = self.encode(gene_ids, values, padding_mask, batch_labels)
        view = (gene_ids, values, padding_mask, batch_labels) if CCE else None
        return parity_forward(
            self,
            h,
            gene_embs,
            values,
            padding_mask,
            lambda cell_emb: self.head_inputs(h, cell_emb, gene_embs, batch_labels, mod_types),
            view,
            CLS=CLS,
            MVC=MVC,
            ECS=ECS,
            do_sample=do_sample,
        )


def _join_blocks(blocks: list[TokenizedBatch]) -> TokenizedBatch:
    """``<cls>`` + each block's tokens (their own ``<cls>`` dropped), pads moved to the end."""
    parts = {
        name: torch.cat([getattr(b, name)[:, 1:] for b in blocks], dim=1)
        for name in ("gene_ids", "values", "padding_mask", "gene_index")
    }
    order = torch.argsort(parts["padding_mask"].to(torch.int8), dim=1, stable=True)
    length = int((~parts["padding_mask"]).sum(1).max()) if order.shape[0] else 0
    order = order[:, :length]
    first = blocks[0]
    return TokenizedBatch(
        **{
            name: torch.cat([getattr(first, name)[:, :1], part.gather(1, order)], dim=1)
            for name, part in parts.items()
        }
    )
