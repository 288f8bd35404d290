"""scGPT checkpoint folders (``args.json``, ``vocab.json``, ``best_model.pt``) <-> our modules.

Everything here is torch-level (no scvi-tools): reading and writing the three files, renaming the
attention layouts, and one strict loader that names every missing, unexpected or mis-shaped
tensor. Model wrappers build on it (:meth:`scgpt_scvi.model.SCGPT.from_pretrained`); other
modules of the family initialise their shared parts with :func:`load_pretrained_parts`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import GeneVocab
from .data._vocab import read_json_object

logger = logging.getLogger(__name__)

__all__ = [
    "ARGS_TO_KWARGS",
    "ATTENTION_RENAMES",
    "ESSENTIAL_ARGS",
    "LOCAL_ONLY_KEYS",
    "SHARED_PREFIXES",
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

ARGS_FILE, VOCAB_FILE = "args.json", "vocab.json"
WEIGHT_FILES = ("best_model.pt", "best_model.safetensors")

#: The three attention layouts in the wild -> PyTorch's names (ours).
ATTENTION_RENAMES = (
    (re.compile(r"self_attn\._impl\.Wqkv\."), "self_attn.in_proj_"),
    (re.compile(r"self_attn\._impl\.out_proj\."), "self_attn.out_proj."),
    (re.compile(r"self_attn\.Wqkv\."), "self_attn.in_proj_"),
)
_RELEASED = re.compile(r"self_attn\.in_proj_(weight|bias)$")
#: Buffers of ours that released checkpoints do not hold.
LOCAL_ONLY_KEYS = ("gene_token_ids", "token_mod_ids")
#: What every scGPT-family model shares with a pretrained ``TransformerModel``.
SHARED_PREFIXES = ("encoder.", "value_encoder.", "transformer_encoder.")

#: ``args.json`` keys without which the architecture is unknown.
ESSENTIAL_ARGS = ("embsize", "nheads", "d_hid", "nlayers")
#: ``args.json`` key (released names, then the names the tutorials/fixtures add) -> our keyword.
ARGS_TO_KWARGS = {
    "embsize": "d_model",
    "nheads": "nhead",
    "d_hid": "d_hid",
    "nlayers": "nlayers",
    "n_layers_cls": "nlayers_cls",
    "dropout": "dropout",
    "pad_value": "pad_value",
    "mask_value": "mask_value",
    "input_emb_style": "input_emb_style",
    "n_bins": "n_bins",
    "max_seq_len": "max_seq_len",
    "MVC": "do_mvc",
    "DSBN": "domain_spec_batchnorm",
    "DAB": "do_dab",
    "ecs_thres": "ecs_threshold",
    "explicit_zero_prob": "explicit_zero_prob",
    "n_cls": "n_cls",
    "use_batch_labels": "use_batch_labels",
    "num_batch_labels": "num_batch_labels",
    "n_input_bins": "n_input_bins",
    "cell_emb_style": "cell_emb_style",
    "mvc_decoder_style": "mvc_decoder_style",
    "pre_norm": "pre_norm",
    "cls_value": "cls_value",
}

#: Architecture option -> the state-dict prefixes (or exact keys) that change with it. When a
#: model differs from its checkpoint in one of these, the listed tensors are new heads to train.
_HEAD_GROUPS = {
    "n_cls": ("cls_decoder.",),
    "num_batch_labels": ("batch_encoder.", "dsbn.", "grad_reverse_discriminator."),
    "use_batch_labels": (
        "batch_encoder.",
        "decoder.fc.0.weight",
        "decoder.zero_logit.0.weight",
        "mvc_decoder.W.weight",
        "mvc_decoder.W_zero_logit.weight",
    ),
    "domain_spec_batchnorm": ("dsbn.", "bn."),
    "do_dab": ("grad_reverse_discriminator.",),
    "explicit_zero_prob": ("decoder.zero_logit.", "mvc_decoder.W_zero_logit."),
    "do_mvc": ("mvc_decoder.",),
}

StateDict = dict[str, torch.Tensor]


# ---------------------------------------------------------------------- key layouts
def to_torch_layout(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename any of the three attention layouts to ``self_attn.in_proj_*`` / ``out_proj``.

    Raises
    ------
    ValueError
        When two source keys map to the same name.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in ATTENTION_RENAMES:
            new = pattern.sub(repl, new)
        if new in out:
            raise ValueError(f"Checkpoint keys collide after renaming: {key!r} -> {new!r}.")
        out[new] = value
    return out


def to_released_layout(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Our names -> the released checkpoints' (``self_attn.Wqkv.*``), dropping local buffers."""
    return {
        _RELEASED.sub(r"self_attn.Wqkv.\1", k): v
        for k, v in state_dict.items()
        if k not in LOCAL_ONLY_KEYS
    }


