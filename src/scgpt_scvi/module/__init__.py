"""scvi-tools modules (torch side)."""

from ._constants import CELL_EMB_STYLES, CELL_KEY
from ._multiomic import SCGPTMultiomicModule
from ._perturbation import PERT_KEY, SCGPTPerturbationModule
from ._scgpt import SCGPTModule, pool_cells

__all__ = [
    "CELL_EMB_STYLES",
    "CELL_KEY",
    "PERT_KEY",
    "SCGPTModule",
    "SCGPTMultiomicModule",
    "SCGPTPerturbationModule",
    "pool_cells",
]
