"""SCGPTPerturbation.rank_perturbations (reverse perturbation) and the per-call
``gene_selection`` of predict_perturbation."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scgpt_scvi import SCGPTPerturbation
from scgpt_scvi.data import log_normalize

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1, "nlayers_cls": 2}
N_GENES = 12
#: Planted effects (unmeasured target genes TA..TD): gene column -> new Poisson rate.
EFFECTS = {"TA": {2: 80.0}, "TB": {6: 80.0}, "TC": {8: 1.0}, "TD": {9: 80.0, 11: 20.0}}
SILENT = 11  # never expressed in controls: fed only with gene_selection="all"
TRAIN = ["ctrl"] * 40 + [c for c in ("TA", "TB", "TC", "TD", "TA+TC") for _ in range(15)]
HELD_OUT = "TA+TB"  # a double the model never sees
TARGETS = ["TA", "TB", "TC", "TD"]


def make_adata(conditions, seed: int = 0) -> ad.AnnData:
    """Poisson counts over genes g0..g11; each target gene sets the rates of its genes."""
    rng = np.random.default_rng(seed)
    rate = np.full((len(conditions), N_GENES), 20.0)
    rate[:, SILENT] = 0.0
    for i, c in enumerate(conditions):
        for g in c.split("+"):
            for col, r in EFFECTS.get(g, {}).items():
                rate[i, col] = r
    obs = pd.DataFrame({"cond": conditions}, index=[f"c{seed}_{i}" for i in range(len(conditions))])
    var = pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)])
    return ad.AnnData(rng.poisson(rate).astype(np.float32), obs=obs, var=var)


def _model(combination: str = "additive_interaction", **kw) -> SCGPTPerturbation:
    adata = make_adata(TRAIN)
    SCGPTPerturbation.setup_anndata(adata, "cond")
    torch.manual_seed(0)
    return SCGPTPerturbation(adata, combination=combination, **SMALL, **kw)


@pytest.fixture(scope="module")
def trained() -> SCGPTPerturbation:
    model = _model()
    model.train(max_epochs=3, batch_size=32, enable_progress_bar=False, plan_kwargs={"lr": 3e-3})
    return model


@pytest.fixture(scope="module")
def observed() -> ad.AnnData:
    """Counts of cells under the held-out double (fresh draws, never trained on)."""
    return make_adata([HELD_OUT] * 20, seed=1)


def _mean_log(adata: ad.AnnData) -> np.ndarray:
    return log_normalize(torch.from_numpy(np.asarray(adata.X, np.float64))).mean(0).numpy()


# ------------------------------------------------------------------ input forms
def test_anndata_and_mean_vector_rank_alike(trained, observed):
    by_cells = trained.rank_perturbations(observed, n_control_cells=10)
    vec = _mean_log(observed)
    by_vec = trained.rank_perturbations(vec, n_control_cells=10)
    # a Series is aligned by gene name, whatever its order
    series = pd.Series(vec, index=observed.var_names)[::-1]
    by_series = trained.rank_perturbations(series, n_control_cells=10)
    for other in (by_vec, by_series):
        assert list(other["perturbation"]) == list(by_cells["perturbation"])
        np.testing.assert_allclose(other["score"], by_cells["score"], rtol=1e-6, atol=1e-9)


def test_counts_log_values_layer_and_extra_genes_agree(trained, observed):
    ref = trained.rank_perturbations(observed, n_control_cells=10)
    logged = observed.copy()
    logged.X = log_normalize(torch.from_numpy(logged.X.astype(np.float64))).numpy()
    in_layer = logged.copy()
    in_layer.layers["counts"] = observed.X.copy()
    # extra genes, in another order: counts are normalised over the model's genes only
    more = ad.AnnData(
        np.full((observed.n_obs, 3), 50.0, np.float32),
        obs=pd.DataFrame(index=observed.obs_names),
        var=pd.DataFrame(index=["e0", "e1", "e2"]),
    )
    extra = ad.concat([observed, more], axis=1)
    extra = extra[:, extra.var_names[::-1]].copy()
    for adata, layer in ((logged, None), (in_layer, "counts"), (extra, None)):
        got = trained.rank_perturbations(adata, n_control_cells=10, layer=layer)
        assert list(got["perturbation"]) == list(ref["perturbation"])
        np.testing.assert_allclose(got["score"], ref["score"], rtol=1e-5, atol=1e-7)


def test_observed_input_errors(trained, observed):
    with pytest.raises(ValueError, match="lacks 1 of the model's genes.*g3"):
        trained.rank_perturbations(observed[:, [g for g in observed.var_names if g != "g3"]])
    with pytest.raises(ValueError, match="no cells"):
        trained.rank_perturbations(observed[:0])
    with pytest.raises(ValueError, match="over the model's 12 genes"):
        trained.rank_perturbations(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        trained.rank_perturbations(pd.Series(1.0, index=observed.var_names[:-1]))


# ------------------------------------------------------------------ output and candidates
def test_ranking_sorted_and_covers_singles_and_pairs(trained, observed):
    ranked = trained.rank_perturbations(observed, n_control_cells=10)
    assert list(ranked.columns) == ["perturbation", "score", "rank"]
    expected = [{g} for g in TARGETS] + [set(p) for p in itertools.combinations(TARGETS, 2)]
    names = ranked["perturbation"]
    assert len(names) == len(expected) == len(set(names))
    assert all(set(p.split("+")) in expected for p in names)
    assert ranked["score"].is_monotonic_decreasing
    assert list(ranked["rank"]) == list(range(1, len(expected) + 1))
    assert list(ranked.index) == list(range(len(expected)))

    singles = trained.rank_perturbations(observed, n_control_cells=10, max_genes=1)
    assert sorted(singles["perturbation"]) == TARGETS
    chosen = ["TC+TD", "TA", "TB+ctrl"]
    given = trained.rank_perturbations(observed, candidates=chosen, n_control_cells=10)
    assert sorted(given["perturbation"]) == sorted(chosen)
    one = trained.rank_perturbations(observed, candidates="TA+TB", n_control_cells=10)
    assert list(one["perturbation"]) == ["TA+TB"] and one["rank"].tolist() == [1]
    # a candidate's score does not depend on the others it is ranked with
    full = ranked.set_index("perturbation")["score"]
    np.testing.assert_allclose(
        given.set_index("perturbation").loc[["TC+TD", "TA"], "score"],
        full.loc[["TC+TD", "TA"]],
        rtol=1e-5,
    )


def test_candidate_with_unknown_gene_is_named(trained, observed):
    with pytest.raises(ValueError, match="NOT_A_GENE"):
        trained.rank_perturbations(observed, candidates=["TA", "TB+NOT_A_GENE"])


@pytest.mark.parametrize("bad", [[], ["TA+TB+TC+"]])
def test_bad_candidates(trained, observed, bad):
    with pytest.raises(ValueError):
        trained.rank_perturbations(observed, candidates=bad)


def test_unknown_metric_lists_choices(trained, observed):
    with pytest.raises(ValueError, match="'spearman'.*'pearson_delta', 'pearson', 'mse'"):
        trained.rank_perturbations(observed, metric="spearman")
    with pytest.raises(ValueError, match="max_genes"):
        trained.rank_perturbations(observed, max_genes=3)


# ------------------------------------------------------------------ gene_selection per call
def test_gene_selection_per_call(trained):
    module = trained.module
    assert module.gene_selection == "batch-wise"
    kw = {"n_control_cells": 8}
    batch = trained.predict_perturbation(["TA", "TD"], gene_selection="batch-wise", **kw).X
    default = trained.predict_perturbation(["TA", "TD"], **kw).X
    every = trained.predict_perturbation(["TA", "TD"], gene_selection="all", **kw).X
    assert module.gene_selection == "batch-wise"  # the call did not change the model
    np.testing.assert_array_equal(batch, default)
    # The silent gene (zero in every control) is not fed batch-wise: its prediction is the
    # additive expectation alone; fed with "all", the trained residual head moves it.
    targets = torch.stack(trained._targets(["TA", "TD"]))
    expected = module.additive_expectation(targets.to(module.device)).cpu().numpy()
    np.testing.assert_allclose(batch[:, SILENT], expected[:, SILENT], atol=1e-6)
    assert np.abs(every[:, SILENT] - expected[:, SILENT]).min() > 1e-4
    # the other genes see one more token, so they move too, but little
    others = np.arange(N_GENES) != SILENT
    assert np.abs(every[:, others] - batch[:, others]).max() > 0
    np.testing.assert_allclose(every[:, others], batch[:, others], atol=0.5)

    with pytest.raises(ValueError, match="'some'.*'all'.*'batch-wise'"):
        trained.predict_perturbation("TA", gene_selection="some")
    assert module.gene_selection == "batch-wise"
    trained.rank_perturbations(np.zeros(N_GENES), candidates=["TA"], gene_selection="all")
    assert module.gene_selection == "batch-wise"


def test_gene_selection_per_call_on_a_direct_all_model():
    model = _model("direct", gene_selection="all")
    kw = {"n_control_cells": 5}
    every = model.predict_perturbation("TA", **kw).X
    batch = model.predict_perturbation("TA", gene_selection="batch-wise", **kw).X
    assert model.module.gene_selection == "all"
    assert batch[0, SILENT] == 0.0  # "direct": a modelled gene not fed is predicted 0
    assert every[0, SILENT] != 0.0
    np.testing.assert_array_equal(model.predict_perturbation("TA", **kw).X, every)


# ------------------------------------------------------------------ behaviour
@pytest.mark.parametrize("metric", ["pearson_delta", "pearson", "mse"])
def test_true_perturbation_ranks_first(trained, observed, metric):
    """Planted effects: each single's cells and the never-seen double rank their cause first."""
    ranked = trained.rank_perturbations(observed, n_control_cells=20, metric=metric)
    assert ranked["perturbation"].iloc[0] == HELD_OUT
    fresh = make_adata([c for c in TARGETS for _ in range(10)], seed=2)
    for single in TARGETS:
        cells = fresh[fresh.obs["cond"] == single]
        got = trained.rank_perturbations(cells, n_control_cells=20, metric=metric)
        assert got["perturbation"].iloc[0] == single, got.head(3)


def test_direct_model_learns_to_rank_the_planted_perturbation():
    """Without the additive prior, trained "direct" models rank each planted single high among
    five candidates: over two initialisations, the true single's mean rank is at most 2 (by
    chance it is 3, with standard deviation 0.5 over the eight ranks)."""
    fresh = make_adata([c for c in TARGETS for _ in range(10)], seed=2)
    ranks = []
    for seed in (0, 1):
        adata = make_adata(TRAIN)
        SCGPTPerturbation.setup_anndata(adata, "cond")
        torch.manual_seed(seed)
        model = SCGPTPerturbation(adata, combination="direct", **SMALL)
        model.train(
            max_epochs=60,
            batch_size=32,
            train_size=1.0,
            early_stopping=False,
            enable_progress_bar=False,
            plan_kwargs={"lr": 3e-3},
        )
        for single in TARGETS:
            got = model.rank_perturbations(
                fresh[fresh.obs["cond"] == single],
                candidates=TARGETS + ["TA+TC"],
                n_control_cells=20,
            )
            ranks.append(int(got.loc[got["perturbation"] == single, "rank"].iloc[0]))
    assert np.mean(ranks) <= 2, ranks
