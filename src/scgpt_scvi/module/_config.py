"""One typed configuration of the scGPT-family architecture options."""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..nn import ATTENTION_BACKENDS, CELL_EMB_STYLES, DSBN_CHOICES, TokenBackbone

__all__ = ["SCGPTConfig", "args_keys", "config_fields"]


def _arg(default: Any, args: str | None = None) -> Any:
    """A config field with its ``args.json`` key (scGPT's name; ``None``: not written)."""
    return field(default=default, metadata={"args": args})


@dataclass
class SCGPTConfig:
    """Architecture and tokenisation options of an scGPT-family module.

    The single source of truth for the options: the modules' keywords, ``args.json`` keys
    (:func:`config_fields`, read by :mod:`scgpt_scvi.checkpoint`), ``from_pretrained`` /
    ``save_pretrained`` and the saved init parameters. Field names are scGPT's keyword names;
    each field's ``args.json`` key (when the released checkpoints or tutorials write one) is in
    its metadata.

    Deprecated aliases accepted by :meth:`from_options`: ``use_fast_transformer`` /
    ``fast_transformer_backend`` (scGPT's) for ``attention_backend``.

    Parameters
    ----------
    ntoken
        Vocabulary size (rows of the gene embedding).
    d_model, nhead, d_hid, nlayers
        Transformer width, heads, feed-forward width and depth.
    nlayers_cls
        Depth of the cell-type head.
    n_cls
        Number of cell types for the CLS objective.
    dropout
        Dropout everywhere.
    pad_id, cls_id
        Vocabulary ids of ``<pad>`` and ``<cls>``.
    pad_value, mask_value
        Input value at pads and at MLM-masked positions.
    do_mvc
        Build the MVC (GEPC) head.
    do_dab
        Build the adversarial batch discriminator.
    use_batch_labels
        Batch embedding added to the expression and MVC decoder inputs.
    num_batch_labels
        Number of batches.
    domain_spec_batchnorm
        ``True``/``"dsbn"``: one BatchNorm per batch; ``"batchnorm"``: one BatchNorm.
    input_emb_style
        ``"continuous"``, ``"category"`` or ``"scaling"``.
    n_input_bins
        Category table size for ``"category"``.
    cell_emb_style
        ``"cls"``, ``"avg-pool"`` or ``"w-pool"``.
    mvc_decoder_style
        See :class:`~scgpt_scvi.nn.MVCDecoder`.
    ecs_threshold
        Similarity threshold of the ECS objective.
    explicit_zero_prob
        Predict P(non-zero) beside each expression value.
    pre_norm
        Pre-norm transformer layers instead of post-norm.
    attention_backend
        ``"auto"`` (flash-attn's varlen kernel for CUDA fp16/bf16 inputs when flash-attn is
        installed, SDPA otherwise), ``"sdpa"`` or ``"flash"``; see
        :class:`~scgpt_scvi.nn.MultiheadSelfAttention`.
    attention_dropout
        Dropout on attention probabilities (default ``dropout``, as scGPT). ``0`` is faster in
        training (SDPA's fused kernels instead of a random number per attention score).
    checkpoint_activations
        Recompute each transformer layer in backward instead of keeping its activations
        (identical gradients, much less memory, about a third more compute).
    max_seq_len
        Maximum tokens per cell including ``<cls>``.
    n_bins
        Bins for per-cell value binning (``None``: raw values).
    include_zero_genes
        Tokenise every gene in the vocabulary, not only expressed ones.
    mask_ratio
        Fraction of each cell's gene tokens masked in training.
    cls_value
        Input value at ``<cls>`` (scGPT: 0 in training, ``pad_value`` in ``embed_data``).
    seed
        Seed of the tokeniser's random streams.
    mlm_loss
        MLM regression loss: ``"mse"`` or ``"huber"`` (see
        :data:`~scgpt_scvi.module.REGRESSION_LOSSES`).
    huber_delta
        Where the Huber loss turns linear, in standard deviations of the masked targets.
    dab_nlayers, dab_lambd, dab_reverse_grad
        Depth of the batch discriminator, its gradient-reversal strength, and whether its
        gradient is reversed (scGPT: 3, 1.0, True).
    """

    ntoken: int = _arg(0, None)
    d_model: int = _arg(512, "embsize")
    nhead: int = _arg(8, "nheads")
    d_hid: int = _arg(512, "d_hid")
    nlayers: int = _arg(12, "nlayers")
    nlayers_cls: int = _arg(3, "n_layers_cls")
    n_cls: int = _arg(1, "n_cls")
    dropout: float = _arg(0.2, "dropout")
    pad_id: int = _arg(0, None)
    cls_id: int = _arg(1, None)
    pad_value: float = _arg(-2.0, "pad_value")
    mask_value: float = _arg(-1.0, "mask_value")
    do_mvc: bool = _arg(False, "MVC")
    do_dab: bool = _arg(False, "DAB")
    use_batch_labels: bool = _arg(False, "use_batch_labels")
    num_batch_labels: int | None = _arg(None, "num_batch_labels")
    domain_spec_batchnorm: bool | Literal["dsbn", "batchnorm"] = _arg(False, "DSBN")
    input_emb_style: Literal["continuous", "category", "scaling"] = _arg(
        "continuous", "input_emb_style"
    )
    n_input_bins: int | None = _arg(None, "n_input_bins")
    cell_emb_style: Literal["cls", "avg-pool", "w-pool"] = _arg("cls", "cell_emb_style")
    mvc_decoder_style: Literal[
        "inner product", "inner product, detach", "concat query", "sum query"
    ] = _arg("inner product", "mvc_decoder_style")
    ecs_threshold: float = _arg(0.3, "ecs_thres")
    explicit_zero_prob: bool = _arg(False, "explicit_zero_prob")
    pre_norm: bool = _arg(False, "pre_norm")
    attention_backend: Literal["auto", "sdpa", "flash"] = _arg("auto", None)
    attention_dropout: float | None = _arg(None, None)
    checkpoint_activations: bool = _arg(False, None)
    max_seq_len: int = _arg(1200, "max_seq_len")
    n_bins: int | None = _arg(51, "n_bins")
    include_zero_genes: bool = _arg(False, None)
    mask_ratio: float = _arg(0.4, None)
    cls_value: float = _arg(0.0, "cls_value")
    seed: int = _arg(0, None)
    mlm_loss: Literal["mse", "huber"] = _arg("mse", None)
    huber_delta: float = _arg(1.0, None)
    dab_nlayers: int = _arg(3, None)
    dab_lambd: float = _arg(1.0, None)
    dab_reverse_grad: bool = _arg(True, None)

    def __post_init__(self) -> None:
        checks = {
            "cell_emb_style": CELL_EMB_STYLES,
            "domain_spec_batchnorm": DSBN_CHOICES,
            "attention_backend": ATTENTION_BACKENDS,
            "mlm_loss": ("mse", "huber"),
        }
        for name, choices in checks.items():
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"Unknown {name} {getattr(self, name)!r}; choose one of {tuple(choices)}."
                )
        needs_batches = (
            self.use_batch_labels or self.do_dab or self.domain_spec_batchnorm in (True, "dsbn")
        )
        if needs_batches and not self.num_batch_labels:
            raise ValueError(
                "use_batch_labels, do_dab and domain_spec_batchnorm need num_batch_labels >= 1."
            )
        if self.huber_delta <= 0:
            raise ValueError(f"huber_delta must be > 0; got {self.huber_delta}.")

    @classmethod
    def from_options(cls, options: Mapping[str, Any], **defaults: Any) -> SCGPTConfig:
        """A config from keyword ``options`` over ``defaults`` (a model's own defaults).

        Raises
        ------
        TypeError
            For an option that is not a field, naming the fields.
        """
        options = _resolve_aliases(dict(options))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"Unknown module options {unknown}; the options are {sorted(names)}.")
        return cls(**{**defaults, **options})

    def backbone_kwargs(self) -> dict[str, Any]:
        """Keywords of :class:`~scgpt_scvi.nn.TokenBackbone`: the options its signature names."""
        keys = inspect.signature(TokenBackbone).parameters
        return {k: getattr(self, k) for k in keys}


