"""rank_attention_targets: ranking by attention change, alignment and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scgpt_scvi.tl import rank_attention_targets


def _pair():
    genes = ["A", "B", "C", "D", "E"]
    rng = np.random.default_rng(0)
    a = pd.DataFrame(rng.uniform(0, 0.2, (5, 5)), index=genes, columns=genes)
    b = a.copy()
    b.loc["A", "D"] += 0.5  # strongest increase from A
    b.loc["A", "C"] -= 0.3  # a decrease
    b.loc["B", "A"] += 0.4  # incoming change to A (column view)
    return a, b


def test_ranks_by_change_and_direction():
    a, b = _pair()
    out = rank_attention_targets(a, b, "A", n_top=2)
    assert list(out["target"]) == ["D", "C"] and list(out["rank"]) == [1, 2]
    np.testing.assert_allclose(out["delta"], [0.5, -0.3])
    np.testing.assert_allclose(out["attention_b"] - out["attention_a"], out["delta"])
    assert rank_attention_targets(a, b, "A", n_top=1, direction="down")["target"].item() == "C"
    assert rank_attention_targets(a, b, "A", n_top=1, axis="column")["target"].item() == "B"
    assert "A" not in set(rank_attention_targets(a, b, "A", n_top=10)["target"])


def test_aligns_genes_and_skips_pairs_never_seen():
    a, b = _pair()
    b = b.loc[["E", "D", "C", "B", "A"], ["E", "D", "C", "B", "A"]]
    b.loc["A", "E"] = np.nan
    out = rank_attention_targets(a, b, ["A", "B"], n_top=10)
    assert set(out["source"]) == {"A", "B"}
    assert "E" not in set(out.loc[out["source"] == "A", "target"])
    assert out.loc[out["source"] == "A", "target"].iloc[0] == "D"


def test_bad_input():
    a, b = _pair()
    with pytest.raises(KeyError, match=r"Source genes \['Z'\]"):
        rank_attention_targets(a, b, "Z")
    with pytest.raises(ValueError, match="square genes x genes"):
        rank_attention_targets(a.iloc[:, :3], b, "A")
    with pytest.raises(ValueError, match="axis"):
        rank_attention_targets(a, b, "A", axis="diag")
