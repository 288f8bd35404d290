"""SCGPT throughput benchmark, each figure as a share of this machine's measured matmul rate.

Every task runs in a fresh process (so its peak RSS is its own) and prints one JSON report:

* ``matmul``: the machine's fp32 rate, ``2·4096³ / seconds`` of ``torch.mm`` on two 4096 × 4096
  fp32 matrices (after a warm-up; best of five), measured in the same process as each figure.
* ``embed``: zero-shot embedding (``SCGPT.get_latent_representation``, data loading and
  tokenisation included) of ``--n-cells`` cells of pbmc68k
  (``$SCGPT_SCVI_SHARED/data/pbmc68k_reduced_counts_700cells.h5ad``, ~250 expressed genes per
  cell) with the whole-human shape (d_model 512, 12 layers, 8 heads, d_hid 512, 60,697 tokens,
  random weights). FLOP are counted per cell at its own token count (pads are not useful work),
  with ``nlayers · L · (8·d² + 4·d·d_hid + 4·L·d)`` (PERFORMANCE_NOTES.md).
* ``train``: optimisation steps on ``--train-batch`` cells × ``--train-len`` tokens, dropout 0.2
  everywhere (attention included, as the original), MLM loss at 40% of the tokens, backward and
  Adam; FLOP per cell = 3 × the forward.
* ``int8``: fp32 and ``quantize="int8"`` embeddings of the same cells, speed-up and the minimum
  per-cell cosine.

``share_of_matmul_limit = cells/s × GFLOP per cell ÷ measured GFLOP/s``. ``sdpa_backend`` names
the attention kernel that ran (from the profiler). Works on older versions of the package too
(options it lacks are left out), so a baseline can be taken the same way.

Run::

    python benchmarks/bench_scgpt.py --threads 2
    python benchmarks/bench_scgpt.py --tasks train --checkpoint-activations
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HUMAN = {"d_model": 512, "nhead": 8, "d_hid": 512, "nlayers": 12, "vocab_size": 60697}
TASKS = ("embed", "train", "int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="embed,train,int8", help=f"comma list of {TASKS}")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--n-cells", type=int, default=700, help="cells embedded (at most 700)")
    p.add_argument("--batch-size", type=int, default=64, help="embedding minibatch")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-len", type=int, default=512, help="tokens per training cell")
    p.add_argument("--train-steps", type=int, default=3, help="timed steps (after one warm-up)")
    p.add_argument("--attention-dropout", type=float, default=None)
    p.add_argument("--checkpoint-activations", action="store_true")
    p.add_argument("--int8-cells", type=int, default=128, help="cells for the int8 comparison")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--single", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.tasks.split(",")) - set(TASKS)
    if unknown:
        p.error(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    return args


def _peak_rss_mib() -> float:
    """Peak resident memory of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    """fp32 ``torch.mm`` rate of this process on ``n × n`` matrices, GFLOP/s (best of runs)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def gflop_per_cell(tokens, d: int, d_hid: int, nlayers: int):
    """Forward GFLOP of cells with ``tokens`` tokens each (PERFORMANCE_NOTES.md)."""
    import numpy as np

    L = np.asarray(tokens, dtype=np.float64)
    return nlayers * L * (8 * d * d + 4 * d * d_hid + 4 * L * d) / 1e9


def sdpa_backend(module, x_shape, training: bool) -> str:
    """Attention kernels one encoder layer runs (profiler names), e.g. SDPA's CPU flash."""
    import torch
    from torch.profiler import profile

    layer = module.transformer_encoder.layers[0]
    x = torch.randn(*x_shape)
    pm = torch.zeros(x_shape[:2], dtype=torch.bool)
    pm[0, -1] = True
    was = layer.training
    layer.train(training)
    with torch.set_grad_enabled(training), profile() as prof:
        out = layer(x.requires_grad_(training), pm)
        if training:
            out.sum().backward()
    layer.train(was)
    keys = ("attention", "_chunked", "ChunkedAttention", "dropout")
    names = {e.name for e in prof.events() if any(k in e.name for k in keys)}
    names = sorted(n for n in names if "backward" not in n)
    return ",".join(names) or "unknown"


def _vocab(genes, size: int) -> dict[str, int]:
    from scgpt_scvi.data import GeneVocab

    base = GeneVocab.from_genes(genes).get_stoi()
    return {**base, **{f"<unused{i}>": len(base) + i for i in range(size - len(base))}}


def _pbmc():
    import anndata

    shared = Path(os.environ.get("SCGPT_SCVI_SHARED", Path(__file__).parents[2] / "shared"))
    return anndata.read_h5ad(shared / "data" / "pbmc68k_reduced_counts_700cells.h5ad")


