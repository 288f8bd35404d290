"""``SCGPTMultiomicModule``: scGPT's ``MultiOmicTransformerModel`` on the SCGPT blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import auto_move_data

from ..data import TokenizedBatch
from ..nn import BatchLabelEncoder, ExprDecoder, MVCDecoder
from ._scgpt import SCGPTModule

__all__ = ["SCGPTMultiomicModule"]


class SCGPTMultiomicModule(SCGPTModule):
    """scGPT's ``MultiOmicTransformerModel``: RNA, protein and ATAC features in one sequence.

    The transformer, encoders and heads are :class:`SCGPTModule`'s. On top, a modality encoder
    ``mod_encoder`` embeds each position's modality, and the expression and MVC decoders are
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
    **kwargs
        :class:`SCGPTModule` options (``d_model``, ``do_mvc``, ``use_batch_labels``, ...).
        ``max_seq_len`` defaults to ``1 + sum(modality_max_tokens)``.

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
        **kwargs,
    ):
        if len(modality_sizes) != len(modality_max_tokens):
            raise ValueError(
                f"modality_sizes ({len(modality_sizes)}) and modality_max_tokens "
                f"({len(modality_max_tokens)}) need one entry per modality."
            )
        if modality_keys and len(modality_keys) != len(modality_sizes):
            raise ValueError("modality_keys needs one registry key per modality.")
        kwargs.setdefault("max_seq_len", 1 + sum(int(n) for n in modality_max_tokens))
        super().__init__(ntoken, **kwargs)
        n_cols = self.gene_token_ids.numel()
        if modality_sizes and n_cols and sum(modality_sizes) != n_cols:
            raise ValueError(
                f"modality_sizes add up to {sum(modality_sizes)} columns but gene_token_ids has "
                f"{n_cols}."
            )
        self.modality_sizes = [int(n) for n in modality_sizes]
        self.modality_max_tokens = [int(n) for n in modality_max_tokens]
        self.modality_keys = list(modality_keys) or [REGISTRY_KEYS.X_KEY]
        self.mod_in_input = mod_in_input
        self.mod_encoder = BatchLabelEncoder(ntokens_mod, self.d_model, padding_idx=mod_pad_id)
        # Decoders see [state, batch_emb + mod_emb]: twice the width of SCGPTModule's.
        self.decoder = ExprDecoder(self.d_model, self.explicit_zero_prob, use_batch_labels=True)
        if self.do_mvc:
            self.mvc_decoder = MVCDecoder(
                2 * self.d_model, self.mvc_decoder.arch_style, self.explicit_zero_prob
            )
        if token_mod_ids is None:
            token_mod_ids = torch.zeros(0, dtype=torch.long)
        self.register_buffer("token_mod_ids", torch.as_tensor(token_mod_ids, dtype=torch.long))

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
        extra_embs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`SCGPTModule.encode`; with ``mod_in_input`` the modality embedding (from
        :meth:`modality_types`) is added to the transformer input."""
        if self.mod_in_input and extra_embs is None:
            extra_embs = self.mod_encoder(self.modality_types(gene_ids))
        return super().encode(gene_ids, values, padding_mask, batch_index, extra_embs)

    def _decoder_inputs(
        self,
        h: torch.Tensor,
        cell_emb: torch.Tensor,
        gene_embs: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        mod_types: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if mod_types is None:
            raise ValueError("The multi-omic decoders need mod_types.")
        cond = self.mod_encoder(mod_types.long())
        batch_emb = self._batch_emb(batch_index)
        if batch_emb is not None:
            cond = batch_emb.unsqueeze(1) + cond
        return (
            torch.cat([h, cond], dim=2),
            torch.cat([cell_emb, cond[:, 0]], dim=1),
            torch.cat([gene_embs, cond], dim=2),
        )

    # ---------------------------------------------------------------- tokens
    def tokenize(
        self, x: torch.Tensor, cell_keys: torch.Tensor | None = None, seed: int | None = None
    ) -> TokenizedBatch:
        """Tokenise ``(B, n_columns)`` (the modalities side by side) into one sequence per cell.

        Each modality is binned and sampled on its own (random draws keyed on cell and token,
        as in :func:`~scgpt_scvi.data.tokenize`); ``gene_index`` holds columns of the whole
        input. Pads are moved to the end of each row.
        """
        if not self.modality_sizes:
            return super().tokenize(x, cell_keys, seed)
        blocks, start = [], 0
        for size, budget in zip(self.modality_sizes, self.modality_max_tokens):
            columns = slice(start, start + size)
            block = self._tokenize_columns(
                x[:, columns], self.gene_token_ids[columns], cell_keys, seed, budget + 1
            )
            index = block.gene_index[:, 1:]
            block.gene_index = torch.cat(
                [block.gene_index[:, :1], torch.where(index >= 0, index + start, index)], 1
            )
            blocks.append(block)
            start += size
        return _join_blocks(blocks)

    # ---------------------------------------------------------------- scvi hooks
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        x = torch.cat([tensors[k] for k in self.modality_keys], dim=1)
        return super()._get_inference_input({**tensors, REGISTRY_KEYS.X_KEY: x})

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cell_keys: torch.Tensor | None = None,
        mask_ratio: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`SCGPTModule.inference` plus ``mod_types`` (modality id of each position)."""
        out = super().inference(x, batch_index, cell_keys, mask_ratio)
        out["mod_types"] = self.modality_types(out["gene_ids"])
        return out

    def loss_groups(self, inference_outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The modality of each position: each modality's MLM / MVC error is normalised on its
        own and the modalities weigh equally, so 14 proteins beside 500 RNA tokens still count
        as much as the RNA (the original pools all positions)."""
        return inference_outputs["mod_types"]

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        out = super()._get_generative_input(tensors, inference_outputs)
        out["mod_types"] = inference_outputs["mod_types"]
        return out

    def forward_tokens(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        batch_labels: torch.Tensor | None = None,
        mod_types: torch.Tensor | None = None,
        **flags: bool,
    ) -> dict[str, torch.Tensor]:
        """``MultiOmicTransformerModel.forward`` on ready-made tokens (the parity entry point).

        ``mod_types`` ``(B, L)`` defaults to :meth:`modality_types` of ``gene_ids``; ``flags``
        are ``CLS``, ``CCE``, ``MVC``, ``ECS`` as in :meth:`SCGPTModule.forward_tokens`.
        """
        if mod_types is None:
            mod_types = self.modality_types(gene_ids)
        return super().forward_tokens(
            gene_ids, values, padding_mask, batch_labels, mod_types=mod_types, **flags
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