def config_fields() -> dict[str, dataclasses.Field]:
    """Field name -> field of :class:`SCGPTConfig` (metadata ``args``: the ``args.json`` key)."""
    return {f.name: f for f in dataclasses.fields(SCGPTConfig)}


def args_keys() -> dict[str, str]:
    """``args.json`` key -> :class:`SCGPTConfig` field, for the fields checkpoints write."""
    return {
        f.metadata["args"]: f.name for f in dataclasses.fields(SCGPTConfig) if f.metadata["args"]
    }


def _resolve_aliases(options: dict[str, Any]) -> dict[str, Any]:
    """Map scGPT's ``use_fast_transformer`` / ``fast_transformer_backend`` to
    ``attention_backend``, with a ``DeprecationWarning``."""
    fast = options.pop("use_fast_transformer", None)
    backend = options.pop("fast_transformer_backend", None)
    if fast is None and backend is None:
        return options
    warnings.warn(
        "use_fast_transformer / fast_transformer_backend are scGPT's names; use "
        "attention_backend='flash' | 'sdpa' | 'auto' instead.",
        DeprecationWarning,
        stacklevel=4,
    )
    if backend is not None and backend != "flash":
        raise ValueError(
            f"fast_transformer_backend={backend!r} is not supported; only 'flash' (flash-attn)."
        )
    if "attention_backend" not in options and fast is not None:
        options["attention_backend"] = "flash" if fast else "sdpa"
    return options
