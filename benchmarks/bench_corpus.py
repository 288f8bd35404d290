"""Corpus loader and pretraining throughput (prints JSON).

Writes a synthetic corpus (default 10 files x 20,000 cells = 200k cells; each file measures
20,000 of 25,000 genes, about 2,000 expressed per cell; raw counts, CSR, uncompressed) to
``--dir`` (default ``/tmp/scgpt_corpus_bench``; reused when present), then reports:

* ``loader``: cells/s of :class:`~scgpt_scvi.data.CorpusDataLoader` on one file and on the
  whole corpus, against scvi-tools' ``AnnDataLoader`` (shuffled, backed file, dense batches as
  scvi's ``DataSplitter`` gives them) and ``scdataset.scDataset`` (``BlockShuffling``) on the
  same file; all in-process (``num_workers=0``);
* ``peak_rss``: peak resident memory of a fresh process reading the same number of minibatches
  from a corpus of 1 file and of 10 files (10x the cells): it must stay flat;
* ``pretrain``: training cells/s and tokens/s of ``SCGPT.pretrain`` for the ``small`` (batch 8)
  and the whole-human (``human``, batch 2: at 1,200 tokens a cell its CPU training memory is
  about 1.5 GB a cell) configurations, a few steps on the corpus (first step excluded).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_corpus.py [--dir D] [--files 10] [--cells 20000]
        [--batches 200] [--pretrain-steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_GENES, N_UNIVERSE, N_EXPRESSED = 20_000, 25_000, 2_000


def write_file(path: Path, n_cells: int, seed: int) -> None:
    """One synthetic .h5ad: ``n_cells`` x 20,000 genes (a random subset of 25,000)."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    rng = np.random.default_rng(seed)
    genes = np.sort(rng.choice(N_UNIVERSE, N_GENES, replace=False))
    var = pd.DataFrame(index=[f"GENE{g:05d}" for g in genes])
    obs = pd.DataFrame(index=[f"{path.stem}_c{i}" for i in range(n_cells)])
    tmp = path.with_name(path.name + ".tmp")
    ad.AnnData(obs=obs, var=var).write_h5ad(tmp)
    with h5py.File(tmp, "r+") as f:
        if "X" in f:
            del f["X"]
        g = f.create_group("X")
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0"})
        g.attrs["shape"] = np.array([n_cells, N_GENES])
        draws = int(N_EXPRESSED * 1.05)
        nnz_total, indptr = 0, [0]
        data = g.create_dataset("data", (0,), maxshape=(None,), dtype="f4", chunks=(1 << 20,))
        idx = g.create_dataset("indices", (0,), maxshape=(None,), dtype="i4", chunks=(1 << 20,))
        for lo in range(0, n_cells, 2000):
            n = min(2000, n_cells - lo)
            cols = np.sort(rng.integers(0, N_GENES, (n, draws), dtype=np.int32), axis=1)
            keep = np.ones_like(cols, dtype=bool)
            keep[:, 1:] = np.diff(cols, axis=1) != 0
            c = cols[keep]
            v = rng.geometric(0.4, size=len(c)).astype(np.float32)
            data.resize((nnz_total + len(c),))
            idx.resize((nnz_total + len(c),))
            data[nnz_total:], idx[nnz_total:] = v, c
            nnz_total += len(c)
            indptr.extend((nnz_total - len(c) + np.cumsum(keep.sum(1))).tolist())
        write_elem(g, "indptr", np.asarray(indptr, dtype=np.int64))
    os.replace(tmp, path)


def make_corpus(folder: Path, n_files: int, n_cells: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"part{i:02d}_{n_cells}.h5ad" for i in range(n_files)]
    for i, p in enumerate(paths):
        if not p.exists():
            write_file(p, n_cells, seed=i)
    return paths


def _rate(batches, n_batches: int, warmup: int = 5) -> float:
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    t, n = time.perf_counter(), 0
    for _ in range(n_batches):
        b = next(it)
        n += len(b["cell_key"]) if isinstance(b, dict) and "cell_key" in b else b.shape[0]
    return n / (time.perf_counter() - t)


def ours(paths, batch_size: int, n_batches: int, block_size: int = 16) -> float:
    from scgpt_scvi.data import BlockPlan, Corpus, CorpusDataLoader, CorpusDataset

    corpus = Corpus(paths)
    plan = BlockPlan(corpus.n_cells, batch_size, 1, block_size, seed=0)
    return _rate(CorpusDataLoader(CorpusDataset(corpus, plan, max_seq_len=1200)), n_batches)


