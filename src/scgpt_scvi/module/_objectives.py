"""The objectives registry: every training objective of the scGPT family, in one table.

An :class:`Objective` holds a name, the builder of its head, its loss function, its default
weights and the submodule (checkpoint key prefix) of its head. The modules' ``generative``
(:func:`run_heads`), ``loss`` (:func:`weighted_loss`), parity forwards and the checkpoint head
groups (:func:`head_groups`) all read :data:`OBJECTIVES`, so a new objective is one entry here
and its loss function. The MLM regression loss is itself table data (:data:`REGRESSION_LOSSES`,
``mlm_loss="mse" | "huber"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from torch import nn

from ..nn import (
    AdversarialDiscriminator,
    ClsDecoder,
    ExprDecoder,
    MVCDecoder,
    cce_loss,
    dab_loss,
    ecs_loss,
    masked_mse_loss,
    masked_nonzero_nll,
)
from ._config import SCGPTConfig
from ._constants import MODULE_KEYS

__all__ = [
    "DAB_WEIGHT",
    "OBJECTIVES",
    "REGRESSION_LOSSES",
    "RECONSTRUCTION_WEIGHT_WITH_LABELS",
    "HeadSpec",
    "LossContext",
    "Objective",
    "build_heads",
    "head_groups",
    "per_cell_mse",
    "regression",
    "run_heads",
    "second_view_cce",
    "weighted_loss",
]

#: Default MLM / MVC weight when a CLS objective is trained (labels registered).
RECONSTRUCTION_WEIGHT_WITH_LABELS = 0.1
#: Default DAB weight: a tenth of the reconstruction terms' (from random weights, scGPT's
#: fine-tuning weight 1 lets the adversary scramble the cell embedding: on CellBench the
#: cell-line silhouette fell to 0.00, against 0.50 at 0.1 and 0.42 without DAB).
DAB_WEIGHT = 0.1

RegressionLoss = Literal["mse", "huber"]


# ---------------------------------------------------------------------- regression losses
def _mse(pred, target, mask, variance, delta):
    return masked_mse_loss(pred, target, mask) / variance


def _huber(pred, target, mask, variance, delta):
    if not mask.any():
        return pred.sum() * 0.0
    scale = variance.sqrt()
    return 2.0 * F.huber_loss(pred[mask] / scale, target[mask] / scale, delta=delta)


#: MLM regression losses on the variance-normalised scale: ``"mse"`` is the masked MSE over the
#: targets' variance; ``"huber"`` is twice the Huber loss of the residuals in units of the
#: targets' standard deviation (``huber_delta`` standard deviations), so both agree on small
#: errors and Huber grows linearly past ``huber_delta``.
REGRESSION_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"mse": _mse, "huber": _huber}


def regression(
    gen: Mapping[str, torch.Tensor],
    prefix: str,
    target: torch.Tensor,
    mask: torch.Tensor,
    groups: torch.Tensor | None = None,
    kind: RegressionLoss = "mse",
    delta: float = 1.0,
) -> torch.Tensor:
    """Variance-normalised masked regression of a head (+ P(non-zero) NLL when it has one).

    The error is divided by the (detached) variance of the masked targets, so the term is O(1)
    whatever the value scale: 1 for predicting their mean, 0 for a perfect prediction. With
    ``groups`` (an id per position, e.g. the modality), each group present among the masked
    positions is normalised on its own and the groups are averaged with equal weight.
    """
    pred, fn = gen[f"{prefix}_output"], REGRESSION_LOSSES[kind]
    if groups is None:
        loss = fn(pred, target, mask, _masked_variance(target, mask), delta)
    else:
        in_group = [mask & (groups == g) for g in torch.unique(groups[mask])]
        parts = [fn(pred, target, m, _masked_variance(target, m), delta) for m in in_group]
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


def per_cell_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` masked MSE of each cell (the ``reconstruction_loss`` scvi-tools logs)."""
    m = mask.float()
    return ((pred - target) ** 2 * m).sum(1) / m.sum(1).clamp(min=1.0)