# ---------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (in the same folder) that replaces ``path`` on success.

    Write to the yielded path; when the block ends without an exception it is renamed onto
    ``path`` (``os.replace``, atomic on one file system), otherwise it is removed. A failed
    write therefore leaves any earlier ``path`` untouched and no file outside its folder.

    Examples
    --------
    >>> with atomic_path("out/model.safetensors") as tmp:
    ...     save_file(tensors, str(tmp))
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def commit_files(
    dir_path: str | os.PathLike, writers: Mapping[str, Callable[[Path], None]]
) -> list[Path]:
    """Write several files of one folder, all or nothing.

    Each ``writers[name](tmp_path)`` writes its file to a temporary path inside ``dir_path``;
    only when every writer has succeeded are the files renamed into place. A failing writer
    leaves the folder as it was (the temporary files are removed).

    Returns
    -------
    The paths written.
    """
    dir_path = Path(dir_path)
    with contextlib.ExitStack() as stack:
        tmps = {name: stack.enter_context(atomic_path(dir_path / name)) for name in writers}
        for name, write in writers.items():
            write(tmps[name])
    return [dir_path / name for name in writers]


# ---------------------------------------------------------------------- files
def _weights_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"No {' or '.join(WEIGHT_FILES)} in {path}.")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:  # files written without the zip format cannot be mmapped
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read checkpoint weights: a folder's ``best_model.pt`` (else ``best_model.safetensors``)
    or that file itself.

    ``.pt`` files are read with ``torch.load(weights_only=True)`` (memory-mapped when possible):
    they must hold a plain ``{name: tensor}`` dict.

    Raises
    ------
    ValueError
        When the file holds pickled Python objects other than tensors (refused, never
        unpickled) or is not a flat name -> tensor mapping.
    """
    file = _weights_path(path)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(file), device="cpu"))
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{file} is not a readable safetensors file (truncated or corrupt? {err})."
            ) from None
    try:
        state = _torch_load(file)
    except (RuntimeError, EOFError, OSError) as err:  # a truncated or corrupt file
        raise ValueError(
            f"{file} is not a readable torch checkpoint (truncated or corrupt? "
            f"{(str(err) or type(err).__name__).splitlines()[0]})."
        ) from None
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{file} holds pickled Python objects, not only tensors, so it is refused: it is "
            "read with torch.load(weights_only=True) and never unpickled. Re-save the weights "
            "as a plain state dict (torch.save(model.state_dict(), path)) or as safetensors. "
            f"(torch: {str(err).splitlines()[0]})"
        ) from None
    bad = (
        [type(state).__name__]
        if not isinstance(state, Mapping)
        else [k for k, v in state.items() if not isinstance(v, torch.Tensor)][:5]
    )
    if bad:
        raise ValueError(
            f"{file} must hold a flat {{name: tensor}} state dict; found {bad} that are not "
            "tensors."
        )
    return dict(state)


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, suffix: str | None = None
) -> None:
    """Write ``state_dict`` in the released layout (``self_attn.Wqkv.*``, no local buffers).

    The format follows ``suffix`` (default: ``path``'s): ``.safetensors`` or torch's ``.pt``.
    """
    released = {k: v.detach().cpu().contiguous() for k, v in to_released_layout(state_dict).items()}
    if (suffix or Path(path).suffix) == ".safetensors":
        from safetensors.torch import save_file

        save_file(released, str(path))
    else:
        torch.save(released, path)


def read_args(model_dir: str | os.PathLike) -> dict:
    """The raw ``args.json`` of a checkpoint folder."""
    path = Path(model_dir) / ARGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {ARGS_FILE} in {model_dir}.")
    return read_json_object(path)


def read_vocab(model_dir: str | os.PathLike) -> GeneVocab:
    """The folder's ``vocab.json`` (missing special tokens are appended, with a warning)."""
    path = Path(model_dir) / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {VOCAB_FILE} in {model_dir}.")
    return GeneVocab.from_file(path)


# ---------------------------------------------------------------------- args.json <-> kwargs
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


# ---------------------------------------------------------------------- strict loading
def state_options(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Architecture options visible in a state dict (either layout).

    Returns ``do_mvc``, ``explicit_zero_prob``, ``use_batch_labels``, ``domain_spec_batchnorm``,
    ``do_dab``, ``input_emb_style``, and where the tensors show them ``n_cls``,
    ``num_batch_labels`` and ``n_input_bins``.
    """
    keys = list(state_dict)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    def rows(key: str) -> int | None:
        return int(state_dict[key].shape[0]) if key in state_dict else None

    bns = {k.split(".")[2] for k in keys if k.startswith("dsbn.bns.")}
    opts: dict[str, Any] = {
        "do_mvc": has("mvc_decoder."),
        "explicit_zero_prob": has("decoder.zero_logit."),
        "use_batch_labels": has("batch_encoder."),
        "domain_spec_batchnorm": True if bns else ("batchnorm" if has("bn.") else False),
        "do_dab": has("grad_reverse_discriminator."),
        "input_emb_style": "category"
        if has("value_encoder.embedding.")
        else ("continuous" if has("value_encoder.linear1.") else "scaling"),
    }
    n_batches = (
        rows("batch_encoder.embedding.weight")
        or (len(bns) or None)
        or rows("grad_reverse_discriminator.out_layer.weight")
    )
    extra = {
        "n_cls": rows("cls_decoder.out_layer.weight"),
        "num_batch_labels": n_batches,
        "n_input_bins": rows("value_encoder.embedding.weight"),
    }
    opts.update({k: v for k, v in extra.items() if v is not None})
    return opts


def head_prefixes(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> tuple[list[str], tuple[str, ...]]:
    """Options on which ``target`` differs from ``source`` and the head tensors they renew.

    An option counts only where both state dicts show it (a lone missing tensor is an error,
    not a head change).
    """
    src, tgt = state_options(source), state_options(target)
    changed = [k for k in _HEAD_GROUPS if k in src and k in tgt and src[k] != tgt[k]]
    return changed, tuple(p for k in changed for p in _HEAD_GROUPS[k])


def _in(key: str, prefixes: Iterable[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


def _mismatch_error(source: str, missing, unexpected, shapes) -> ValueError:
    lines = [f"Checkpoint {source} does not match the model:"]
    if missing:
        lines.append(f"  missing from the checkpoint ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(
            f"  unexpected in the checkpoint ({len(unexpected)}): " + ", ".join(unexpected)
        )
    for key, (s, t) in shapes.items():
        lines.append(f"  shape mismatch {key}: checkpoint {tuple(s)} vs model {tuple(t)}")
    lines.append(
        "Only heads the model adds on purpose (another n_cls, batch options, zero-probability or "
        "MVC heads) may differ; check the folder's args.json against the model's options."
    )
    return ValueError("\n".join(lines))


def _report(source: str, **lists) -> dict:
    report = {"source": source, **{k: sorted(v) for k, v in lists.items()}}
    summary = ", ".join(f"{len(v)} {k}" for k, v in lists.items())
    logger.info("Loaded %s: %s tensors.", source, summary)
    unused = report["replaced"] + report["skipped"]
    if report["new"] or unused:
        logger.warning(
            "%s: new heads left initialised (to train): %s; checkpoint tensors not used: %s.",
            source,
            report["new"],
            unused,
        )
    return report


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    prefixes: Iterable[str] | None = None,
    renew: Iterable[str] = (),
    source: str = "checkpoint",
) -> dict:
    """Load ``state_dict`` (any attention layout) into ``module``, strictly.

    Every tensor of the module (within ``prefixes``, if given) must come from the checkpoint
    with the same shape and every checkpoint tensor (within ``prefixes``) must be used, except
    keys starting with a ``renew`` prefix: those are heads the model builds on purpose and keeps
    freshly initialised (``new``: not in the checkpoint; ``replaced``: in both, checkpoint
    tensor not used; ``skipped``: only in the checkpoint). ``gene_token_ids`` is ours and never
    expected in a checkpoint.

    Returns
    -------
    Report dict: ``source`` and sorted lists ``loaded``, ``new``, ``replaced``, ``skipped``.

    Raises
    ------
    ValueError
        Listing every missing, unexpected and shape-mismatched key (with both shapes).
    """
    renew = tuple(renew)
    prefixes = tuple(prefixes) if prefixes is not None else None

    def keep(key: str) -> bool:
        return prefixes is None or _in(key, prefixes)

    src = {k: v for k, v in to_torch_layout(state_dict).items() if keep(k)}
    tgt = {k: v for k, v in module.state_dict().items() if keep(k) and k not in LOCAL_ONLY_KEYS}
    missing = [k for k in tgt if k not in src and not _in(k, renew)]
    unexpected = [k for k in src if k not in tgt and not _in(k, renew)]
    shapes = {
        k: (src[k].shape, tgt[k].shape)
        for k in tgt
        if k in src and not _in(k, renew) and src[k].shape != tgt[k].shape
    }
    if missing or unexpected or shapes:
        raise _mismatch_error(source, missing, unexpected, shapes)
    loaded = [k for k in tgt if k in src and not _in(k, renew)]
    module.load_state_dict({k: src[k] for k in loaded}, strict=False)
    return _report(
        source,
        loaded=loaded,
        new=[k for k in tgt if k not in src],
        replaced=[k for k in tgt if k in src and _in(k, renew)],
        skipped=[k for k in src if k not in tgt],
    )


# ---------------------------------------------------------------------- shared parts
def _map_token_rows(
    weight: torch.Tensor, source_vocab: Mapping[str, int], target_vocab: Mapping[str, int]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Checkpoint rows of the tokens in both vocabularies, their target ids, and the number of
    target tokens without a checkpoint row."""
    common = [t for t in target_vocab if t in source_vocab]
    if not common:
        raise ValueError("The model's vocabulary shares no token with the checkpoint's.")
    src_ids = torch.tensor([source_vocab[t] for t in common])
    tgt_ids = torch.tensor([target_vocab[t] for t in common])
    if int(src_ids.max()) >= weight.shape[0]:
        raise ValueError(
            f"The checkpoint's vocab.json has ids up to {int(src_ids.max())} but "
            f"encoder.embedding.weight has {weight.shape[0]} rows."
        )
    return weight[src_ids], tgt_ids, len(target_vocab) - len(common)


def load_pretrained_parts(
    module: nn.Module,
    model_dir: str | os.PathLike,
    prefixes: Iterable[str] = SHARED_PREFIXES,
    vocab: GeneVocab | Mapping[str, int] | str | os.PathLike | None = None,
) -> dict:
    """Initialise the parts of ``module`` under ``prefixes`` from a checkpoint folder.

    For models of the family (perturbation, multi-omic, ...) that share the gene encoder, the
    value encoder and the transformer with a pretrained scGPT ``TransformerModel``. Strict within
    ``prefixes``: every module tensor there must be in the checkpoint with the same shape, and
    every checkpoint tensor there must exist in the module. Tensors outside ``prefixes`` are
    neither loaded nor checked.

    Parameters
    ----------
    module
        The torch module to initialise (its parameter names must follow scGPT's).
    model_dir
        Checkpoint folder (``best_model.pt`` or ``best_model.safetensors``; ``vocab.json``
        when ``vocab`` is given).
    prefixes
        State-dict prefixes to load (default ``encoder.``, ``value_encoder.``,
        ``transformer_encoder.``).
    vocab
        The module's vocabulary (``GeneVocab``, token -> id mapping or ``vocab.json`` path).
        When given, rows of ``encoder.embedding.weight`` are copied by token from the
        checkpoint's ``vocab.json``: tokens in both vocabularies get the pretrained row, the
        others keep their initialisation. ``None``: the vocabularies must be identical (the row
        count is checked).

    Returns
    -------
    Report dict: ``source``, ``loaded``, ``new``, ``replaced``, ``skipped`` (see
    :func:`load_state_dict_strict`), and with ``vocab`` ``n_tokens_mapped`` /
    ``n_tokens_new`` (embedding rows copied / left initialised).

    Raises
    ------
    ValueError
        Listing every missing, unexpected or mis-shaped key within ``prefixes``.
    """
    prefixes = tuple(prefixes)
    state = to_torch_layout(read_state_dict(model_dir))
    emb_key = "encoder.embedding.weight"
    mapped = None
    if vocab is not None and emb_key in state and _in(emb_key, prefixes):
        target_vocab = vocab if isinstance(vocab, Mapping) else GeneVocab.from_file(vocab)
        with open(Path(model_dir) / VOCAB_FILE) as f:
            source_vocab = json.load(f)
        mapped = _map_token_rows(state[emb_key], source_vocab, target_vocab)
        own = module.state_dict()[emb_key]
        if own.shape[1] != state[emb_key].shape[1]:
            raise _mismatch_error(
                str(model_dir), [], [], {emb_key: (state[emb_key].shape, own.shape)}
            )
        state[emb_key] = own.detach().clone().index_copy_(0, mapped[1], mapped[0].to(own))
    report = load_state_dict_strict(module, state, prefixes=prefixes, source=str(model_dir))
    if mapped is not None:
        report["n_tokens_mapped"], report["n_tokens_new"] = len(mapped[1]), mapped[2]
        logger.info(
            "%s: %d gene-embedding rows copied by token, %d new tokens left initialised.",
            model_dir,
            report["n_tokens_mapped"],
            report["n_tokens_new"],
        )
    return report
