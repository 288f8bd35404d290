"""``SCGPTPerturbationModule``: scGPT's ``TransformerGenerator`` as an scvi-tools module.

The module predicts a perturbed cell's expression from a control cell's expression plus
perturbation flags. Each training cell (perturbed or control) is paired with a control cell drawn
from the module's control pool, keyed on ``(seed, epoch, cell key)`` so the pairing is
reproducible, redrawn each epoch and independent of the minibatch.

Tokens per cell: ``<cls>`` (value ``cls_value``, flag 0), then the chosen measured genes (the
control's values; flag 1 at the cell's target genes, else 0), then the cell's target genes that
are not measured (value 0, flag 1; pads with ``pert_pad_id`` where a cell has fewer). scGPT's
``pred_perturb`` has no ``<cls>``: its "cls" cell embedding is then the state of the first gene.
We prepend ``<cls>`` as in pretraining, so the CLS/ECS/MVC heads see a real cell embedding; the
affine decoder's output at ``<cls>`` is ignored.
"""

from __future__ import annotations

from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from ..data import keyed_uniform, log_normalize
from ..nn import AffineExprDecoder
from ._common import (
    adopt_config,
    config_getattr,
    config_setattr,
    draw_seed,
    family_loss,
    generate,
    parity_forward,
)
from ._config import SCGPTConfig
from ._constants import CELL_KEY, MODULE_KEYS, PERT_KEY, Tensors
from ._objectives import HeadSpec, build_heads

__all__ = [
    "SCGPTPerturbationModule",
    "PERT_KEY",
    "GENE_SELECTIONS",
    "COMBINATIONS",
    "check_combination",
]

GENE_SELECTIONS = ("all", "batch-wise")
#: How a perturbation's prediction is formed (see :class:`SCGPTPerturbationModule`).
Combination = Literal["direct", "additive_interaction"]
COMBINATIONS: tuple[str, ...] = ("direct", "additive_interaction")
#: keyed_uniform stream of the control pairing (tokeniser streams use 1-3).
STREAM_PAIR = 4
#: The generator's defaults where they differ from :class:`~scgpt_scvi.module.SCGPTConfig`'s:
#: raw (log-normalised) values, pad value 0 (also the ``<cls>`` value), SDPA attention.
PERTURBATION_DEFAULTS = {"pad_value": 0.0, "n_bins": None, "attention_backend": "sdpa"}
#: Options of the family the generator has no part for (scGPT's has no batch, DSBN or DAB).
_UNSUPPORTED = ("do_dab", "use_batch_labels", "domain_spec_batchnorm", "input_emb_style")
K = MODULE_KEYS


def _affine_decoder(spec: HeadSpec) -> AffineExprDecoder:
    """scGPT's generator decodes with ``coeff * value + bias`` instead of an MLP."""
    return AffineExprDecoder(
        spec.config.d_model,
        explicit_zero_prob=spec.config.explicit_zero_prob,
        activation=spec.extra["decoder_activation"],
        adaptive_bias=spec.extra["decoder_adaptive_bias"],
    )


def check_combination(combination: str) -> None:
    """Raise a ``ValueError`` naming the choices unless ``combination`` is in
    :data:`COMBINATIONS`."""
    if combination not in COMBINATIONS:
        raise ValueError(f"Unknown combination {combination!r}; choose one of {COMBINATIONS}.")


