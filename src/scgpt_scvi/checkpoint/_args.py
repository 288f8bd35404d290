"""The ``args.json`` schema of scGPT checkpoint folders <-> our constructor keywords."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..module import args_keys
from ._io import ARGS_FILE

__all__ = ["ARGS_TO_KWARGS", "ESSENTIAL_ARGS", "args_to_kwargs", "kwargs_to_args"]

#: ``args.json`` keys without which the architecture is unknown.
ESSENTIAL_ARGS = ("embsize", "nheads", "d_hid", "nlayers")
#: ``args.json`` key (released names, and the names the tutorials/fixtures add) -> our keyword:
#: the ``args`` metadata of :class:`~scgpt_scvi.module.SCGPTConfig`'s fields.
ARGS_TO_KWARGS = args_keys()


def args_to_kwargs(args: Mapping[str, Any], source: str = ARGS_FILE) -> dict:
    """Constructor keywords of :class:`~scgpt_scvi.model.SCGPT` from an ``args.json`` dict.

    Keys are renamed by :data:`ARGS_TO_KWARGS` (``embsize`` -> ``d_model``, ``nheads`` ->
    ``nhead``, ``MVC`` -> ``do_mvc``, ``DSBN`` -> ``domain_spec_batchnorm``, ...); other keys
    (training bookkeeping) are ignored. ``input_style`` other than ``"binned"`` means raw input
    values (``n_bins=None``).

    Raises
    ------
    KeyError
        When an essential key (:data:`ESSENTIAL_ARGS`) is missing, naming it.
    ValueError
        When ``pad_token`` is not ``"<pad>"``.
    """
    missing = [k for k in ESSENTIAL_ARGS if k not in args]
    if missing:
        raise KeyError(
            f"{source} lacks the essential key(s) {missing} (needed: {list(ESSENTIAL_ARGS)})."
        )
    if args.get("pad_token", "<pad>") != "<pad>":
        raise ValueError(f"{source}: pad_token {args['pad_token']!r} is not supported ('<pad>').")
    kwargs = {ARGS_TO_KWARGS[k]: v for k, v in args.items() if k in ARGS_TO_KWARGS}
    _check_arg_types(args, source)
    if args.get("input_style", "binned") != "binned":
        kwargs["n_bins"] = None
    return kwargs


#: ``args.json`` keys that must be positive integers / numbers / booleans when present.
_INT_ARGS = ("embsize", "nheads", "d_hid", "nlayers", "n_layers_cls", "max_seq_len", "n_cls")
_BOOL_ARGS = ("MVC", "DAB", "explicit_zero_prob", "use_batch_labels", "pre_norm")


def _check_arg_types(args: Mapping[str, Any], source: str) -> None:
    """Raise a ValueError naming ``source`` and the key for values of the wrong type."""
    for key in _INT_ARGS:
        value = args.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{source}: {key} must be an integer; got {value!r}.")
        if value is not None and value < 1:
            raise ValueError(f"{source}: {key} must be >= 1; got {value!r}.")
    dropout = args.get("dropout")
    if dropout is not None and (
        isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1
    ):
        raise ValueError(f"{source}: dropout must be a number in [0, 1); got {dropout!r}.")
    for key in _BOOL_ARGS:
        if key in args and args[key] not in (True, False, None):  # 0 / 1 count as booleans
            raise ValueError(f"{source}: {key} must be true or false; got {args[key]!r}.")


def kwargs_to_args(kwargs: Mapping[str, Any]) -> dict:
    """Inverse of :func:`args_to_kwargs`: our keywords -> ``args.json`` keys (released names)."""
    inverse = {v: k for k, v in ARGS_TO_KWARGS.items()}
    args = {"pad_token": "<pad>", "fast_transformer": False}
    args.update({inverse[k]: v for k, v in kwargs.items() if k in inverse})
    args["input_style"] = "binned" if kwargs.get("n_bins") is not None else "normed_raw"
    return args
