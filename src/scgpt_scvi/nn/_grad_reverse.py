"""Gradient reversal (Ganin & Lempitsky 2015), used by the adversarial batch discriminator."""

from __future__ import annotations

import torch

__all__ = ["grad_reverse"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return -ctx.lambd * grad_output, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-lambd`` in the backward pass.

    Parameters
    ----------
    x
        Any tensor.
    lambd
        Strength of the reversal.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import grad_reverse
    >>> x = torch.ones(3, requires_grad=True)
    >>> grad_reverse(x, lambd=0.5).sum().backward()
    >>> x.grad
    tensor([-0.5000, -0.5000, -0.5000])
    """
    return _GradReverse.apply(x, lambd)