class SCGPTPerturbationModule(BaseModuleClass):
    """scGPT's ``TransformerGenerator``: control expression + perturbation flags -> expression.

    Shares the backbone (:class:`~scgpt_scvi.nn.TokenBackbone`: ``encoder``, ``value_encoder``
    (continuous), ``transformer_encoder``), ``cls_decoder`` and ``mvc_decoder`` with
    :class:`~scgpt_scvi.module.SCGPTModule`; adds ``pert_encoder``
    (``nn.Embedding(3, d_model, padding_idx=pert_pad_id)``: 0 not perturbed, 1 perturbed,
    ``pert_pad_id`` pad) and replaces ``decoder`` by
    :class:`~scgpt_scvi.nn.AffineExprDecoder` (``decoder.coeff_decoder``,
    ``decoder.bias_decoder``). Parameter names follow the original, so its state dicts load
    after :func:`scgpt_scvi.checkpoint.to_torch_layout`.

    Parameters
    ----------
    ntoken, d_model, nhead, d_hid, nlayers, nlayers_cls, n_cls, dropout
        As :class:`~scgpt_scvi.module.SCGPTModule`.
    pad_id, cls_id
        Vocabulary ids of ``<pad>`` and ``<cls>``.
    pad_value
        Input value at pads (the original's default 0; also the ``<cls>`` value).
    pert_pad_id
        Flag id at pads (the original's ``pert_pad_id``; its embedding row stays zero).
    do_mvc, mvc_decoder_style, cell_emb_style, ecs_threshold, pre_norm, attention_backend
        As :class:`~scgpt_scvi.module.SCGPTModule`.
    decoder_activation
        ``torch.nn`` activation name applied to the affine decoder's output, or ``None``.
    decoder_adaptive_bias
        Scale the decoder bias by the mean of each cell's non-zero inputs.
    explicit_zero_prob
        Also predict P(non-zero) per gene; predictions are then ``P(non-zero) * value`` (the
        original samples a Bernoulli in eval mode instead).
    gene_token_ids
        ``(n_vars,)`` vocabulary id of each input column (-1: not modelled).
    condition_targets
        ``(n_conditions, T)`` vocabulary ids of each registered condition's target genes, -1
        padded (row order = the registered condition codes).
    control_x
        ``(n_control, n_vars)`` expression of the control cells (the registered values).
    normalize_counts
        The registered values are counts: normalise to 1e4 per cell and ``log1p`` each
        minibatch (inputs and targets).
    gene_selection
        Genes fed and scored in training: ``"all"`` (every modelled gene) or ``"batch-wise"``
        (genes non-zero in any cell of the minibatch, control inputs and perturbed cells, plus
        the minibatch's target genes; the original's ``pred_perturb`` looks at the control
        inputs only, so it never scores genes that only perturbed cells express). Prediction
        with ``"batch-wise"`` feeds the genes non-zero in any control cell of the pool (so a
        cell's prediction does not depend on its minibatch) plus the targets; genes not fed are
        predicted 0, as in the original.
    combination
        How the prediction for a perturbation is formed. ``"direct"`` (scGPT's
        ``TransformerGenerator``): the decoder's output is the predicted expression.
        ``"additive_interaction"``: the prediction is the *additive expectation* of the
        perturbation, ``control_mean + sum of its target genes' single_deltas``, plus the
        decoder's output as a learned *interaction residual*; the decoder's last layers start at
        zero, so an untrained model predicts the additive expectation exactly, and training
        regresses the residual (observed minus additive expectation). A target gene without a
        row in ``single_deltas`` (never perturbed alone in training) adds nothing to the
        expectation: its effect is left to the residual, i.e. to the model's own prediction of
        that gene. Requires ``explicit_zero_prob=False``. Genes that are not fed (or not
        modelled) are predicted at the additive expectation.
    single_targets
        ``(K,)`` vocabulary ids of the genes with an observed single-gene perturbation
        (``"additive_interaction"``).
    single_deltas
        ``(K, n_vars)`` mean log1p-normalised expression of each of those genes' single-gene
        cells minus the control mean (as
        :func:`scgpt_scvi.metrics.single_gene_deltas` gives).

    Examples
    --------
    >>> from scgpt_scvi import SCGPTPerturbation
    >>> SCGPTPerturbation.setup_anndata(
    ...     adata, perturbation_key="condition", control_category="ctrl"
    ... )
    >>> model = SCGPTPerturbation(adata, d_model=64, nlayers=2)
    >>> model.module  # SCGPTPerturbationModule
    """

    #: Objectives (entries of :data:`~scgpt_scvi.module.OBJECTIVES`) this module trains (the
    #: CLS head is built, as the original's, but has no labels to train on here).
    OBJECTIVE_NAMES = ("mlm", "cls", "mvc", "ecs")
    # options read from (and written to) ``self.config``, never copied
    __getattr__ = config_getattr
    __setattr__ = config_setattr

    def __init__(
        self,
        ntoken: int,
        pert_pad_id: int = 2,
        decoder_activation: str | None = None,
        decoder_adaptive_bias: bool = False,
        gene_token_ids: torch.Tensor | None = None,
        condition_targets: torch.Tensor | None = None,
        control_x: torch.Tensor | None = None,
        normalize_counts: bool = False,
        gene_selection: str = "batch-wise",
        combination: Combination = "direct",
        single_targets: torch.Tensor | None = None,
        single_deltas: torch.Tensor | None = None,
        **options,
    ):
        super().__init__()
        check_combination(combination)
        if combination == "additive_interaction" and options.get("explicit_zero_prob"):
            raise ValueError(
                "combination='additive_interaction' predicts a residual over the additive "
                "expectation, which has no P(non-zero); use explicit_zero_prob=False."
            )
        if gene_selection not in GENE_SELECTIONS:
            raise ValueError(
                f"Unknown gene_selection {gene_selection!r}; choose one of {GENE_SELECTIONS}."
            )
        if pert_pad_id not in (0, 1, 2):
            raise ValueError(f"pert_pad_id must be 0, 1 or 2; got {pert_pad_id}.")
        unsupported = sorted(set(options) & set(_UNSUPPORTED))
        if unsupported:
            raise TypeError(f"The perturbation model has no {unsupported} option.")
        defaults = {**PERTURBATION_DEFAULTS, "cls_value": options.get("pad_value", 0.0)}
        config = SCGPTConfig.from_options({"ntoken": ntoken, **options}, **defaults)
        adopt_config(self, config, gene_token_ids)
        extra = {
            "decoder_activation": decoder_activation,
            "decoder_adaptive_bias": decoder_adaptive_bias,
        }
        spec = HeadSpec(config, cond_width=0, extra=extra)
        build_heads(self, self.OBJECTIVE_NAMES, spec, {"mlm": _affine_decoder})
        self.pert_pad_id, self.gene_selection = pert_pad_id, gene_selection
        self.normalize_counts = normalize_counts
        self.pert_encoder = nn.Embedding(3, config.d_model, padding_idx=pert_pad_id)
        self.backbone.reset_gene_embedding()
        if condition_targets is None:
            condition_targets = torch.full((0, 1), -1, dtype=torch.long)
        if control_x is None:
            control_x = torch.zeros(0, len(self.gene_token_ids))
        # Rebuilt from the AnnData by the model on every construction (also on load).
        self.register_buffer(
            "condition_targets", torch.as_tensor(condition_targets).long(), persistent=False
        )
        self.register_buffer("control_x", torch.as_tensor(control_x).float(), persistent=False)
        self.combination = combination
        self._set_additive_parts(single_targets, single_deltas)
        if combination == "additive_interaction":
            # zero last layers: the residual starts at 0, the prediction at the additive one
            for head in (self.decoder.coeff_decoder, self.decoder.bias_decoder):
                nn.init.zeros_(head.fc[-1].weight)
                nn.init.zeros_(head.fc[-1].bias)

    def _set_additive_parts(
        self, single_targets: torch.Tensor | None, single_deltas: torch.Tensor | None
    ) -> None:
        """Buffers of the additive expectation: ``control_mean`` (prepared control pool, in
        float64 before rounding), ``single_targets`` and ``single_deltas``."""
        n_vars = self.control_x.shape[1]
        if single_targets is None:
            single_targets = torch.zeros(0, dtype=torch.long)
        if single_deltas is None:
            single_deltas = torch.zeros(0, n_vars)
        single_targets = torch.as_tensor(single_targets).long().reshape(-1)
        single_deltas = torch.as_tensor(single_deltas).float()
        if single_deltas.shape != (single_targets.numel(), n_vars):
            raise ValueError(
                f"single_deltas must be (len(single_targets), n_vars) = "
                f"({single_targets.numel()}, {n_vars}); got {tuple(single_deltas.shape)}."
            )
        if self.control_x.shape[0]:
            control_mean = self._prepare(self.control_x.double()).mean(0).float()
        else:
            control_mean = torch.zeros(n_vars)
        # Data-derived like control_x: rebuilt by the model on every construction (also on load).
        self.register_buffer("single_targets", single_targets, persistent=False)
        self.register_buffer("single_deltas", single_deltas, persistent=False)
        self.register_buffer("control_mean", control_mean, persistent=False)

    def additive_expectation(self, targets: torch.Tensor) -> torch.Tensor:
        """``(B, n_vars)``: ``control_mean`` plus the ``single_deltas`` of each cell's target
        genes ``targets`` ``(B, T)`` (-1 padded); genes without a single delta add nothing."""
        hit = targets[:, :, None] == self.single_targets[None, None, :]
        weight = (hit & (targets[:, :, None] >= 0)).any(1).to(self.single_deltas.dtype)
        return self.control_mean + weight @ self.single_deltas

    # ---------------------------------------------------------------- pairing and tokens
    def pair_controls(self, cell_keys: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Control-pool row paired with each cell, keyed on ``(seed, epoch, cell key)``.

        ``seed`` defaults to the module's draw seed: redrawn each training epoch, fixed in eval.
        """
        n = self.control_x.shape[0]
        if n == 0:
            raise ValueError("The module has no control cells to pair with.")
        seed = draw_seed(self) if seed is None else seed
        zero = torch.zeros(1, dtype=torch.long, device=cell_keys.device)
        u = keyed_uniform(seed, cell_keys, zero, STREAM_PAIR)[:, 0]
        return (u * n).long().clamp(max=n - 1)

    def _is_target(self, targets: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """``(B, C)``: whether each token id is one of the cell's ``targets`` ``(B, T)``."""
        hit = token_ids[None, :, None] == targets[:, None, :]
        return (hit & (targets[:, None, :] >= 0)).any(-1)

    def _columns(
        self, nonzero: torch.Tensor, targets: torch.Tensor, selection: str
    ) -> torch.Tensor:
        """Input columns fed as gene tokens: every modelled gene (``"all"``), or the modelled
        genes that are ``nonzero`` ``(n_vars,)`` or targets of the minibatch (``"batch-wise"``).
        """
        keep = self.gene_token_ids >= 0
        if selection == "batch-wise":
            keep = keep & (nonzero | self._is_target(targets, self.gene_token_ids).any(0))
        return torch.nonzero(keep).flatten()

    def _unmeasured_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Targets that are no input column, -1 elsewhere; all-pad columns dropped."""
        measured = (targets[:, :, None] == self.gene_token_ids[None, None, :]).any(-1)
        extra = targets.masked_fill(measured | (targets < 0), -1)
        return extra[:, (extra >= 0).any(0)]

    def build_tokens(
        self, x_in: torch.Tensor, targets: torch.Tensor, columns: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Tokens ``<cls>`` + ``columns`` of ``x_in`` + unmeasured targets.

        Returns ``gene_ids``, ``values``, ``pert_flags`` and ``padding_mask``, all ``(B, L)``.
        """
        B, dev = x_in.shape[0], x_in.device
        extra = self._unmeasured_targets(targets)
        pad = extra < 0
        first = torch.zeros(B, 1, dtype=torch.long, device=dev)
        is_target = self._is_target(targets, self.gene_token_ids[columns])
        col_ids = self.gene_token_ids[columns].expand(B, -1)
        cls_value = torch.full((B, 1), self.cls_value, dtype=x_in.dtype, device=dev)
        extra_values = torch.zeros(extra.shape, dtype=x_in.dtype, device=dev)
        return {
            K.GENE_IDS_KEY: torch.cat(
                [first + self.cls_id, col_ids, extra.masked_fill(pad, self.pad_id)], 1
            ),
            K.VALUES_KEY: torch.cat(
                [cls_value, x_in[:, columns], extra_values.masked_fill(pad, self.pad_value)], 1
            ),
            K.PERT_FLAGS_KEY: torch.cat(
                [
                    first,
                    is_target.long(),
                    torch.ones_like(extra).masked_fill(pad, self.pert_pad_id),
                ],
                1,
            ),
            K.PADDING_MASK_KEY: torch.cat([is_target.new_zeros(B, 1 + columns.numel()), pad], 1),
        }

    def encode_tokens(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        pert_flags: torch.Tensor,
        padding_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gene + value + perturbation-flag embeddings -> transformer states and gene embeddings."""
        return self.backbone(
            gene_ids, values, padding_mask, extra_embs=self.pert_encoder(pert_flags)
        )

    # ---------------------------------------------------------------- scvi hooks
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            K.X_KEY: tensors[REGISTRY_KEYS.X_KEY],
            K.CONDITION_KEY: tensors[PERT_KEY],
            K.CELL_KEYS_KEY: tensors.get(CELL_KEY),
        }

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return log_normalize(x) if self.normalize_counts else x

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        cell_keys: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        control_index: torch.Tensor | None = None,
        gene_selection: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Pair with controls, tokenise and encode.

        Parameters
        ----------
        x
            ``(B, n_vars)`` expression of the cells to predict (the targets; optional when
            predicting).
        condition
            ``(B,)`` or ``(B, 1)`` registered condition codes (gives ``targets``).
        cell_keys
            ``(B,)`` per-cell keys of the control pairing.
        targets
            ``(B, T)`` vocabulary ids of each cell's target genes (-1 padded); overrides
            ``condition``.
        control_index
            ``(B,)`` rows of the control pool to use as inputs; default: keyed pairing.
        gene_selection
            Overrides the module's ``gene_selection``.
        """
        if targets is None:
            targets = self.condition_targets[condition.reshape(-1).long()]
        if control_index is None:
            if cell_keys is None:
                cell_keys = torch.arange(targets.shape[0], device=targets.device)
            control_index = self.pair_controls(cell_keys.reshape(-1).long())
        x_in = self._prepare(self.control_x[control_index])
        x = None if x is None else self._prepare(x)
        if x is None:  # prediction: genes expressed anywhere in the control pool
            nonzero = (self.control_x != 0).any(0)
        else:  # genes expressed in any cell of the minibatch, inputs or targets
            nonzero = (x_in != 0).any(0) | (x != 0).any(0)
        columns = self._columns(nonzero, targets, gene_selection or self.gene_selection)
        tok = self.build_tokens(x_in, targets, columns)
        h, gene_embs = self.encode_tokens(**tok)
        out = {
            K.H_KEY: h,
            K.CELL_EMB_KEY: self.backbone.pool(h, tok[K.VALUES_KEY], tok[K.PADDING_MASK_KEY]),
            K.GENE_EMBS_KEY: gene_embs,
            K.COLUMNS_KEY: columns,
            K.X_IN_KEY: x_in,
            **tok,
        }
        if self.combination == "additive_interaction":
            out[K.EXPECTED_KEY] = self.additive_expectation(targets)
        if x is not None:
            target = x[:, columns]
            if K.EXPECTED_KEY in out:  # the heads regress the residual over the expectation
                target = target - out[K.EXPECTED_KEY][:, columns]
            out[K.TARGET_VALUES_KEY] = target
        return out

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        keys = (K.H_KEY, K.CELL_EMB_KEY, K.GENE_EMBS_KEY, K.VALUES_KEY)
        return {k: inference_outputs[k] for k in keys}

    def head_inputs(
        self, h: torch.Tensor, cell_emb: torch.Tensor, gene_embs: torch.Tensor, values: torch.Tensor
    ) -> dict[str, tuple]:
        """Arguments of each head: the affine expression head reads the states and the input
        values."""
        return {"mlm": (h, values), "cls": (cell_emb,), "mvc": (cell_emb, gene_embs)}

    def generative(
        self,
        h: torch.Tensor,
        cell_emb: torch.Tensor,
        gene_embs: torch.Tensor,
        values: torch.Tensor,
        do_mvc: bool | None = None,
        do_sample: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Heads: ``mlm_output`` (affine, + ``mlm_nonzero_prob``), ``cls_output``,
        ``mvc_output`` (+ ``mvc_nonzero_prob``) as the module has them."""
        return generate(self, self.head_inputs(h, cell_emb, gene_embs, values), do_mvc, do_sample)

    def loss(
        self, tensors: Tensors, inference_outputs: Tensors, generative_outputs: Tensors, **weights
    ) -> LossOutput:
        """MSE of the predicted against the perturbed cell's expression on the fed genes.

        With ``combination="additive_interaction"`` the heads' targets are the residuals
        (expression minus the additive expectation).

        Plus the P(non-zero) NLL with ``explicit_zero_prob``, the MVC term (weight 1 by default
        with ``do_mvc``) and ECS (``ecs_weight``, default 0); on the one scale of
        :meth:`SCGPTModule.loss`. Weights (``mlm_weight``, ``mvc_weight``, ``ecs_weight``)
        reach here through ``plan_kwargs``.
        """
        inf = inference_outputs
        n_cols = inf[K.COLUMNS_KEY].numel()
        gen = {k: v[:, 1 : 1 + n_cols] for k, v in generative_outputs.items() if v.dim() == 2}
        target = inf[K.TARGET_VALUES_KEY]
        mask = torch.ones_like(target, dtype=torch.bool)
        return family_loss(self, tensors, inf, gen, target, mask, None, weights)

    # ---------------------------------------------------------------- prediction
    @torch.inference_mode()
    def predict_expression(
        self, control_index: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Predicted ``(B, n_vars)`` expression (log1p-normalised space) of control cells
        ``control_index`` under perturbation ``targets`` ``(B, T)``.

        Genes are fed as ``gene_selection`` says. ``"direct"``: modelled genes not fed are
        predicted 0 and genes outside the vocabulary keep the control's value; with
        ``explicit_zero_prob`` the prediction is ``P(non-zero) * value``.
        ``"additive_interaction"``: the additive expectation, plus the decoder's residual on the
        fed genes.
        """
        inf = self.inference(
            targets=targets.to(self.device), control_index=control_index.to(self.device)
        )
        gen = self.generative(**self._get_generative_input({}, inf), do_mvc=False)
        cols = inf[K.COLUMNS_KEY]
        pred = gen[K.MLM_OUTPUT_KEY][:, 1 : 1 + cols.numel()]
        if K.MLM_NONZERO_PROB_KEY in gen:
            pred = pred * gen[K.MLM_NONZERO_PROB_KEY][:, 1 : 1 + cols.numel()]
        if K.EXPECTED_KEY in inf:
            out = inf[K.EXPECTED_KEY].clone()
            out[:, cols] += pred.to(out.dtype)
            return out
        x_in = inf[K.X_IN_KEY]
        out = torch.where(self.gene_token_ids >= 0, torch.zeros_like(x_in), x_in)
        out[:, cols] = pred.to(out.dtype)
        return out

    # ---------------------------------------------------------------- original-style forward
    def forward_tokens(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        input_pert_flags: torch.Tensor,
        padding_mask: torch.Tensor,
        CLS: bool = False,
        MVC: bool = False,
        ECS: bool = False,
        do_sample: bool = False,
    ) -> dict[str, torch.Tensor]:
        """scGPT's ``TransformerGenerator.forward`` on ready-made tokens (parity entry point).

        Returns ``mlm_output`` (+ ``mlm_nonzero_prob``; sampled only with ``do_sample``, which
        the original forces in eval mode), ``cell_emb`` (which the original does not return),
        and ``cls_output``, ``mvc_output``, ``loss_ecs`` on request. With
        ``combination="additive_interaction"`` ``mlm_output`` is the residual.
        """
        h, gene_embs = self.encode_tokens(gene_ids, values, input_pert_flags, padding_mask)
        return parity_forward(
            self,
            h,
            gene_embs,
            values,
            padding_mask,
            lambda cell_emb: self.head_inputs(h, cell_emb, gene_embs, values),
            None,
            CLS=CLS,
            MVC=MVC,
            ECS=ECS,
            do_sample=do_sample,
        )
