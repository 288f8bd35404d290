"""Token, value and batch encoders (the input side of scGPT)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "GeneEncoder",
    "ContinuousValueEncoder",
    "CategoryValueEncoder",
    "BatchLabelEncoder",
    "ScalingValueEncoder",
    "VALUE_ENCODER_STYLES",
    "make_value_encoder",
]

VALUE_ENCODER_STYLES = ("continuous", "category", "scaling")


class _EmbeddingNorm(nn.Module):
    """An ``nn.Embedding`` followed by ``LayerNorm``: scGPT's gene, category and batch encoders.

    Parameters
    ----------
    num_embeddings
        Size of the table.
    embedding_dim
        Width of each embedding.
    padding_idx
        Row kept at zero and excluded from gradients, as in ``nn.Embedding``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed integer ids of any shape ``(...)`` into ``(..., embedding_dim)``."""
        return self.enc_norm(self.embedding(ids))


class GeneEncoder(_EmbeddingNorm):
    """Gene-token embedding (``encoder`` in scGPT checkpoints).

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import GeneEncoder
    >>> encoder = GeneEncoder(num_embeddings=100, embedding_dim=16, padding_idx=0)
    >>> encoder(torch.tensor([[1, 7, 0]])).shape
    torch.Size([1, 3, 16])
    """


class BatchLabelEncoder(_EmbeddingNorm):
    """Batch-label embedding (``batch_encoder``); also the multi-omic modality encoder.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import BatchLabelEncoder
    >>> BatchLabelEncoder(num_embeddings=3, embedding_dim=16)(torch.tensor([0, 2])).shape
    torch.Size([2, 16])
    """


class CategoryValueEncoder(_EmbeddingNorm):
    """Binned expression values as categories (``input_emb_style="category"``).

    Values are cast to ``long``; pad and mask values must therefore be valid rows of the table.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import CategoryValueEncoder
    >>> encoder = CategoryValueEncoder(num_embeddings=51, embedding_dim=16)
    >>> encoder(torch.tensor([[0, 12, 50]])).shape
    torch.Size([1, 3, 16])
    """

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Embed ``(B, L)`` bin values into ``(B, L, d)``."""
        return super().forward(values.long())


class ContinuousValueEncoder(nn.Module):
    """Expression value -> vector by a two-layer MLP (``input_emb_style="continuous"``).

    Parameters
    ----------
    d_model
        Output width.
    dropout
        Dropout applied after the final ``LayerNorm``.
    max_value
        Values are clamped at this maximum before encoding (scGPT uses 512).

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import ContinuousValueEncoder
    >>> encoder = ContinuousValueEncoder(d_model=16, dropout=0.0)
    >>> encoder(torch.tensor([[0.0, 3.0, 50.0]])).shape
    torch.Size([1, 3, 16])
    """

    def __init__(self, d_model: int, dropout: float = 0.1, max_value: float = 512.0):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.linear1 = nn.Linear(1, d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.max_value = max_value

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, L)`` values into ``(B, L, d)``."""
        x = torch.clamp(values, max=self.max_value).unsqueeze(-1)
        x = self.linear2(self.activation(self.linear1(x)))
        return self.dropout(self.norm(x))


class ScalingValueEncoder(nn.Module):
    """``input_emb_style="scaling"``: the gene embedding is multiplied by the value.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import ScalingValueEncoder
    >>> ScalingValueEncoder()(torch.tensor([[1.0, 2.0]])).shape
    torch.Size([1, 2, 1])
    """

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Return ``(B, L, 1)`` multipliers."""
        return values.unsqueeze(-1)


def make_value_encoder(
    style: str, d_model: int, dropout: float, n_input_bins: int | None, pad_value: float
) -> nn.Module:
    """Build the value encoder for ``input_emb_style``.

    Raises
    ------
    ValueError
        For an unknown style, or ``category`` without ``n_input_bins``.

    Examples
    --------
    >>> from scgpt_scvi.nn import make_value_encoder
    >>> type(make_value_encoder("category", 16, 0.0, n_input_bins=53, pad_value=51)).__name__
    'CategoryValueEncoder'
    """
    if style == "continuous":
        return ContinuousValueEncoder(d_model, dropout)
    if style == "category":
        if not n_input_bins:
            raise ValueError("input_emb_style='category' needs n_input_bins.")
        if not 0 <= pad_value < n_input_bins:
            raise ValueError(
                f"input_emb_style='category' needs pad_value in [0, n_input_bins={n_input_bins}); "
                f"got {pad_value}. scGPT uses pad_value=n_bins, mask_value=n_bins + 1, "
                "n_input_bins=n_bins + 2."
            )
        return CategoryValueEncoder(n_input_bins, d_model, padding_idx=int(pad_value))
    if style == "scaling":
        return ScalingValueEncoder()
    raise ValueError(f"Unknown input_emb_style {style!r}; choose one of {VALUE_ENCODER_STYLES}.")
