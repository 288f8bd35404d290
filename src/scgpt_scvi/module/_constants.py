"""Registry and output keys of the scGPT-family modules (scvi-tools' ``MODULE_KEYS`` style)."""

from typing import NamedTuple

import torch

from ..nn import CELL_EMB_STYLES

__all__ = [
    "CELL_KEY",
    "CELL_EMB_STYLES",
    "MODULE_KEYS",
    "PERT_KEY",
    "Tensor",
    "OptTensor",
    "Tensors",
]

#: Type aliases of the modules' signatures.
Tensor = torch.Tensor
OptTensor = torch.Tensor | None
Tensors = dict[str, torch.Tensor]

#: Registry key of the per-cell integer keys that seed tokenisation.
CELL_KEY = "cell_key"
#: Registry key of the perturbation condition codes.
PERT_KEY = "perturbation"


class _MODULE_KEYS(NamedTuple):
    # inference inputs
    X_KEY: str = "x"
    BATCH_INDEX_KEY: str = "batch_index"
    CELL_KEYS_KEY: str = "cell_keys"
    CONDITION_KEY: str = "condition"
    # inference outputs
    H_KEY: str = "h"
    CELL_EMB_KEY: str = "cell_emb"
    GENE_EMBS_KEY: str = "gene_embs"
    GENE_IDS_KEY: str = "gene_ids"
    VALUES_KEY: str = "values"
    TARGET_VALUES_KEY: str = "target_values"
    PADDING_MASK_KEY: str = "padding_mask"
    MLM_MASK_KEY: str = "mlm_mask"
    MOD_TYPES_KEY: str = "mod_types"
    PERT_FLAGS_KEY: str = "pert_flags"
    COLUMNS_KEY: str = "columns"
    X_IN_KEY: str = "x_in"
    EXPECTED_KEY: str = "expected"
    # generative outputs
    MLM_OUTPUT_KEY: str = "mlm_output"
    MLM_NONZERO_PROB_KEY: str = "mlm_nonzero_prob"
    MVC_OUTPUT_KEY: str = "mvc_output"
    MVC_NONZERO_PROB_KEY: str = "mvc_nonzero_prob"
    CLS_OUTPUT_KEY: str = "cls_output"
    DAB_OUTPUT_KEY: str = "dab_output"


#: Keys of the modules' inference and generative inputs and outputs.
MODULE_KEYS = _MODULE_KEYS()
