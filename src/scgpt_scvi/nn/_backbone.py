"""The shared trunk of the scGPT family: token embedding, optional batch norm, transformer, pool."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._batchnorm import DomainSpecificBatchNorm1d, TokenBatchNorm1d
from ._encoders import BatchLabelEncoder, GeneEncoder, make_value_encoder
from ._transformer import TransformerEncoder

__all__ = ["CELL_EMB_STYLES", "DSBN_CHOICES", "TokenBackbone", "pool_cells"]

CellEmbStyle = Literal["cls", "avg-pool", "w-pool"]
CELL_EMB_STYLES: tuple[str, ...] = ("cls", "avg-pool", "w-pool")
#: ``domain_spec_batchnorm`` values: ``True``/``"dsbn"`` one BatchNorm per batch,
#: ``"batchnorm"`` one BatchNorm, ``False`` none.
DSBN_CHOICES = (False, True, "dsbn", "batchnorm")


def pool_cells(
    h: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor, style: str
) -> torch.Tensor:
    """Cell embedding from token states ``h`` ``(B, L, d)``.

    ``"cls"``: the ``<cls>`` state. ``"avg-pool"``: mean over non-pad tokens. ``"w-pool"``: sum of
    states weighted by input values over non-pad tokens, L2-normalised. (scGPT's pools include
    pads; excluding them makes embeddings independent of padding.)

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import pool_cells
    >>> h, values = torch.randn(2, 4, 16), torch.rand(2, 4)
    >>> pads = torch.tensor([[False, False, False, True], [False, False, True, True]])
    >>> pool_cells(h, values, pads, style="avg-pool").shape
    torch.Size([2, 16])
    """
    if style == "cls":
        return h[:, 0]
    keep = (~padding_mask).unsqueeze(-1).to(h.dtype)
    if style == "avg-pool":
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1)
    if style == "w-pool":
        return F.normalize((h * keep * values.unsqueeze(-1)).sum(1), p=2, dim=1)
    raise ValueError(f"Unknown cell_emb_style {style!r}; choose one of {CELL_EMB_STYLES}.")


class TokenBackbone(nn.Module):
    """Gene + value (+ extra) token embedding, optional (domain-specific) batch norm, the
    transformer, and the cell pool: what every scGPT-family model shares.

    Its parts carry the released checkpoints' names (``encoder``, ``value_encoder``,
    ``batch_encoder``, ``dsbn`` / ``bn``, ``transformer_encoder``). A model mounts them on itself
    with :meth:`mount`, so its state dict keeps the released key layout while the backbone
    runs them.

    Parameters
    ----------
    ntoken
        Vocabulary size (rows of the gene embedding).
    d_model, nhead, d_hid, nlayers, dropout, pre_norm
        Transformer width, heads, feed-forward width, depth, dropout and layer style.
    pad_id
        Vocabulary id of ``<pad>`` (its gene-embedding row starts and stays at zero).
    input_emb_style
        ``"continuous"``, ``"category"`` or ``"scaling"`` value embedding.
    n_input_bins
        Category table size for ``"category"``.
    pad_value
        Input value at pads.
    num_batch_labels
        Number of batches (for the batch embedding and DSBN).
    use_batch_labels
        Build the batch embedding ``batch_encoder`` (:meth:`batch_emb`).
    domain_spec_batchnorm
        ``True``/``"dsbn"``: one BatchNorm per batch; ``"batchnorm"``: one BatchNorm.
    cell_emb_style
        ``"cls"``, ``"avg-pool"`` or ``"w-pool"`` (:func:`pool_cells`).
    attention_backend, attention_dropout, checkpoint_activations
        See :class:`~scgpt_scvi.nn.TransformerEncoder`.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import TokenBackbone
    >>> trunk = TokenBackbone(ntoken=10, d_model=16, nhead=2, d_hid=16, nlayers=1)
    >>> ids, values = torch.randint(0, 8, (2, 5)), torch.rand(2, 5)
    >>> h, gene_embs = trunk(ids, values, torch.zeros(2, 5, dtype=torch.bool))
    >>> trunk.pool(h, values, torch.zeros(2, 5, dtype=torch.bool)).shape
    torch.Size([2, 16])
    """

    def __init__(
        self,
        ntoken: int,
        d_model: int = 512,
        nhead: int = 8,
        d_hid: int = 512,
        nlayers: int = 12,
        dropout: float = 0.2,
        pad_id: int = 0,
        input_emb_style: Literal["continuous", "category", "scaling"] = "continuous",
        n_input_bins: int | None = None,
        pad_value: float = -2.0,
        num_batch_labels: int | None = None,
        use_batch_labels: bool = False,
        domain_spec_batchnorm: bool | str = False,
        cell_emb_style: CellEmbStyle = "cls",
        pre_norm: bool = False,
        attention_backend: str = "auto",
        attention_dropout: float | None = None,
        checkpoint_activations: bool = False,
    ):
        super().__init__()
        if cell_emb_style not in CELL_EMB_STYLES:
            raise ValueError(
                f"Unknown cell_emb_style {cell_emb_style!r}; choose one of {CELL_EMB_STYLES}."
            )
        if domain_spec_batchnorm not in DSBN_CHOICES:
            raise ValueError(
                f"Unknown domain_spec_batchnorm {domain_spec_batchnorm!r}; "
                f"choose one of {DSBN_CHOICES}."
            )
        self.input_emb_style, self.cell_emb_style = input_emb_style, cell_emb_style
        self.pad_id, self.use_batch_labels = pad_id, use_batch_labels
        #: ``"dsbn"`` (one BatchNorm per batch), ``"bn"`` (one BatchNorm) or ``None``: the
        #: normalisation of the token embeddings, and the name of its part.
        self.norm = {True: "dsbn", "dsbn": "dsbn", "batchnorm": "bn"}.get(domain_spec_batchnorm)
        self.encoder = GeneEncoder(ntoken, d_model, padding_idx=pad_id)
        self.value_encoder = make_value_encoder(
            input_emb_style, d_model, dropout, n_input_bins, pad_value
        )
        if use_batch_labels:
            self.batch_encoder = BatchLabelEncoder(num_batch_labels, d_model)
        if self.norm == "dsbn":
            self.dsbn = DomainSpecificBatchNorm1d(d_model, num_batch_labels, eps=6.1e-5)
        elif self.norm == "bn":
            self.bn = TokenBatchNorm1d(d_model, eps=6.1e-5)
        self.transformer_encoder = TransformerEncoder(
            nlayers,
            d_model=d_model,
            nhead=nhead,
            d_hid=d_hid,
            dropout=dropout,
            pre_norm=pre_norm,
            attention_backend=attention_backend,
            attention_dropout=attention_dropout,
            checkpoint_activations=checkpoint_activations,
        )

    def mount(self, owner: nn.Module) -> None:
        """Register the parts on ``owner`` under their checkpoint names and keep the backbone
        as ``owner.backbone`` (not a submodule: its parts are ``owner``'s, so they are saved,
        moved and trained once, under the released names)."""
        for name, part in self.named_children():
            owner.add_module(name, part)
        object.__setattr__(owner, "backbone", self)

    def reset_gene_embedding(self) -> None:
        """scGPT's initialisation of the gene embedding: uniform in ``[-0.1, 0.1]``, pad row 0."""
        nn.init.uniform_(self.encoder.embedding.weight, -0.1, 0.1)
        with torch.no_grad():
            self.encoder.embedding.weight[self.pad_id].zero_()

    @property
    def needs_batch(self) -> bool:
        """Whether :meth:`forward` or :meth:`batch_emb` read batch labels."""
        return self.use_batch_labels or self.norm == "dsbn"

    def batch_emb(self, batch_index: torch.Tensor | None) -> torch.Tensor | None:
        """``(B, d)`` batch embedding, or ``None`` without ``use_batch_labels``."""
        if not self.use_batch_labels:
            return None
        return self.batch_encoder(batch_index.reshape(-1).long())

    def forward(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        extra_embs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and values -> transformer states ``(B, L, d)`` and gene embeddings.

        The gene embeddings (``encoder`` output, no context) are the MVC queries. ``extra_embs``
        ``(B, L, d)``, if given, is added to the token embeddings before the transformer (a
        modality or perturbation-flag embedding).
        """
        if self.needs_batch and batch_index is None:
            raise ValueError("This model uses batch labels; pass batch_index.")
        gene_embs = self.encoder(gene_ids)
        v = self.value_encoder(values)
        x = gene_embs * v if self.input_emb_style == "scaling" else gene_embs + v
        if extra_embs is not None:
            x = x + extra_embs
        if self.norm == "dsbn":
            x = self.dsbn(x, batch_index, keep=~padding_mask)
        elif self.norm == "bn":
            x = self.bn(x, keep=~padding_mask)
        return self.transformer_encoder(x, padding_mask), gene_embs

    def pool(
        self, h: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor
    ) -> torch.Tensor:
        """Cell embeddings ``(B, d)`` by ``cell_emb_style`` (:func:`pool_cells`)."""
        return pool_cells(h, values, padding_mask, self.cell_emb_style)
