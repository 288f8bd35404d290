"""Reverse perturbation on the Norman et al. 2019 subset: do held-out doubles rank first?

Trains SCGPTPerturbation on control, the 18 singles and the doubles that are not held out,
then ranks, for each held-out double whose two singles were both measured, every pair of the
18 singles by `rank_perturbations` (pearson_delta). Prints JSON: top-1 / top-3 hits, the
true pair's rank per double, and chance levels.

    SCGPT_SCVI_SHARED=../shared python benchmarks/bench_reverse_perturbation.py --epochs 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from scgpt_scvi import SCGPTPerturbation

HELD_OUT = ("KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2")


def shared_dir() -> Path:
    env = os.environ.get("SCGPT_SCVI_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def run(epochs: int = 3, n_control_cells: int = 50, d_model: int = 64, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    path = shared_dir() / "data" / "perturbench_devel_norman19_mcfaline23.h5ad"
    adata = ad.read_h5ad(path)
    adata = adata[adata.obs["dataset"] == "norman19"].copy()
    adata.obs["condition"] = adata.obs["condition"].astype(str)
    train = adata[~adata.obs["condition"].isin(HELD_OUT)].copy()
    SCGPTPerturbation.setup_anndata(train, perturbation_key="condition", control_category="control")
    model = SCGPTPerturbation(train, d_model=d_model, nhead=4, d_hid=d_model, nlayers=2)
    t0 = time.time()
    model.train(max_epochs=epochs, batch_size=64, enable_progress_bar=False)
    train_s = time.time() - t0
    singles = sorted(c for c in train.obs["condition"].unique() if "+" not in c and c != "control")
    pairs = [f"{a}+{b}" for a, b in itertools.combinations(singles, 2)]
    ranks = {}
    t0 = time.time()
    for double in HELD_OUT:
        observed = adata[adata.obs["condition"] == double]
        ranked = model.rank_perturbations(
            observed, candidates=pairs, n_control_cells=n_control_cells
        )
        truth = set(double.split("+"))
        hit = np.array([set(p.split("+")) == truth for p in ranked["perturbation"]])
        ranks[double] = int(ranked.loc[hit, "rank"].iloc[0])
    rank_s = time.time() - t0
    r = np.array(list(ranks.values()))
    n = len(pairs)
    return {
        "n_candidates": n,
        "ranks": ranks,
        "top1": float((r <= 1).mean()),
        "top3": float((r <= 3).mean()),
        "chance_top1": 1 / n,
        "chance_top3": 3 / n,
        "median_rank": float(np.median(r)),
        "epochs": epochs,
        "d_model": d_model,
        "n_control_cells": n_control_cells,
        "train_s": round(train_s, 1),
        "rank_s": round(rank_s, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-control-cells", type=int, default=50)
    parser.add_argument("--d-model", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(json.dumps(run(args.epochs, args.n_control_cells, args.d_model), indent=2))
