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
    """Mean squared error over the positions where ``mask`` is True (0 when none are).

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import masked_mse_loss
    >>> pred, target = torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[1.0, 4.0, 0.0]])
    >>> masked_mse_loss(pred, target, mask=torch.tensor([[True, True, False]]))
    tensor(2.)
    """
    mask = mask.float()
    return ((pred - target) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)


def masked_nonzero_nll(
    nonzero_prob: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Bernoulli NLL of ``target > 0`` under ``nonzero_prob``, at masked positions.

    scGPT calls this ``criterion_neg_log_bernoulli`` and its input ``zero_probs``; the input is
    the probability that the value is **non-zero**.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import masked_nonzero_nll
    >>> prob = torch.tensor([[0.9, 0.2]])  # probability that each value is non-zero
    >>> loss = masked_nonzero_nll(prob, torch.tensor([[3.0, 0.0]]), torch.tensor([[True, True]]))
    >>> round(loss.item(), 4)
    0.1643
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

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import cce_loss
    >>> view1, view2 = torch.randn(8, 16), torch.randn(8, 16)  # two embeddings of the same cells
    >>> cce_loss(view1, view2).shape
    torch.Size([])
    """
    cell1, cell2 = _gather_with_grad(cell1), _gather_with_grad(cell2)
    sim = F.cosine_similarity(cell1.unsqueeze(1), cell2.unsqueeze(0), dim=-1) / temperature
    return F.cross_entropy(sim, torch.arange(sim.shape[0], device=sim.device))


def ecs_loss(cell_emb: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """Elastic cell similarity: ``mean(1 - (relu(S) - threshold)^2)`` with ``S``'s diagonal zeroed.

    ``S`` is the cosine-similarity matrix of ``cell_emb``; the mean runs over all ``B^2`` entries,
    as in scGPT (scGPT's trainer multiplies this term by 10).

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import ecs_loss
    >>> ecs_loss(torch.randn(8, 16), threshold=0.8).shape
    torch.Size([])
    """
    e = F.normalize(cell_emb, p=2, dim=1)
    sim = e @ e.t()
    sim = sim.masked_fill(torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device), 0.0)
    return torch.mean(1 - (F.relu(sim) - threshold) ** 2)


def dab_loss(logits: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
    """Domain adaptation by reverse back-propagation: batch cross-entropy.

    ``logits`` come from :class:`~scgpt_scvi.nn.AdversarialDiscriminator`, which reverses the
    gradient into the cell embedding.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import dab_loss
    >>> dab_loss(torch.randn(4, 3), batch_index=torch.tensor([0, 1, 2, 1])).shape
    torch.Size([])
    """
    return F.cross_entropy(logits, batch_index.reshape(-1).long())
