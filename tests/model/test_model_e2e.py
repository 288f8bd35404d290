"""End-to-end models on real data: PBMC cell-type annotation, CellBench platform integration
and CITE-seq multi-omic embedding.

Each trains small models from scratch on the shared data sets (``<shared>/data``) and print their
figures (run with ``-s``). They skip when the shared folder is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import scvi
from anndata import AnnData, read_h5ad
from sklearn.metrics import accuracy_score, f1_score, silhouette_score
from sklearn.model_selection import train_test_split

from scgpt_scvi import SCGPT

PBMC = "pbmc68k_reduced_counts_700cells.h5ad"
CELLBENCH = "cellbench_3celllines_celseq2_dropseq.h5ad"
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def _read(shared_dir, name: str) -> AnnData:
    path = shared_dir / "data" / name
    if not path.is_file():
        pytest.skip(f"{path} not found (shared data set needed for this end-to-end test).")
    return read_h5ad(path)


def _logistic_accuracy(adata: AnnData, train: np.ndarray, test: np.ndarray, labels) -> float:
    from sklearn.linear_model import LogisticRegression

    X = np.log1p(sc.pp.normalize_total(adata, target_sum=1e4, inplace=False)["X"].toarray())
    clf = LogisticRegression(max_iter=2000).fit(X[train], labels[train])
    return float(accuracy_score(labels[test], clf.predict(X[test])))


def test_pbmc68k_annotation_with_defaults(shared_dir):
    """``SCGPT(adata)`` then ``train()`` with no arguments learns cell types (demo split).

    The issue's gate is 0.95x logistic regression's accuracy (mean of 3 seeds); measured with
    these defaults: see the closing note / ``benchmarks/bench_defaults.py``. The test asserts
    what one seed reliably reaches: 0.8x logistic regression, and a macro-F1 far above the
    majority class (before the defaults changed: accuracy 0.29, macro-F1 0.05).
    """
    adata = _read(shared_dir, PBMC)
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    train, test = train_test_split(
        np.arange(adata.n_obs), train_size=0.7, random_state=0, stratify=labels
    )
    scvi.settings.seed = 0
    ref = adata[train].copy()
    SCGPT.setup_anndata(ref, labels_key="bulk_labels")
    model = SCGPT(ref, seed=0)
    model.train(**QUIET)
    pred = model.predict(adata[test].copy())
    majority = np.full(len(test), ref.obs["bulk_labels"].astype(str).mode()[0])
    acc = accuracy_score(labels[test], pred)
    f1 = f1_score(labels[test], pred, average="macro")
    f1_majority = f1_score(labels[test], majority, average="macro")
    acc_lr = _logistic_accuracy(adata, train, test, labels)
    print(
        f"\npbmc68k annotation (defaults): accuracy {acc:.3f} (logistic regression "
        f"{acc_lr:.3f}), macro-F1 {f1:.3f} (majority class {f1_majority:.3f}), "
        f"{len(model.history['train_loss'])} epochs"
    )
    assert acc >= 0.8 * acc_lr
    assert f1 > 5 * f1_majority


def _cellbench_hvg(adata: AnnData, n_top_genes: int) -> tuple[AnnData, np.ndarray]:
    """Singlets, genes with a unique symbol, HVGs: raw counts and 50 PCs of log1p(CP10k)."""
    symbols = adata.var["gene_symbol"].astype(str)
    unique = (symbols != "").to_numpy() & ~symbols.duplicated(keep=False).to_numpy()
    adata = adata[(adata.obs["demuxlet_cls"] == "SNG").to_numpy(), unique].copy()
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.highly_variable_genes(lognorm, n_top_genes=n_top_genes, subset=True)
    sc.pp.pca(lognorm, n_comps=50)
    return adata[:, lognorm.var_names].copy(), lognorm.obsm["X_pca"]


def _silhouettes(z: np.ndarray, obs) -> tuple[float, float]:
    return (
        float(silhouette_score(z, obs["batch"])),
        float(silhouette_score(z, obs["cell_line"])),
    )


def test_cellbench_integration_mixes_platforms_keeps_cell_lines(shared_dir):
    """Batch-aware SCGPT with the defaults (DSBN, batch embedding, DAB, MVC) mixes platforms.

    Compared with unintegrated PCA on the same cells: the platform silhouette falls below PCA's
    and the cell lines stay at least as well separated. No ``plan_kwargs``: the objectives are on
    one scale and weighted by what was registered.
    """
    adata, pca = _cellbench_hvg(_read(shared_dir, CELLBENCH), n_top_genes=500)
    scvi.settings.seed = 0
    SCGPT.setup_anndata(adata, batch_key="batch", gene_symbols_key="gene_symbol")
    model = SCGPT(
        adata, use_batch_labels=True, domain_spec_batchnorm=True, do_dab=True, do_mvc=True, seed=0
    )
    model.train(**QUIET)
    batch_pca, line_pca = _silhouettes(pca, adata.obs)
    batch_scgpt, line_scgpt = _silhouettes(model.get_latent_representation(), adata.obs)
    print(
        f"\nCellBench silhouettes ({adata.n_obs} cells, {adata.n_vars} HVGs): platform "
        f"PCA {batch_pca:.3f} -> SCGPT {batch_scgpt:.3f}; cell line PCA {line_pca:.3f} -> "
        f"SCGPT {line_scgpt:.3f}"
    )
    assert batch_scgpt < batch_pca
    assert line_scgpt >= line_pca


@pytest.mark.slow
def test_citeseq_multiomic_separates_protein_groups_with_defaults(shared_dir):
    """``SCGPTMultiomic(mdata)`` then ``train()`` with no arguments, on 200 CITE-seq PBMCs.

    The cells' CD3+ / CD19+ / CD14+ groups (from their protein counts) separate in the cell
    embedding with a cosine silhouette of at least 0.5, the issue's target (PCA of the RNA:
    0.46). The 200 cells make 6 minibatches an epoch, so the defaults train for the minimum
    number of optimisation steps (``MIN_STEPS``), about three minutes on 2 cores.
    """
    import sys
    from pathlib import Path

    if not (shared_dir / "data" / "scvi_tests_pbmc_10k_protein_v3_200cells.h5mu").is_file():
        pytest.skip("CITE-seq shared data set not found.")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_multiomic import load, marker_groups, pca_baseline, silhouette

    from scgpt_scvi import SCGPTMultiomic

    mdata = load()
    groups = marker_groups(mdata["prot"])
    scvi.settings.seed = 0
    SCGPTMultiomic.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "prot"})
    model = SCGPTMultiomic(mdata, seed=0)
    model.train(**QUIET)
    sil = silhouette(model.get_latent_representation(), groups)
    sil_pca = silhouette(pca_baseline(mdata), groups)
    print(
        f"\nCITE-seq protein groups, silhouette: PCA {sil_pca:.3f}, SCGPTMultiomic {sil:.3f} "
        f"({len(model.history['train_loss'])} epochs)"
    )
    assert sil >= 0.5
