"""Perturbation benchmark: SCGPTPerturbation against three baselines on unseen Norman doubles.

Data: the Norman 2019 part of ``<shared>/data/perturbench_devel_norman19_mcfaline23.h5ad``
(``obs.dataset == "norman19"``; ``<shared>`` = ``$SCGPT_SCVI_SHARED`` or ``<repo>/../shared``).
The five doubles whose two singles are both measured (KLF1+MAP2K6, KLF1+TGFBR2,
MAP2K3+SLC38A2, MAP2K3+MAP2K6, MAPK1+TGFBR2) are held out of training; the model predicts them
from control cells, and so do the baselines (no change, mean of the training perturbations,
additive). Metrics: Pearson correlation of deltas (all genes, top-20 DE genes) and MSE, on
log1p-normalised mean profiles; printed as JSON.

Run::

    python benchmarks/bench_perturbation.py            # 10 epochs, lr 3e-3, seed 0
    python benchmarks/bench_perturbation.py --seed 1   # direct: seeds differ by about 0.04
    python benchmarks/bench_perturbation.py --combination direct  # scGPT's generator

Published (full Norman doubles, Pearson-delta): additive 0.89, GEARS 0.63, scGPT 0.52.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

HELD_OUT = ("KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2")
DATA = "data/perturbench_devel_norman19_mcfaline23.h5ad"


def shared_dir() -> Path:
    env = os.environ.get("SCGPT_SCVI_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--nlayers", type=int, default=2)
    p.add_argument("--nhead", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--gene-selection", default="batch-wise", choices=("all", "batch-wise"))
    p.add_argument(
        "--combination",
        default=None,
        choices=("direct", "additive_interaction"),
        help="SCGPTPerturbation's combination (default: the model's default)",
    )
    p.add_argument("--layer", default=None, help="layer to model (default X, log1p); 'counts'")
    p.add_argument("--n-control-cells", type=int, default=None, help="default: all controls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def norman_split(layer: str | None = None) -> tuple[AnnData, AnnData, dict]:
    """The Norman cells, the training cells (all but :data:`HELD_OUT`) and the keywords of
    ``setup_anndata`` / the metrics (``perturbation_key``, ``control_category``, ``layer``)."""
    import anndata as ad

    adata = ad.read_h5ad(shared_dir() / DATA)
    adata = adata[adata.obs["dataset"] == "norman19"].copy()
    train = adata[~adata.obs["condition"].isin(HELD_OUT)].copy()
    kw = {"perturbation_key": "condition", "control_category": "control", "layer": layer}
    return adata, train, kw


def score_held_out(
    model_preds: dict[str, AnnData], adata: AnnData, train: AnnData, kw: dict
) -> pd.DataFrame:
    """Scores (per method and held-out double) of ``model_preds`` and the three baselines
    (fitted on ``train``), against the observed cells of ``adata``."""
    from scgpt_scvi.metrics import evaluate_perturbations, perturbation_baselines

    preds = {**model_preds, **perturbation_baselines(train, perturbations=HELD_OUT, **kw)}
    return evaluate_perturbations(preds, adata, **kw)


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import scvi

    from scgpt_scvi import SCGPTPerturbation

    scvi.settings.seed = args.seed
    adata, train, kw = norman_split(args.layer)
    SCGPTPerturbation.setup_anndata(train, **kw)
    combination = {} if args.combination is None else {"combination": args.combination}
    model = SCGPTPerturbation(
        train,
        d_model=args.d_model,
        nhead=args.nhead,
        d_hid=args.d_model,
        nlayers=args.nlayers,
        dropout=args.dropout,
        gene_selection=args.gene_selection,
        seed=args.seed,
        **combination,
    )
    t0 = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        plan_kwargs={"lr": args.lr},
        enable_progress_bar=False,
    )
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = {"scgpt": model.predict_perturbation(HELD_OUT, n_control_cells=args.n_control_cells)}
    t_pred = time.perf_counter() - t0
    scores = score_held_out(preds, adata, train, kw)
    summary = scores.groupby("method", sort=False).mean(numeric_only=True)
    history = model.history["train_loss"]["train_loss"].to_numpy()
    report = {
        "command_args": vars(args),
        "held_out": list(HELD_OUT),
        "combination": model.module.combination,
        "n_train_cells": int(train.n_obs),
        "train_seconds": round(t_train, 1),
        "predict_seconds": round(t_pred, 1),
        "train_loss_first_last": [float(history[0]), float(history[-1])],
        "mean_over_held_out": _rounded(summary.to_dict(orient="index")),
        "per_condition": _rounded(
            scores.set_index(["method", "condition"]).to_dict(orient="index"), keys_as_str=True
        ),
    }
    print(json.dumps(report, indent=2))


def _rounded(d: dict, keys_as_str: bool = False) -> dict:
    out = {}
    for k, v in d.items():
        key = "|".join(k) if keys_as_str else k
        out[key] = {m: (None if np.isnan(x) else round(float(x), 4)) for m, x in v.items()}
    return out


if __name__ == "__main__":
    main()
