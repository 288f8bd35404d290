"""``SCGPTModule``: scGPT's ``TransformerModel`` as an scvi-tools module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from ..data import TokenizedBatch, mask_values, tokenize
from ..nn import (
    AdversarialDiscriminator,
    BatchLabelEncoder,
    ClsDecoder,
    DomainSpecificBatchNorm1d,
    ExprDecoder,
    GeneEncoder,
    MVCDecoder,
    TokenBatchNorm1d,
    TransformerEncoder,
    cce_loss,
    dab_loss,
    ecs_loss,
    make_value_encoder,
    masked_mse_loss,
    masked_nonzero_nll,
)
from ._constants import CELL_EMB_STYLES, CELL_KEY

__all__ = ["SCGPTModule"]

_DSBN_CHOICES = (False, True, "dsbn", "batchnorm")
#: Default MLM / MVC weight when a CLS objective is trained (labels registered).
RECONSTRUCTION_WEIGHT_WITH_LABELS = 0.1
#: Default DAB weight: a tenth of the reconstruction terms' (from random weights, scGPT's
#: fine-tuning weight 1 lets the adversary scramble the cell embedding: on CellBench the
#: cell-line silhouette fell to 0.00, against 0.50 at 0.1 and 0.42 without DAB).
DAB_WEIGHT = 0.1


def pool_cells(
    h: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor, style: str
) -> torch.Tensor:
    """Cell embedding from token states ``h`` ``(B, L, d)``.

    ``"cls"``: the ``<cls>`` state. ``"avg-pool"``: mean over non-pad tokens. ``"w-pool"``: sum of
    states weighted by input values over non-pad tokens, L2-normalised. (scGPT's pools include
    pads; excluding them makes embeddings independent of padding.)

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.module import pool_cells
    >>> h, values = torch.randn(2, 4, 16), torch.rand(2, 4)
    >>> pads = torch.tensor([[False, False, False, True], [False, False, True, True]])
    >>> pool_cells(h, values, pads, style="avg-pool").shape
    torch.Size([2, 16])
    """
    if style == "cls":
        return h[:, 0]
    keep = (~padding_mask).unsqueeze(-1).to(h.dtype)
    if style == "avg-pool":
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1)
    if style == "w-pool":
        return F.normalize((h * keep * values.unsqueeze(-1)).sum(1), p=2, dim=1)
    raise ValueError(f"Unknown cell_emb_style {style!r}; choose one of {CELL_EMB_STYLES}.")


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
    d_model, nhead, d_hid, nlayers
        Transformer width, heads, feed-forward width and depth.
    nlayers_cls
        Depth of the cell-type head.
    n_cls
        Number of cell types for the CLS objective.
    dropout
        Dropout everywhere.
    pad_id, cls_id
        Vocabulary ids of ``<pad>`` and ``<cls>``.
    pad_value, mask_value
        Input value at pads and at MLM-masked positions.
    do_mvc
        Build the MVC (GEPC) head.
    do_dab
        Build the adversarial batch discriminator.
    use_batch_labels
        Batch embedding added to the expression and MVC decoder inputs.
    num_batch_labels
        Number of batches.
    domain_spec_batchnorm
        ``True``/``"dsbn"``: one BatchNorm per batch; ``"batchnorm"``: one BatchNorm.
    input_emb_style
        ``"continuous"``, ``"category"`` or ``"scaling"``.
    n_input_bins
        Category table size for ``"category"``.
    cell_emb_style
        ``"cls"``, ``"avg-pool"`` or ``"w-pool"``.
    mvc_decoder_style
        See :class:`~scgpt_scvi.nn.MVCDecoder`.
    ecs_threshold
        Similarity threshold of the ECS objective.
    explicit_zero_prob
        Predict P(non-zero) beside each expression value.
    pre_norm
        Pre-norm transformer layers instead of post-norm.
    attention_backend
        ``"auto"`` (flash-attn's varlen kernel for CUDA fp16/bf16 inputs when flash-attn is
        installed, SDPA otherwise), ``"sdpa"`` or ``"flash"``; see
        :class:`~scgpt_scvi.nn.MultiheadSelfAttention`.
    attention_dropout
        Dropout on attention probabilities (default ``dropout``, as scGPT). ``0`` is faster in
        training (SDPA's fused kernels instead of a random number per attention score).
    checkpoint_activations
        Recompute each transformer layer in backward instead of keeping its activations
        (identical gradients, much less memory, about a third more compute).
    gene_token_ids
        ``(n_vars,)`` vocabulary id of each input column (-1: not in the vocabulary); a buffer,
        so it travels with the saved model.
    max_seq_len
        Maximum tokens per cell including ``<cls>``.
    n_bins
        Bins for per-cell value binning (``None``: raw values).
    include_zero_genes
        Tokenise every gene in the vocabulary, not only expressed ones.
    mask_ratio
        Fraction of each cell's gene tokens masked in training.
    cls_value
        Input value at ``<cls>`` (scGPT: 0 in training, ``pad_value`` in ``embed_data``).
    seed
        Seed of the tokeniser's random streams.

    Examples
    --------
    >>> from scgpt_scvi import SCGPT, SCGPTModule
    >>> module = SCGPTModule(ntoken=1000, d_model=64, nhead=4, d_hid=64, nlayers=2, do_mvc=True)
    >>> model = SCGPT(adata, d_model=64, nlayers=2)  # the usual way: the model builds its module
    >>> isinstance(model.module, SCGPTModule)
    """

    def __init__(
        self,
        ntoken: int,
        d_model: int = 512,
        nhead: int = 8,
        d_hid: int = 512,
        nlayers: int = 12,
        nlayers_cls: int = 3,
        n_cls: int = 1,
        dropout: float = 0.2,
        pad_id: int = 0,
        cls_id: int = 1,
        pad_value: float = -2.0,
        mask_value: float = -1.0,
        do_mvc: bool = False,
        do_dab: bool = False,
        use_batch_labels: bool = False,
        num_batch_labels: int | None = None,
        domain_spec_batchnorm: bool | str = False,
        input_emb_style: str = "continuous",
        n_input_bins: int | None = None,
        cell_emb_style: str = "cls",
        mvc_decoder_style: str = "inner product",
        ecs_threshold: float = 0.3,
        explicit_zero_prob: bool = False,
        pre_norm: bool = False,
        attention_backend: str = "auto",
        attention_dropout: float | None = None,
        checkpoint_activations: bool = False,
        gene_token_ids: torch.Tensor | None = None,
        max_seq_len: int = 1200,
        n_bins: int | None = 51,
        include_zero_genes: bool = False,
        mask_ratio: float = 0.4,
        cls_value: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        if cell_emb_style not in CELL_EMB_STYLES:
            raise ValueError(
                f"Unknown cell_emb_style {cell_emb_style!r}; choose one of {CELL_EMB_STYLES}."
            )
        if domain_spec_batchnorm not in _DSBN_CHOICES:
            raise ValueError(
                f"Unknown domain_spec_batchnorm {domain_spec_batchnorm!r}; "
                f"choose one of {_DSBN_CHOICES}."
            )
        needs_batches = use_batch_labels or do_dab or domain_spec_batchnorm in (True, "dsbn")
        if needs_batches and not num_batch_labels:
            raise ValueError(
                "use_batch_labels, do_dab and domain_spec_batchnorm need num_batch_labels >= 1."
            )
        self.d_model, self.n_cls = d_model, n_cls
        self.pad_id, self.cls_id = pad_id, cls_id
        self.pad_value, self.mask_value, self.cls_value = pad_value, mask_value, cls_value
        self.input_emb_style, self.cell_emb_style = input_emb_style, cell_emb_style
        self.use_batch_labels, self.domain_spec_batchnorm = use_batch_labels, domain_spec_batchnorm
        self.do_mvc, self.do_dab = do_mvc, do_dab
        self.explicit_zero_prob, self.ecs_threshold = explicit_zero_prob, ecs_threshold
        self.max_seq_len, self.n_bins, self.include_zero_genes = (
            max_seq_len,
            n_bins,
            include_zero_genes,
        )
        self.mask_ratio, self.seed = mask_ratio, seed
        #: Incremented by the training plan each epoch so masking and sampling are redrawn.
        self.epoch = 0
        #: Mask in eval mode too: the training plan sets it while validating, so the validation
        #: loss scores MLM (with masks keyed on the cell and fixed across epochs).
        self.mask_in_eval = False

        self.encoder = GeneEncoder(ntoken, d_model, padding_idx=pad_id)
        self.value_encoder = make_value_encoder(
            input_emb_style, d_model, dropout, n_input_bins, pad_value
        )
        if use_batch_labels:
            self.batch_encoder = BatchLabelEncoder(num_batch_labels, d_model)
        if domain_spec_batchnorm in (True, "dsbn"):
            self.dsbn = DomainSpecificBatchNorm1d(d_model, num_batch_labels, eps=6.1e-5)
        elif domain_spec_batchnorm == "batchnorm":
            self.bn = TokenBatchNorm1d(d_model, eps=6.1e-5)
        self.transformer_encoder = TransformerEncoder(
            nlayers,
            d_model=d_model,
            nhead=nhead,
            d_hid=d_hid,
            dropout=dropout,
            pre_norm=pre_norm,
            attention_backend=attention_backend,
            attention_dropout=attention_dropout,
            checkpoint_activations=checkpoint_activations,
        )
        self.decoder = ExprDecoder(d_model, explicit_zero_prob, use_batch_labels)
        self.cls_decoder = ClsDecoder(d_model, n_cls, nlayers=nlayers_cls)
        if do_mvc:
            self.mvc_decoder = MVCDecoder(
                d_model, mvc_decoder_style, explicit_zero_prob, use_batch_labels
            )
        if do_dab:
            self.grad_reverse_discriminator = AdversarialDiscriminator(d_model, num_batch_labels)
        if gene_token_ids is None:
            gene_token_ids = torch.zeros(0, dtype=torch.long)
        self.register_buffer("gene_token_ids", torch.as_tensor(gene_token_ids, dtype=torch.long))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.uniform_(self.encoder.embedding.weight, -0.1, 0.1)
        with torch.no_grad():
            self.encoder.embedding.weight[self.pad_id].zero_()

    # ---------------------------------------------------------------- tokens -> states
    def _needs_batch(self) -> bool:
        return self.use_batch_labels or self.domain_spec_batchnorm in (True, "dsbn")

    def encode(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        extra_embs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and values -> transformer states ``(B, L, d)`` and gene embeddings.

        The gene embeddings (``encoder`` output, no context) are the MVC queries. ``extra_embs``
        ``(B, L, d)``, if given, is added to the token embeddings before the transformer (e.g.
        a modality embedding).
        """
        if self._needs_batch() and batch_index is None:
            raise ValueError("This model uses batch labels; pass batch_index.")
        gene_embs = self.encoder(gene_ids)
        v = self.value_encoder(values)
        x = gene_embs * v if self.input_emb_style == "scaling" else gene_embs + v
        if extra_embs is not None:
            x = x + extra_embs
        if hasattr(self, "dsbn"):
            x = self.dsbn(x, batch_index, keep=~padding_mask)
        elif hasattr(self, "bn"):
            x = self.bn(x, keep=~padding_mask)
        return self.transformer_encoder(x, padding_mask), gene_embs

    def cell_embedding(
        self, h: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor
    ) -> torch.Tensor:
        """Pool token states into cell embeddings by ``cell_emb_style``."""
        return pool_cells(h, values, padding_mask, self.cell_emb_style)

    def _batch_emb(self, batch_index: torch.Tensor | None) -> torch.Tensor | None:
        if not self.use_batch_labels:
            return None
        return self.batch_encoder(batch_index.reshape(-1).long())

    # ---------------------------------------------------------------- scvi hooks
    def tokenize(
        self, x: torch.Tensor, cell_keys: torch.Tensor | None = None, seed: int | None = None
    ) -> TokenizedBatch:
        """Tokenise a dense ``(B, n_vars)`` minibatch with the module's settings."""
        return self._tokenize_columns(x, self.gene_token_ids, cell_keys, seed, self.max_seq_len)

    def _tokenize_columns(
        self,
        x: torch.Tensor,
        token_ids: torch.Tensor,
        cell_keys: torch.Tensor | None,
        seed: int | None,
        max_seq_len: int,
    ) -> TokenizedBatch:
        """:func:`~scgpt_scvi.data.tokenize` of columns ``x`` with vocabulary ids ``token_ids``
        and the module's binning, padding and ``<cls>`` settings."""
        if cell_keys is None:
            cell_keys = torch.arange(x.shape[0], device=x.device)
        return tokenize(
            x,
            token_ids,
            cell_keys.reshape(-1),
            max_seq_len=max_seq_len,
            cls_id=self.cls_id,
            pad_id=self.pad_id,
            n_bins=self.n_bins,
            include_zero_genes=self.include_zero_genes,
            cls_value=self.cls_value,
            pad_value=self.pad_value,
            seed=self.seed if seed is None else seed,
        )

    def _draw_seed(self) -> int:
        return self.seed + 1_000_003 * (self.epoch + 1) if self.training else self.seed

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "batch_index": tensors.get(REGISTRY_KEYS.BATCH_KEY),
            "cell_keys": tensors.get(CELL_KEY),
        }

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cell_keys: torch.Tensor | None = None,
        mask_ratio: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokenise, mask (training), encode and pool.

        Returns a dict with ``h``, ``cell_emb``, ``gene_embs``, the tokens (``gene_ids``,
        ``values`` as fed to the encoder, ``target_values``, ``padding_mask``), ``mlm_mask`` and
        ``batch_index``.
        """
        if cell_keys is None:
            cell_keys = torch.arange(x.shape[0], device=x.device)
        cell_keys = cell_keys.reshape(-1).long()
        seed = self._draw_seed()
        tokens = self.tokenize(x, cell_keys, seed)
        if mask_ratio is None:
            mask_ratio = self.mask_ratio if self.training or self.mask_in_eval else 0.0
        mlm_mask = mask_values(tokens, cell_keys, mask_ratio, self.mask_value, seed)
        values = tokens.values.masked_fill(mlm_mask, self.mask_value)
        h, gene_embs = self.encode(tokens.gene_ids, values, tokens.padding_mask, batch_index)
        return {
            "h": h,
            "cell_emb": self.cell_embedding(h, values, tokens.padding_mask),
            "gene_embs": gene_embs,
            "gene_ids": tokens.gene_ids,
            "values": values,
            "target_values": tokens.values,
            "padding_mask": tokens.padding_mask,
            "mlm_mask": mlm_mask,
            "batch_index": batch_index,
        }

    def _decoder_inputs(
        self,
        h: torch.Tensor,
        cell_emb: torch.Tensor,
        gene_embs: torch.Tensor,
        batch_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs of the expression head and of the MVC head's cell and gene sides.

        With batch labels the batch embedding is concatenated to the token states and to the
        cell embedding. Subclasses override this to condition the decoders on more.
        """
        batch_emb = self._batch_emb(batch_index)
        if batch_emb is None:
            return h, cell_emb, gene_embs
        per_token = batch_emb.unsqueeze(1).expand(-1, h.shape[1], -1)
        return (
            torch.cat([h, per_token], dim=2),
            torch.cat([cell_emb, batch_emb], dim=1),
            gene_embs,
        )

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {k: inference_outputs[k] for k in ("h", "cell_emb", "gene_embs", "batch_index")}

    def generative(
        self,
        h: torch.Tensor,
        cell_emb: torch.Tensor,
        gene_embs: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        do_mvc: bool | None = None,
        **conditions: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Heads: ``mlm_output`` (+ ``mlm_nonzero_prob``), ``cls_output``, ``mvc_output``
        (+ ``mvc_nonzero_prob``) and ``dab_output`` as the module has them.

        ``conditions`` go to :meth:`_decoder_inputs` (subclasses' extra decoder conditions).
        """
        dec_in, mvc_cell, mvc_genes = self._decoder_inputs(
            h, cell_emb, gene_embs, batch_index, **conditions
        )
        out = _prefixed("mlm", self.decoder(dec_in))
        out["cls_output"] = self.cls_decoder(cell_emb)
        if self.do_mvc and do_mvc is not False:
            out.update(_prefixed("mvc", self.mvc_decoder(mvc_cell, mvc_genes)))
        if self.do_dab:
            out["dab_output"] = self.grad_reverse_discriminator(cell_emb)
        return out

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor],
        mlm_weight: float | None = None,
        mvc_weight: float | None = None,
        cls_weight: float | None = None,
        cce_weight: float = 0.0,
        ecs_weight: float = 0.0,
        dab_weight: float | None = None,
    ) -> LossOutput:
        """Weighted sum of scGPT's objectives; every term is also logged on its own.

        **Every term is on one scale, O(1)**, whatever ``n_bins``, the value style or the data:

        - ``loss_mlm`` / ``loss_mvc``: the masked MSE divided by the variance of the masked
          targets in the minibatch (so 1 is what predicting their mean scores, 0 is perfect;
          per :meth:`loss_groups`, e.g. per modality, each averaged with equal weight),
          plus the P(non-zero) NLL with ``explicit_zero_prob``. The original regresses raw bin
          indices, so its MSE is in the hundreds and, with gradient clipping, drowns every other
          term; the model's outputs are unchanged (only the training loss is rescaled).
        - ``loss_cls``, ``loss_dab``: cross-entropies (``log n_classes`` / ``log n_batches`` at
          chance); ``loss_cce``: a contrastive cross-entropy; ``loss_ecs``: in ``[0, 1]``.

        **Default weights follow what was registered** (``None`` means this rule):

        - with ``labels_key`` (``n_cls > 1``): CLS drives training (``cls_weight=1``) and MLM / MVC
          regularise it (``mlm_weight = mvc_weight = 0.1``);
        - without labels: MLM + MVC (weights 1);
        - with ``do_dab``: DAB weight 0.1 (:data:`DAB_WEIGHT`), a tenth of the unlabelled
          reconstruction weight: scGPT's weight 1 is for fine-tuning a pretrained model; from
          random weights the adversary then dominates and scrambles the cell embedding;
        - CCE and ECS are off (0): scGPT's integration recipe uses ``ecs_weight=10`` to fine-tune
          a pretrained model; from random weights, where all cell embeddings start alike, a
          strong ECS term keeps them collapsed.

        Weights reach here through ``train(plan_kwargs=...)``.
        """
        inf, gen = inference_outputs, generative_outputs
        mask, target = inf["mlm_mask"], inf["target_values"]
        labels = tensors.get(REGISTRY_KEYS.LABELS_KEY)
        use_cls = labels is not None and self.n_cls > 1 and (cls_weight is None or cls_weight > 0)
        recon_default = RECONSTRUCTION_WEIGHT_WITH_LABELS if use_cls else 1.0
        groups = self.loss_groups(inf)
        terms = {"mlm": _regression(gen, "mlm", target, mask, groups)}
        weights = {"mlm": recon_default if mlm_weight is None else mlm_weight}
        if "mvc_output" in gen:
            terms["mvc"] = _regression(gen, "mvc", target, mask, groups)
            weights["mvc"] = recon_default if mvc_weight is None else mvc_weight
        if use_cls:
            terms["cls"] = F.cross_entropy(gen["cls_output"], labels.reshape(-1).long())
            weights["cls"] = 1.0 if cls_weight is None else cls_weight
        if cce_weight > 0:
            h2, _ = self.encode(
                inf["gene_ids"], inf["values"], inf["padding_mask"], inf["batch_index"]
            )
            terms["cce"] = cce_loss(
                inf["cell_emb"], self.cell_embedding(h2, inf["values"], inf["padding_mask"])
            )
            weights["cce"] = cce_weight
        if ecs_weight > 0:
            terms["ecs"] = ecs_loss(inf["cell_emb"], self.ecs_threshold)
            weights["ecs"] = ecs_weight
        if "dab_output" in gen and (dab_weight is None or dab_weight > 0):
            terms["dab"] = dab_loss(gen["dab_output"], inf["batch_index"])
            weights["dab"] = DAB_WEIGHT if dab_weight is None else dab_weight
        total = sum(weights[k] * v for k, v in terms.items())
        n = inf["h"].shape[0]
        return LossOutput(
            loss=total,
            reconstruction_loss=_per_cell_mse(gen["mlm_output"], target, mask),
            n_obs_minibatch=n,
            extra_metrics={f"loss_{k}": v.detach() for k, v in terms.items()},
        )

    def loss_groups(self, inference_outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Group id of every position whose MLM / MVC errors are normalised and weighted
        apart (``None``: all positions together; the multi-omic module: the modality)."""
        return None

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
        **conditions: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """scGPT's ``TransformerModel.forward`` on ready-made tokens (the parity entry point).

        Output keys as scGPT's, except ``*_zero_probs`` -> ``*_nonzero_prob`` (what they are).
        ``conditions`` go to :meth:`generative` (subclasses' extra decoder conditions).
        """
        h, gene_embs = self.encode(gene_ids, values, padding_mask, batch_labels)
        cell_emb = self.cell_embedding(h, values, padding_mask)
        gen = self.generative(h, cell_emb, gene_embs, batch_labels, do_mvc=MVC, **conditions)
        out = {"cell_emb": cell_emb, "mlm_output": gen["mlm_output"]}
        for k in ("mlm_nonzero_prob", "mvc_output", "mvc_nonzero_prob", "dab_output"):
            if k in gen:
                out[k] = gen[k]
        if CLS:
            out["cls_output"] = gen["cls_output"]
        if CCE:
            h2, _ = self.encode(gene_ids, values, padding_mask, batch_labels)
            out["loss_cce"] = cce_loss(cell_emb, self.cell_embedding(h2, values, padding_mask))
        if ECS:
            out["loss_ecs"] = ecs_loss(cell_emb, self.ecs_threshold)
        return out


def _prefixed(prefix: str, head_out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}_output" if k == "pred" else f"{prefix}_{k}": v for k, v in head_out.items()}


def _regression(
    gen: dict,
    prefix: str,
    target: torch.Tensor,
    mask: torch.Tensor,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Variance-normalised masked MSE of a head (+ P(non-zero) NLL when the head predicts it).

    The MSE is divided by the (detached) variance of the masked targets, so the term is O(1)
    whatever the value scale: 1 for predicting their mean, 0 for a perfect prediction. With
    ``groups`` (an id per position, e.g. the modality), each group present among the masked
    positions is normalised on its own and the groups are averaged with equal weight.
    """
    pred = gen[f"{prefix}_output"]
    if groups is None:
        loss = masked_mse_loss(pred, target, mask) / _masked_variance(target, mask)
    else:
        in_group = [mask & (groups == g) for g in torch.unique(groups[mask])]
        parts = [masked_mse_loss(pred, target, m) / _masked_variance(target, m) for m in in_group]
        loss = torch.stack(parts).mean() if parts else pred.sum() * 0.0
    if f"{prefix}_nonzero_prob" in gen:
        loss = loss + masked_nonzero_nll(gen[f"{prefix}_nonzero_prob"], target, mask)
    return loss


def _masked_variance(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Variance of ``target`` where ``mask`` is True, detached, at least 1e-6 (1 if empty)."""
    with torch.no_grad():
        m = mask.to(target.dtype)
        n = m.sum()
        if n < 2:
            return torch.ones((), dtype=target.dtype, device=target.device)
        mean = (target * m).sum() / n
        return (((target - mean) ** 2 * m).sum() / (n - 1)).clamp(min=1e-6)


def _per_cell_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()
    return ((pred - target) ** 2 * m).sum(1) / m.sum(1).clamp(min=1.0)
