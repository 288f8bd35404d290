"""Self-attention and encoder layers: shapes, masks, gradients, parity with torch.nn."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from scgpt_scvi.nn import (
    ATTENTION_BACKENDS,
    MultiheadSelfAttention,
    TransformerEncoder,
    TransformerEncoderLayer,
    flash_attn_available,
)

D, H, D_HID = 32, 4, 48
LENGTHS = [7, 4, 6]


def _padding_mask(lengths: list[int], L: int) -> torch.Tensor:
    return torch.arange(L)[None, :] >= torch.tensor(lengths)[:, None]


def _inputs(L: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(LENGTHS), L, D, generator=g), _padding_mask(LENGTHS, L)


def _assert_finite_grads(module: nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"


# --------------------------------------------------------------------------- attention
def test_attention_shape_grad():
    torch.manual_seed(0)
    attn = MultiheadSelfAttention(D, H, dropout=0.1)
    x, pm = _inputs()
    x.requires_grad_(True)
    out = attn(x, pm)
    assert out.shape == x.shape
    out[~pm].pow(2).sum().backward()
    _assert_finite_grads(attn)
    assert torch.isfinite(x.grad).all()


def test_attention_ignores_padded_keys():
    """Changing the content of pad positions leaves the non-pad outputs unchanged."""
    torch.manual_seed(0)
    attn = MultiheadSelfAttention(D, H).eval()
    x, pm = _inputs()
    x2 = x.clone()
    x2[pm] = torch.randn(int(pm.sum()), D) * 100
    out, out2 = attn(x, pm), attn(x2, pm)
    torch.testing.assert_close(out[~pm], out2[~pm], rtol=0, atol=1e-6)
    # ... and the pad content does matter without the mask (the check above is not vacuous)
    assert not torch.allclose(attn(x)[~pm], attn(x2)[~pm], atol=1e-3)


def test_attention_pads_do_not_leak_into_gradients():
    torch.manual_seed(0)
    attn = MultiheadSelfAttention(D, H).eval()
    x, pm = _inputs()
    x.requires_grad_(True)
    attn(x, pm)[~pm].sum().backward()
    assert torch.all(x.grad[pm] == 0)
    assert x.grad[~pm].abs().sum() > 0


def test_attention_validates_arguments():
    with pytest.raises(ValueError, match="divisible"):
        MultiheadSelfAttention(30, 4)
    with pytest.raises(ValueError, match="attention_backend") as err:
        MultiheadSelfAttention(D, H, backend="xformers")
    for choice in ATTENTION_BACKENDS:
        assert choice in str(err.value)


@pytest.mark.skipif(flash_attn_available(), reason="flash-attn installed: no fallback")
def test_flash_backend_falls_back_to_sdpa():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="flash"):
        flash = MultiheadSelfAttention(D, H, backend="flash")
    sdpa = MultiheadSelfAttention(D, H)
    sdpa.load_state_dict(flash.state_dict())
    x, pm = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = flash.eval()(x, pm)
    torch.testing.assert_close(out, sdpa.eval()(x, pm), rtol=0, atol=0)


# --------------------------------------------------------------------------- layers
def test_layer_state_dict_names_match_torch():
    ours = TransformerEncoderLayer(D, H, D_HID)
    ref = nn.TransformerEncoderLayer(D, H, D_HID, batch_first=True)
    assert set(ours.state_dict()) == set(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert ours.state_dict()[k].shape == v.shape, k


@pytest.mark.parametrize("pre_norm", [False, True])
def test_layer_matches_torch_encoder_layer(pre_norm):
    """Weights copied from ``nn.TransformerEncoderLayer``: same outputs at non-pad tokens.

    torch is run with autograd on (regular path); under ``no_grad`` in eval mode its fast path
    zeros pad rows, so only non-pad positions are compared.
    """
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(
        D, H, D_HID, dropout=0.2, batch_first=True, norm_first=pre_norm
    ).eval()
    ours = TransformerEncoderLayer(D, H, D_HID, dropout=0.2, pre_norm=pre_norm).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, pm = _inputs()
    expected = ref(x, src_key_padding_mask=pm)
    got = ours(x, pm)
    assert (got - expected)[~pm].abs().max() <= 1e-6
    # the two norm schemes really differ (so each parametrisation tests something)
    other = TransformerEncoderLayer(D, H, D_HID, pre_norm=not pre_norm).eval()
    other.load_state_dict(ref.state_dict())
    assert (other(x, pm) - expected)[~pm].abs().max() > 1e-3


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_stack_matches_torch(pre_norm):
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(D, H, D_HID, batch_first=True, norm_first=pre_norm)
    ref = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    ours = TransformerEncoder(2, d_model=D, nhead=H, d_hid=D_HID, pre_norm=pre_norm).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, pm = _inputs(seed=3)
    expected = ref(x, src_key_padding_mask=pm)
    assert (ours(x, pm) - expected)[~pm].abs().max() <= 1e-6


def test_layer_without_mask_matches_torch():
    torch.manual_seed(2)
    ref = nn.TransformerEncoderLayer(D, H, D_HID, batch_first=True).eval()
    ours = TransformerEncoderLayer(D, H, D_HID).eval()
    ours.load_state_dict(ref.state_dict())
    x, _ = _inputs()
    assert (ours(x) - ref(x)).abs().max() <= 1e-6


@pytest.mark.parametrize("pre_norm", [False, True])
def test_layer_shape_grad_and_mask(pre_norm):
    torch.manual_seed(0)
    layer = TransformerEncoderLayer(D, H, D_HID, dropout=0.1, pre_norm=pre_norm)
    x, pm = _inputs()
    x.requires_grad_(True)
    out = layer(x, pm)
    assert out.shape == x.shape
    out[~pm].pow(2).mean().backward()
    _assert_finite_grads(layer)
    assert torch.all(x.grad[pm] == 0), "pads must not influence non-pad outputs"
    # in eval mode pad content does not change non-pad outputs
    layer.eval()
    x2 = x.detach().clone()
    x2[pm] = 50.0
    torch.testing.assert_close(layer(x.detach(), pm)[~pm], layer(x2, pm)[~pm], rtol=0, atol=1e-6)


def test_layer_dropout_only_in_training():
    torch.manual_seed(0)
    layer = TransformerEncoderLayer(D, H, D_HID, dropout=0.5)
    x, pm = _inputs()
    layer.train()
    assert not torch.allclose(layer(x, pm), layer(x, pm))
    layer.eval()
    torch.testing.assert_close(layer(x, pm), layer(x, pm), rtol=0, atol=0)


def test_encoder_names_layers_like_checkpoints():
    enc = TransformerEncoder(3, d_model=D, nhead=H, d_hid=D_HID)
    keys = set(enc.state_dict())
    assert "layers.2.self_attn.in_proj_weight" in keys
    assert "layers.0.norm2.bias" in keys
    assert not any(k.startswith("layers.3.") for k in keys)