# ---------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class HeadSpec:
    """What the head builders read: the module's configuration, the width of what its
    decoders are conditioned on (batch / modality embedding; 0 for none) and module-specific
    ``extra`` options."""

    config: SCGPTConfig
    cond_width: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossContext:
    """What an objective's loss reads: the module, the minibatch and the module's outputs,
    the regression ``target`` and ``mask``, and the positions' ``groups`` (or ``None``)."""

    module: nn.Module
    tensors: Mapping[str, torch.Tensor]
    inf: Mapping[str, torch.Tensor]
    gen: Mapping[str, torch.Tensor]
    target: torch.Tensor
    mask: torch.Tensor
    groups: torch.Tensor | None = None

    @property
    def labels(self) -> torch.Tensor | None:
        return self.tensors.get(REGISTRY_KEYS.LABELS_KEY)


@dataclass(frozen=True)
class Objective:
    """One training objective.

    Attributes
    ----------
    name
        Its name: the ``{name}_weight`` training option, the ``loss_{name}`` metric and the
        ``{name}_output`` generative output.
    loss
        ``loss(ctx: LossContext) -> scalar``.
    weight
        Default weight.
    weight_with_labels
        Default weight when a CLS objective is trained (``None``: ``weight``).
    head
        Submodule of its head (also its checkpoint key prefix), ``None`` for objectives on the
        cell embedding alone.
    build
        ``build(spec: HeadSpec) -> nn.Module``: the head (default layout; a module may pass its
        own builder, e.g. the perturbation model's affine expression decoder).
    option
        Module option that switches the head on (``None``: always built).
    applies
        ``applies(ctx) -> bool``: whether the term can be computed for this minibatch.
    """

    name: str
    loss: Callable[[LossContext], torch.Tensor]
    weight: float = 1.0
    weight_with_labels: float | None = None
    head: str | None = None
    build: Callable[[HeadSpec], nn.Module] | None = None
    option: str | None = None
    applies: Callable[[LossContext], bool] = lambda ctx: True


def _mlm_loss(ctx: LossContext) -> torch.Tensor:
    m = ctx.module
    return regression(ctx.gen, "mlm", ctx.target, ctx.mask, ctx.groups, m.mlm_loss, m.huber_delta)


def second_view_cce(
    module: nn.Module,
    cell_emb: torch.Tensor,
    gene_ids: torch.Tensor,
    values: torch.Tensor,
    padding_mask: torch.Tensor,
    batch_index: torch.Tensor | None,
) -> torch.Tensor:
    """scGPT's CCE: the contrastive loss between ``cell_emb`` and a second encoder pass of the
    same tokens (another dropout draw)."""
    h2, _ = module.encode(gene_ids, values, padding_mask, batch_index)
    return cce_loss(cell_emb, module.backbone.pool(h2, values, padding_mask))


def _cce_loss(ctx: LossContext) -> torch.Tensor:
    inf, k = ctx.inf, MODULE_KEYS
    return second_view_cce(
        ctx.module,
        inf[k.CELL_EMB_KEY],
        inf[k.GENE_IDS_KEY],
        inf[k.VALUES_KEY],
        inf[k.PADDING_MASK_KEY],
        inf[k.BATCH_INDEX_KEY],
    )


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(  # gene expression prediction (GEP) at masked positions
            "mlm",
            _mlm_loss,
            weight=1.0,
            weight_with_labels=RECONSTRUCTION_WEIGHT_WITH_LABELS,
            head="decoder",
            build=lambda s: ExprDecoder(
                s.config.d_model, s.config.explicit_zero_prob, s.cond_width > 0
            ),
        ),
        Objective(  # cell-type classification
            "cls",
            lambda ctx: F.cross_entropy(
                ctx.gen[MODULE_KEYS.CLS_OUTPUT_KEY], ctx.labels.reshape(-1).long()
            ),
            head="cls_decoder",
            build=lambda s: ClsDecoder(
                s.config.d_model, s.config.n_cls, nlayers=s.config.nlayers_cls
            ),
            applies=lambda ctx: ctx.labels is not None and ctx.module.n_cls > 1,
        ),
        Objective(  # masked value prediction from the cell embedding (GEPC)
            "mvc",
            lambda ctx: regression(ctx.gen, "mvc", ctx.target, ctx.mask, ctx.groups),
            weight=1.0,
            weight_with_labels=RECONSTRUCTION_WEIGHT_WITH_LABELS,
            head="mvc_decoder",
            build=lambda s: MVCDecoder(
                s.config.d_model,
                s.config.mvc_decoder_style,
                s.config.explicit_zero_prob,
                s.cond_width > 0,
            ),
            option="do_mvc",
            applies=lambda ctx: MODULE_KEYS.MVC_OUTPUT_KEY in ctx.gen,
        ),
        Objective("cce", _cce_loss, weight=0.0),  # contrastive cell embedding
        Objective(  # elastic cell similarity
            "ecs",
            lambda ctx: ecs_loss(ctx.inf[MODULE_KEYS.CELL_EMB_KEY], ctx.module.ecs_threshold),
            weight=0.0,
        ),
        Objective(  # adversarial batch discriminator
            "dab",
            lambda ctx: dab_loss(
                ctx.gen[MODULE_KEYS.DAB_OUTPUT_KEY], ctx.inf[MODULE_KEYS.BATCH_INDEX_KEY]
            ),
            weight=DAB_WEIGHT,
            head="grad_reverse_discriminator",
            build=lambda s: AdversarialDiscriminator(
                s.config.d_model,
                s.config.num_batch_labels,
                nlayers=s.config.dab_nlayers,
                reverse_grad=s.config.dab_reverse_grad,
                lambd=s.config.dab_lambd,
            ),
            option="do_dab",
            applies=lambda ctx: MODULE_KEYS.DAB_OUTPUT_KEY in ctx.gen,
        ),
    )
}


