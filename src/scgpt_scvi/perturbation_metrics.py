"""Deprecated alias of ``scgpt_scvi.metrics``, where the perturbation metrics now live.

``from scgpt_scvi.perturbation_metrics import evaluate_perturbations`` still works and returns
the same objects, with a :class:`DeprecationWarning`; import them from :mod:`scgpt_scvi.metrics`.
"""

from __future__ import annotations

import warnings
from typing import Any

from . import metrics as _metrics

__all__ = list(_metrics.__all__)


def __getattr__(name: str) -> Any:
    if name in __all__:
        warnings.warn(
            "scgpt_scvi.perturbation_metrics moved to scgpt_scvi.metrics; import "
            f"{name} from scgpt_scvi.metrics.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
