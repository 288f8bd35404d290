"""scGPT checkpoint folders (``args.json``, ``vocab.json``, ``best_model.pt``) <-> our modules.

Everything here is torch-level (no scvi-tools): reading and writing the three files, renaming the
attention layouts, and one strict loader that names every missing, unexpected or mis-shaped
tensor. Model wrappers build on it (:meth:`scgpt_scvi.model.SCGPT.from_pretrained`); other
modules of the family initialise their shared parts with :func:`load_pretrained_parts`.
"""

from ._args import ARGS_TO_KWARGS, ESSENTIAL_ARGS, args_to_kwargs, kwargs_to_args
from ._io import (
    ARGS_FILE,
    VOCAB_FILE,
    WEIGHT_FILES,
    atomic_path,
    commit_files,
    read_args,
    read_state_dict,
    read_vocab,
    save_state_dict,
)
from ._layout import (
    ATTENTION_RENAMES,
    LOCAL_ONLY_KEYS,
    SHARED_PREFIXES,
    to_released_layout,
    to_torch_layout,
)
from ._load import head_prefixes, load_pretrained_parts, load_state_dict_strict, state_options

__all__ = [
    "ARGS_FILE",
    "ARGS_TO_KWARGS",
    "ATTENTION_RENAMES",
    "ESSENTIAL_ARGS",
    "LOCAL_ONLY_KEYS",
    "SHARED_PREFIXES",
    "VOCAB_FILE",
    "WEIGHT_FILES",
    "args_to_kwargs",
    "atomic_path",
    "commit_files",
    "head_prefixes",
    "kwargs_to_args",
    "load_pretrained_parts",
    "load_state_dict_strict",
    "read_args",
    "read_state_dict",
    "read_vocab",
    "save_state_dict",
    "state_options",
    "to_released_layout",
    "to_torch_layout",
]