def build_heads(
    module: nn.Module,
    names: Sequence[str],
    spec: HeadSpec,
    builders: Mapping[str, Callable[[HeadSpec], nn.Module]] | None = None,
) -> None:
    """Build the heads of objectives ``names`` on ``module`` (in registry order), those whose
    ``option`` is on in ``spec.config``; ``builders`` replace the registry's builders."""
    builders = builders or {}
    for obj in OBJECTIVES.values():
        if obj.name not in names or obj.head is None:
            continue
        if obj.option is None or getattr(spec.config, obj.option):
            module.add_module(obj.head, builders.get(obj.name, obj.build)(spec))


def run_heads(
    module: nn.Module,
    names: Sequence[str],
    inputs: Mapping[str, tuple],
    skip: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Generative outputs of the heads ``module`` has among ``names`` (not ``skip``): head
    ``name`` is called on ``inputs[name]``; a dict result ``{"pred": ..., "nonzero_prob": ...}``
    becomes ``{name}_output`` / ``{name}_nonzero_prob``, a tensor ``{name}_output``."""
    out = {}
    for obj in OBJECTIVES.values():
        if obj.name not in names or obj.name in skip or obj.head is None:
            continue
        head = getattr(module, obj.head, None)
        if head is None:
            continue
        res = head(*inputs[obj.name])
        if isinstance(res, dict):
            out.update({f"{obj.name}_{'output' if k == 'pred' else k}": v for k, v in res.items()})
        else:
            out[f"{obj.name}_output"] = res
    return out


def weighted_loss(
    ctx: LossContext, names: Sequence[str], weights: Mapping[str, float | None]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the objectives ``names`` that apply, and each term on its own.

    ``weights`` maps ``"{name}_weight"`` to a weight or ``None`` (the default rule: with a CLS
    term trained, each objective's ``weight_with_labels``, else its ``weight``). Terms of weight
    0 are not computed.

    Raises
    ------
    TypeError
        For a weight of an objective the module does not have.
    """
    unknown = set(weights) - {f"{n}_weight" for n in names}
    if unknown:
        raise TypeError(
            f"Unknown objective weights {sorted(unknown)}; this module's objectives are "
            f"{[f'{n}_weight' for n in names]}."
        )
    chosen = {n: weights.get(f"{n}_weight") for n in names}
    with_labels = "cls" in names and chosen["cls"] != 0 and OBJECTIVES["cls"].applies(ctx)
    terms, total = {}, 0.0
    for name in names:
        obj, weight = OBJECTIVES[name], chosen[name]
        if weight is None:
            with_default = with_labels and obj.weight_with_labels is not None
            weight = obj.weight_with_labels if with_default else obj.weight
        if weight == 0 or not obj.applies(ctx):
            continue
        terms[name] = obj.loss(ctx)
        total = total + weight * terms[name]
    return total, terms


def head_groups(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Module option -> checkpoint key prefixes of the heads it switches on (``do_mvc`` ->
    ``("mvc_decoder.",)``, ...) for the objectives ``names``, plus ``n_cls`` -> the CLS head."""
    groups = {
        obj.option: (f"{obj.head}.",)
        for obj in OBJECTIVES.values()
        if obj.name in names and obj.option and obj.head
    }
    if "cls" in names:
        groups["n_cls"] = (f"{OBJECTIVES['cls'].head}.",)
    return groups
