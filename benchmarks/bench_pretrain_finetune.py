"""Pretrained -> fine-tuned against from scratch, on pbmc68k cell-type annotation (prints JSON).

Pretrains with :meth:`SCGPT.pretrain` on the *other* shared data files (cellbench, perturbench,
the RNA of the 10x protein .h5mu), then trains two annotation models on
``pbmc68k_reduced_counts_700cells.h5ad`` (``bulk_labels``, 10 classes) with identical settings
and the same 80/20 split:

* ``pretrained``: ``SCGPT.from_pretrained(export, adata, labels_key="bulk_labels")``, fine-tuned;
* ``scratch``: ``SCGPT(adata, ...)`` with the same architecture, random weights.

Reports accuracy and macro-F1 on the held-out 20%, and the kNN (k=10) label accuracy of the
zero-shot embedding of the pretrained model against the untrained one. Small CPU budget: the
figures say what this budget shows, not what a full pretraining would.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_pretrain_finetune.py [--steps 300] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ARCH = {"d_model": 64, "nhead": 4, "d_hid": 64, "nlayers": 2, "max_seq_len": 256, "dropout": 0.1}
OTHER = (
    "cellbench_3celllines_celseq2_dropseq.h5ad",
    "perturbench_devel_norman19_mcfaline23.h5ad",
    "scvi_tests_pbmc_10k_protein_v3_200cells.h5mu",
)
TARGET = "pbmc68k_reduced_counts_700cells.h5ad"


def _shared() -> Path:
    env = os.environ.get("SCGPT_SCVI_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def _knn_accuracy(z: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(k), z, labels, cv=5).mean())


def _fit_and_score(model, labels: np.ndarray, epochs: int, seed: int) -> dict:
    import scvi
    from sklearn.metrics import accuracy_score, f1_score

    scvi.settings.seed = seed
    t = time.perf_counter()
    model.train(
        max_epochs=epochs,
        batch_size=32,
        train_size=0.8,
        validation_size=0.2,
        accelerator="cpu",
        enable_progress_bar=False,
    )
    held = np.asarray(model.validation_indices)
    pred = model.predict(indices=held)
    return {
        "accuracy": round(float(accuracy_score(labels[held], pred)), 4),
        "macro_f1": round(float(f1_score(labels[held], pred, average="macro")), 4),
        "n_held_out": int(len(held)),
        "train_seconds": round(time.perf_counter() - t, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import anndata as ad
    import torch

    from scgpt_scvi import SCGPT

    if os.environ.get("OMP_NUM_THREADS") == "1":
        torch.set_num_threads(1)
    data = _shared() / "data"
    result = {"architecture": ARCH, "pretrain_files": list(OTHER), "target": TARGET}
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        export = SCGPT.pretrain(
            [data / f for f in OTHER],
            Path(out) / "run",
            config={**ARCH, "do_mvc": True},
            max_steps=args.steps,
            batch_size=32,
            lr=1e-3,
            checkpoint_every=10**9,
            progress=False,
            accelerator="cpu",
            seed=args.seed,
        )
        result["pretrain_seconds"] = round(time.perf_counter() - t, 1)
        result["pretrain_steps"] = args.steps
        labels = ad.read_h5ad(data / TARGET).obs["bulk_labels"].astype(str).to_numpy()

        adata = ad.read_h5ad(data / TARGET)
        pre = SCGPT.from_pretrained(export, adata, labels_key="bulk_labels")
        result["genes_in_pretrain_vocab"] = pre.gene_overlap_["n_matched"]
        result["zero_shot_knn_accuracy"] = {
            "pretrained": round(_knn_accuracy(pre.get_latent_representation(), labels), 4)
        }
        result["pretrained"] = _fit_and_score(pre, labels, args.epochs, args.seed)

        adata2 = ad.read_h5ad(data / TARGET)
        SCGPT.setup_anndata(adata2, labels_key="bulk_labels")
        torch.manual_seed(args.seed)
        scratch = SCGPT(adata2, **ARCH, do_mvc=True)
        z0 = scratch.get_latent_representation(normalize=True)
        result["zero_shot_knn_accuracy"]["untrained"] = round(_knn_accuracy(z0, labels), 4)
        result["scratch"] = _fit_and_score(scratch, labels, args.epochs, args.seed)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