def _human_model(adata, args, **extra):
    import scvi

    from scgpt_scvi import SCGPT

    scvi.settings.seed = args.seed
    SCGPT.setup_anndata(adata)
    cfg = {k: v for k, v in HUMAN.items() if k != "vocab_size"}
    return SCGPT(
        adata,
        vocab=_vocab(adata.var_names, HUMAN["vocab_size"]),
        dropout=0.2,
        max_seq_len=1200,
        cls_value=-2.0,
        **cfg,
        **extra,
    )


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def task_embed(args) -> dict:
    import numpy as np

    adata = _pbmc()
    model = _human_model(adata, args)
    n = min(args.n_cells, adata.n_obs)
    idx = np.arange(n)
    model.get_latent_representation(indices=idx[: args.batch_size], batch_size=args.batch_size)
    start = time.perf_counter()
    model.get_latent_representation(indices=idx, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    rate = matmul_gflops()
    tokens = np.minimum(np.asarray((adata.X[:n] > 0).sum(1)).ravel(), 1199) + 1
    gflop = gflop_per_cell(tokens, HUMAN["d_model"], HUMAN["d_hid"], HUMAN["nlayers"])
    cells_per_s = n / seconds
    return {
        "task": "embed",
        "n_cells": n,
        "batch_size": args.batch_size,
        "mean_tokens_per_cell": round(float(tokens.mean()), 1),
        "gflop_per_cell": round(float(gflop.mean()), 2),
        "seconds": round(seconds, 2),
        "cells_per_s": round(cells_per_s, 3),
        "matmul_gflops": round(rate, 1),
        "share_of_matmul_limit": round(float(gflop.sum()) / seconds / rate, 3),
        "sdpa_backend": sdpa_backend(model.module, (4, 256, HUMAN["d_model"]), training=False),
        "peak_rss_mib": _peak_rss_mib(),
    }


def task_train(args) -> dict:
    import torch

    from scgpt_scvi.module import SCGPTModule
    from scgpt_scvi.nn import masked_mse_loss

    torch.manual_seed(args.seed)
    extra = {}
    if args.attention_dropout is not None:
        extra["attention_dropout"] = args.attention_dropout
    if args.checkpoint_activations:
        extra["checkpoint_activations"] = True
    cfg = {k: v for k, v in HUMAN.items() if k != "vocab_size"}
    module = SCGPTModule(ntoken=HUMAN["vocab_size"], dropout=0.2, **cfg, **extra).train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    B, L = args.train_batch, args.train_len
    g = torch.Generator().manual_seed(args.seed)

    def batch():
        gene_ids = torch.randint(2, HUMAN["vocab_size"], (B, L), generator=g)
        gene_ids[:, 0] = 1
        target = torch.randint(1, 51, (B, L), generator=g).float()
        mask = torch.rand(B, L, generator=g) < 0.4
        mask[:, 0] = False
        values = target.masked_fill(mask, -1.0)
        return gene_ids, values, torch.zeros(B, L, dtype=torch.bool), target, mask

    def step(tensors):
        gene_ids, values, pm, target, mask = tensors
        out = module.forward_tokens(gene_ids, values, pm)
        loss = masked_mse_loss(out["mlm_output"], target, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(batch())  # warm-up (Adam states allocated)
    times = []
    for _ in range(args.train_steps):
        tensors = batch()
        start = time.perf_counter()
        step(tensors)
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    rate = matmul_gflops()
    gflop = 3 * float(gflop_per_cell([L], HUMAN["d_model"], HUMAN["d_hid"], HUMAN["nlayers"])[0])
    return {
        "task": "train",
        "batch": B,
        "tokens_per_cell": L,
        "dropout": 0.2,
        **extra,
        "gflop_per_cell": round(gflop, 2),
        "median_step_s": round(seconds, 2),
        "step_s": [round(t, 2) for t in times],
        "cells_per_s": round(B / seconds, 3),
        "matmul_gflops": round(rate, 1),
        "share_of_matmul_limit": round(B * gflop / seconds / rate, 3),
        "sdpa_backend": sdpa_backend(module, (2, 128, HUMAN["d_model"]), training=True),
        "peak_rss_mib": _peak_rss_mib(),
    }


def task_int8(args) -> dict:
    import numpy as np

    adata = _pbmc()
    model = _human_model(adata, args)
    if not _accepts(model.get_latent_representation, "quantize"):
        return {"task": "int8", "skipped": "get_latent_representation has no quantize option"}
    n = min(args.int8_cells, adata.n_obs)
    idx = np.arange(n)
    out, secs = {}, {}
    for q in (None, "int8", None, "int8"):  # alternate, keep the second of each
        start = time.perf_counter()
        out[q] = model.get_latent_representation(
            indices=idx, batch_size=args.batch_size, quantize=q
        )
        secs[q] = time.perf_counter() - start
    a, b = out[None], out["int8"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {
        "task": "int8",
        "n_cells": n,
        "fp32_cells_per_s": round(n / secs[None], 3),
        "int8_cells_per_s": round(n / secs["int8"], 3),
        "speedup": round(secs[None] / secs["int8"], 2),
        "min_cosine": round(float(cos.min()), 5),
        "mean_cosine": round(float(cos.mean()), 5),
        "peak_rss_mib": _peak_rss_mib(),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every requested task in its own process and print the reports as JSON."""
    args = parse_args(argv)
    if args.single:
        import torch

        torch.set_num_threads(args.threads)
        report = globals()[f"task_{args.single}"](args)
        report["threads"] = torch.get_num_threads()
        print(json.dumps(report))
        return [report]
    passed = argv if argv is not None else sys.argv[1:]
    reports = []
    for name in args.tasks.split(","):
        out = subprocess.run(
            [sys.executable, __file__, *passed, "--single", name], capture_output=True, text=True
        )
        if out.returncode:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"task {name!r} failed (exit {out.returncode}); see above.")
        reports.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(reports[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"command_args": vars(args) | {"single": None}, "results": reports}, indent=2))
    return reports


if __name__ == "__main__":
    main()