def scvi_loader(path, batch_size: int, n_batches: int) -> float:
    import anndata as ad
    from scvi import REGISTRY_KEYS
    from scvi.dataloaders import AnnDataLoader

    from scgpt_scvi import SCGPT

    adata = ad.read_h5ad(path, backed="r")
    SCGPT.setup_anndata(adata)
    manager = SCGPT._get_most_recent_anndata_manager(adata, required=True)
    loader = AnnDataLoader(manager, batch_size=batch_size, shuffle=True)

    def dense():  # what scvi's DataSplitter.on_after_batch_transfer hands the module
        for b in loader:
            x = b[REGISTRY_KEYS.X_KEY]
            yield x.to_dense() if x.is_sparse else x

    return _rate(dense(), n_batches)


def scdataset_loader(path, batch_size: int, n_batches: int) -> float | str:
    try:
        from scdataset import scDataset
        from scdataset.strategy import BlockShuffling
    except ImportError:
        return "scdataset not installed"
    import anndata as ad

    adata = ad.read_h5ad(path, backed="r")
    ds = scDataset(
        adata,
        BlockShuffling(block_size=16),
        batch_size=batch_size,
        fetch_factor=16,
        fetch_callback=lambda coll, idx: coll.X[idx],
        batch_transform=lambda x: x.toarray(),
        seed=0,
    )
    return _rate(ds, n_batches)


def rss_child(paths: list[str], batch_size: int, n_batches: int) -> None:
    """Run in a fresh process: read ``n_batches`` and print the peak RSS (MiB)."""
    rate = ours(paths, batch_size, n_batches)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": round(peak, 1), "cells_per_s": round(rate)}))


def peak_rss(paths, batch_size: int, n_batches: int) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, __file__, "--rss-child", "--batch-size", str(batch_size)]
    cmd += ["--batches", str(n_batches), "--paths", *map(str, paths)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pretrain_rate(paths, config: str, batch_size: int, steps: int) -> dict:
    import torch
    from lightning.pytorch.callbacks import Callback

    from scgpt_scvi import SCGPT

    class Clock(Callback):
        def __init__(self):
            self.t, self.cells, self.tokens = [], 0, 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.t.append(time.perf_counter())
            if len(self.t) > 1:
                self.cells += batch["X"].shape[0]
                self.tokens += int(batch["n_tokens"])

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        SCGPT.pretrain(
            paths,
            out,
            config=config,
            max_steps=steps,
            batch_size=batch_size,
            checkpoint_every=10**9,
            progress=False,
            callbacks=[clock],
            accelerator="cpu",
        )
    dt = clock.t[-1] - clock.t[0]
    return {
        "config": config,
        "batch_size": batch_size,
        "steps_timed": len(clock.t) - 1,
        "cells_per_s": round(clock.cells / dt, 2),
        "tokens_per_s": round(clock.tokens / dt),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mib_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/scgpt_corpus_bench"))
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--cells", type=int, default=20_000, help="cells per file")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--pretrain-steps", type=int, default=6)
    parser.add_argument("--skip-pretrain", action="store_true")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if os.environ.get("OMP_NUM_THREADS") == "1":
        torch.set_num_threads(1)
    if args.rss_child:
        rss_child(args.paths, args.batch_size, args.batches)
        return
    t = time.perf_counter()
    paths = make_corpus(args.dir, args.files, args.cells)
    size = sum(p.stat().st_size for p in paths) / 2**30
    result = {
        "corpus": {
            "files": len(paths),
            "cells": len(paths) * args.cells,
            "genes_per_file": N_GENES,
            "expressed_per_cell": N_EXPRESSED,
            "GiB_on_disk": round(size, 2),
            "seconds_to_write_or_find": round(time.perf_counter() - t, 1),
        },
        "batch_size": args.batch_size,
        "batches_timed": args.batches,
    }
    b, n = args.batch_size, args.batches
    result["loader_cells_per_s"] = {
        "ours_one_file": round(ours(paths[:1], b, n)),
        "ours_whole_corpus": round(ours(paths, b, n)),
        "ours_whole_corpus_block64": round(ours(paths, b, n, block_size=64)),
        "scvi_AnnDataLoader_one_file": round(scvi_loader(paths[0], b, n)),
        "scdataset_one_file": scdataset_loader(paths[0], b, n),
    }
    one, ten = peak_rss(paths[:1], b, n), peak_rss(paths, b, n)
    result["peak_rss_mib"] = {
        f"{args.cells}_cells": one["peak_rss_mib"],
        f"{len(paths) * args.cells}_cells": ten["peak_rss_mib"],
        "ratio": round(ten["peak_rss_mib"] / one["peak_rss_mib"], 3),
    }
    print(json.dumps(result), file=sys.stderr, flush=True)  # partial figures first
    if not args.skip_pretrain:
        s = args.pretrain_steps
        result["pretrain"] = [pretrain_rate(paths, "small", 8, s)]
        print(json.dumps(result["pretrain"]), file=sys.stderr, flush=True)
        result["pretrain"].append(pretrain_rate(paths, "human", 2, max(3, s // 2)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
