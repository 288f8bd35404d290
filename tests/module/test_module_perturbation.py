"""SCGPTPerturbationModule: parity with scGPT's generator, tokens and flags, control pairing,
the training loss, the additive expectation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scgpt_scvi import SCGPTPerturbation, SCGPTPerturbationModule
from scgpt_scvi.checkpoint import LOCAL_ONLY_KEYS, to_torch_layout
from scgpt_scvi.data import log_normalize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers
from _helpers_perturbation import make_adata  # noqa: E402

# one torch thread: tests/conftest.py runs every test under tests/module single-threaded

SMALL = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1, "nlayers_cls": 2}
ADDITIVE = "additive_interaction"


# ------------------------------------------------------------------ parity
def _generator(fixtures_dir):
    folder = fixtures_dir / "generator"
    cfg = json.loads((folder / "config.json").read_text())["kwargs"]
    vocab = json.loads((folder / "vocab.json").read_text())
    module = SCGPTPerturbationModule(
        ntoken=cfg["ntoken"],
        d_model=cfg["d_model"],
        nhead=cfg["nhead"],
        d_hid=cfg["d_hid"],
        nlayers=cfg["nlayers"],
        nlayers_cls=cfg["nlayers_cls"],
        n_cls=cfg["n_cls"],
        dropout=cfg["dropout"],
        pad_id=vocab[cfg["pad_token"]],
        cls_id=vocab["<cls>"],
        pad_value=cfg["pad_value"],
        pert_pad_id=cfg["pert_pad_id"],
        do_mvc=cfg["do_mvc"],
        decoder_adaptive_bias=cfg["decoder_adaptive_bias"],
        explicit_zero_prob=cfg["explicit_zero_prob"],
    )
    sd = torch.load(folder / "best_model.pt", weights_only=True)
    case = torch.load(folder / "case.pt", weights_only=True)
    return module, to_torch_layout(sd), case


@pytest.mark.parametrize("grad", [False, True])
def test_generator_parity(fixtures_dir, grad):
    module, sd, case = _generator(fixtures_dir)
    result = module.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) <= set(LOCAL_ONLY_KEYS)
    module.eval()
    inp = case["inputs"]
    with torch.set_grad_enabled(grad):
        out = module.forward_tokens(
            inp["gene_ids"],
            inp["values"],
            inp["input_pert_flags"],
            inp["src_key_padding_mask"],
            CLS=True,
            ECS=True,
        )
    ref = case["outputs_grad_enabled" if grad else "outputs"]
    keep = ~inp["src_key_padding_mask"]
    torch.testing.assert_close(out["mlm_output"][keep], ref["mlm_output"][keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["cls_output"], ref["cls_output"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["loss_ecs"], ref["loss_ecs"], atol=1e-5, rtol=0)
    extras = case["extras_grad_enabled" if grad else "extras"]
    torch.testing.assert_close(out["cell_emb"], extras["cell_emb"], atol=1e-5, rtol=0)


def test_generator_parity_detects_wrong_flags(fixtures_dir):
    """The flag embedding matters: all-zero flags change the output."""
    module, sd, case = _generator(fixtures_dir)
    module.load_state_dict(sd, strict=False)
    module.eval()
    inp = case["inputs"]
    flags = torch.where(inp["src_key_padding_mask"], 2, 0)
    with torch.no_grad():
        out = module.forward_tokens(
            inp["gene_ids"], inp["values"], flags, inp["src_key_padding_mask"]
        )
    keep = ~inp["src_key_padding_mask"]
    assert (out["mlm_output"][keep] - case["outputs"]["mlm_output"][keep]).abs().max() > 1e-4


# ------------------------------------------------------------------ tokens and pairing
def _module(n_ctrl: int = 7) -> SCGPTPerturbationModule:
    # columns g0..g3 -> ids 0..3; X (unmeasured target) -> 4; <pad> 5, <cls> 6
    torch.manual_seed(0)
    ctrl = torch.arange(n_ctrl * 4, dtype=torch.float32).reshape(n_ctrl, 4) % 3
    return SCGPTPerturbationModule(
        ntoken=7,
        pad_id=5,
        cls_id=6,
        **SMALL,
        gene_token_ids=torch.tensor([0, 1, 2, 3]),
        condition_targets=torch.tensor([[-1, -1], [1, -1], [1, 4]]),
        control_x=ctrl,
        gene_selection="all",
    )


def test_tokens_flags_and_extra_targets():
    m = _module()
    x_in = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 1.0]])
    targets = torch.tensor([[1, 4], [-1, -1]])
    tok = m.build_tokens(x_in, targets, torch.arange(4))
    assert tok["gene_ids"].tolist() == [[6, 0, 1, 2, 3, 4], [6, 0, 1, 2, 3, 5]]
    assert tok["pert_flags"].tolist() == [[0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 2]]
    assert tok["values"].tolist() == [[0, 1, 0, 2, 0, 0], [0, 0, 3, 0, 1, 0]]
    assert tok["padding_mask"].tolist() == [[False] * 6, [False] * 5 + [True]]
    # without unmeasured targets no extra column is appended
    tok = m.build_tokens(x_in, torch.tensor([[1], [-1]]), torch.arange(4))
    assert tok["gene_ids"].shape == (2, 5)


def test_batch_wise_selection_keeps_targets_and_expressed_genes():
    m = _module()
    nonzero = torch.tensor([True, False, False, False])
    cols = m._columns(nonzero, torch.tensor([[2, -1]]), "batch-wise")
    assert cols.tolist() == [0, 2]
    assert m._columns(nonzero, torch.tensor([[2, -1]]), "all").tolist() == [0, 1, 2, 3]


def test_pairing_reproducible_and_redrawn():
    m = _module(n_ctrl=50)
    keys = torch.arange(100, 140)
    m.train()
    m.epoch = 0
    first = m.pair_controls(keys)
    assert torch.equal(first, m.pair_controls(keys))
    # a cell's partner does not depend on the other cells in its minibatch
    assert torch.equal(first[5:9], m.pair_controls(keys[5:9]))
    assert first.min() >= 0 and first.max() < 50
    m.epoch = 1
    assert not torch.equal(first, m.pair_controls(keys))
    m.eval()
    fixed = m.pair_controls(keys)
    m.epoch = 3
    assert torch.equal(fixed, m.pair_controls(keys))


def test_training_loss_is_mse_on_fed_genes():
    m = _module()
    m.eval()
    x = torch.rand(3, 4)
    tensors = {"X": x, "perturbation": torch.tensor([[0], [1], [2]]), "cell_key": torch.arange(3)}
    inf, gen, loss = m(tensors)
    pred = gen["mlm_output"][:, 1:5]
    # the MSE divided by the target variance (O(1) whatever the value scale; issue 10)
    assert torch.allclose(loss.loss, ((pred - x) ** 2).mean() / x.var())
    assert inf["pert_flags"][2].tolist() == [0, 0, 1, 0, 0, 1]


def test_mvc_zero_prob_options_train_and_predict():
    torch.manual_seed(0)
    m = SCGPTPerturbationModule(
        ntoken=7,
        pad_id=5,
        cls_id=6,
        **SMALL,
        gene_token_ids=torch.tensor([0, 1, 2, 3]),
        condition_targets=torch.tensor([[-1, -1], [1, 4]]),
        control_x=torch.rand(5, 4),
        do_mvc=True,
        explicit_zero_prob=True,
        decoder_adaptive_bias=True,
        decoder_activation="ReLU",
    )
    tensors = {"X": torch.rand(4, 4), "perturbation": torch.tensor([0, 1, 1, 0])}
    _, gen, loss = m(tensors, loss_kwargs={"ecs_weight": 1.0})
    assert set(loss.extra_metrics) == {"loss_mlm", "loss_mvc", "loss_ecs"}
    assert {"mlm_nonzero_prob", "mvc_output", "cls_output"} <= set(gen)
    loss.loss.backward()
    assert m.pert_encoder.weight.grad[1].abs().sum() > 0
    assert m.pert_encoder.weight.grad[2].abs().sum() == 0  # pert_pad_id row stays frozen
    pred = m.predict_expression(torch.tensor([0, 1]), torch.tensor([[1, 4], [1, 4]]))
    assert pred.shape == (2, 4) and (pred >= 0).all()


# ------------------------------------------------------------------ additive + interaction
def _additive_model(seed: int = 0) -> SCGPTPerturbation:
    adata = make_adata(seed)
    SCGPTPerturbation.setup_anndata(adata, "cond")
    torch.manual_seed(seed)
    return SCGPTPerturbation(adata, combination=ADDITIVE, **SMALL)


def test_additive_training_regresses_the_residual():
    model = _additive_model()
    m = model.module
    m.eval()
    rows = np.array([0, 30, 42, 54, 66])  # ctrl, g1, g2+ctrl, g1+g3, X
    codes = np.asarray(model.adata_manager.get_from_registry("perturbation")).reshape(-1)[rows]
    codes = torch.as_tensor(codes).long()
    x = torch.from_numpy(model.adata.X[rows])
    inf, gen, loss = m({"X": x, "perturbation": codes, "cell_key": torch.arange(5)})
    cols = inf["columns"]
    expected = m.additive_expectation(m.condition_targets[codes])
    residual = (log_normalize(x) - expected)[:, cols]
    torch.testing.assert_close(inf["target_values"], residual)
    pred = gen["mlm_output"][:, 1 : 1 + cols.numel()]
    assert torch.count_nonzero(pred) == 0  # the residual head starts at zero
    torch.testing.assert_close(loss.loss, (residual**2).mean() / residual.var())
