"""Numerical parity of ``SCGPTModule`` with the original scGPT (reference fixtures).

Each fixture folder holds a randomly initialised upstream ``TransformerModel`` checkpoint (released
``Wqkv`` key layout), fixed inputs and every forward output, computed in eval mode both under
``torch.no_grad()`` (``outputs``) and with autograd on (``outputs_grad_enabled``).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from scgpt_scvi.checkpoint import to_torch_layout
from scgpt_scvi.data import GeneVocab
from scgpt_scvi.module import SCGPTModule, pool_cells

CASES = [
    ("scgpt_pretrained_layout", "case.pt"),
    ("scgpt_integration", "case.pt"),
    ("scgpt_integration", "case_batch2.pt"),
    ("scgpt_category_wpool", "case.pt"),
]
ATOL = 1e-5
_NOT_CONSTRUCTOR_KWARGS = ("vocab", "pad_token", "use_fast_transformer")


def _build(folder) -> SCGPTModule:
    cfg = json.loads((folder / "config.json").read_text())["kwargs"]
    vocab = GeneVocab.from_file(folder / "vocab.json")
    kwargs = {k: v for k, v in cfg.items() if k not in _NOT_CONSTRUCTOR_KWARGS}
    return SCGPTModule(pad_id=vocab["<pad>"], cls_id=vocab["<cls>"], **kwargs)


def _load(folder) -> SCGPTModule:
    module = _build(folder)
    sd = to_torch_layout(torch.load(folder / "best_model.pt", weights_only=True))
    # ``gene_token_ids`` is our buffer (input column -> vocab id); checkpoints do not hold it.
    assert "gene_token_ids" not in sd
    sd["gene_token_ids"] = module.gene_token_ids
    module.load_state_dict(sd, strict=True)
    return module.eval()


def _run(module, case) -> dict[str, torch.Tensor]:
    inp, fk = case["inputs"], case["forward_kwargs"]
    return module.forward_tokens(
        inp["gene_ids"],
        inp["values"],
        inp["src_key_padding_mask"],
        inp.get("batch_labels"),
        **{k: v for k, v in fk.items() if k != "do_sample"},
    )


def _max_diff(ours: torch.Tensor, ref: torch.Tensor, pad: torch.Tensor) -> float:
    """Max |diff|; [B, L] outputs only at non-pad positions."""
    assert ours.shape == ref.shape
    diff = (ours - ref).abs()
    if diff.dim() == 2 and diff.shape == pad.shape:
        diff = diff[~pad]
    return float(diff.max())


def _our_key(upstream_key: str) -> str:
    return upstream_key.replace("_zero_probs", "_nonzero_prob")


@pytest.mark.parametrize("folder_name", sorted({f for f, _ in CASES}))
def test_checkpoint_keys_load_exactly(fixtures_dir, folder_name):
    folder = fixtures_dir / folder_name
    module = _build(folder)
    sd = to_torch_layout(torch.load(folder / "best_model.pt", weights_only=True))
    result = module.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["gene_token_ids"], "only our own buffer may be missing"
    assert result.unexpected_keys == []
    own = module.state_dict()
    for k, v in sd.items():
        assert own[k].shape == v.shape, k
        assert torch.equal(own[k], v), f"{k} not loaded"


@pytest.mark.parametrize(("folder_name", "case_name"), CASES)
def test_forward_matches_fixture(fixtures_dir, folder_name, case_name):
    folder = fixtures_dir / folder_name
    module = _load(folder)
    case = torch.load(folder / case_name, weights_only=True)
    pad = case["inputs"]["src_key_padding_mask"]
    with torch.no_grad():
        out = _run(module, case)
    assert {_our_key(k) for k in case["outputs"]} <= set(out)
    for key, ref in case["outputs"].items():
        d = _max_diff(out[_our_key(key)], ref, pad)
        assert d <= ATOL, f"{folder_name}/{case_name} {key}: max abs diff {d:.3g}"
    # transformer states (upstream ``_encode``) at non-pad positions
    with torch.no_grad():
        h, _ = module.encode(
            case["inputs"]["gene_ids"],
            case["inputs"]["values"],
            pad,
            case["inputs"].get("batch_labels"),
        )
    ref_h = case["extras"]["transformer_output"]
    assert (h - ref_h)[~pad].abs().max() <= ATOL


@pytest.mark.parametrize(("folder_name", "case_name"), CASES)
def test_forward_matches_grad_enabled_fixture(fixtures_dir, folder_name, case_name):
    """Same comparison against upstream's autograd-on path (its pad rows are not zeroed).

    Skipped for the w-pool ``cell_emb``: upstream sums pad rows weighted by ``pad_value`` and
    we exclude pads by design (see ``test_wpool_*`` below).
    """
    folder = fixtures_dir / folder_name
    module = _load(folder)
    case = torch.load(folder / case_name, weights_only=True)
    pad = case["inputs"]["src_key_padding_mask"]
    out = _run(module, case)  # autograd on, eval mode
    for key, ref in case["outputs_grad_enabled"].items():
        if key == "cell_emb" and module.cell_emb_style == "w-pool":
            continue
        d = _max_diff(out[_our_key(key)].detach(), ref, pad)
        assert d <= ATOL, f"{folder_name}/{case_name} {key} (grad enabled): max abs diff {d:.3g}"


def test_integration_batch_label_selects_dsbn_domain(fixtures_dir):
    """case.pt (label 0) and case_batch2.pt (label 2) share tokens; outputs must differ."""
    folder = fixtures_dir / "scgpt_integration"
    a = torch.load(folder / "case.pt", weights_only=True)["outputs"]["cell_emb"]
    b = torch.load(folder / "case_batch2.pt", weights_only=True)["outputs"]["cell_emb"]
    assert (a - b).abs().max() > 1e-2


def _wpool_case(fixtures_dir):
    folder = fixtures_dir / "scgpt_category_wpool"
    return _load(folder), torch.load(folder / "case.pt", weights_only=True)


def test_wpool_is_non_pad_weighted_sum(fixtures_dir):
    """Our w-pool: L2-normalised sum over NON-PAD tokens of ``h * value``.

    Deliberate difference from scGPT, which sums over all L positions and so weighs pads by
    ``pad_value`` (here 49): its embedding depends on how much padding a cell gets. The no_grad
    fixture matches ours only because upstream's fast path zeroes pad rows.
    """
    module, case = _wpool_case(fixtures_dir)
    assert module.cell_emb_style == "w-pool"
    h = case["extras"]["transformer_output"]
    values = case["inputs"]["values"]
    pad = case["inputs"]["src_key_padding_mask"]
    assert pad.any() and torch.all(values[pad] == 49)
    manual = torch.stack(
        [
            F.normalize((h[i][~pad[i]] * values[i][~pad[i], None]).sum(0), dim=0)
            for i in range(len(h))
        ]
    )
    torch.testing.assert_close(pool_cells(h, values, pad, "w-pool"), manual, rtol=0, atol=1e-6)
    torch.testing.assert_close(manual, case["outputs"]["cell_emb"], rtol=0, atol=ATOL)
    # the fixture matches only because its pad rows are exactly zero on the no_grad path
    assert torch.all(h[pad] == 0)


def test_wpool_differs_from_upstream_grad_enabled_on_purpose(fixtures_dir):
    """Upstream's autograd-on w-pool (pads included) is reproduced by the all-positions formula
    on its own transformer output; ours, excluding pads, deliberately differs."""
    module, case = _wpool_case(fixtures_dir)
    h_grad = case["extras_grad_enabled"]["transformer_output"]
    values = case["inputs"]["values"]
    upstream = F.normalize((h_grad * values[..., None]).sum(1), dim=1)
    ref = case["outputs_grad_enabled"]["cell_emb"]
    torch.testing.assert_close(upstream, ref, rtol=0, atol=ATOL)
    ours = _run(module, case)["cell_emb"].detach()
    torch.testing.assert_close(ours, case["outputs"]["cell_emb"], rtol=0, atol=ATOL)
    assert (ours - ref).abs().max() > 0.1


def test_avg_pool_is_non_pad_mean(fixtures_dir):
    """Our avg-pool: mean over NON-PAD tokens. Deliberate difference from scGPT, whose
    ``mean(dim=1)`` averages pads in too (not fixtured upstream)."""
    case = torch.load(fixtures_dir / "scgpt_pretrained_layout" / "case.pt", weights_only=True)
    h = case["extras_grad_enabled"]["transformer_output"]
    pad = case["inputs"]["src_key_padding_mask"]
    values = case["inputs"]["values"]
    lengths = (~pad).sum(1)
    manual = torch.stack([h[i, : lengths[i]].mean(0) for i in range(len(h))])
    ours = pool_cells(h, values, pad, "avg-pool")
    torch.testing.assert_close(ours, manual, rtol=0, atol=1e-6)
    padded_rows = pad.any(1)
    assert not torch.allclose(ours[padded_rows], h.mean(1)[padded_rows], atol=1e-3)
    torch.testing.assert_close(ours[~padded_rows], h.mean(1)[~padded_rows], rtol=0, atol=1e-6)
