"""Steps every scGPT-family module composes: configuration, tokens, masking, heads and loss."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from scvi.module.base import LossOutput
from torch import nn

from ..data import TokenizedBatch, mask_values, tokenize
from ..nn import TokenBackbone, ecs_loss
from ._config import SCGPTConfig
from ._constants import MODULE_KEYS
from ._objectives import (
    LossContext,
    per_cell_mse,
    run_heads,
    second_view_cce,
    weighted_loss,
)

__all__ = [
    "adopt_config",
    "config_getattr",
    "config_setattr",
    "draw_seed",
    "embed_cells",
    "family_loss",
    "generate",
    "masked_encode",
    "parity_forward",
    "tokenize_columns",
]

K = MODULE_KEYS
#: Option names of :class:`SCGPTConfig` (read through :func:`config_getattr`).
_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(SCGPTConfig))


def adopt_config(module: nn.Module, config: SCGPTConfig, gene_token_ids) -> None:
    """Give ``module`` its configuration (``module.config``; each option reads as an attribute
    through :func:`config_getattr`), training counters, the mounted
    :class:`~scgpt_scvi.nn.TokenBackbone` and the ``gene_token_ids`` buffer (``(n_vars,)``
    vocabulary id of each input column, -1: none)."""
    module.config = config
    #: Incremented by the training plan each epoch so masking and sampling are redrawn.
    module.epoch = 0
    #: Mask in eval mode too: the training plan sets it while validating, so the validation
    #: loss scores MLM (with masks keyed on the cell and fixed across epochs).
    module.mask_in_eval = False
    TokenBackbone(**config.backbone_kwargs()).mount(module)
    if gene_token_ids is None:
        gene_token_ids = torch.zeros(0, dtype=torch.long)
    module.register_buffer("gene_token_ids", torch.as_tensor(gene_token_ids, dtype=torch.long))


def config_getattr(module: nn.Module, name: str):
    """``__getattr__`` of the family's modules: ``nn.Module``'s lookup (parameters, buffers,
    submodules), then the option ``name`` of ``module.config``. Options are read from the one
    configuration, never copied, so what ``save_pretrained`` writes cannot go stale."""
    try:
        return nn.Module.__getattr__(module, name)
    except AttributeError:
        config = module.__dict__.get("config")
        if config is None or name not in _CONFIG_FIELDS:
            raise
        return getattr(config, name)


def config_setattr(module: nn.Module, name: str, value) -> None:
    """``__setattr__`` of the family's modules: setting an option (``module.n_bins = 5``) sets
    it in ``module.config``; anything else is ``nn.Module``'s."""
    if name in _CONFIG_FIELDS and "config" in module.__dict__:
        setattr(module.config, name, value)
    else:
        nn.Module.__setattr__(module, name, value)


def draw_seed(module: nn.Module) -> int:
    """The tokeniser's seed: redrawn each training epoch, fixed in eval."""
    return module.seed + 1_000_003 * (module.epoch + 1) if module.training else module.seed


def tokenize_columns(
    module: nn.Module,
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
        cls_id=module.cls_id,
        pad_id=module.pad_id,
        n_bins=module.n_bins,
        include_zero_genes=module.include_zero_genes,
        cls_value=module.cls_value,
        pad_value=module.pad_value,
        seed=module.seed if seed is None else seed,
    )


