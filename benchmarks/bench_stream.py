"""Streaming benchmark: embed backed ``.h5ad`` files of 10k and 100k cells with flat memory.

For each size, a sparse file (``--n-genes`` genes, about ``--expressed`` expressed genes per
cell) is generated chunk by chunk (never held whole), then a fresh process opens it with
``backed="r"``, runs ``SCGPT.setup_anndata`` (streamed value checks) and
``get_latent_representation`` with a small random model (the point is the data path, not the
transformer), and reports cells/s and its peak RSS. Flat memory means the 100k-cell peak is
about the 10k-cell peak: no matrix-sized or cells × vocabulary buffers.

Run::

    python benchmarks/bench_stream.py --threads 2
    python benchmarks/bench_stream.py --sizes 10000 --keep-files /tmp/stream
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = {"d_model": 32, "nhead": 2, "d_hid": 32, "nlayers": 1, "max_seq_len": 256}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000", help="comma list of cell counts")
    p.add_argument("--n-genes", type=int, default=2000)
    p.add_argument("--expressed", type=int, default=200, help="mean expressed genes per cell")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep-files", default=None, help="folder for the files (default: temporary)")
    p.add_argument("--single", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def write_backed(path: Path, n_obs: int, n_genes: int, expressed: int, chunk: int = 5000) -> None:
    """Write a CSR ``.h5ad`` of ``n_obs`` random count cells, appending ``chunk`` rows at a time."""
    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem
    from scipy import sparse

    rng = np.random.default_rng(0)
    density = expressed / n_genes
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_obs)])
    var = pd.DataFrame(index=[f"GENE{j}" for j in range(n_genes)])
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for group in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, group, {})
        for start in range(0, n_obs, chunk):
            n = min(chunk, n_obs - start)
            block = sparse.random(n, n_genes, density=density, format="csr", random_state=rng)
            block.data = rng.integers(1, 30, size=block.nnz).astype(np.float32)
            if start == 0:
                write_elem(f, "X", block)
            else:
                sparse_dataset(f["X"]).append(block)
    assert ad.read_h5ad(path, backed="r").shape == (n_obs, n_genes)


def run_one(path: Path, args: argparse.Namespace) -> dict:
    """Embed the backed file in this process; cells/s and peak RSS."""
    import anndata as ad
    import scvi
    import torch

    from scgpt_scvi import SCGPT

    torch.set_num_threads(args.threads)
    scvi.settings.seed = 0
    rss_start = _peak_rss_mib()
    adata = ad.read_h5ad(path, backed="r")
    start = time.perf_counter()
    SCGPT.setup_anndata(adata)
    setup_s = time.perf_counter() - start
    model = SCGPT(adata, **MODEL)
    start = time.perf_counter()
    z = model.get_latent_representation(batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    adata.file.close()
    return {
        "n_cells": int(z.shape[0]),
        "n_genes": args.n_genes,
        "file_mib": round(path.stat().st_size / 2**20, 1),
        "setup_s": round(setup_s, 2),
        "embed_s": round(seconds, 2),
        "cells_per_s": round(z.shape[0] / seconds, 1),
        "peak_rss_mib": _peak_rss_mib(),
        "rss_after_imports_mib": rss_start,
        "threads": torch.get_num_threads(),
        "model": MODEL,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.single:
        print(json.dumps(run_one(Path(args.single), args)))
        return []
    folder = Path(args.keep_files or tempfile.mkdtemp(prefix="bench_stream_"))
    folder.mkdir(parents=True, exist_ok=True)
    passed = argv if argv is not None else sys.argv[1:]
    reports = []
    for size in (int(s) for s in args.sizes.split(",")):
        path = folder / f"stream_{size}.h5ad"
        if not path.exists():
            write_backed(path, size, args.n_genes, args.expressed)
        out = subprocess.run(
            [sys.executable, __file__, *passed, "--single", str(path)],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"size {size} failed (exit {out.returncode}); see above.")
        reports.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(reports[-1]), file=sys.stderr, flush=True)
        if args.keep_files is None:
            path.unlink()
    print(json.dumps({"command_args": vars(args) | {"single": None}, "results": reports}, indent=2))
    return reports


if __name__ == "__main__":
    main()
