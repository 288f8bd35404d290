"""Refactor safety net: the three architectures give the same outputs as before the family
redesign (snapshots written by ``tests/snapshots/make_snapshots.py`` with the code before it).

The module snapshots rebuild each configuration with its saved constructor keywords and
weights and compare every output of ``inference``, ``generative`` and ``loss`` (training mode:
masking, control pairing) and of eval mode. The demo snapshot loads the saved ``make demo``
model and compares its embeddings and class probabilities of all 700 pbmc68k_reduced cells.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).parent / "snapshots"
sys.path.insert(0, str(HERE))
from make_snapshots import module_cases, run_module  # noqa: E402

SNAPSHOTS = torch.load(HERE / "modules.pt", weights_only=True)
ATOL = 1e-5  # the parity tolerance (float32 sums differ in the last bits with the thread count)


@pytest.mark.parametrize("name", sorted(module_cases()))
def test_module_outputs_unchanged(name):
    case, snap = module_cases()[name], SNAPSHOTS[name]
    _, outputs = run_module(case, state=snap["state"])
    assert set(outputs) == set(snap["outputs"]), name
    for key, ref in snap["outputs"].items():
        got = outputs[key]
        assert got.shape == ref.shape and got.dtype == ref.dtype, key
        if ref.is_floating_point():
            assert torch.allclose(got, ref, atol=ATOL, rtol=0), (key, (got - ref).abs().max())
        else:
            assert torch.equal(got, ref), key


def test_demo_model_embeddings_unchanged():
    from scgpt_scvi import SCGPT
    from scgpt_scvi.demo import load_pbmc68k_counts

    adata = load_pbmc68k_counts()
    model = SCGPT.load(HERE / "demo_model", adata=adata)
    ref = np.load(HERE / "demo_outputs.npz")
    z = model.get_latent_representation(adata)
    np.testing.assert_allclose(z, ref["latent"], atol=ATOL, rtol=0)
    p = model.predict(adata, soft=True).to_numpy()
    np.testing.assert_allclose(p, ref["probs"], atol=ATOL, rtol=0)