def masked_encode(
    module: nn.Module,
    x: torch.Tensor,
    batch_index: torch.Tensor | None,
    cell_keys: torch.Tensor | None,
    mask_ratio: float | None,
    gene_token_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise (``module.tokenize``, with ``gene_token_ids`` for columns in another order than
    the module's), mask (training, or ``mask_in_eval``), encode (``module.encode``) and pool:
    the inference outputs of the masked-value models."""
    if cell_keys is None:
        cell_keys = torch.arange(x.shape[0], device=x.device)
    cell_keys = cell_keys.reshape(-1).long()
    seed = draw_seed(module)
    tokens = module.tokenize(x, cell_keys, seed, gene_token_ids)
    if mask_ratio is None:
        mask_ratio = module.mask_ratio if module.training or module.mask_in_eval else 0.0
    mlm_mask = mask_values(tokens, cell_keys, mask_ratio, module.mask_value, seed)
    values = tokens.values.masked_fill(mlm_mask, module.mask_value)
    h, gene_embs = module.encode(tokens.gene_ids, values, tokens.padding_mask, batch_index)
    return {
        K.H_KEY: h,
        K.CELL_EMB_KEY: module.backbone.pool(h, values, tokens.padding_mask),
        K.GENE_EMBS_KEY: gene_embs,
        K.GENE_IDS_KEY: tokens.gene_ids,
        K.VALUES_KEY: values,
        K.TARGET_VALUES_KEY: tokens.values,
        K.PADDING_MASK_KEY: tokens.padding_mask,
        K.MLM_MASK_KEY: mlm_mask,
        K.BATCH_INDEX_KEY: batch_index,
    }


def embed_cells(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    normalize: bool = False,
    gene_token_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, d)`` cell embeddings of a minibatch in the module's current mode (eval: unmasked),
    L2-normalised with ``normalize`` (what ``scgpt.tasks.embed_data`` returns);
    ``gene_token_ids``: the vocabulary id of each column when they are not the module's."""
    inputs = module._get_inference_input(tensors)
    cell_emb = module.inference(**inputs, gene_token_ids=gene_token_ids)[K.CELL_EMB_KEY]
    return torch.nn.functional.normalize(cell_emb, p=2, dim=1, eps=1e-12) if normalize else cell_emb


def generate(
    module: nn.Module,
    head_inputs: Mapping[str, tuple],
    do_mvc: bool | None = None,
    do_sample: bool = False,
) -> dict[str, torch.Tensor]:
    """The module's head outputs (:func:`~scgpt_scvi.module.run_heads`); ``do_mvc=False``
    skips MVC. ``do_sample`` (scGPT's): with ``explicit_zero_prob`` each ``*_output`` is
    multiplied by a Bernoulli sample of its non-zero probability."""
    out = run_heads(
        module, module.OBJECTIVE_NAMES, head_inputs, () if do_mvc is not False else ("mvc",)
    )
    if do_sample:
        for name in ("mlm", "mvc"):
            if f"{name}_nonzero_prob" in out:
                keep = torch.bernoulli(out[f"{name}_nonzero_prob"])
                out[f"{name}_output"] = keep * out[f"{name}_output"]
    return out


def family_loss(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    inf: Mapping[str, torch.Tensor],
    gen: Mapping[str, torch.Tensor],
    target: torch.Tensor,
    mask: torch.Tensor,
    groups: torch.Tensor | None,
    weights: Mapping[str, float | None],
) -> LossOutput:
    """``LossOutput`` of the module's objectives (:func:`~scgpt_scvi.module.weighted_loss`),
    every term logged as ``loss_{name}``; the reconstruction loss is the per-cell MLM MSE."""
    ctx = LossContext(module, tensors, inf, gen, target, mask, groups)
    total, terms = weighted_loss(ctx, module.OBJECTIVE_NAMES, weights)
    return LossOutput(
        loss=total,
        reconstruction_loss=per_cell_mse(gen[K.MLM_OUTPUT_KEY], target, mask),
        n_obs_minibatch=target.shape[0],
        extra_metrics={f"loss_{k}": v.detach() for k, v in terms.items()},
    )


def parity_forward(
    module: nn.Module,
    h: torch.Tensor,
    gene_embs: torch.Tensor,
    values: torch.Tensor,
    padding_mask: torch.Tensor,
    head_inputs: Mapping[str, tuple],
    second_view: tuple | None,
    CLS: bool = False,
    MVC: bool = False,
    ECS: bool = False,
    do_sample: bool = False,
    keys: Sequence[str] = (K.MLM_NONZERO_PROB_KEY, K.MVC_OUTPUT_KEY, K.MVC_NONZERO_PROB_KEY),
) -> dict[str, torch.Tensor]:
    """scGPT's ``forward`` outputs from encoded tokens: ``cell_emb``, ``mlm_output`` and the
    ``keys`` the heads give, ``cls_output`` (``CLS``), ``loss_cce`` (``second_view``: the
    encoder arguments of a second pass), ``loss_ecs`` (``ECS``)."""
    cell_emb = module.backbone.pool(h, values, padding_mask)
    gen = generate(module, head_inputs(cell_emb), do_mvc=MVC, do_sample=do_sample)
    out = {K.CELL_EMB_KEY: cell_emb, K.MLM_OUTPUT_KEY: gen[K.MLM_OUTPUT_KEY]}
    out.update({k: gen[k] for k in (*keys, K.DAB_OUTPUT_KEY) if k in gen})
    if CLS:
        out[K.CLS_OUTPUT_KEY] = gen[K.CLS_OUTPUT_KEY]
    if second_view is not None:
        out["loss_cce"] = second_view_cce(module, cell_emb, *second_view)
    if ECS:
        out["loss_ecs"] = ecs_loss(cell_emb, module.ecs_threshold)
    return out
