"""Modalities of the multi-omic model: RNA, protein and ATAC features as tokens of one vocabulary,
and the modality vocabulary (``vocab_mod``) that tells them apart."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from scvi import REGISTRY_KEYS

from ._vocab import SPECIAL_TOKENS, GeneVocab

__all__ = ["MODALITIES", "Modality", "extend_vocab", "modality_vocab", "token_modalities"]


class Modality(NamedTuple):
    """How one kind of measurement enters the model.

    Parameters
    ----------
    registry_key
        scvi-tools registry key of its data.
    name
        Its entry in the modality vocabulary (``vocab_mod``).
    prefix
        Prefix of its feature tokens in the vocabulary.
    """

    registry_key: str  #: scvi-tools registry key of its data
    name: str  #: its entry in the modality vocabulary (``vocab_mod``)
    prefix: str  #: prefix of its feature tokens in the vocabulary


#: ``setup_mudata`` layer argument -> modality, in sequence order (RNA, protein, ATAC).
MODALITIES: dict[str, Modality] = {
    "rna_layer": Modality(REGISTRY_KEYS.X_KEY, "RNA", ""),
    "protein_layer": Modality(REGISTRY_KEYS.PROTEIN_EXP_KEY, "Protein", "p_"),
    "atac_layer": Modality(REGISTRY_KEYS.ATAC_X_KEY, "ATAC", "a_"),
}


def extend_vocab(vocab: GeneVocab, tokens: Sequence[str]) -> GeneVocab:
    """Append ``tokens`` missing from ``vocab`` after its last id (new protein / peak tokens).

    Parameters
    ----------
    vocab
        The vocabulary to extend (left unchanged).
    tokens
        Tokens to add, in order; those already in ``vocab`` keep their id.

    Returns
    -------
    ``vocab`` itself when it holds every token, else a new vocabulary with the missing tokens
    numbered from ``vocab.ntoken`` on.
    """
    stoi = vocab.get_stoi()
    next_id = vocab.ntoken
    for t in tokens:
        if t not in stoi:
            stoi[t], next_id = next_id, next_id + 1
    return vocab if len(stoi) == len(vocab) else GeneVocab(stoi)


def modality_vocab(
    vocab_mod: GeneVocab | Mapping[str, int] | str | os.PathLike | None, names: Sequence[str]
) -> GeneVocab:
    """The modality vocabulary: the given one, checked, or one built from ``names``.

    Parameters
    ----------
    vocab_mod
        Modality vocabulary (:class:`~scgpt_scvi.data.GeneVocab`, mapping or ``vocab.json``
        path); ``None``: ``names`` sorted, then the special tokens (``<pad>``, ``<cls>``,
        ``<eoc>``).
    names
        Modality names it must hold (``Modality.name`` of the registered modalities).

    Returns
    -------
    The modality vocabulary.

    Raises
    ------
    ValueError
        When ``vocab_mod`` lacks one of ``names``, naming them.
    """
    if vocab_mod is None:
        vocab = GeneVocab.from_genes(sorted(names))
    elif isinstance(vocab_mod, GeneVocab):
        vocab = vocab_mod
    elif isinstance(vocab_mod, Mapping):
        vocab = GeneVocab(vocab_mod)
    else:
        vocab = GeneVocab.from_file(vocab_mod)
    missing = [n for n in names if n not in vocab]
    if missing:
        raise ValueError(f"vocab_mod lacks the modalities {missing}; it holds {list(vocab)}.")
    return vocab


def token_modalities(
    vocab: GeneVocab,
    vocab_mod: GeneVocab,
    features: dict[str, list[str]],
    token_ids: dict[str, np.ndarray],
) -> torch.Tensor:
    """Modality id of every vocabulary token (specials map to their own modality tokens).

    Parameters
    ----------
    vocab
        The token vocabulary.
    vocab_mod
        The modality vocabulary (see :func:`modality_vocab`).
    features
        :data:`MODALITIES` key (``"rna_layer"``, ...) -> the modality's feature tokens.
    token_ids
        The same keys -> vocabulary id of each feature (``-1``: not in the vocabulary).

    Returns
    -------
    ``(vocab.ntoken,)`` long tensor: the modality id of each token; tokens of no registered
    modality map to ``RNA`` (``<pad>`` of ``vocab_mod`` when it has no ``RNA``).
    """
    default = vocab_mod["RNA"] if "RNA" in vocab_mod else vocab_mod.pad_id
    table = torch.full((vocab.ntoken,), default, dtype=torch.long)
    for arg in features:
        ids = torch.as_tensor(token_ids[arg])
        table[ids[ids >= 0]] = vocab_mod[MODALITIES[arg].name]
    for t in SPECIAL_TOKENS:
        if t in vocab and t in vocab_mod:
            table[vocab[t]] = vocab_mod[t]
    return table
