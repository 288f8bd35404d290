"""Inference precision (autocast) and dynamic int8 quantisation of the transformer's linears."""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Literal

import torch
from torch import nn

__all__ = [
    "PRECISIONS",
    "QUANTIZE_MODES",
    "autocast",
    "check_quantize",
    "quantize_int8",
    "resolve_precision",
    "supported_precisions",
]

PRECISIONS = ("fp32", "bf16", "fp16")
QUANTIZE_MODES = ("int8",)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def supported_precisions(device: torch.device | str) -> tuple[str, ...]:
    """Precisions :func:`autocast` accepts on ``device``.

    CPU: ``fp32`` and ``bf16`` (bf16 is emulated, hence slower, on CPUs without AVX512-BF16 or
    AMX). CUDA: ``fp32``, ``fp16`` and ``bf16`` where the GPU supports it (Ampere or newer).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return ("fp32", "fp16", "bf16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
    if device.type == "cpu":
        return ("fp32", "bf16")
    return ("fp32",)


def resolve_precision(device: torch.device | str, precision: str | None) -> str:
    """``precision``, checked for ``device``; ``None`` -> bf16 on GPUs that support it, fp16 on
    other GPUs, fp32 elsewhere.

    Raises
    ------
    ValueError
        When ``precision`` is unknown or not supported on ``device`` (naming what is).
    """
    device = torch.device(device)
    supported = supported_precisions(device)
    if precision is None:
        return supported[-1] if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {PRECISIONS}.")
    if precision not in supported:
        raise ValueError(
            f"precision={precision!r} is not supported on {device}; supported there: {supported}."
        )
    return precision


def autocast(device: torch.device | str, precision: str):
    """Context running matmuls at ``precision`` on ``device`` (``torch.autocast``; fp32: none).

    Examples
    --------
    >>> with autocast("cpu", "bf16"):
    ...     y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    >>> y.dtype
    torch.bfloat16
    """
    device = torch.device(device)
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def check_quantize(quantize: str, device: torch.device | str = "cpu") -> None:
    """Raise ``ValueError`` unless ``quantize`` is a known mode that runs on ``device``."""
    device = torch.device(device)
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"Unknown quantize {quantize!r}; choose one of {QUANTIZE_MODES} or None.")
    if device.type != "cpu":
        raise ValueError(
            f"quantize={quantize!r} runs on CPU only (dynamic int8 kernels, x86 VNNI); the model "
            f"is on {device}. Use precision='bf16' or 'fp16' on GPUs, or move the model to CPU."
        )


def quantize_int8(module: nn.Module, quantize: Literal["int8"] = "int8") -> nn.Module:
    """An inference copy of ``module`` with dynamic int8 linear layers (the original is kept).

    Every ``nn.Linear`` and the packed ``[q; k; v]`` projection of each
    :class:`~scgpt_scvi.nn.MultiheadSelfAttention` get int8 weights (per output channel) and
    int8 activations quantised per token at run time; embeddings, norms and attention stay
    fp32. Built with ``torch.ao.quantization.quantize_dynamic`` (fbgemm / x86 kernels).

    Why not torchao: PyTorch 2.13 marks ``torch.ao.quantization`` deprecated in favour of
    torchao's ``quantize_``, but torchao 0.18's ``Int8DynamicActivationInt8WeightConfig`` has no
    fast CPU kernel (measured here ~20x slower than fp32 on a 512-wide MLP), while
    ``quantize_dynamic`` still ships in 2.13 and runs the fbgemm/x86 int8 kernels. Swapping in
    torchao is one function (:func:`_quantize_linears`) once it has CPU kernels.

    Raises
    ------
    ValueError
        For another mode than ``"int8"`` or a module not on CPU.

    Examples
    --------
    >>> from scgpt_scvi.nn import TransformerEncoder
    >>> enc = TransformerEncoder(2, d_model=32, nhead=4, d_hid=64).eval()
    >>> q = quantize_int8(enc)
    >>> q(torch.randn(3, 5, 32)).shape
    torch.Size([3, 5, 32])
    """
    from ._transformer import MultiheadSelfAttention

    params = list(module.parameters())
    check_quantize(quantize, params[0].device if params else torch.device("cpu"))
    qmodule = copy.deepcopy(module).eval()
    for attn in qmodule.modules():
        if isinstance(attn, MultiheadSelfAttention):
            proj = nn.Linear(attn.d_model, 3 * attn.d_model)
            proj.weight, proj.bias = attn.in_proj_weight, attn.in_proj_bias
            attn.qkv_proj = proj
    for p in qmodule.parameters():
        p.requires_grad_(False)
    return _quantize_linears(qmodule)


def _quantize_linears(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
