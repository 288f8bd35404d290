"""scGPT's objectives as plain functions: MLM/MVC regression, P(non-zero) NLL, CCE, ECS, DAB."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "masked_mse_loss",
    "masked_nonzero_nll",
    "cce_loss",
    "ecs_loss",
    "dab_loss",
]


def masked_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the positions where ``mask`` is True (0 when none are)."""
    mask = mask.float()
    return ((pred - target) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)


def masked_nonzero_nll(
    nonzero_prob: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Bernoulli NLL of ``target > 0`` under ``nonzero_prob``, at masked positions.

    scGPT calls this ``criterion_neg_log_bernoulli`` and its input ``zero_probs``; the input is
    the probability that the value is **non-zero**.
    """
    mask = mask.float()
    p = nonzero_prob.clamp(1e-7, 1 - 1e-7)
    nll = -torch.distributions.Bernoulli(probs=p).log_prob((target > 0).float())
    return (nll * mask).sum() / mask.sum().clamp(min=1.0)


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` across DDP processes, keeping the local slice's gradient."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, 0)


def cce_loss(cell1: torch.Tensor, cell2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Contrastive cell embedding (InfoNCE over two dropout views): CE of ``cos / temperature``.

    Under DDP both views are gathered across processes, as scGPT does.
    """
    cell1, cell2 = _gather_with_grad(cell1), _gather_with_grad(cell2)
    sim = F.cosine_similarity(cell1.unsqueeze(1), cell2.unsqueeze(0), dim=-1) / temperature
    return F.cross_entropy(sim, torch.arange(sim.shape[0], device=sim.device))


def ecs_loss(cell_emb: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """Elastic cell similarity: ``mean(1 - (relu(S) - threshold)^2)`` with ``S``'s diagonal zeroed.

    ``S`` is the cosine-similarity matrix of ``cell_emb``; the mean runs over all ``B^2`` entries,
    as in scGPT (scGPT's trainer multiplies this term by 10).
    """
    e = F.normalize(cell_emb, p=2, dim=1)
    sim = e @ e.t()
    sim = sim.masked_fill(torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device), 0.0)
    return torch.mean(1 - (F.relu(sim) - threshold) ** 2)


def dab_loss(logits: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
    """Domain adaptation by reverse back-propagation: batch cross-entropy.

    ``logits`` come from :class:`~scgpt_scvi.nn.AdversarialDiscriminator`, which reverses the
    gradient into the cell embedding.
    """
    return F.cross_entropy(logits, batch_index.reshape(-1).long())
