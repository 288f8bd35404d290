"""Domain-specific batch normalisation over token embeddings."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DomainSpecificBatchNorm1d", "TokenBatchNorm1d"]


def _normalise_tokens(norm, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Apply ``norm`` (callable on ``(N, d)``) to the tokens of ``x`` ``(B, L, d)`` in ``keep``."""
    out = x.clone()
    out[keep] = norm(x[keep])
    return out


class TokenBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` over token embeddings ``(B, L, d)`` (``domain_spec_batchnorm="batchnorm"``).

    Statistics use non-pad tokens only (scGPT's version also counts pads).

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import TokenBatchNorm1d
    >>> norm = TokenBatchNorm1d(16)
    >>> x, keep = torch.randn(4, 10, 16), torch.ones(4, 10, dtype=torch.bool)
    >>> norm(x, keep=keep).shape
    torch.Size([4, 10, 16])
    """

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """Normalise ``x`` ``(B, L, d)``; ``keep`` ``(B, L)`` marks the tokens that count."""
        if keep is None:
            keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return _normalise_tokens(super().forward, x, keep)


class DomainSpecificBatchNorm1d(nn.Module):
    """One ``BatchNorm1d`` per domain (batch), applied to each cell with its own domain's BN.

    The original applies ``bns[batch_labels[0]]`` to the whole minibatch; here every domain
    present in the minibatch is normalised separately, so mixed minibatches are correct. With one
    domain per minibatch, in eval mode, the two agree exactly.

    Parameters
    ----------
    num_features
        Embedding width ``d``.
    num_domains
        Number of domains.
    eps
        BN epsilon (scGPT: 6.1e-5).
    momentum
        BN momentum.
    affine
        Learn a per-domain scale and shift (never reachable in the original).

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import DomainSpecificBatchNorm1d
    >>> dsbn = DomainSpecificBatchNorm1d(num_features=16, num_domains=2)
    >>> x = torch.randn(4, 10, 16)  # cells x tokens x features
    >>> dsbn(x, domain=torch.tensor([0, 0, 1, 1])).shape
    torch.Size([4, 10, 16])
    """

    def __init__(
        self,
        num_features: int,
        num_domains: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
    ):
        super().__init__()
        self.num_domains = num_domains
        self.bns = nn.ModuleList(
            nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=affine)
            for _ in range(num_domains)
        )

    def forward(
        self, x: torch.Tensor, domain: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalise ``x`` ``(B, L, d)`` with per-cell ``domain`` ``(B,)``.

        ``keep`` ``(B, L)`` marks the tokens used (non-pad); statistics come from those only.
        """
        domain = domain.reshape(-1).long()
        if domain.numel() and (domain.min() < 0 or domain.max() >= self.num_domains):
            raise ValueError(
                f"Domain labels must lie in [0, {self.num_domains}); "
                f"got {domain.unique().tolist()}."
            )
        keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if keep is None else keep
        out = x
        for d in domain.unique().tolist():
            out = _normalise_tokens(self.bns[d], out, keep & (domain == d)[:, None])
        return out
