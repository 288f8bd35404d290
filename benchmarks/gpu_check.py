"""One short GPU check (< 5 min on a recent GPU): agreement, speed and memory, as JSON.

Whole-human shape (d_model 512, 12 layers, 8 heads, d_hid 512, 60,697 tokens, random weights)
on pbmc68k (``$SCGPT_SCVI_SHARED/data/pbmc68k_reduced_counts_700cells.h5ad``):

* embedding of the 700 cells at fp32, bf16 and fp16 through SDPA, and at bf16 / fp16 through
  flash-attn's varlen kernel when flash-attn is installed: minimum per-cell cosine to fp32
  (target >= 0.999), cells/s, peak CUDA memory and the SDPA kernel the profiler saw;
* training steps (MLM, dropout 0.2 in attention as the original, Adam) on ``--train-batch`` ×
  512 tokens under bf16 autocast (fp16 where bf16 is missing): cells/s and peak memory;
* the achieved share of the GPU's bf16 peak, against the published dense peak of known GPUs and
  against the bf16 matmul rate measured here (8192² ``torch.mm``).

Run::

    python benchmarks/gpu_check.py > gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HUMAN = {"d_model": 512, "nhead": 8, "d_hid": 512, "nlayers": 12}
VOCAB = 60697
#: Published dense bf16 tensor-core peaks, TFLOP/s (without sparsity).
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "V100": 125.0,
}


def _published_peak(name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def _gflop(tokens):
    import numpy as np

    d, d_hid, nlayers = HUMAN["d_model"], HUMAN["d_hid"], HUMAN["nlayers"]
    L = np.asarray(tokens, dtype=np.float64)
    return nlayers * L * (8 * d * d + 4 * d * d_hid + 4 * L * d) / 1e9


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device) -> int | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _matmul_tflops(dtype, device, n: int = 8192) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 2 * n**3 * 10 / (time.perf_counter() - start) / 1e12


def _kernels(fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
    keys = ("attention", "flash", "efficient")
    return sorted({e.name for e in prof.events() if any(k in e.name.lower() for k in keys)})[:8]


def _train_step(module, opt, scaler, B: int, L: int, dtype, device) -> None:
    """One MLM step on random tokens under autocast (40% of the values masked)."""
    import torch

    from scgpt_scvi.nn import masked_mse_loss

    gene_ids = torch.randint(2, VOCAB, (B, L), device=device)
    target = torch.randint(1, 51, (B, L), device=device).float()
    mask = torch.rand(B, L, device=device) < 0.4
    values = target.masked_fill(mask, -1.0)
    pm = torch.zeros(B, L, dtype=torch.bool, device=device)
    with torch.autocast(device.type, dtype=dtype):
        out = module.forward_tokens(gene_ids, values, pm)
        loss = masked_mse_loss(out["mlm_output"].float(), target, mask)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def main(argv: list[str] | None = None) -> dict:
    """Run the checks and print the JSON report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="run the same code on CPU with a tiny model and 48 cells (checks the script only)",
    )
    args = p.parse_args(argv)
    global HUMAN, VOCAB
    if args.smoke:
        HUMAN, VOCAB = {"d_model": 32, "nhead": 4, "d_hid": 32, "nlayers": 2}, 2000
        args.batch_size, args.train_batch, args.train_steps = 16, 2, 1

    import anndata as ad
    import numpy as np
    import scvi
    import torch

    from scgpt_scvi import SCGPT
    from scgpt_scvi.data import GeneVocab
    from scgpt_scvi.module import SCGPTModule
    from scgpt_scvi.nn import flash_attn_available

    if not torch.cuda.is_available() and not args.smoke:
        report = {"skipped": "no CUDA device (use --smoke to check the script on CPU)"}
        print(json.dumps(report))
        return report
    t0 = time.perf_counter()
    device = torch.device("cpu" if args.smoke else "cuda")
    name = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(device)
    bf16 = args.smoke or torch.cuda.is_bf16_supported()
    half = "bf16" if bf16 else "fp16"
    n_mm = 512 if args.smoke else 8192
    rate_half = _matmul_tflops(torch.bfloat16 if bf16 else torch.float16, device, n_mm)
    report: dict = {
        "gpu": name,
        "torch": torch.__version__,
        "flash_attn_installed": flash_attn_available(),
        "matmul_tflops_fp32": round(_matmul_tflops(torch.float32, device, n_mm), 3),
        "matmul_tflops_half": round(rate_half, 3),
        "published_bf16_peak_tflops": _published_peak(name),
    }

    shared = Path(os.environ.get("SCGPT_SCVI_SHARED", Path(__file__).parents[2] / "shared"))
    adata = ad.read_h5ad(shared / "data" / "pbmc68k_reduced_counts_700cells.h5ad")
    if args.smoke:
        adata = adata[:48].copy()
    scvi.settings.seed = 0
    SCGPT.setup_anndata(adata)
    base = GeneVocab.from_genes(adata.var_names).get_stoi()
    vocab = {**base, **{f"<unused{i}>": len(base) + i for i in range(VOCAB - len(base))}}
    tokens = np.minimum(np.asarray((adata.X > 0).sum(1)).ravel(), 1199) + 1
    gflop_embed = float(_gflop(tokens).sum())

    def build(backend):
        torch.manual_seed(0)
        m = SCGPT(
            adata, vocab=vocab, dropout=0.2, cls_value=-2.0, attention_backend=backend, **HUMAN
        )
        m.to_device(device)
        return m

    models = {"sdpa": build("sdpa")}
    if flash_attn_available():
        models["flash"] = build("flash")
        models["flash"].module.load_state_dict(models["sdpa"].module.state_dict())
    embeddings, runs = {}, {}
    idx = np.arange(args.batch_size)
    plan = [("sdpa", "fp32"), ("sdpa", "bf16" if bf16 else None)]
    plan += [("sdpa", "fp16")] if device.type == "cuda" else []
    plan += [("flash", p) for p in (half, "fp16") if "flash" in models]
    for backend, precision in plan:
        if precision is None:
            continue
        model = models[backend]
        model.get_latent_representation(batch_size=args.batch_size, precision=precision)
        _sync(device)
        _reset_peak(device)
        start = time.perf_counter()
        z = model.get_latent_representation(batch_size=args.batch_size, precision=precision)
        _sync(device)
        seconds = time.perf_counter() - start
        key = f"{backend}_{precision}"
        embeddings[key] = z
        runs[key] = {
            "cells_per_s": round(adata.n_obs / seconds, 1),
            "peak_cuda_mib": _peak_mib(device),
            "share_of_half_matmul_rate": round(gflop_embed / seconds / 1e3 / rate_half, 4),
        }
        if report["published_bf16_peak_tflops"]:
            runs[key]["share_of_published_bf16_peak"] = round(
                gflop_embed / seconds / 1e3 / report["published_bf16_peak_tflops"], 4
            )
        runs[key]["kernels"] = _kernels(
            lambda m=model, p=precision: m.get_latent_representation(
                indices=idx, batch_size=args.batch_size, precision=p
            )
        )
    ref = embeddings["sdpa_fp32"]
    for key, z in embeddings.items():
        cos = (z * ref).sum(1) / np.linalg.norm(z, axis=1) / np.linalg.norm(ref, axis=1)
        runs[key]["min_cosine_to_fp32"] = round(float(cos.min()), 6)
    report["embed"] = runs
    del models, embeddings
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # training step, whole-human, dropout 0.2, Adam, half-precision autocast
    train = {}
    for backend in ("sdpa", "flash") if flash_attn_available() else ("sdpa",):
        torch.manual_seed(0)
        module = SCGPTModule(ntoken=VOCAB, dropout=0.2, attention_backend=backend, **HUMAN)
        module.to(device).train()
        opt = torch.optim.Adam(module.parameters(), lr=1e-4, fused=device.type == "cuda")
        B, L = args.train_batch, 512
        dtype = torch.bfloat16 if bf16 else torch.float16
        scaler = torch.amp.GradScaler(device.type, enabled=not bf16)

        def step(module=module, opt=opt, scaler=scaler, B=B, L=L, dtype=dtype):
            _train_step(module, opt, scaler, B, L, dtype, device)

        step()
        _sync(device)
        _reset_peak(device)
        start = time.perf_counter()
        for _ in range(args.train_steps):
            step()
        _sync(device)
        seconds = (time.perf_counter() - start) / args.train_steps
        gflop = 3 * float(_gflop([L])[0]) * B
        train[backend] = {
            "batch": B,
            "tokens": L,
            "precision": half,
            "cells_per_s": round(B / seconds, 1),
            "peak_cuda_mib": _peak_mib(device),
            "share_of_half_matmul_rate": round(gflop / seconds / 1e3 / rate_half, 4),
            "kernels": _kernels(step),
        }
        if report["published_bf16_peak_tflops"]:
            train[backend]["share_of_published_bf16_peak"] = round(
                gflop / seconds / 1e3 / report["published_bf16_peak_tflops"], 4
            )
        del step, module, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["train"] = train
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
