"""Explicit attention probabilities of one layer: parity with torch MultiheadAttention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scgpt_scvi.nn import (
    TransformerEncoder,
    TransformerEncoderLayer,
    capture_layer_input,
    layer_attention_weights,
)


def _padded(B=3, L=7, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, d, generator=g)
    lengths = torch.tensor([L, L - 3, 2])[:B]
    pad = torch.arange(L)[None, :] >= lengths[:, None]
    return x, pad


@pytest.mark.parametrize("pre_norm", [False, True])
def test_weights_match_torch_multihead_attention(pre_norm):
    torch.manual_seed(0)
    d, nhead = 16, 4
    layer = TransformerEncoderLayer(d, nhead, d_hid=32, dropout=0.0, pre_norm=pre_norm).eval()
    with torch.no_grad():
        layer.self_attn.in_proj_bias.normal_()
        layer.norm1.weight.uniform_(0.5, 1.5)
        layer.norm1.bias.normal_()
    mha = nn.MultiheadAttention(d, nhead, dropout=0.0, batch_first=True).eval()
    mha.load_state_dict(
        {
            "in_proj_weight": layer.self_attn.in_proj_weight,
            "in_proj_bias": layer.self_attn.in_proj_bias,
            "out_proj.weight": layer.self_attn.out_proj.weight,
            "out_proj.bias": layer.self_attn.out_proj.bias,
        }
    )
    x, pad = _padded(d=d)
    with torch.no_grad():
        ours = layer_attention_weights(layer, x, pad)
        h = layer.norm1(x) if pre_norm else x
        _, ref = mha(h, h, h, key_padding_mask=pad, need_weights=True, average_attn_weights=True)
        # the attention output built from these weights is the layer's own (SDPA) output
        out_ref, _ = mha(h, h, h, key_padding_mask=pad)
        out_ours = layer.self_attn(h, pad)
    real = ~pad
    assert torch.allclose(ours[real], ref[real], atol=1e-5)
    assert torch.allclose(out_ours[real], out_ref[real], atol=1e-5)
    # rows of real tokens sum to 1; pads receive nothing and attend to nothing
    assert torch.allclose(ours[real].sum(-1), torch.ones(int(real.sum())), atol=1e-6)
    assert (ours.masked_select(pad[:, None, :].expand_as(ours)) == 0).all()
    assert (ours[pad] == 0).all()


def test_per_head_weights_average_to_head_mean():
    layer = TransformerEncoderLayer(16, 4, d_hid=16, dropout=0.0).eval()
    x, pad = _padded()
    per_head = layer_attention_weights(layer, x, pad, average_heads=False)
    assert per_head.shape == (3, 4, 7, 7)
    torch.testing.assert_close(per_head.mean(1), layer_attention_weights(layer, x, pad))


def test_capture_stops_at_the_layer_and_sees_its_input():
    torch.manual_seed(0)
    enc = TransformerEncoder(3, d_model=16, nhead=2, d_hid=16, dropout=0.0).eval()
    x, pad = _padded()
    calls = []
    hooks = [
        lay.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
        for i, lay in enumerate(enc.layers)
    ]
    with torch.no_grad(), capture_layer_input(enc.layers[1]) as seen:
        enc(x, pad)
    for h in hooks:
        h.remove()
    assert calls == [0]  # layer 1 and 2 never ran
    with torch.no_grad():
        expected = enc.layers[0](x, pad)
    torch.testing.assert_close(seen["x"], expected)
    assert seen["padding_mask"] is pad
    # the hook is gone afterwards: a full pass runs every layer
    with torch.no_grad():
        enc(x, pad)
