"""The masked-value pipeline of :class:`~scgpt_scvi.module.SCGPTModule` and
:class:`~scgpt_scvi.module.SCGPTMultiomicModule`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from ..data import TokenizedBatch
from . import _common
from ._constants import CELL_KEY, MODULE_KEYS, OptTensor, Tensor, Tensors

__all__ = ["MaskedValueModule"]

K = MODULE_KEYS


class MaskedValueModule(BaseModuleClass):
    """Tokenise -> mask -> backbone -> pool -> heads -> objectives, for modules that read
    cells' own expression: scGPT's ``TransformerModel`` (:class:`SCGPTModule`, one modality)
    and ``MultiOmicTransformerModel`` (:class:`SCGPTMultiomicModule`, several).

    The pipeline is written once, here. A module's constructor builds its parts (with
    :func:`~scgpt_scvi.module.adopt_config` and :func:`~scgpt_scvi.module.build_heads`) and
    sets what the pipeline reads of its modalities: ``modality_sizes`` /
    ``modality_max_tokens`` (input columns and token budget of each; empty: one modality),
    ``modality_keys`` (their registry keys), ``token_mod_ids`` (each token's modality, or
    ``None``), ``use_mod`` (a ``mod_encoder`` conditions the decoders) and ``mod_in_input``
    (it is also added to the transformer input).
    """

    #: Objectives (entries of :data:`~scgpt_scvi.module.OBJECTIVES`) the module trains.
    OBJECTIVE_NAMES = ("mlm", "cls", "mvc", "cce", "ecs", "dab")
    # options read from (and written to) ``self.config``, never copied
    __getattr__ = _common.config_getattr
    __setattr__ = _common.config_setattr

    # ---------------------------------------------------------------- tokens -> states
    def tokenize(
        self,
        x: Tensor,
        cell_keys: OptTensor = None,
        seed: int | None = None,
        gene_token_ids: OptTensor = None,
    ) -> TokenizedBatch:
        """Tokenise a dense ``(B, n_columns)`` minibatch into one sequence per cell.

        With several modalities (the columns side by side), each is binned and sampled on its
        own (random draws keyed on cell and token, as in :func:`~scgpt_scvi.data.tokenize`);
        ``gene_index`` holds columns of the whole input and pads are moved to the end of each
        row. ``gene_token_ids``: each column's vocabulary id, default the module's.
        """
        ids = self.gene_token_ids if gene_token_ids is None else gene_token_ids.to(x.device)
        if not self.modality_sizes:
            return _common.tokenize_columns(self, x, ids, cell_keys, seed, self.max_seq_len)
        blocks, start = [], 0
        for size, budget in zip(self.modality_sizes, self.modality_max_tokens):
            columns = slice(start, start + size)
            block = _common.tokenize_columns(
                self, x[:, columns], ids[columns], cell_keys, seed, budget + 1
            )
            index = block.gene_index[:, 1:]
            block.gene_index = torch.cat(
                [block.gene_index[:, :1], torch.where(index >= 0, index + start, index)], 1
            )
            blocks.append(block)
            start += size
        return _join_blocks(blocks)

    def modality_types(self, gene_ids: Tensor) -> OptTensor:
        """Modality id of every position, from the token ids (``token_mod_ids``); ``None``
        with one modality (no table and no ``use_mod``)."""
        table = self.token_mod_ids
        if table is None or table.numel() == 0:
            if not self.use_mod:
                return None
            raise ValueError(
                "This module has no token_mod_ids table; pass mod_types (the modality id of "
                "every position) explicitly."
            )
        return table[gene_ids]

    def encode(
        self, gene_ids: Tensor, values: Tensor, padding_mask: Tensor, batch_index: OptTensor = None
    ) -> tuple[Tensor, Tensor]:
        """Token ids and values -> transformer states ``(B, L, d)`` and gene embeddings
        (:class:`~scgpt_scvi.nn.TokenBackbone`); with ``mod_in_input`` the modality embedding
        is added to the transformer input."""
        extra = self.mod_encoder(self.modality_types(gene_ids)) if self.mod_in_input else None
        return self.backbone(gene_ids, values, padding_mask, batch_index, extra)

    def head_inputs(
        self,
        h: Tensor,
        cell_emb: Tensor,
        gene_embs: Tensor,
        batch_index: OptTensor = None,
        mod_types: OptTensor = None,
    ) -> dict[str, tuple]:
        """Arguments of each head. The decoders are conditioned on ``cond``: the batch
        embedding (``use_batch_labels``), plus the modality embedding with ``use_mod``. The
        expression head reads ``[h, cond]``, MVC ``[cell_emb, cond[:, 0]]`` and the gene
        embeddings (``[gene_embs, cond]`` with ``use_mod``, as scGPT's multi-omic model)."""
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

    def _input_x(self, tensors: Tensors) -> Tensor:
        """The registered modalities' columns side by side."""
        xs = [tensors[k] for k in self.modality_keys]
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)

    # ---------------------------------------------------------------- pipeline
    def _draw_seed(self) -> int:
        return _common.draw_seed(self)

    def cell_embedding(
        self, h: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor
    ) -> torch.Tensor:
        """Pool token states into cell embeddings by ``cell_emb_style``."""
        return self.backbone.pool(h, values, padding_mask)

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            K.X_KEY: self._input_x(tensors),
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
        """Tokenise, mask (training), encode and pool.

        Returns a dict with ``h``, ``cell_emb``, ``gene_embs``, the tokens (``gene_ids``,
        ``values`` as fed to the encoder, ``target_values``, ``padding_mask``), ``mlm_mask``,
        ``batch_index`` and, with modalities, ``mod_types`` (keys in
        :data:`~scgpt_scvi.module.MODULE_KEYS`). ``gene_token_ids``: each column's vocabulary
        id when the columns are not in the module's order.
        """
        out = _common.masked_encode(self, x, batch_index, cell_keys, mask_ratio, gene_token_ids)
        mod_types = self.modality_types(out[K.GENE_IDS_KEY])
        if mod_types is not None:
            out[K.MOD_TYPES_KEY] = mod_types
        return out

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        keys = (K.H_KEY, K.CELL_EMB_KEY, K.GENE_EMBS_KEY, K.BATCH_INDEX_KEY, K.MOD_TYPES_KEY)
        return {k: inference_outputs.get(k) for k in keys}

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
        """Heads: ``mlm_output`` (+ ``mlm_nonzero_prob``), ``cls_output``, ``mvc_output``
        (+ ``mvc_nonzero_prob``) and ``dab_output`` as the module has them (``do_sample``: see
        :func:`~scgpt_scvi.module.generate`)."""
        inputs = self.head_inputs(h, cell_emb, gene_embs, batch_index, mod_types)
        return _common.generate(self, inputs, do_mvc, do_sample)

    def loss(
        self, tensors: Tensors, inference_outputs: Tensors, generative_outputs: Tensors, **weights
    ) -> LossOutput:
        """Weighted sum of scGPT's objectives; every term is also logged on its own.

        ``weights``: ``mlm_weight``, ``cls_weight``, ``mvc_weight``, ``cce_weight``,
        ``ecs_weight``, ``dab_weight`` (see :data:`~scgpt_scvi.module.OBJECTIVES`); they reach
        here through ``train(plan_kwargs=...)``.

        **Every term is on one scale, O(1)**, whatever ``n_bins``, the value style or the data:

        - ``loss_mlm`` / ``loss_mvc``: the masked MSE divided by the variance of the masked
          targets in the minibatch (so 1 is what predicting their mean scores, 0 is perfect;
          ``mlm_loss="huber"`` for a Huber loss on the same scale; per :meth:`loss_groups`,
          e.g. per modality, each averaged with equal weight), plus the P(non-zero) NLL with
          ``explicit_zero_prob``. The original regresses raw bin indices, so its MSE is in the
          hundreds and, with gradient clipping, drowns every other term; the model's outputs
          are unchanged (only the training loss is rescaled).
        - ``loss_cls``, ``loss_dab``: cross-entropies (``log n_classes`` / ``log n_batches`` at
          chance); ``loss_cce``: a contrastive cross-entropy; ``loss_ecs``: in ``[0, 1]``.

        **Default weights follow what was registered** (``None`` means this rule):

        - with ``labels_key`` (``n_cls > 1``): CLS drives training (``cls_weight=1``) and MLM / MVC
          regularise it (``mlm_weight = mvc_weight = 0.1``);
        - without labels: MLM + MVC (weights 1);
        - with ``do_dab``: DAB weight 0.1 (:data:`~scgpt_scvi.module.DAB_WEIGHT`), a tenth of the
          unlabelled reconstruction weight: scGPT's weight 1 is for fine-tuning a pretrained
          model; from random weights the adversary then dominates and scrambles the cell
          embedding;
        - CCE and ECS are off (0): scGPT's integration recipe uses ``ecs_weight=10`` to fine-tune
          a pretrained model; from random weights, where all cell embeddings start alike, a
          strong ECS term keeps them collapsed.
        """
        inf = inference_outputs
        target, mask = inf[K.TARGET_VALUES_KEY], inf[K.MLM_MASK_KEY]
        groups = self.loss_groups(inf)
        return _common.family_loss(
            self, tensors, inf, generative_outputs, target, mask, groups, weights
        )

    def loss_groups(self, inference_outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Group id of every position whose MLM / MVC errors are normalised and weighted apart:
        the modality (``None``, all positions together, with one modality). Each modality's
        error is normalised on its own and the modalities weigh equally, so 14 proteins beside
        500 RNA tokens still count as much as the RNA (the original pools all positions)."""
        return inference_outputs.get(K.MOD_TYPES_KEY)

    # ---------------------------------------------------------------- outputs for the model
    @torch.inference_mode()
    def embed(
        self,
        tensors: dict[str, torch.Tensor],
        normalize: bool = False,
        gene_token_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cell embeddings ``(B, d)`` of a minibatch (L2-normalised with ``normalize``;
        ``gene_token_ids``: each column's vocabulary id when the columns are not the module's)."""
        return _common.embed_cells(self, tensors, normalize, gene_token_ids)

    @torch.inference_mode()
    def cell_type_probabilities(
        self, tensors: dict[str, torch.Tensor], gene_token_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, n_cls)`` softmax of the CLS head on the cells' embeddings."""
        cell_emb = self.embed(tensors, gene_token_ids=gene_token_ids)
        return F.softmax(self.cls_decoder(cell_emb), dim=-1)

    # ---------------------------------------------------------------- original-style forward
    def forward_tokens(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        batch_labels: torch.Tensor | None = None,
        mod_types: torch.Tensor | None = None,
        *,
        CLS: bool = False,
        CCE: bool = False,
        MVC: bool = False,
        ECS: bool = False,
        do_sample: bool = False,
    ) -> dict[str, torch.Tensor]:
        """scGPT's ``forward`` on ready-made tokens (the parity entry point).

        Output keys as scGPT's, except ``*_zero_probs`` -> ``*_nonzero_prob`` (what they are).
        ``mod_types`` ``(B, L)`` (multi-omic) defaults to :meth:`modality_types` of
        ``gene_ids``. ``do_sample``: with ``explicit_zero_prob``, outputs times a Bernoulli
        sample of their non-zero probability (as scGPT's).
        """
        if mod_types is None:
            mod_types = self.modality_types(gene_ids)
        h, gene_embs = self.encode(gene_ids, values, padding_mask, batch_labels)
        view = (gene_ids, values, padding_mask, batch_labels) if CCE else None
        flags = {"CLS": CLS, "MVC": MVC, "ECS": ECS, "do_sample": do_sample}

        def inputs(cell_emb):
            return self.head_inputs(h, cell_emb, gene_embs, batch_labels, mod_types)

        return _common.parity_forward(
            self, h, gene_embs, values, padding_mask, inputs, view, **flags
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
