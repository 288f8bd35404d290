"""Transformer encoder with PyTorch SDPA (and optional FlashAttention), scGPT parameter names.

Parameter names follow ``torch.nn.TransformerEncoderLayer``: ``self_attn.in_proj_weight``,
``self_attn.in_proj_bias``, ``self_attn.out_proj``, ``linear1``, ``linear2``, ``norm1``,
``norm2``. Released scGPT checkpoints store ``self_attn.Wqkv.*`` with the same packed
``[q; k; v]`` rows, so they load after a rename.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ATTENTION_BACKENDS",
    "MultiheadSelfAttention",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "flash_attn_available",
]

ATTENTION_BACKENDS = ("sdpa", "flash")


def _import_flash():
    """Return ``flash_attn_varlen_qkvpacked_func`` or ``None`` when flash-attn is not installed."""
    try:
        from flash_attn import flash_attn_varlen_qkvpacked_func
    except ImportError:
        return None
    return flash_attn_varlen_qkvpacked_func


def flash_attn_available() -> bool:
    """Whether flash-attn can be imported and CUDA is present.

    Examples
    --------
    >>> from scgpt_scvi.nn import flash_attn_available
    >>> backend = "flash" if flash_attn_available() else "sdpa"
    """
    return torch.cuda.is_available() and _import_flash() is not None


class MultiheadSelfAttention(nn.Module):
    """Batch-first multi-head self-attention over padded sequences.

    Parameters
    ----------
    d_model
        Embedding width.
    nhead
        Number of heads (must divide ``d_model``).
    dropout
        Attention-probability dropout (training only).
    backend
        ``"sdpa"`` (``torch.nn.functional.scaled_dot_product_attention``, any device and dtype) or
        ``"flash"`` (flash-attn varlen kernels on CUDA in fp16/bf16; other inputs use SDPA).

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import MultiheadSelfAttention
    >>> attention = MultiheadSelfAttention(d_model=16, nhead=2)
    >>> pads = torch.tensor([[False, False, True]])
    >>> attention(torch.randn(1, 3, 16), padding_mask=pads).shape
    torch.Size([1, 3, 16])
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, backend: str = "sdpa"):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model={d_model} is not divisible by nhead={nhead}.")
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"Unknown attention_backend {backend!r}; choose one of {ATTENTION_BACKENDS}."
            )
        self.d_model, self.nhead, self.dropout = d_model, nhead, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self.backend = backend
        self._flash = None
        if backend == "flash":
            self._flash = _import_flash()
            if self._flash is None:
                warnings.warn(
                    "attention_backend='flash' but flash-attn is not installed; using SDPA.",
                    stacklevel=2,
                )
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _use_flash(self, x: torch.Tensor) -> bool:
        return self._flash is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over ``x`` ``(B, L, d)``; ``padding_mask`` ``(B, L)`` is True at pads."""
        B, L, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        p = self.dropout if self.training else 0.0
        if self._use_flash(qkv):
            out = self._flash_attention(qkv, padding_mask, p)
        else:
            q, k, v = qkv.view(B, L, 3, self.nhead, d // self.nhead).permute(2, 0, 3, 1, 4)
            mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            out = out.transpose(1, 2).reshape(B, L, d)
        return self.out_proj(out)

    def _flash_attention(
        self, qkv: torch.Tensor, padding_mask: torch.Tensor | None, p: float
    ) -> torch.Tensor:
        """Unpad, run flash-attn's varlen kernel, pad back (pad rows come back as zeros)."""
        B, L, _ = qkv.shape
        keep = (
            torch.ones(B, L, dtype=torch.bool, device=qkv.device)
            if padding_mask is None
            else ~padding_mask
        )
        lengths = keep.sum(1, dtype=torch.int32)
        cu_seqlens = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
        packed = qkv[keep].view(-1, 3, self.nhead, self.d_model // self.nhead)
        out = self._flash(packed, cu_seqlens, int(lengths.max()), dropout_p=p)
        full = qkv.new_zeros(B, L, self.d_model)
        full[keep] = out.reshape(-1, self.d_model)
        return full


class TransformerEncoderLayer(nn.Module):
    """One encoder layer, post-norm (scGPT's default) or pre-norm, ReLU feed-forward.

    Parameters
    ----------
    d_model, nhead, d_hid, dropout
        Width, heads, feed-forward width and dropout (attention, residual and feed-forward).
    pre_norm
        ``LayerNorm`` before each sub-block (``norm_first=True`` in PyTorch) instead of after.
    layer_norm_eps
        ``LayerNorm`` epsilon.
    attention_backend
        See :class:`MultiheadSelfAttention`.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import TransformerEncoderLayer
    >>> layer = TransformerEncoderLayer(d_model=16, nhead=2, d_hid=32, dropout=0.0)
    >>> layer(torch.randn(2, 6, 16)).shape
    torch.Size([2, 6, 16])
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        d_hid: int,
        dropout: float = 0.1,
        pre_norm: bool = False,
        layer_norm_eps: float = 1e-5,
        attention_backend: str = "sdpa",
    ):
        super().__init__()
        self.self_attn = MultiheadSelfAttention(d_model, nhead, dropout, attention_backend)
        self.linear1 = nn.Linear(d_model, d_hid)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _sa_block(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        return self.dropout1(self.self_attn(x, padding_mask))

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x)))))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Transform ``x`` ``(B, L, d)``; ``padding_mask`` ``(B, L)`` is True at pads."""
        if self.pre_norm:
            x = x + self._sa_block(self.norm1(x), padding_mask)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, padding_mask))
        return self.norm2(x + self._ff_block(x))


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerEncoderLayer` under ``layers.N`` (checkpoint names).

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import TransformerEncoder
    >>> encoder = TransformerEncoder(nlayers=2, d_model=16, nhead=2, d_hid=32, dropout=0.0)
    >>> encoder(torch.randn(2, 6, 16), padding_mask=torch.zeros(2, 6, dtype=torch.bool)).shape
    torch.Size([2, 6, 16])
    """

    def __init__(self, nlayers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(TransformerEncoderLayer(**layer_kwargs) for _ in range(nlayers))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run every layer; ``padding_mask`` ``(B, L)`` is True at pads."""
        for layer in self.layers:
            x = layer(x, padding_mask)
        return x
