"""Per-cell value binning against ``scgpt.preprocess.binning`` (binning_cases.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scgpt_scvi.data import bin_values
from scgpt_scvi.data._binning import _quantile_edges


@pytest.fixture(scope="module")
def binning_cases(fixtures_dir):
    path = fixtures_dir / "binning_cases.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    data = json.loads(path.read_text())
    assert data["n_bins"] == 51
    return data


def _row(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[None]


def _edges_of(x: torch.Tensor, n_bins: int) -> torch.Tensor:
    nz = x > 0
    sorted_nz = torch.sort(torch.where(nz, x, torch.full_like(x, float("inf"))), dim=1).values
    return _quantile_edges(sorted_nz, nz.sum(1), n_bins - 1)


def test_bins_match_fixture_row_by_row(binning_cases):
    n_bins = binning_cases["n_bins"]
    for i, case in enumerate(binning_cases["rows"]):
        x = _row(case["values"])
        for seed in (0, 1):
            u = torch.rand(
                x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
            )
            got = bin_values(x, n_bins, u)
            assert got.dtype == torch.float32
            assert got[0].tolist() == case["bins"], f"row {i}, uniform seed {seed}"


def test_bins_match_fixture_batched(binning_cases):
    """All rows in one zero-padded minibatch: each row is binned on its own."""
    rows = binning_cases["rows"]
    G = max(len(r["values"]) for r in rows)
    x = torch.zeros(len(rows), G, dtype=torch.float32)
    for i, r in enumerate(rows):
        x[i, : len(r["values"])] = torch.tensor(r["values"], dtype=torch.float32)
    got = bin_values(x, binning_cases["n_bins"], torch.rand(x.shape, dtype=torch.float64))
    for i, r in enumerate(rows):
        n = len(r["values"])
        assert got[i, :n].tolist() == r["bins"], f"row {i}"
        assert torch.all(got[i, n:] == 0)


def test_quantile_edges_match_fixture_exactly(binning_cases):
    n_bins = binning_cases["n_bins"]
    rows = binning_cases["rows"]
    for i, case in enumerate(rows):
        edges = _edges_of(_row(case["values"]), n_bins)[0]
        assert edges.dtype == torch.float64
        expected = torch.tensor(case["edges"], dtype=torch.float64)
        assert torch.equal(edges, expected), f"row {i}: max diff {(edges - expected).abs().max()}"


def test_quantile_edges_match_numpy_on_random_rows():
    rng = np.random.default_rng(0)
    x = (rng.gamma(1.0, 2.0, size=(8, 97)) * (rng.random((8, 97)) < 0.6)).astype(np.float32)
    edges = _edges_of(torch.from_numpy(x), 51)
    for i in range(8):
        nz = x[i][x[i] > 0]
        assert np.array_equal(edges[i].numpy(), np.quantile(nz, np.linspace(0, 1, 50)))


def test_all_zero_row_and_extremes():
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0, 7.0]])
    got = bin_values(x, 51, torch.rand(x.shape, dtype=torch.float64))
    assert got[0].tolist() == [0, 0, 0]
    assert got[1].tolist() == [0, 1, 50], "min -> 1, max -> n_bins - 1"


def test_ties_are_spread_over_the_bins_they_span():
    # 40 non-zero values with many ties: a tie spanning several edges may land in any of them
    x = torch.tensor([[1.0] * 20 + [2.0] * 10 + [3.0] * 10])
    edges = _edges_of(x, 51)[0]
    left = torch.searchsorted(edges, x[0].double(), right=True)
    right = torch.searchsorted(edges, x[0].double(), right=False)
    assert (left != right).any(), "the test needs ties that span several edges"
    draws = [
        bin_values(
            x,
            51,
            torch.rand(x.shape, generator=torch.Generator().manual_seed(s), dtype=torch.float64),
        )[0]
        for s in range(3)
    ]
    for b in draws:
        assert torch.all((b >= torch.minimum(left, right)) & (b <= torch.maximum(left, right)))
    assert not torch.equal(draws[0], draws[1]) or not torch.equal(draws[0], draws[2])
    # U = 0 -> lower edge index (upstream: ceil(0 * (r - l) + l) = l)
    low = bin_values(x, 51, torch.zeros(x.shape, dtype=torch.float64))[0]
    assert torch.equal(low, left.float())
