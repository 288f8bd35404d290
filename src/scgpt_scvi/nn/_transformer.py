"""Transformer encoder with PyTorch SDPA (and optional FlashAttention), scGPT parameter names.

Parameter names follow ``torch.nn.TransformerEncoderLayer``: ``self_attn.in_proj_weight``,
``self_attn.in_proj_bias``, ``self_attn.out_proj``, ``linear1``, ``linear2``, ``norm1``,
``norm2``. Released scGPT checkpoints store ``self_attn.Wqkv.*`` with the same packed
``[q; k; v]`` rows, so they load after a rename.
"""

from __future__ import annotations

import ctypes
import functools
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ATTENTION_BACKENDS",
    "MultiheadSelfAttention",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "chunked_dropout_attention",
    "flash_attn_available",
    "release_freed_memory",
    "varlen_attention",
]

ATTENTION_BACKENDS = ("auto", "sdpa", "flash")

#: Elements of one query block's ``(B, H, block, L)`` score tensor in the chunked path (16 MiB).
_BLOCK_ELEMENTS = 1 << 22


def _import_flash():
    """Return ``flash_attn_varlen_func`` or ``None`` when flash-attn is not installed."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def _drop_mask(
    shape: tuple[int, ...], p: float, device: torch.device
) -> tuple[torch.Tensor, float]:
    """Boolean dropout mask (True = dropped) and the keep-scale, from 16 random bits per element.

    Drawn from torch's default generator (``torch.manual_seed`` applies; activation checkpointing
    restores it), four elements per 64-bit draw, about 3x faster on CPU than ``bernoulli_``. The
    drop probability is ``p`` rounded to a multiple of 1/65536 and the scale is exact for it.
    """
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    bits.random_(-(2**63), 2**63 - 1)
    n_drop = round(p * 65536)
    drop = bits.view(torch.int16)[:n].view(shape) < n_drop - 32768
    return drop, 65536 / (65536 - n_drop)


def _chunked_core(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, p: float
) -> torch.Tensor:
    """Softmax attention with dropout, one block of queries at a time (see the public wrapper)."""
    B, H, L, Dh = q.shape
    block = max(1, min(L, _BLOCK_ELEMENTS // max(1, B * H * k.shape[2])))
    kt = k.transpose(-2, -1) * (Dh**-0.5)
    outs = []
    for start in range(0, L, block):
        scores = torch.matmul(q[:, :, start : start + block], kt)
        if bias is not None:
            scores = scores + bias
        probs = torch.softmax(scores, dim=-1)
        if p > 0:
            drop, scale = _drop_mask(probs.shape, p, probs.device)
            probs = probs.masked_fill(drop, 0.0)
            outs.append(torch.matmul(probs, v) * scale)
        else:
            outs.append(torch.matmul(probs, v))
    return torch.cat(outs, dim=2)


def chunked_dropout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    recompute: bool = True,
) -> torch.Tensor:
    """Exact softmax attention with dropout on the probabilities, memory-lean on any device.

    Scores, softmax and dropout run one block of queries at a time (about 16 MiB per block), and
    with ``recompute`` (when gradients are needed) the whole computation is autograd-checkpointed:
    nothing of size ``(B, H, L, L)`` is kept between forward and backward, and during backward
    only this call's blocks exist. PyTorch's CPU SDPA falls back to its math kernel whenever
    ``dropout_p > 0`` and then keeps every layer's probabilities; this path is what the encoder
    uses instead for training with attention dropout on CPU.

    Parameters
    ----------
    q, k, v
        ``(B, H, L, D)`` queries, keys and values.
    padding_mask
        ``(B, L)`` True at padded keys.
    dropout_p
        Dropout probability on the attention probabilities.
    recompute
        Checkpoint the computation (recompute it in backward, with the same dropout mask).

    Examples
    --------
    >>> q = k = v = torch.randn(2, 4, 16, 8)
    >>> chunked_dropout_attention(q, k, v).shape
    torch.Size([2, 4, 16, 8])
    """
    bias = None
    if padding_mask is not None:
        bias = torch.zeros(padding_mask.shape, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(padding_mask, float("-inf"))[:, None, None, :]
    with torch.profiler.record_function("scgpt_chunked_dropout_attention"):
        if recompute and torch.is_grad_enabled() and q.requires_grad:
            return checkpoint(_chunked_core, q, k, v, bias, dropout_p, use_reentrant=False)
        return _chunked_core(q, k, v, bias, dropout_p)


def varlen_attention(
    qkv: torch.Tensor,
    padding_mask: torch.Tensor | None,
    nhead: int,
    kernel: Callable,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Pack pads away, run a varlen kernel with ``flash_attn_varlen_func``'s signature, repad.

    Parameters
    ----------
    qkv
        ``(B, L, 3·d)`` packed ``[q; k; v]`` projections.
    padding_mask
        ``(B, L)`` True at pads.
    nhead
        Heads.
    kernel
        ``kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=...)``
        on ``(total_tokens, nhead, head_dim)`` tensors (``flash_attn.flash_attn_varlen_func``).

    Returns
    -------
    ``(B, L, d)`` attention output; pad rows are zero.
    """
    B, L, three_d = qkv.shape
    d = three_d // 3
    keep = (
        torch.ones(B, L, dtype=torch.bool, device=qkv.device)
        if padding_mask is None
        else ~padding_mask
    )
    lengths = keep.sum(1, dtype=torch.int32)
    cu_seqlens = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
    max_len = int(lengths.max()) if B else 0
    q, k, v = qkv[keep].view(-1, 3, nhead, d // nhead).unbind(1)
    out = kernel(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, dropout_p=dropout_p)
    full = qkv.new_zeros(B, L, d)
    full[keep] = out.reshape(-1, d).to(full.dtype)
    return full


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
        ``"sdpa"`` (``torch.nn.functional.scaled_dot_product_attention``, any device and dtype),
        ``"flash"`` (flash-attn varlen kernels on CUDA in fp16/bf16 with pads packed away; other
        inputs use SDPA; warns when flash-attn or CUDA is missing) or ``"auto"`` (flash-attn
        where it is installed and the inputs are CUDA fp16/bf16, e.g. under
        ``precision="bf16"``; SDPA otherwise, silently).

    Notes
    -----
    Kernels: without dropout (eval, or ``dropout=0``) SDPA runs its flash kernel on CPU and its
    flash / memory-efficient kernels on CUDA. Training with dropout on CPU uses
    :func:`chunked_dropout_attention` (SDPA would fall back to its math kernel and keep every
    layer's ``B × H × L × L`` probabilities); on CUDA SDPA's kernels take dropout themselves.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import MultiheadSelfAttention
    >>> attention = MultiheadSelfAttention(d_model=16, nhead=2)
    >>> pads = torch.tensor([[False, False, True]])
    >>> attention(torch.randn(1, 3, 16), padding_mask=pads).shape
    torch.Size([1, 3, 16])
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, backend: str = "auto"):
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
        self._flash_checked = backend != "auto"  # "auto" imports flash-attn at first CUDA use
        if backend == "flash":
            self._flash = _import_flash()
            if self._flash is None:
                warnings.warn(
                    "attention_backend='flash' but flash-attn is not installed; using SDPA.",
                    stacklevel=2,
                )
            elif not torch.cuda.is_available():
                warnings.warn(
                    "attention_backend='flash' needs CUDA (fp16/bf16 inputs); no CUDA device is "
                    "available, so SDPA is used.",
                    stacklevel=2,
                )
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _use_flash(self, x: torch.Tensor) -> bool:
        if not (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)):
            return False
        if not self._flash_checked:
            self._flash, self._flash_checked = _import_flash(), True
        return self._flash is not None

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over ``x`` ``(B, L, d)``; ``padding_mask`` ``(B, L)`` is True at pads."""
        B, L, d = x.shape
        proj = getattr(self, "qkv_proj", None)  # set on int8 inference copies (quantize_int8)
        qkv = proj(x) if proj is not None else F.linear(x, self.in_proj_weight, self.in_proj_bias)
        p = self.dropout if self.training else 0.0
        if self._use_flash(qkv):
            return self.out_proj(varlen_attention(qkv, padding_mask, self.nhead, self._flash, p))
        q, k, v = qkv.view(B, L, 3, self.nhead, d // self.nhead).permute(2, 0, 3, 1, 4)
        if p > 0 and not qkv.is_cuda:
            out = chunked_dropout_attention(q, k, v, padding_mask, p)
        else:
            mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, d))


class TransformerEncoderLayer(nn.Module):
    """One encoder layer, post-norm (scGPT's default) or pre-norm, ReLU feed-forward.

    Parameters
    ----------
    d_model, nhead, d_hid, dropout
        Width, heads, feed-forward width and dropout (residual and feed-forward; attention too
        unless ``attention_dropout`` is given).
    attention_dropout
        Dropout on the attention probabilities (default ``dropout``, as scGPT). ``0`` lets
        training use SDPA's fused kernels (on CPU several times faster per attention call than
        dropout, which needs a random number per score).
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
        attention_backend: str = "auto",
        attention_dropout: float | None = None,
    ):
        super().__init__()
        if attention_dropout is None:
            attention_dropout = dropout
        if not 0.0 <= attention_dropout < 1.0:
            raise ValueError(f"attention_dropout={attention_dropout} must be in [0, 1).")
        self.self_attn = MultiheadSelfAttention(
            d_model, nhead, attention_dropout, attention_backend
        )
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

    Parameters
    ----------
    nlayers
        Depth.
    checkpoint_activations
        In training, keep only each layer's input and recompute the layer in backward
        (``torch.utils.checkpoint``, dropout masks reproduced): gradients are identical, memory
        for activations drops to about one layer's, at the cost of one more forward pass. On
        CPU each layer's freed memory is then also handed back to the operating system
        (:func:`release_freed_memory`), so the peak resident memory follows the live tensors:
        glibc otherwise keeps freed activation buffers as heap fragments, which at 8 x 512 tokens
        of the whole-human model more than doubles the peak (3.5 GB instead of 1.9 GB).
    **layer_kwargs
        :class:`TransformerEncoderLayer` options.

    Examples
    --------
    >>> enc = TransformerEncoder(2, d_model=32, nhead=4, d_hid=64, checkpoint_activations=True)
    >>> enc(torch.randn(3, 5, 32)).shape
    torch.Size([3, 5, 32])
    """

    def __init__(self, nlayers: int, checkpoint_activations: bool = False, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(TransformerEncoderLayer(**layer_kwargs) for _ in range(nlayers))
        self.checkpoint_activations = checkpoint_activations

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run every layer; ``padding_mask`` ``(B, L)`` is True at pads."""
        recompute = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        trim = recompute and x.device.type == "cpu"
        for layer in self.layers:
            if recompute:
                x = checkpoint(layer, x, padding_mask, use_reentrant=False)
            else:
                x = layer(x, padding_mask)
            if trim:
                release_freed_memory()
                if x.requires_grad:  # and after this layer's recomputation in backward
                    x.register_hook(_release_after_backward)
        return x


def release_freed_memory() -> bool:
    """Return the C heap's free memory to the operating system (glibc's ``malloc_trim(0)``).

    PyTorch's CPU tensors come from ``malloc``; glibc keeps freed blocks up to its dynamic mmap
    threshold (32 MiB) in the heap, fragmented, so a process's resident memory can stay far
    above its live tensors. Returns False where glibc is not the C library (nothing is done).

    Examples
    --------
    >>> from scgpt_scvi.nn import release_freed_memory
    >>> isinstance(release_freed_memory(), bool)
    True
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _release_after_backward(grad: torch.Tensor) -> None:
    release_freed_memory()
