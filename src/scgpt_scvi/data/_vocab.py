"""Gene vocabulary in scGPT's ``vocab.json`` format (token -> id)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping

__all__ = [
    "GeneVocab",
    "SPECIAL_TOKENS",
    "PAD_TOKEN",
    "CLS_TOKEN",
    "EOC_TOKEN",
    "read_json_object",
]

PAD_TOKEN, CLS_TOKEN, EOC_TOKEN = "<pad>", "<cls>", "<eoc>"
SPECIAL_TOKENS = (PAD_TOKEN, CLS_TOKEN, EOC_TOKEN)


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``; errors name the file (invalid JSON, not an object)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(data).__name__}.")
    return data


class GeneVocab(Mapping):
    """Token -> id table with scGPT's special tokens ``<pad>``, ``<cls>``, ``<eoc>``.

    Parameters
    ----------
    token_to_id
        Mapping of token to integer id; ids must be unique.
    add_specials
        Append missing special tokens (with a warning naming them), as scGPT's loaders do.

    Examples
    --------
    >>> vocab = GeneVocab.from_genes(["CD3E", "MS4A1"])
    >>> vocab["<pad>"], len(vocab)
    (2, 5)
    """

    def __init__(self, token_to_id: Mapping[str, int], add_specials: bool = True):
        self._stoi = {str(k): int(v) for k, v in token_to_id.items()}
        if len(set(self._stoi.values())) != len(self._stoi):
            raise ValueError("Vocabulary ids must be unique.")
        missing = [t for t in SPECIAL_TOKENS if t not in self._stoi]
        if missing and add_specials:
            warnings.warn(
                f"Vocabulary lacks special tokens {missing}; appending them.", stacklevel=2
            )
            for t in missing:
                self._stoi[t] = self._next_id()

    def _next_id(self) -> int:
        return max(self._stoi.values(), default=-1) + 1

    @classmethod
    def from_genes(cls, genes: Iterable[str]) -> GeneVocab:
        """Build a vocabulary: unique ``genes`` in order (ids 0..), then the special tokens."""
        stoi: dict[str, int] = {}
        for g in genes:
            stoi.setdefault(str(g), len(stoi))
        for t in SPECIAL_TOKENS:
            stoi.setdefault(t, len(stoi))
        return cls(stoi)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> GeneVocab:
        """Read a ``vocab.json`` (token -> id); errors name the file and the bad entries."""
        data = read_json_object(path)
        bad = [k for k, v in data.items() if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise ValueError(
                f"{path} must map each token to an integer id; {len(bad)} do not (e.g. "
                f"{ {k: data[k] for k in bad[:3]} })."
            )
        try:
            return cls(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def save_json(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as ``vocab.json`` (token -> id)."""
        with open(path, "w") as f:
            json.dump(self._stoi, f, indent=2)

    def __getitem__(self, token: str) -> int:
        return self._stoi[token]

    def __iter__(self):
        return iter(self._stoi)

    def __len__(self) -> int:
        return len(self._stoi)

    @property
    def ntoken(self) -> int:
        """Size of an embedding table that holds every id (``max id + 1``)."""
        return self._next_id()

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>``."""
        return self._stoi[PAD_TOKEN]

    @property
    def cls_id(self) -> int:
        """Id of ``<cls>``."""
        return self._stoi[CLS_TOKEN]

    def get_stoi(self) -> dict[str, int]:
        """A copy of the token -> id dict."""
        return dict(self._stoi)

    def get_itos(self) -> list[str]:
        """Tokens ordered by id (ids must be contiguous from 0)."""
        return [t for t, _ in sorted(self._stoi.items(), key=lambda kv: kv[1])]

    def lookup(self, tokens: Iterable[str], default: int = -1) -> list[int]:
        """Ids of ``tokens``; ``default`` for tokens not in the vocabulary."""
        return [self._stoi.get(str(t), default) for t in tokens]
