"""Loading checkpoint weights into our modules: the options a state dict shows, the strict
loader and its report, and the shared parts of the family (token rows copied by token)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import GeneVocab
from ..module import CHECKPOINT_HEAD_GROUPS
from ._io import VOCAB_FILE, read_state_dict
from ._layout import LOCAL_ONLY_KEYS, SHARED_PREFIXES, to_torch_layout

logger = logging.getLogger(__name__)

__all__ = [
    "head_prefixes",
    "load_pretrained_parts",
    "load_state_dict_strict",
    "state_options",
]

#: Option -> the head tensors it changes: the table beside the module that names them.
_HEAD_GROUPS = CHECKPOINT_HEAD_GROUPS


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
