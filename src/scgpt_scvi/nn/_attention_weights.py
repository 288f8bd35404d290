"""Explicit attention probabilities of one encoder layer, recomputed from its parameters.

The encoder itself runs fused attention (SDPA / flash), which never forms the probability
matrix. For analysis, :func:`capture_layer_input` grabs one layer's input with a forward
pre-hook (stopping the forward pass there, so later layers do not run), and
:func:`layer_attention_weights` recomputes that layer's head-averaged probabilities from its own
``self_attn.in_proj_weight`` / ``in_proj_bias`` -- the same numbers as
``torch.nn.MultiheadAttention(need_weights=True)`` with those weights. Every other layer keeps
its fused kernel.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["attention_probabilities", "capture_layer_input", "layer_attention_weights"]


def attention_probabilities(
    x: torch.Tensor,
    in_proj_weight: torch.Tensor,
    in_proj_bias: torch.Tensor | None,
    nhead: int,
    padding_mask: torch.Tensor | None = None,
    average_heads: bool = True,
) -> torch.Tensor:
    """Softmax attention probabilities of packed ``[q; k; v]`` projections over ``x``.

    Parameters
    ----------
    x
        ``(B, L, d)`` attention input (after the pre-norm, for pre-norm layers).
    in_proj_weight, in_proj_bias
        ``(3d, d)`` / ``(3d,)`` packed query, key and value projections.
    nhead
        Number of heads.
    padding_mask
        ``(B, L)`` True at pads: pads receive no attention, and their own rows are zero.
    average_heads
        Mean over heads (``(B, L, L)``) or per head (``(B, H, L, L)``).

    Returns
    -------
    Row ``i`` holds the probabilities that query token ``i`` attends to each key token; rows of
    real tokens sum to 1.
    """
    B, L, d = x.shape
    if d % nhead:
        raise ValueError(f"d_model={d} is not divisible by nhead={nhead}.")
    w_q, w_k = in_proj_weight[:d], in_proj_weight[d : 2 * d]
    b_q, b_k = (None, None) if in_proj_bias is None else (in_proj_bias[:d], in_proj_bias[d : 2 * d])
    dh = d // nhead
    q = F.linear(x, w_q, b_q).view(B, L, nhead, dh).transpose(1, 2)
    k = F.linear(x, w_k, b_k).view(B, L, nhead, dh).transpose(1, 2)
    scores = (q / math.sqrt(dh)) @ k.transpose(-2, -1)
    if padding_mask is not None:
        scores = scores.masked_fill(padding_mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if padding_mask is not None:
        probs = probs.masked_fill(padding_mask[:, None, :, None], 0.0)
    return probs.mean(1) if average_heads else probs


def layer_attention_weights(
    layer: nn.Module,
    x: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    average_heads: bool = True,
) -> torch.Tensor:
    """Attention probabilities of an encoder ``layer`` given its input ``x`` ``(B, L, d)``.

    ``layer`` is a :class:`~scgpt_scvi.nn.TransformerEncoderLayer` (or any layer with
    ``self_attn.in_proj_weight``, ``self_attn.in_proj_bias``, ``self_attn.nhead``, ``norm1`` and
    ``pre_norm`` / ``norm_first``); pre-norm layers attend over ``norm1(x)``, post-norm ones over
    ``x``. See :func:`attention_probabilities`.

    Examples
    --------
    >>> layer = TransformerEncoderLayer(d_model=16, nhead=2, d_hid=16, pre_norm=True)
    >>> w = layer_attention_weights(layer, torch.randn(2, 5, 16))   # (2, 5, 5)
    """
    attn = layer.self_attn
    pre_norm = getattr(layer, "pre_norm", getattr(layer, "norm_first", False))
    h = layer.norm1(x) if pre_norm else x
    nhead = getattr(attn, "nhead", getattr(attn, "num_heads", None))
    return attention_probabilities(
        h, attn.in_proj_weight, attn.in_proj_bias, nhead, padding_mask, average_heads
    )


class _LayerReached(Exception):
    """Raised by the pre-hook to stop the forward pass once the layer's input is captured."""


@contextlib.contextmanager
def capture_layer_input(layer: nn.Module, stop: bool = True) -> Iterator[dict]:
    """Record the input ``x`` and ``padding_mask`` of ``layer``'s next forward calls.

    Within the block, the dict it yields gets ``"x"`` and ``"padding_mask"`` (the layer's first
    two arguments, positional or ``padding_mask=``). With ``stop``, the forward pass ends when
    the layer is reached, so later layers do not run; the block swallows that stop signal.

    Examples
    --------
    >>> with capture_layer_input(encoder.layers[-1]) as seen:
    ...     encoder(x, padding_mask)
    >>> w = layer_attention_weights(encoder.layers[-1], seen["x"], seen["padding_mask"])
    """
    seen: dict = {}

    def hook(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["x"]
        seen["padding_mask"] = args[1] if len(args) > 1 else kwargs.get("padding_mask")
        if stop:
            raise _LayerReached

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    except _LayerReached:
        pass
    finally:
        handle.remove()
