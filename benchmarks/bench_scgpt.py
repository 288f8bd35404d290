"""SCGPT throughput benchmark: embedding and training cells/s, and peak memory.

Data: scanpy's bundled ``pbmc68k_reduced`` (counts rebuilt by
:func:`scgpt_scvi.demo.load_pbmc68k_counts`; 765 genes, 10 ``bulk_labels``), so nothing outside
the installed packages is needed. For each configuration, in a fresh process (so peak memory is
that configuration's own):

* ``embed_cells_per_s``: ``SCGPT.get_latent_representation`` over ``--n-cells`` cells (data
  loading and tokenisation included), after one warm-up call on a minibatch.
* ``train_cells_per_s``: optimisation steps on minibatches of ``--batch-size`` cells through
  ``model.module`` with the training plan's loss (MLM + MVC + CLS), its optimiser and gradient
  clipping at 1.0, after one warm-up step.
* ``peak_rss_embed_mib`` / ``peak_rss_mib``: ``resource.getrusage`` peak resident memory of that
  process after embedding / at the end (training included); on CUDA also
  ``cuda_max_allocated_{embed,train}_mib`` (``torch.cuda.max_memory_allocated``
  during embedding, then during training).

Configurations: ``small`` (d_model 64, 2 layers, 4 heads, max_seq_len 512) and ``human`` (the
whole-human checkpoint's shape: d_model 512, 12 layers, 8 heads, d_hid 512, max_seq_len 1200,
60,697-token vocabulary). PBMC cells express about 250 of the 765 genes, so sequences are
shorter than ``max_seq_len``; ``mean_tokens_per_cell`` is reported beside the rates.

Run::

    python benchmarks/bench_scgpt.py --threads 2
    python benchmarks/bench_scgpt.py --device cuda --batch-size 64 --n-cells 700
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONFIGS = {
    "small": {"d_model": 64, "nhead": 4, "d_hid": 64, "nlayers": 2, "max_seq_len": 512},
    "human": {
        "d_model": 512,
        "nhead": 8,
        "d_hid": 512,
        "nlayers": 12,
        "max_seq_len": 1200,
        "vocab_size": 60697,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-cells", type=int, default=256, help="cells embedded (at most 700)")
    p.add_argument("--train-steps", type=int, default=5, help="timed optimisation steps")
    p.add_argument("--configs", default="small,human", help=f"comma list of {sorted(CONFIGS)}")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--single", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configs {sorted(unknown)}; choose from {sorted(CONFIGS)}")
    return args


def _vocab(genes, size: int | None) -> dict[str, int] | None:
    """``genes`` then unused tokens up to ``size`` (the special tokens are added by SCGPT)."""
    if size is None:
        return None
    from scgpt_scvi.data import GeneVocab

    base = GeneVocab.from_genes(genes).get_stoi()
    extra = {f"<unused{i}>": len(base) + i for i in range(size - len(base))}
    return {**base, **extra}


def _peak_rss_mib() -> float:
    """Peak resident memory of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_rate(model, n_steps: int, batch_size: int, device) -> float:
    """Cells/s of forward + backward + clipped optimiser steps with the training plan's loss."""
    import torch

    plan = model._training_plan_cls(model.module, lr=1e-4)
    params = [p for p in model.module.parameters() if p.requires_grad]
    optimizer = plan.get_optimizer_creator()(params)
    loader = model._make_data_loader(adata=model.adata, batch_size=batch_size, shuffle=True)
    model.module.train()

    def step(tensors):
        _, _, loss_output = model.module(tensors, loss_kwargs=plan.loss_kwargs)
        optimizer.zero_grad(set_to_none=True)
        loss_output.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    batches = iter(loader)
    step(next(batches))  # warm-up
    _sync(device)
    start, n_cells = time.perf_counter(), 0
    for _ in range(n_steps):
        try:
            tensors = next(batches)
        except StopIteration:
            batches = iter(loader)
            tensors = next(batches)
        step(tensors)
        n_cells += tensors["X"].shape[0]
    _sync(device)
    return n_cells / (time.perf_counter() - start)


def run_config(name: str, args: argparse.Namespace) -> dict:
    """Benchmark one configuration in this process."""
    import numpy as np
    import scvi
    import torch

    from scgpt_scvi import SCGPT
    from scgpt_scvi.demo import load_pbmc68k_counts

    torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cfg = dict(CONFIGS[name])
    vocab_size = cfg.pop("vocab_size", None)
    adata = load_pbmc68k_counts()
    SCGPT.setup_anndata(adata, labels_key="bulk_labels")
    model = SCGPT(adata, vocab=_vocab(adata.var_names, vocab_size), dropout=0.0, do_mvc=True, **cfg)
    model.to_device(device)
    n_cells = min(args.n_cells, adata.n_obs)
    indices = np.arange(n_cells)
    model.get_latent_representation(indices=indices[: args.batch_size], batch_size=args.batch_size)
    _sync(device)
    start = time.perf_counter()
    model.get_latent_representation(indices=indices, batch_size=args.batch_size)
    _sync(device)
    embed_rate = n_cells / (time.perf_counter() - start)
    rss_embed = _peak_rss_mib()
    cuda_peaks = {}
    if device.type == "cuda":
        cuda_peaks["cuda_max_allocated_embed_mib"] = round(
            torch.cuda.max_memory_allocated() / 2**20
        )
        torch.cuda.reset_peak_memory_stats(device)
    train_rate = _train_rate(model, args.train_steps, args.batch_size, device)
    n_expressed = np.asarray((adata.X > 0).sum(1)).ravel()
    tokens = np.minimum(n_expressed, cfg["max_seq_len"] - 1) + 1  # + <cls>
    report = {
        "config": name,
        **CONFIGS[name],
        "n_parameters": sum(p.numel() for p in model.module.parameters()),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "n_cells_embedded": n_cells,
        "mean_tokens_per_cell": round(float(tokens.mean()), 1),
        "embed_cells_per_s": round(embed_rate, 2),
        "train_steps_timed": args.train_steps,
        "train_cells_per_s": round(train_rate, 2),
        "peak_rss_embed_mib": rss_embed,
        "peak_rss_mib": _peak_rss_mib(),
    }
    if device.type == "cuda":
        cuda_peaks["cuda_max_allocated_train_mib"] = round(
            torch.cuda.max_memory_allocated() / 2**20
        )
        report.update(cuda_peaks, gpu=torch.cuda.get_device_name(device))
    return report


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every requested configuration in its own process and print the reports as JSON."""
    args = parse_args(argv)
    if args.single:
        print(json.dumps(run_config(args.single, args)))
        return []
    passed = argv if argv is not None else sys.argv[1:]
    reports = []
    for name in args.configs.split(","):
        out = subprocess.run(
            [sys.executable, __file__, *passed, "--single", name], capture_output=True, text=True
        )
        if out.returncode:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"config {name!r} failed (exit {out.returncode}); see above.")
        reports.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"command_args": vars(args) | {"single": None}, "results": reports}, indent=2))
    return reports


if __name__ == "__main__":
    main()
