"""scGPT single-cell transformers as an scvi-tools plugin."""

from importlib.metadata import PackageNotFoundError, version

from . import checkpoint, data, metrics, module, nn, tl
from .data import GeneVocab
from .model import SCGPT, SCGPTMultiomic, SCGPTPerturbation, SCGPTTrainingPlan
from .module import SCGPTModule, SCGPTMultiomicModule, SCGPTPerturbationModule

try:
    __version__ = version("scgpt-scvi")
except PackageNotFoundError:  # pragma: no cover
    __version__ = "0+unknown"

__all__ = [
    "SCGPT",
    "SCGPTModule",
    "SCGPTMultiomic",
    "SCGPTMultiomicModule",
    "SCGPTPerturbation",
    "SCGPTPerturbationModule",
    "SCGPTTrainingPlan",
    "GeneVocab",
    "checkpoint",
    "data",
    "metrics",
    "module",
    "nn",
    "tl",
]
