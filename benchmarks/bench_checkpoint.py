"""Whole-human-sized scGPT checkpoint: ``from_pretrained`` time, peak memory, zero-shot speed.

Builds a checkpoint folder of the released whole-human model's size in a temporary directory
(60,697-token vocabulary = the 765 pbmc68k genes + synthetic gene names, shuffled, then
``<pad>``, ``<cls>``, ``<eoc>``; 12 layers, d_model 512, 8 heads, d_hid 512, MVC head; random
weights; released layout: ``self_attn.Wqkv.*``, ``args.json`` with the released key names), then
in a fresh process (so the memory figure is the loader's alone) times
``SCGPT.from_pretrained(folder, adata)`` on the 700-cell pbmc68k file, records the peak resident
set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) before and after loading, and measures
zero-shot embedding throughput (``get_latent_representation``, cells/s). Prints JSON.

Run (CPU; a few minutes)::

    .venv/bin/python benchmarks/bench_checkpoint.py --threads 1

Data: ``<shared>/data/pbmc68k_reduced_counts_700cells.h5ad`` (``<shared>`` =
``$SCGPT_SCVI_SHARED`` or ``<repo>/../shared``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_TOKENS = 60_697  # released whole-human vocabulary, specials included
ARCH = {"embsize": 512, "nheads": 8, "d_hid": 512, "nlayers": 12, "n_layers_cls": 3}
PBMC = "data/pbmc68k_reduced_counts_700cells.h5ad"


def shared_dir() -> Path:
    """``$SCGPT_SCVI_SHARED`` or ``<repo>/../shared``."""
    env = os.environ.get("SCGPT_SCVI_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build_checkpoint(folder: Path, genes: list[str], seed: int = 0) -> dict:
    """Write ``args.json``, ``vocab.json``, ``best_model.pt`` of a whole-human-sized model."""
    import numpy as np
    import torch

    from scgpt_scvi.checkpoint import save_state_dict
    from scgpt_scvi.data import SPECIAL_TOKENS
    from scgpt_scvi.module import SCGPTModule

    n_genes = N_TOKENS - len(SPECIAL_TOKENS)
    names = list(genes) + [f"SYNTH{i:05d}" for i in range(n_genes - len(genes))]
    order = np.random.default_rng(seed).permutation(n_genes)
    vocab = {names[j]: i for i, j in enumerate(order)}
    vocab.update({t: n_genes + i for i, t in enumerate(SPECIAL_TOKENS)})
    torch.manual_seed(seed)
    module = SCGPTModule(
        ntoken=N_TOKENS,
        d_model=ARCH["embsize"],
        nhead=ARCH["nheads"],
        d_hid=ARCH["d_hid"],
        nlayers=ARCH["nlayers"],
        nlayers_cls=ARCH["n_layers_cls"],
        pad_id=vocab["<pad>"],
        cls_id=vocab["<cls>"],
        do_mvc=True,
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(module.state_dict(), folder / "best_model.pt")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    args = {
        **ARCH,
        "pad_token": "<pad>",
        "input_style": "binned",
        "input_emb_style": "continuous",
        "n_bins": 51,
        "max_seq_len": 1200,
        "dropout": 0.2,
        "mask_value": -1,
        "pad_value": -2,
        "MVC": True,
        "fast_transformer": True,
    }
    (folder / "args.json").write_text(json.dumps(args, indent=2))
    n_params = sum(p.numel() for p in module.parameters())
    return {
        "n_parameters": n_params,
        "checkpoint_mib": round((folder / "best_model.pt").stat().st_size / 2**20, 1),
    }


def measure(folder: Path, data: Path, n_cells: int, batch_size: int) -> dict:
    """Load the checkpoint and embed cells (run in a fresh process)."""
    import anndata as ad
    import torch

    from scgpt_scvi import SCGPT

    adata = ad.read_h5ad(data)[:n_cells].copy()
    rss_before = _rss_mib()
    t0 = time.perf_counter()
    model = SCGPT.from_pretrained(folder, adata)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mib()
    t0 = time.perf_counter()
    z = model.get_latent_representation(batch_size=batch_size)
    embed_s = time.perf_counter() - t0
    assert z.shape == (adata.n_obs, 512) and torch.isfinite(torch.as_tensor(z)).all()
    return {
        "from_pretrained_s": round(load_s, 2),
        "peak_rss_before_load_mib": round(rss_before, 1),
        "peak_rss_after_load_mib": round(rss_loaded, 1),
        "peak_rss_load_increase_mib": round(rss_loaded - rss_before, 1),
        "n_tensors_loaded": len(model.checkpoint_report_["loaded"]),
        "genes_matched": model.gene_overlap_["n_matched"],
        "n_cells": adata.n_obs,
        "mean_tokens_per_cell": round(float(adata.X.getnnz(axis=1).mean()) + 1, 1),
        "embed_s": round(embed_s, 2),
        "embed_cells_per_s": round(adata.n_obs / embed_s, 2),
        "peak_rss_end_mib": round(_rss_mib(), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--n-cells", type=int, default=700, help="cells to embed (default 700)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    data = shared_dir() / PBMC
    if args.measure is not None:
        print(json.dumps(measure(args.measure, data, args.n_cells, args.batch_size)))
        return
    import anndata as ad

    genes = list(ad.read_h5ad(data, backed="r").var_names)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        built = build_checkpoint(Path(tmp) / "scGPT_human_sized", genes)
        built["build_s"] = round(time.perf_counter() - t0, 1)
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(Path(tmp) / "scGPT_human_sized")]
            + ["--threads", str(args.threads), "--n-cells", str(args.n_cells)]
            + ["--batch-size", str(args.batch_size)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
        )
    result = {
        "vocab_tokens": N_TOKENS,
        **ARCH,
        **built,
        **json.loads(child.stdout.strip().splitlines()[-1]),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
