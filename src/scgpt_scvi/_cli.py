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
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._cli_pretrain import add_parser as add_pretrain_parser

__all__ = [
    "OPTION_RULES",
    "OptionError",
    "build_parser",
    "check_embed_options",
    "embed_h5ad",
    "main",
]


class OptionError(ValueError):
    """A bad command-line option value or file; the message names it (one line)."""


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (no usage block), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


#: Option value rules shared by the parser and :func:`embed_h5ad`: destination -> (test,
#: requirement). A new option adds one entry (or uses ``choices=``); its failures then read
#: ``--name requirement; got value``.
OPTION_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": (lambda v: v >= 1, "must be >= 1"),
    "max_length": (lambda v: v is None or v >= 2, "must be >= 2 (<cls> and at least one gene)"),
    "key_added": (
        lambda v: bool(v) and "/" not in v and v.strip() == v,
        "must be a non-empty obsm key without '/' or surrounding spaces",
    ),
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_rules(values: Mapping[str, Any]) -> None:
    for dest, (ok, requirement) in OPTION_RULES.items():
        if dest in values and not ok(values[dest]):
            raise OptionError(f"{_flag(dest)} {requirement}; got {values[dest]!r}.")


def _check_device(device: str) -> None:
    """The torch device exists on this machine (before any model is built)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise OptionError(f"--device {device!r} is not a torch device ({err}).") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"--device {device}: CUDA is not available on this machine.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here."
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError(f"--device {device}: MPS is not available on this machine.")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise OptionError(f"--device {device}: use cpu, cuda, cuda:N or mps.")


def _check_input(src: Path, layer: str | None, gene_col: str | None) -> None:
    import h5py

    if not src.is_file():
        raise OptionError(f"input {src} is not a file.")
    if not os.access(src, os.R_OK):
        raise OptionError(f"input {src} is not readable (permission denied).")
    if not h5py.is_hdf5(src):
        raise OptionError(f"input {src} is not an .h5ad (HDF5) file.")
    with h5py.File(src, "r") as f:
        layers = list(f["layers"]) if "layers" in f else []
        if layer is not None and layer not in layers:
            raise OptionError(f"--layer {layer!r} is not a layer of {src}; layers: {layers}.")
        columns = list(f["var"].keys()) if "var" in f else []
        if gene_col is not None and gene_col not in columns:
            shown = [c for c in columns if not c.startswith("__")][:10]
            raise OptionError(f"--gene-col {gene_col!r} is not a var column of {src}: {shown}.")


def _check_model_dir(model_dir: Path) -> None:
    from .checkpoint import ARGS_FILE, VOCAB_FILE, WEIGHT_FILES

    if not model_dir.is_dir():
        raise OptionError(f"--model {model_dir} is not a folder.")
    missing = [n for n in (ARGS_FILE, VOCAB_FILE) if not (model_dir / n).is_file()]
    if not any((model_dir / n).is_file() for n in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise OptionError(
            f"--model {model_dir}: No {missing[0]} in the folder (a checkpoint folder holds "
            f"{ARGS_FILE}, {VOCAB_FILE} and {' or '.join(WEIGHT_FILES)})."
        )


def _check_output(src: Path, dst: Path) -> None:
    if dst.is_dir() or str(dst).endswith(os.sep):
        raise OptionError(f"--out {dst} is a folder; give a file path such as {dst / 'out.h5ad'}.")
    if dst.exists() and dst.resolve() == src.resolve():
        raise OptionError("--out must differ from the input file (the input is never modified).")
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise OptionError(f"--out {dst}: folder {parent} does not exist.")
    if not os.access(parent, os.W_OK):
        raise OptionError(f"--out {dst}: folder {parent} is not writable.")


def check_embed_options(options: Mapping[str, Any]) -> None:
    """Check every ``embed`` option value and file before any model is loaded.

    ``options`` holds :func:`embed_h5ad`'s arguments by name (``path``, ``model_dir``, ``out``,
    ``gene_col``, ``layer``, ``device`` and those with an :data:`OPTION_RULES` entry).

    Raises
    ------
    OptionError
        Naming the option or file (one line).
    """
    _check_rules(options)
    _check_input(Path(options["path"]), options.get("layer"), options.get("gene_col"))
    _check_model_dir(Path(options["model_dir"]))
    _check_output(Path(options["path"]), Path(options["out"]))
    _check_device(options.get("device", "cpu"))


def build_parser() -> argparse.ArgumentParser:
    """The ``scgpt-scvi`` argument parser."""
    parser = _Parser(
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
    embed.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help="autocast precision (default: bf16 on GPUs that support it, fp32 on CPU)",
    )
    embed.add_argument(
        "--quantize", choices=("int8",), default=None, help="dynamic int8 linear layers (CPU)"
    )
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(func=_run_embed)
    add_pretrain_parser(sub)
    return parser


def _embeddings(model, n_obs: int, batch_size: int, progress: bool, precision=None):
    """Latent representation minibatch by minibatch, with a progress bar over cells."""
    import numpy as np
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=n_obs, unit="cell", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, n_obs, batch_size):
            idx = np.arange(start, min(start + batch_size, n_obs))
            out.append(
                model.get_latent_representation(
                    indices=idx, batch_size=batch_size, precision=precision
                )
            )
            bar.update(len(idx))
    return np.concatenate(out) if out else np.zeros((0, model.module.d_model), np.float32)


def _write_output(src: Path, dst: Path, key: str, emb, info: dict) -> None:
    """Copy ``src`` to ``dst`` and add ``obsm[key]`` and ``uns['scGPT']`` (streamed).

    Written to a temporary file in ``dst``'s folder and renamed onto ``dst`` at the end, so a
    failure leaves no partial output and no file elsewhere.
    """
    import h5py
    from anndata.io import write_elem

    from .checkpoint import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        with h5py.File(tmp, "r+") as f:
            for group, name, value in (("obsm", key, emb), ("uns", "scGPT", info)):
                if group not in f:
                    write_elem(f, group, {})
                if name in f[group]:
                    del f[group][name]
                write_elem(f[group], name, value)


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
    precision: str | None = None,
    quantize: str | None = None,
):
    """Embed the cells of an ``.h5ad`` file and write a copy with ``obsm[key_added]``.

    The arguments are the command's options (``path`` = INPUT, ``model_dir`` = ``--model``);
    all are checked (:func:`check_embed_options`) before the model is loaded.

    Returns
    -------
    The ``(n_obs, d_model)`` embeddings (numpy).
    """
    check_embed_options(locals())
    import anndata
    import numpy as np

    from .model import SCGPT

    src, dst = Path(path), Path(out)
    adata = anndata.read_h5ad(src, backed="r" if backed else None)
    try:
        overrides = {} if max_length is None else {"max_seq_len": max_length}
        model = SCGPT.from_pretrained(
            model_dir, adata, gene_symbols_key=gene_col, layer=layer, quantize=quantize, **overrides
        )
        model.to_device(device)
        emb = _embeddings(model, adata.n_obs, batch_size, progress, precision)
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
        precision=args.precision,
        quantize=args.quantize,
    )
    print(f"wrote {args.out}: obsm[{args.key_added!r}] {emb.shape}", file=sys.stderr)
    return 0


#: Library exceptions a user can cause with a bad file or option; shown as one line.
_USER_ERRORS = (ValueError, KeyError, FileNotFoundError, PermissionError, OSError, RuntimeError)


def _one_line(err: BaseException) -> str:
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = "; ".join(lines) or type(err).__name__
    if isinstance(err, RuntimeError | OSError) and not isinstance(err, FileNotFoundError):
        text = f"{type(err).__name__}: {text}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scgpt-scvi`` console script.

    Every failure a user can cause (bad option value, unreadable file, unavailable device,
    corrupt checkpoint) prints one line ``scgpt-scvi COMMAND: error: ...`` and exits with
    code 2; Ctrl+C exits with 130. ``SCGPT_SCVI_DEBUG=1`` shows the traceback instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.environ.get("SCGPT_SCVI_DEBUG"):
        return args.func(args)
    try:
        return args.func(args)
    except _USER_ERRORS as err:
        parser.exit(2, f"scgpt-scvi {args.command}: error: {_one_line(err)}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"scgpt-scvi {args.command}: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
