"""Key layouts of scGPT state dicts: the released checkpoints' names <-> PyTorch's (ours)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = [
    "ATTENTION_RENAMES",
    "LOCAL_ONLY_KEYS",
    "SHARED_PREFIXES",
    "StateDict",
    "to_released_layout",
    "to_torch_layout",
]

#: The three attention layouts in the wild -> PyTorch's names (ours).
ATTENTION_RENAMES = (
    (re.compile(r"self_attn\._impl\.Wqkv\."), "self_attn.in_proj_"),
    (re.compile(r"self_attn\._impl\.out_proj\."), "self_attn.out_proj."),
    (re.compile(r"self_attn\.Wqkv\."), "self_attn.in_proj_"),
)
_RELEASED = re.compile(r"self_attn\.in_proj_(weight|bias)$")
#: Buffers of ours that released checkpoints do not hold.
LOCAL_ONLY_KEYS = ("gene_token_ids", "token_mod_ids")
#: What every scGPT-family model shares with a pretrained ``TransformerModel``.
SHARED_PREFIXES = ("encoder.", "value_encoder.", "transformer_encoder.")

StateDict = dict[str, torch.Tensor]


def to_torch_layout(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename any of the three attention layouts to ``self_attn.in_proj_*`` / ``out_proj``.

    Raises
    ------
    ValueError
        When two source keys map to the same name.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in ATTENTION_RENAMES:
            new = pattern.sub(repl, new)
        if new in out:
            raise ValueError(f"Checkpoint keys collide after renaming: {key!r} -> {new!r}.")
        out[new] = value
    return out


def to_released_layout(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Our names -> the released checkpoints' (``self_attn.Wqkv.*``), dropping local buffers."""
    return {
        _RELEASED.sub(r"self_attn.Wqkv.\1", k): v
        for k, v in state_dict.items()
        if k not in LOCAL_ONLY_KEYS
    }
