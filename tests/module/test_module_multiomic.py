"""``SCGPTMultiomicModule``: parity with scGPT's ``MultiOmicTransformerModel``
(``fixtures/multiomic``), the modality embedding in the input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from scgpt_scvi.data import GeneVocab
from scgpt_scvi.module import SCGPTMultiomicModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers
from _helpers_multiomic import _check_outputs, _fixture_kwargs, _load_fixture  # noqa: E402

# one torch thread: tests/conftest.py runs every test under tests/module single-threaded

LOCAL_BUFFERS = {"gene_token_ids", "token_mod_ids"}
SMALL = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1}


# ---------------------------------------------------------------------- parity
def test_parity_with_original_multiomic_model(fixture_dir):
    vocab = GeneVocab.from_file(fixture_dir / "vocab.json")
    vocab_mod = json.loads((fixture_dir / "vocab_mod.json").read_text())
    module = SCGPTMultiomicModule(
        ntoken=778,
        ntokens_mod=len(vocab_mod),
        mod_pad_id=vocab_mod["<pad>"],
        pad_id=vocab.pad_id,
        cls_id=vocab.cls_id,
        **_fixture_kwargs(fixture_dir),
    )
    sd, result = _load_fixture(module, fixture_dir)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) <= LOCAL_BUFFERS  # our buffers, not in checkpoints
    assert set(module.state_dict()) - LOCAL_BUFFERS == set(sd)
    # the attention weights (left random by scgpt.utils.load_pretrained) are loaded
    attn = "transformer_encoder.layers.1.self_attn.in_proj_weight"
    assert torch.equal(module.state_dict()[attn], sd[attn])
    module.eval()
    case = torch.load(fixture_dir / "case.pt", weights_only=True)
    inp = case["inputs"]
    args = (inp["gene_ids"], inp["values"], inp["src_key_padding_mask"], inp["batch_labels"])
    with torch.no_grad():
        _check_outputs(module.forward_tokens(*args, mod_types=inp["mod_types"], MVC=True), case)
    _check_outputs(
        module.forward_tokens(*args, mod_types=inp["mod_types"], MVC=True),
        case,
        "outputs_grad_enabled",
    )
    with pytest.raises(ValueError, match="mod_types"):
        module.forward_tokens(*args, MVC=True)  # no token -> modality table in this module


def test_mod_in_input_option():
    kwargs = {
        "ntoken": 10,
        "pad_id": 7,
        "cls_id": 8,
        "token_mod_ids": torch.tensor([1, 1, 1, 1, 0, 0, 0, 2, 3, 4]),
        **SMALL,
    }
    torch.manual_seed(0)
    off = SCGPTMultiomicModule(**kwargs).eval()
    on = SCGPTMultiomicModule(mod_in_input=True, **kwargs).eval()
    on.load_state_dict(off.state_dict())
    ids = torch.tensor([[8, 0, 2, 4, 5, 7]])
    values = torch.tensor([[0.0, 1, 2, 3, 1, -2]])
    pad = ids.eq(7)
    h_off, _ = off.encode(ids, values, pad)
    h_on, _ = on.encode(ids, values, pad)
    extra = off.mod_encoder(off.modality_types(ids))
    h_ref, _ = off.backbone(ids, values, pad, extra_embs=extra)
    assert not torch.allclose(h_off, h_on)
    assert torch.allclose(h_on, h_ref)
