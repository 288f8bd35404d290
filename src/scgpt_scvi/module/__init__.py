"""scvi-tools modules (torch side)."""

from ._constants import CELL_EMB_STYLES, CELL_KEY
from ._scgpt import SCGPTModule, pool_cells

__all__ = ["CELL_EMB_STYLES", "CELL_KEY", "SCGPTModule", "pool_cells"]
