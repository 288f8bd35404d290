"""Output heads: expression, cell type, MVC, adversarial batch, affine (perturbation)."""

from __future__ import annotations

import torch
from torch import nn

from ._grad_reverse import grad_reverse

__all__ = [
    "MVC_DECODER_STYLES",
    "ExprDecoder",
    "ClsDecoder",
    "MVCDecoder",
    "AdversarialDiscriminator",
    "AffineExprDecoder",
]

MVC_DECODER_STYLES = ("inner product", "inner product, detach", "concat query", "sum query")


def _mlp3(d_in: int, d_model: int) -> nn.Sequential:
    """``Linear -> LeakyReLU -> Linear -> LeakyReLU -> Linear(., 1)`` (scGPT's ``fc``)."""
    return nn.Sequential(
        nn.Linear(d_in, d_model),
        nn.LeakyReLU(),
        nn.Linear(d_model, d_model),
        nn.LeakyReLU(),
        nn.Linear(d_model, 1),
    )


class ExprDecoder(nn.Module):
    """Per-token expression head (GEP / MLM).

    Parameters
    ----------
    d_model
        Token width.
    explicit_zero_prob
        Also predict ``nonzero_prob`` = P(value > 0) (scGPT's ``zero_probs``).
    use_batch_labels
        Input is ``[h, batch_emb]`` (width ``2 * d_model``). The multi-omic model sets this for
        its modality (+ batch) embedding.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import ExprDecoder
    >>> out = ExprDecoder(d_model=16, explicit_zero_prob=True)(torch.randn(2, 5, 16))
    >>> sorted(out), out["pred"].shape
    (['nonzero_prob', 'pred'], torch.Size([2, 5]))
    """

    def __init__(
        self, d_model: int, explicit_zero_prob: bool = False, use_batch_labels: bool = False
    ):
        super().__init__()
        d_in = 2 * d_model if use_batch_labels else d_model
        self.fc = _mlp3(d_in, d_model)
        self.explicit_zero_prob = explicit_zero_prob
        if explicit_zero_prob:
            self.zero_logit = _mlp3(d_in, d_model)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` ``(B, L, d_in)`` -> ``{"pred": (B, L)[, "nonzero_prob": (B, L)]}``."""
        out = {"pred": self.fc(x).squeeze(-1)}
        if self.explicit_zero_prob:
            out["nonzero_prob"] = torch.sigmoid(self.zero_logit(x).squeeze(-1))
        return out


class ClsDecoder(nn.Module):
    """Cell-type classifier on the cell embedding: ``(Linear, act, LayerNorm) x (nlayers - 1)``.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import ClsDecoder
    >>> ClsDecoder(d_model=16, n_cls=10)(torch.randn(4, 16)).shape
    torch.Size([4, 10])
    """

    def __init__(self, d_model: int, n_cls: int, nlayers: int = 3, activation: type = nn.ReLU):
        super().__init__()
        self._decoder = nn.ModuleList()
        for _ in range(nlayers - 1):
            self._decoder.extend([nn.Linear(d_model, d_model), activation(), nn.LayerNorm(d_model)])
        self.out_layer = nn.Linear(d_model, n_cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` -> logits ``(B, n_cls)``."""
        for layer in self._decoder:
            x = layer(x)
        return self.out_layer(x)


class AdversarialDiscriminator(ClsDecoder):
    """Batch discriminator behind gradient reversal (DAB), LeakyReLU hidden layers.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import AdversarialDiscriminator
    >>> dab = AdversarialDiscriminator(d_model=16, n_cls=3)  # batch logits, gradient reversed
    >>> dab(torch.randn(4, 16)).shape
    torch.Size([4, 3])
    """

    def __init__(
        self,
        d_model: int,
        n_cls: int,
        nlayers: int = 3,
        reverse_grad: bool = True,
        lambd: float = 1.0,
    ):
        super().__init__(d_model, n_cls, nlayers, activation=nn.LeakyReLU)
        self.reverse_grad, self.lambd = reverse_grad, lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` -> batch logits ``(B, n_batch)``; reverses the gradient into ``x``."""
        return super().forward(grad_reverse(x, self.lambd) if self.reverse_grad else x)


