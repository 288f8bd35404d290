"""Command line: ``scgpt-scvi embed INPUT.h5ad --model DIR --out OUT.h5ad``.

Zero-shot cell embeddings from an scGPT checkpoint folder, the command-line counterpart of
``scgpt.tasks.embed_data``: the output file is a copy of the input with
``obsm["X_scGPT"]`` (L2-normalised ``<cls>`` embeddings) and ``uns["scGPT"]`` (model folder,
gene overlap) added. The input is never modified. With ``--backed`` the expression matrix is
streamed from disk minibatch by minibatch and the output is written by copying the file and
adding the two entries, so ``X`` is never loaded whole.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ._cli_pretrain import add_parser as add_pretrain_parser

__all__ = ["main", "build_parser", "embed_h5ad"]


def build_parser() -> argparse.ArgumentParser:
    """The ``scgpt-scvi`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="scgpt-scvi", description="scGPT single-cell transformers (scvi-tools plugin)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser(
        "embed",
        help="zero-shot cell embeddings of an .h5ad file with an scGPT checkpoint folder",
        description=(
            "Write a copy of INPUT with obsm[KEY] = the checkpoint's L2-normalised <cls> "
            "embeddings (what scgpt.tasks.embed_data returns) and uns['scGPT'] = gene overlap."
        ),
    )
    embed.add_argument("input", type=Path, help="input .h5ad (raw counts or normalised values)")
    embed.add_argument(
        "--model",
        required=True,
        type=Path,
        help="checkpoint folder (args.json, vocab.json, best_model.pt or best_model.safetensors)",
    )
    embed.add_argument("--out", required=True, type=Path, help="output .h5ad (not INPUT)")
    embed.add_argument(
        "--gene-col", default=None, help="var column of gene symbols (default: var_names)"
    )
    embed.add_argument("--layer", default=None, help="layer to embed instead of X")
    embed.add_argument("--batch-size", type=int, default=64, help="cells per minibatch")
    embed.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per cell incl. <cls> (default: the checkpoint's max_seq_len)",
    )
    embed.add_argument(
        "--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... (default cpu)"
    )
    embed.add_argument(
        "--backed", action="store_true", help="stream X from disk instead of loading it"
    )
    embed.add_argument("--key-added", default="X_scGPT", help="obsm key (default X_scGPT)")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(func=_run_embed)
    add_pretrain_parser(sub)
    return parser


def _embeddings(model, n_obs: int, batch_size: int, progress: bool):
    """Latent representation minibatch by minibatch, with a progress bar over cells."""
    import numpy as np
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=n_obs, unit="cell", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, n_obs, batch_size):
            idx = np.arange(start, min(start + batch_size, n_obs))
            out.append(model.get_latent_representation(indices=idx, batch_size=batch_size))
            bar.update(len(idx))
    return np.concatenate(out) if out else np.zeros((0, model.module.d_model), np.float32)


def _write_output(src: Path, dst: Path, key: str, emb, info: dict) -> None:
    """Copy ``src`` to ``dst`` and add ``obsm[key]`` and ``uns['scGPT']`` in place (streamed)."""
    import h5py
    from anndata.io import write_elem

    tmp = dst.with_name(dst.name + ".partial")
    shutil.copyfile(src, tmp)
    with h5py.File(tmp, "r+") as f:
        for group, name, value in (("obsm", key, emb), ("uns", "scGPT", info)):
            if group not in f:
                write_elem(f, group, {})
            if name in f[group]:
                del f[group][name]
            write_elem(f[group], name, value)
    tmp.replace(dst)


def embed_h5ad(
    path: str | Path,
    model_dir: str | Path,
    out: str | Path,
    gene_col: str | None = None,
    layer: str | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str = "cpu",
    backed: bool = False,
    key_added: str = "X_scGPT",
    progress: bool = True,
):
    """Embed the cells of an ``.h5ad`` file and write a copy with ``obsm[key_added]``.

    The arguments are the command's options (``path`` = INPUT, ``model_dir`` = ``--model``).

    Returns
    -------
    The ``(n_obs, d_model)`` embeddings (numpy).
    """
    import anndata
    import numpy as np

    from .model import SCGPT

    src, dst = Path(path), Path(out)
    if not src.is_file():
        raise ValueError(f"{src} is not an .h5ad file.")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError("--out must differ from the input file (the input is never modified).")
    adata = anndata.read_h5ad(src, backed="r" if backed else None)
    try:
        overrides = {} if max_length is None else {"max_seq_len": max_length}
        model = SCGPT.from_pretrained(
            model_dir, adata, gene_symbols_key=gene_col, layer=layer, **overrides
        )
        model.to_device(device)
        emb = _embeddings(model, adata.n_obs, batch_size, progress)
    finally:
        if backed:
            adata.file.close()
    overlap = model.gene_overlap_
    info = {
        "model": str(model_dir),
        "n_genes": overlap["n_genes"],
        "n_genes_matched": overlap["n_matched"],
        "fraction_genes_matched": overlap["fraction_matched"],
        "max_seq_len": int(model.module.max_seq_len),
    }
    _write_output(src, dst, key_added, np.ascontiguousarray(emb, dtype=np.float32), info)
    return emb


def _run_embed(args: argparse.Namespace) -> int:
    emb = embed_h5ad(
        args.input,
        args.model,
        args.out,
        gene_col=args.gene_col,
        layer=args.layer,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
        backed=args.backed,
        key_added=args.key_added,
        progress=not args.quiet,
    )
    print(f"wrote {args.out}: obsm[{args.key_added!r}] {emb.shape}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scgpt-scvi`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        parser.exit(2, f"scgpt-scvi {args.command}: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
