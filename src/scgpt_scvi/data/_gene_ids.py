"""Gene identifiers: detect Ensembl IDs and map them to symbols from the packaged table."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from importlib import resources
from typing import Literal, get_args

import pandas as pd

__all__ = [
    "GENE_ID_TYPES",
    "check_gene_id_type",
    "detect_gene_id_type",
    "ensembl_to_symbol",
    "gene_id_table",
    "to_symbols",
]

GeneIdType = Literal["auto", "symbol", "ensembl"]
GENE_ID_TYPES: tuple[str, ...] = get_args(GeneIdType)
#: Unversioned or versioned Ensembl gene IDs of any species (``ENSG...``, ``ENSMUSG...``).
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?(_PAR_Y)?$")


def check_gene_id_type(gene_id_type: str) -> None:
    """Raise ``ValueError`` for a ``gene_id_type`` that is not one of :data:`GENE_ID_TYPES`."""
    if gene_id_type not in GENE_ID_TYPES:
        raise ValueError(f"Unknown gene_id_type {gene_id_type!r}; choose one of {GENE_ID_TYPES}.")


@functools.cache
def gene_id_table() -> pd.Series:
    """The packaged Ensembl ID -> symbol table (human and mouse; see its README)."""
    path = resources.files("scgpt_scvi.data") / "gene_ids" / "ensembl_to_symbol.tsv.gz"
    with resources.as_file(path) as p:
        df = pd.read_csv(p, sep="\t", dtype=str, compression="gzip")
    return pd.Series(df["symbol"].to_numpy(), index=pd.Index(df["ensembl_id"]), name="symbol")


def detect_gene_id_type(names: Iterable[str]) -> Literal["symbol", "ensembl"]:
    """``"ensembl"`` when most names look like Ensembl gene IDs, else ``"symbol"``."""
    names = pd.Index([str(n) for n in names])
    if len(names) == 0:
        return "symbol"
    share = names.str.match(_ENSEMBL).mean()
    return "ensembl" if share > 0.5 else "symbol"


def ensembl_to_symbol(names: Iterable[str]) -> tuple[pd.Index, dict]:
    """Map Ensembl gene IDs (versions and ``_PAR_Y`` suffixes dropped) to symbols.

    Returns
    -------
    ``(symbols, report)``: one symbol per input name, ``""`` where the ID is not in the table
    (those genes are left out of the tokens), and a report with ``n_genes``, ``n_mapped``,
    ``n_unmapped``, ``n_ambiguous`` (IDs that share their symbol with another ID of the
    input; such columns share one token) and examples.

    Examples
    --------
    >>> symbols, report = ensembl_to_symbol(["ENSG00000167286.10", "ENSMUSG00000023274"])
    >>> list(symbols)
    ['CD3D', 'Cd4']
    """
    names = pd.Index([str(n) for n in names])
    stripped = names.str.replace(r"(\.\d+)?(_PAR_Y)?$", "", regex=True)
    table = gene_id_table()
    symbols = pd.Index(pd.Series(stripped).map(table).fillna("").astype(str))
    mapped = symbols != ""
    dup = pd.Series(symbols[mapped]).duplicated(keep=False).to_numpy()
    report = {
        "n_genes": int(len(names)),
        "n_mapped": int(mapped.sum()),
        "n_unmapped": int((~mapped).sum()),
        "n_ambiguous": int(dup.sum()),
        "unmapped_examples": list(names[~mapped][:5]),
        "ambiguous_examples": list(names[mapped][dup][:5]),
    }
    return symbols, report


def to_symbols(names: pd.Index, gene_id_type: str = "symbol") -> pd.Index:
    """``names`` as symbols: mapped from Ensembl IDs when ``gene_id_type`` says so (or, for
    ``"auto"``, when most of them are Ensembl IDs); unchanged otherwise."""
    check_gene_id_type(gene_id_type)
    if gene_id_type == "auto":
        gene_id_type = detect_gene_id_type(names)
    if gene_id_type == "symbol":
        return names
    return ensembl_to_symbol(names)[0]
