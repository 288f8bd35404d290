"""scvi-tools modules (torch side): three thin modules on one backbone and one objectives table."""

from ._common import (
    adopt_config,
    config_getattr,
    config_setattr,
    draw_seed,
    embed_cells,
    family_loss,
    generate,
    masked_encode,
    parity_forward,
    tokenize_columns,
)
from ._config import SCGPTConfig, args_keys, config_fields
from ._constants import CELL_EMB_STYLES, CELL_KEY, MODULE_KEYS, PERT_KEY
from ._masked import MaskedValueModule
from ._multiomic import SCGPTMultiomicModule
from ._objectives import (
    DAB_WEIGHT,
    OBJECTIVES,
    RECONSTRUCTION_WEIGHT_WITH_LABELS,
    REGRESSION_LOSSES,
    HeadSpec,
    LossContext,
    Objective,
    build_heads,
    head_groups,
    per_cell_mse,
    regression,
    run_heads,
    second_view_cce,
    weighted_loss,
)
from ._perturbation import SCGPTPerturbationModule
from ._scgpt import CHECKPOINT_HEAD_GROUPS, SCGPTModule, pool_cells

__all__ = [
    "CHECKPOINT_HEAD_GROUPS",
    "CELL_EMB_STYLES",
    "CELL_KEY",
    "DAB_WEIGHT",
    "MODULE_KEYS",
    "OBJECTIVES",
    "PERT_KEY",
    "RECONSTRUCTION_WEIGHT_WITH_LABELS",
    "REGRESSION_LOSSES",
    "HeadSpec",
    "LossContext",
    "MaskedValueModule",
    "Objective",
    "SCGPTConfig",
    "SCGPTModule",
    "SCGPTMultiomicModule",
    "SCGPTPerturbationModule",
    "adopt_config",
    "config_getattr",
    "config_setattr",
    "args_keys",
    "build_heads",
    "config_fields",
    "draw_seed",
    "embed_cells",
    "family_loss",
    "generate",
    "head_groups",
    "masked_encode",
    "parity_forward",
    "per_cell_mse",
    "pool_cells",
    "regression",
    "run_heads",
    "second_view_cce",
    "tokenize_columns",
    "weighted_loss",
]