class MVCDecoder(nn.Module):
    """Masked value prediction for cell embeddings (GEPC): gene query x cell embedding.

    Parameters
    ----------
    d_model
        Width of the gene embeddings fed as queries.
    arch_style
        ``"inner product"`` (``pred_i = (W q_i) . c``), ``"inner product, detach"`` (same, gene
        embeddings detached), ``"concat query"`` (MLP on ``[c; q_i]``), ``"sum query"`` (MLP on
        ``c + q_i``). All four return the same dict (two crash in the original).
    explicit_zero_prob
        Also return ``nonzero_prob`` (every style).
    use_batch_labels
        The cell side is ``[cell_emb, batch_emb]`` (width ``2 * d_model``).

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import MVCDecoder
    >>> mvc = MVCDecoder(d_model=16, arch_style="inner product")
    >>> mvc(torch.randn(2, 16), torch.randn(2, 5, 16))["pred"].shape
    torch.Size([2, 5])
    """

    def __init__(
        self,
        d_model: int,
        arch_style: str = "inner product",
        explicit_zero_prob: bool = False,
        use_batch_labels: bool = False,
    ):
        super().__init__()
        if arch_style not in MVC_DECODER_STYLES:
            raise ValueError(
                f"Unknown mvc_decoder_style {arch_style!r}; choose one of {MVC_DECODER_STYLES}."
            )
        d_in = 2 * d_model if use_batch_labels else d_model
        self.arch_style, self.explicit_zero_prob = arch_style, explicit_zero_prob
        if arch_style.startswith("inner product"):
            self.gene2query = nn.Linear(d_model, d_model)
            self.W = nn.Linear(d_model, d_in, bias=False)
            if explicit_zero_prob:
                self.W_zero_logit = nn.Linear(d_model, d_in)
            return
        d_query = 64 if arch_style == "concat query" else d_in
        self.gene2query = nn.Linear(d_model, d_query)
        self.fc1 = nn.Linear(d_in + 64 if arch_style == "concat query" else d_in, 64)
        self.hidden_activation = nn.PReLU()
        self.fc2 = nn.Linear(64, 1)
        if explicit_zero_prob:
            self.fc2_zero_logit = nn.Linear(64, 1)

    def forward(self, cell_emb: torch.Tensor, gene_embs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``cell_emb`` ``(B, d_in)``, ``gene_embs`` ``(B, L, d_model)`` -> ``{"pred": (B, L)}``."""
        if self.arch_style.endswith("detach"):
            gene_embs = gene_embs.detach()
        query = torch.sigmoid(self.gene2query(gene_embs))
        if self.arch_style.startswith("inner product"):
            c = cell_emb.unsqueeze(2)
            out = {"pred": torch.bmm(self.W(query), c).squeeze(2)}
            if self.explicit_zero_prob:
                out["nonzero_prob"] = torch.sigmoid(
                    torch.bmm(self.W_zero_logit(query), c).squeeze(2)
                )
            return out
        c = cell_emb.unsqueeze(1).expand(-1, query.shape[1], -1)
        joint = torch.cat([c, query], dim=2) if self.arch_style == "concat query" else c + query
        h = self.hidden_activation(self.fc1(joint))
        out = {"pred": self.fc2(h).squeeze(2)}
        if self.explicit_zero_prob:
            out["nonzero_prob"] = torch.sigmoid(self.fc2_zero_logit(h).squeeze(2))
        return out


class AffineExprDecoder(nn.Module):
    """Affine expression decoder of the perturbation model: ``pred = coeff * x + bias``.

    Parameters
    ----------
    d_model
        Token width.
    explicit_zero_prob
        Also return ``nonzero_prob`` (from the coefficient decoder).
    activation
        Name of a ``torch.nn`` activation applied to ``pred`` (e.g. ``"ReLU"``), or ``None``.
    tanh_coeff
        Squash the coefficient with ``tanh``.
    adaptive_bias
        Scale the bias by the mean of each cell's non-zero input values.

    Examples
    --------
    >>> import torch
    >>> from scgpt_scvi.nn import AffineExprDecoder
    >>> decoder = AffineExprDecoder(d_model=16)
    >>> decoder(torch.randn(2, 5, 16), values=torch.rand(2, 5))["pred"].shape
    torch.Size([2, 5])
    """

    def __init__(
        self,
        d_model: int,
        explicit_zero_prob: bool = False,
        activation: str | None = None,
        tanh_coeff: bool = False,
        adaptive_bias: bool = False,
    ):
        super().__init__()
        self.coeff_decoder = ExprDecoder(d_model, explicit_zero_prob=explicit_zero_prob)
        self.bias_decoder = ExprDecoder(d_model)
        self.explicit_zero_prob = explicit_zero_prob
        self.tanh_coeff, self.adaptive_bias = tanh_coeff, adaptive_bias
        if activation is not None and not hasattr(nn, activation):
            raise ValueError(f"Unknown activation {activation!r}: not a torch.nn module name.")
        self.activation = getattr(nn, activation)() if activation else None

    def forward(self, x: torch.Tensor, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` ``(B, L, d)`` and input ``values`` ``(B, L)`` -> ``{"pred": (B, L), ...}``."""
        coeff = self.coeff_decoder(x)
        bias = self.bias_decoder(x)["pred"]
        c = torch.tanh(coeff["pred"]) if self.tanh_coeff else coeff["pred"]
        if self.adaptive_bias:
            nonzero = (values != 0).sum(1, keepdim=True).clamp(min=1)
            bias = bias * (values.sum(1, keepdim=True) / nonzero)
        pred = c * values + bias
        if self.activation is not None:
            pred = self.activation(pred)
        out = {"pred": pred}
        if self.explicit_zero_prob:
            out["nonzero_prob"] = coeff["nonzero_prob"]
        return out
