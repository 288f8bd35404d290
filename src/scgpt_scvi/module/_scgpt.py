"""``SCGPTModule``: scGPT's ``TransformerModel`` as an scvi-tools module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from ..data import TokenizedBatch
from ..nn import pool_cells
from ._common import (
    adopt_config,
    draw_seed,
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
from ._objectives import OBJECTIVES, build_heads, head_groups

__all__ = ["CHECKPOINT_HEAD_GROUPS", "SCGPTModule", "pool_cells"]

K = MODULE_KEYS


class SCGPTModule(BaseModuleClass):
    """scGPT's ``TransformerModel``: gene + value tokens -> transformer -> heads and objectives.

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

    #: Objectives (entries of :data:`~scgpt_scvi.module.OBJECTIVES`) this module trains.
    OBJECTIVE_NAMES = ("mlm", "cls", "mvc", "cce", "ecs", "dab")

    def __init__(self, ntoken: int, gene_token_ids: torch.Tensor | None = None, **options) -> None:
        super().__init__()
        config = SCGPTConfig.from_options({"ntoken": ntoken, **options})
        adopt_config(self, config, gene_token_ids)
        cond_width = config.d_model if config.use_batch_labels else 0
        build_heads(self, self.OBJECTIVE_NAMES, head_spec(config, cond_width), vars(config))
        self.backbone.reset_gene_embedding()

    # ---------------------------------------------------------------- tokens -> states
    def encode(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        batch_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and values -> transformer states ``(B, L, d)`` and gene embeddings
        (:class:`~scgpt_scvi.nn.TokenBackbone`)."""
        return self.backbone(gene_ids, values, padding_mask, batch_index)

    def cell_embedding(
        self, h: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor
    ) -> torch.Tensor:
        """Pool token states into cell embeddings by ``cell_emb_style``."""
        return self.backbone.pool(h, values, padding_mask)

    def tokenize(
        self,
        x: torch.Tensor,
        cell_keys: torch.Tensor | None = None,
        seed: int | None = None,
        gene_token_ids: torch.Tensor | None = None,
    ) -> TokenizedBatch:
        """Tokenise a dense ``(B, n_vars)`` minibatch with the module's settings
        (``gene_token_ids``: each column's vocabulary id, default the module's)."""
        ids = self.gene_token_ids if gene_token_ids is None else gene_token_ids.to(x.device)
        return tokenize_columns(self, x, ids, cell_keys, seed, self.max_seq_len)

    def _draw_seed(self) -> int:
        return draw_seed(self)

    # ---------------------------------------------------------------- scvi hooks
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            K.X_KEY: tensors[REGISTRY_KEYS.X_KEY],
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
        ``values`` as fed to the encoder, ``target_values``, ``padding_mask``), ``mlm_mask`` and
        ``batch_index`` (keys in :data:`~scgpt_scvi.module.MODULE_KEYS`). ``gene_token_ids``:
        each column's vocabulary id when the columns are not in the module's order.
        """
        return masked_encode(self, x, batch_index, cell_keys, mask_ratio, gene_token_ids)

    def head_inputs(
        self,
        h: torch.Tensor,
        cell_emb: torch.Tensor,
        gene_embs: torch.Tensor,
        batch_index: torch.Tensor | None = None,
    ) -> dict[str, tuple]:
        """Arguments of each head. With batch labels the batch embedding is concatenated to
        the token states (expression head) and to the cell embedding (MVC cell side)."""
        batch_emb = self.backbone.batch_emb(batch_index)
        if batch_emb is not None:
            h = torch.cat([h, batch_emb.unsqueeze(1).expand(-1, h.shape[1], -1)], dim=2)
        mvc_cell = cell_emb if batch_emb is None else torch.cat([cell_emb, batch_emb], dim=1)
        return {"mlm": (h,), "cls": (cell_emb,), "mvc": (mvc_cell, gene_embs), "dab": (cell_emb,)}

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        keys = (K.H_KEY, K.CELL_EMB_KEY, K.GENE_EMBS_KEY, K.BATCH_INDEX_KEY)
        return {k: inference_outputs[k] for k in keys}

    def generative(
        self,
        h: torch.Tensor,
        cell_emb: torch.Tensor,
        gene_embs: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        do_mvc: bool | None = None,
        do_sample: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Heads: ``mlm_output`` (+ ``mlm_nonzero_prob``), ``cls_output``, ``mvc_output``
        (+ ``mvc_nonzero_prob``) and ``dab_output`` as the module has them (``do_sample``: see
        :func:`~scgpt_scvi.module.generate`)."""
        inputs = self.head_inputs(h, cell_emb, gene_embs, batch_index)
        return generate(self, inputs, do_mvc, do_sample)

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor],
        **weights: float | None,
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
        return family_loss(self, tensors, inf, generative_outputs, target, mask, groups, weights)

    def loss_groups(self, inference_outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Group id of every position whose MLM / MVC errors are normalised and weighted
        apart (``None``: all positions together)."""
        return None

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
        return embed_cells(self, tensors, normalize, gene_token_ids)

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
        CLS: bool = False,
        CCE: bool = False,
        MVC: bool = False,
        ECS: bool = False,
        do_sample: bool = False,
    ) -> dict[str, torch.Tensor]:
        """scGPT's ``TransformerModel.forward`` on ready-made tokens (the parity entry point).

        Output keys as scGPT's, except ``*_zero_probs`` -> ``*_nonzero_prob`` (what they are).
        ``do_sample``: with ``explicit_zero_prob``, outputs times a Bernoulli sample of their
        non-zero probability (as scGPT's).
        """
        h, gene_embs = self.encode(gene_ids, values, padding_mask, batch_labels)
        view = (gene_ids, values, padding_mask, batch_labels) if CCE else None
        return parity_forward(
            self,
            h,
            gene_embs,
            values,
            padding_mask,
            lambda cell_emb: self.head_inputs(h, cell_emb, gene_embs, batch_labels),
            view,
            CLS=CLS,
            MVC=MVC,
            ECS=ECS,
            do_sample=do_sample,
        )


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
