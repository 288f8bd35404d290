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
    chunked_dropout_attention,
    flash_attn_available,
    varlen_attention,
)
from scgpt_scvi.nn import _transformer as transformer_impl

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


# --------------------------------------------------------------------------- speed paths


def _reference_attention(q, k, v, padding_mask=None, drop=None, scale=1.0):
    """Plain softmax(QKᵀ/√d)V, with an optional explicit dropout mask (True = dropped)."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if padding_mask is not None:
        scores = scores.masked_fill(padding_mask[:, None, None, :], float("-inf"))
    probs = scores.softmax(-1)
    if drop is not None:
        probs = probs.masked_fill(drop, 0.0) * scale
    return probs @ v


def _qkv(B=3, H=4, L=9, Dh=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, Dh, generator=g) for _ in range(3)]


@pytest.mark.parametrize("block", [1, 4, 1 << 22])
def test_chunked_attention_equals_reference_math(block, monkeypatch):
    """Without dropout the chunked path is softmax attention, whatever the query block."""
    monkeypatch.setattr(transformer_impl, "_BLOCK_ELEMENTS", block * 3 * 4 * 9)
    q, k, v = _qkv()
    pm = _padding_mask([9, 5, 7], 9)
    got = chunked_dropout_attention(q, k, v, pm)
    torch.testing.assert_close(got, _reference_attention(q, k, v, pm), rtol=1e-5, atol=1e-6)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=~pm[:, None, None])
    torch.testing.assert_close(got, sdpa, rtol=1e-5, atol=1e-6)


def test_chunked_dropout_mask_and_gradients(monkeypatch):
    """With dropout: the output is the reference math under the drawn mask, gradients agree
    with autograd through that math, and the checkpointed recompute redraws the same mask."""
    monkeypatch.setattr(transformer_impl, "_BLOCK_ELEMENTS", 2 * 3 * 4 * 9)  # blocks of 2 queries
    q, k, v = (t.requires_grad_(True) for t in _qkv(seed=1))
    pm = _padding_mask([9, 5, 7], 9)
    torch.manual_seed(7)
    out = chunked_dropout_attention(q, k, v, pm, dropout_p=0.3)
    (out * torch.linspace(-1, 1, 8)).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    # redraw the mask block by block exactly as the kernel does
    torch.manual_seed(7)
    drops, scale = [], None
    for _ in range(0, 9, 2):
        n = min(2, 9 - len(drops) * 2)
        drop, scale = transformer_impl._drop_mask((3, 4, n, 9), 0.3, q.device)
        drops.append(drop)
    drop = torch.cat(drops, dim=2)
    assert 0.2 < drop[~pm[:, None, None, :].expand_as(drop)].float().mean() < 0.4
    for t in (q, k, v):
        t.grad = None
    ref = _reference_attention(q, k, v, pm, drop, scale)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    (ref * torch.linspace(-1, 1, 8)).sum().backward()
    for got, t in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(got, t.grad, rtol=1e-5, atol=1e-6)


def test_chunked_recompute_same_as_stored():
    q, k, v = (t.requires_grad_(True) for t in _qkv(seed=2))
    results = []
    for recompute in (True, False):
        torch.manual_seed(3)
        out = chunked_dropout_attention(q, k, v, None, 0.2, recompute=recompute)
        out.pow(2).sum().backward()
        results.append((out.detach(), [t.grad.clone() for t in (q, k, v)]))
        for t in (q, k, v):
            t.grad = None
    (o1, g1), (o2, g2) = results
    assert torch.equal(o1, o2)
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


def test_attention_dropout_default_and_zero_same_in_eval():
    torch.manual_seed(0)
    default = TransformerEncoder(2, d_model=D, nhead=H, d_hid=D_HID, dropout=0.3)
    zero = TransformerEncoder(2, d_model=D, nhead=H, d_hid=D_HID, dropout=0.3, attention_dropout=0)
    assert default.layers[0].self_attn.dropout == 0.3
    assert zero.layers[0].self_attn.dropout == 0.0
    assert zero.layers[0].dropout.p == 0.3
    zero.load_state_dict(default.state_dict(), strict=True)
    x, pm = _inputs()
    torch.testing.assert_close(default.eval()(x, pm), zero.eval()(x, pm), rtol=0, atol=0)
    # in training the options do differ
    default.train(), zero.train()
    torch.manual_seed(1)
    a = default(x, pm)
    torch.manual_seed(1)
    assert not torch.allclose(a, zero(x, pm))
    with pytest.raises(ValueError, match="attention_dropout"):
        TransformerEncoderLayer(D, H, D_HID, attention_dropout=1.5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_activation_checkpointing_identical_gradients(pre_norm):
    torch.manual_seed(0)
    kwargs = dict(d_model=D, nhead=H, d_hid=D_HID, dropout=0.2, pre_norm=pre_norm)
    plain = TransformerEncoder(3, **kwargs)
    ckpt = TransformerEncoder(3, checkpoint_activations=True, **kwargs)
    ckpt.load_state_dict(plain.state_dict(), strict=True)
    assert set(ckpt.state_dict()) == set(plain.state_dict())
    x, pm = _inputs()
    grads = []
    for enc in (plain, ckpt):
        torch.manual_seed(5)
        out = enc(x, pm)
        out[~pm].pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters()})
    for name, g in grads[0].items():
        assert torch.equal(g, grads[1][name]), name


def test_checkpointed_cpu_training_releases_freed_memory_per_layer(monkeypatch):
    """Memory-lean mode hands freed heap memory back after each layer's forward and after each
    layer's recomputation in backward; plain training and inference never call it."""
    import ctypes.util

    import scgpt_scvi.nn._transformer as tr

    if ctypes.util.find_library("c") and "libc.so.6" in str(ctypes.util.find_library("c")):
        assert tr.release_freed_memory() is True  # glibc: malloc_trim is there
    calls = []
    monkeypatch.setattr(tr, "release_freed_memory", lambda: calls.append(1) or True)
    kwargs = dict(d_model=D, nhead=H, d_hid=D_HID, dropout=0.2)
    x, pm = _inputs()
    for enc, expected in (
        (TransformerEncoder(3, checkpoint_activations=True, **kwargs), 6),
        (TransformerEncoder(3, **kwargs), 0),
    ):
        calls.clear()
        enc(x, pm)[~pm].pow(2).mean().backward()
        assert len(calls) == expected
        calls.clear()
        with torch.no_grad():
            enc.eval()(x, pm)
        assert calls == []


def _sdpa_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0):
    """Stand-in for ``flash_attn_varlen_func``: SDPA on each packed segment."""
    out = torch.empty_like(q)
    for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        seg = [t[s:e].transpose(0, 1) for t in (q, k, v)]  # (H, n, Dh)
        out[s:e] = torch.nn.functional.scaled_dot_product_attention(*seg).transpose(0, 1)
    return out


def test_varlen_packing_equals_sdpa_on_ragged_batch():
    torch.manual_seed(0)
    attn = MultiheadSelfAttention(D, H).eval()
    x, _ = _inputs(L=11)
    pm = _padding_mask([11, 3, 8], 11)
    expected = attn(x, pm)
    attn._flash = _sdpa_varlen
    attn._use_flash = lambda t: True
    got = attn(x, pm)
    assert (got - expected)[~pm].abs().max() <= 1e-6
    # without a mask every token is one segment per cell
    qkv = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    full = varlen_attention(qkv, None, H, _sdpa_varlen)
    assert (attn.out_proj(full) - attn(x)).abs().max() <= 1e-6
