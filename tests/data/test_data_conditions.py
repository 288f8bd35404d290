"""GEARS-style condition strings and count detection (perturbation data)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from scgpt_scvi.data import holds_counts, log_normalize, parse_condition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers
from _helpers_perturbation import make_adata  # noqa: E402


@pytest.mark.parametrize(
    ("condition", "genes"),
    [("ctrl", ()), ("A", ("A",)), ("A+ctrl", ("A",)), ("ctrl+A", ("A",)), ("A+B", ("A", "B"))],
)
def test_parse_condition(condition, genes):
    assert parse_condition(condition) == genes


@pytest.mark.parametrize("bad", ["", "A++B", "+A", "A+", " A", "A+A"])
def test_parse_condition_malformed(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("+", r"\+")):
        parse_condition(bad)


def test_parse_condition_custom_delimiter():
    assert parse_condition("A_B", control_category="control", delimiter="_") == ("A", "B")
    assert parse_condition("control", control_category="control") == ()


def test_holds_counts_tells_counts_from_log_values():
    adata = make_adata()
    assert holds_counts(adata.X)
    logged = adata.copy()
    logged.X = log_normalize(torch.from_numpy(adata.X)).numpy()
    assert not holds_counts(logged.X)
