"""Default-settings results on every ``<shared>/data`` set against its baselines (issue 10).

Each task uses the models exactly as a new user would: ``Model(data)`` then ``train()`` with no
arguments (no ``plan_kwargs``, no architecture). Prints one JSON table with seeds and wall times.

Tasks:

- ``pbmc``: pbmc68k annotation, the demo split (stratified 70/30, ``random_state=0``), accuracy
  and macro-F1 against logistic regression on log1p(CP10k);
- ``cellbench``: CellBench integration (500 HVGs, singlets), platform and cell-line silhouettes of
  the embedding against PCA;
- ``citeseq``: CITE-seq protein-group (CD3/CD19/CD14) silhouette of ``SCGPTMultiomic`` (RNA
  restricted to the file's highly variable genes, plus the proteins) against PCA of the RNA
  (``bench_multiomic.py`` also compares RNA-only ``SCGPT``);
- ``norman``: held-out Norman doubles (``bench_perturbation``'s split), Pearson-delta of
  ``SCGPTPerturbation`` against the additive and mean baselines, and MSE against those and
  no-change (whose delta is 0, so its Pearson-delta is undefined).

Run::

    python benchmarks/bench_defaults.py --tasks pbmc cellbench --seeds 0 1 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "model"))
sys.path.insert(0, str(REPO / "benchmarks"))


def shared_dir() -> Path:
    env = os.environ.get("SCGPT_SCVI_SHARED")
    return Path(env) if env else REPO.parent / "shared"


QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def task_pbmc(seed: int) -> dict:
    import anndata as ad
    import scvi
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    from scgpt_scvi import SCGPT
    from scgpt_scvi.demo import logistic_baseline

    adata = ad.read_h5ad(shared_dir() / "data" / "pbmc68k_reduced_counts_700cells.h5ad")
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    train, test = train_test_split(
        np.arange(adata.n_obs), train_size=0.7, random_state=0, stratify=labels
    )
    scvi.settings.seed = seed
    ref = adata[train].copy()
    SCGPT.setup_anndata(ref, labels_key="bulk_labels")
    model = SCGPT(ref, seed=seed)
    t0 = time.perf_counter()
    model.train(**QUIET)
    seconds = time.perf_counter() - t0
    pred = model.predict(adata[test].copy())
    lr = logistic_baseline(adata, train, test)
    return {
        "scgpt_accuracy": round(float(accuracy_score(labels[test], pred)), 4),
        "scgpt_macro_f1": round(float(f1_score(labels[test], pred, average="macro")), 4),
        "logreg_accuracy": round(float(accuracy_score(labels[test], lr)), 4),
        "logreg_macro_f1": round(float(f1_score(labels[test], lr, average="macro")), 4),
        "epochs": len(model.history["train_loss"]),
        "train_seconds": round(seconds, 1),
    }


def task_cellbench(seed: int) -> dict:
    import anndata as ad
    import scvi
    from test_model_e2e import _cellbench_hvg, _silhouettes

    from scgpt_scvi import SCGPT

    raw = ad.read_h5ad(shared_dir() / "data" / "cellbench_3celllines_celseq2_dropseq.h5ad")
    adata, pca = _cellbench_hvg(raw, n_top_genes=500)
    scvi.settings.seed = seed
    SCGPT.setup_anndata(adata, batch_key="batch", gene_symbols_key="gene_symbol")
    model = SCGPT(
        adata,
        use_batch_labels=True,
        domain_spec_batchnorm=True,
        do_dab=True,
        do_mvc=True,
        seed=seed,
    )
    t0 = time.perf_counter()
    model.train(**QUIET)
    seconds = time.perf_counter() - t0
    b_pca, l_pca = _silhouettes(pca, adata.obs)
    b, line = _silhouettes(model.get_latent_representation(), adata.obs)
    return {
        "platform_silhouette": round(b, 4),
        "cell_line_silhouette": round(line, 4),
        "pca_platform_silhouette": round(b_pca, 4),
        "pca_cell_line_silhouette": round(l_pca, 4),
        "epochs": len(model.history["train_loss"]),
        "train_seconds": round(seconds, 1),
    }


def task_norman(seed: int) -> dict:
    """Held-out Norman doubles (``bench_perturbation``'s split): Pearson-delta of the default
    ``SCGPTPerturbation`` and of the additive, no-change and mean baselines."""
    import scvi
    from bench_perturbation import HELD_OUT, norman_split, score_held_out

    from scgpt_scvi import SCGPTPerturbation

    adata, train, kw = norman_split()
    scvi.settings.seed = seed
    SCGPTPerturbation.setup_anndata(train, **kw)
    model = SCGPTPerturbation(train, seed=seed)
    t0 = time.perf_counter()
    model.train(**QUIET)
    seconds = time.perf_counter() - t0
    scores = score_held_out({"scgpt": model.predict_perturbation(HELD_OUT)}, adata, train, kw)
    means = scores.groupby("method")[["pearson_delta", "mse"]].mean()
    methods = ("scgpt", "additive", "mean")  # no_change: delta 0, Pearson-delta undefined
    return {
        **{f"{m}_pearson_delta": round(float(means.loc[m, "pearson_delta"]), 4) for m in methods},
        **{f"{m}_mse": round(float(means.loc[m, "mse"]), 5) for m in (*methods, "no_change")},
        "epochs": len(model.history["train_loss"]),
        "train_seconds": round(seconds, 1),
    }


def task_citeseq(seed: int) -> dict:
    import scvi
    from bench_multiomic import load, marker_groups, pca_baseline, silhouette

    from scgpt_scvi import SCGPTMultiomic

    mdata = load()  # RNA restricted to the file's 4,000 highly variable genes, plus 14 proteins
    groups = marker_groups(mdata["prot"])
    scvi.settings.seed = seed
    SCGPTMultiomic.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "prot"})
    model = SCGPTMultiomic(mdata, seed=seed)
    t0 = time.perf_counter()
    model.train(**QUIET)
    seconds = time.perf_counter() - t0
    return {
        "multiomic_silhouette": round(silhouette(model.get_latent_representation(), groups), 4),
        "pca_silhouette": round(silhouette(pca_baseline(mdata), groups), 4),
        "epochs": len(model.history["train_loss"]),
        "train_seconds": round(seconds, 1),
    }


TASKS = {
    "pbmc": task_pbmc,
    "cellbench": task_cellbench,
    "norman": task_norman,
    "citeseq": task_citeseq,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    report = {"command_args": vars(args), "results": {}}
    for name in args.tasks:
        runs = {str(seed): TASKS[name](seed) for seed in args.seeds}
        keys = next(iter(runs.values())).keys()
        mean = {k: round(float(np.mean([r[k] for r in runs.values()])), 4) for k in keys}
        report["results"][name] = {"per_seed": runs, "mean": mean}
        print(json.dumps({name: report["results"][name]}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
