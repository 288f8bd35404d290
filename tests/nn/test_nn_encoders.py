"""Input-side blocks: gene, value and batch encoders."""

from __future__ import annotations

import pytest
import torch

from scgpt_scvi.nn import (
    VALUE_ENCODER_STYLES,
    BatchLabelEncoder,
    CategoryValueEncoder,
    ContinuousValueEncoder,
    GeneEncoder,
    ScalingValueEncoder,
    make_value_encoder,
)

D = 16


def _assert_finite_grads(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"


def test_gene_encoder_shape_grad_and_padding_row():
    torch.manual_seed(0)
    enc = GeneEncoder(10, D, padding_idx=3)
    ids = torch.tensor([[1, 2, 3, 3], [4, 5, 6, 3]])
    out = enc(ids)
    assert out.shape == (2, 4, D)
    # LayerNorm output: zero mean, unit variance per token (enc_norm has default affine params)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    (out * torch.randn_like(out)).sum().backward()
    _assert_finite_grads(enc)
    assert torch.all(enc.embedding.weight.grad[3] == 0), "padding row must get no gradient"
    assert enc.embedding.weight.grad[1].abs().sum() > 0
    assert set(enc.state_dict()) == {
        "embedding.weight",
        "enc_norm.weight",
        "enc_norm.bias",
    }


def test_batch_label_encoder_shape_and_grad():
    torch.manual_seed(0)
    enc = BatchLabelEncoder(3, D)
    out = enc(torch.tensor([0, 2, 1]))
    assert out.shape == (3, D)
    out.pow(2).sum().backward()
    _assert_finite_grads(enc)


def test_continuous_value_encoder_shape_grad():
    torch.manual_seed(0)
    enc = ContinuousValueEncoder(D, dropout=0.0)
    v = torch.tensor([[0.0, 1.0, 3.5], [-2.0, -1.0, 7.0]])
    out = enc(v)
    assert out.shape == (2, 3, D)
    (out * torch.randn_like(out)).sum().backward()
    _assert_finite_grads(enc)


def test_continuous_value_encoder_clamps_at_512():
    torch.manual_seed(0)
    enc = ContinuousValueEncoder(D, dropout=0.5).eval()
    assert enc.max_value == 512
    out = enc(torch.tensor([[512.0, 600.0, 1e6, 511.0, 100.0]]))
    torch.testing.assert_close(out[0, 1], out[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(out[0, 2], out[0, 0], rtol=0, atol=0)
    assert not torch.allclose(out[0, 3], out[0, 0], atol=1e-6), "511 must not be clamped"
    # manual computation of the MLP at the clamped value
    x = torch.tensor([[512.0]])
    ref = enc.norm(enc.linear2(torch.relu(enc.linear1(x))))
    torch.testing.assert_close(out[0, 1], ref[0], rtol=0, atol=1e-6)
    # no gradient flows through a clamped input
    v = torch.tensor([[600.0, 3.0]], requires_grad=True)
    out = enc(v)
    (out * torch.randn_like(out)).sum().backward()
    assert v.grad[0, 0] == 0 and v.grad[0, 1] != 0


def test_category_value_encoder_casts_and_padding_idx():
    torch.manual_seed(0)
    enc = CategoryValueEncoder(7, D, padding_idx=5)
    v = torch.tensor([[0.0, 1.0, 5.0, 6.0], [2.0, 2.0, 5.0, 5.0]])
    out = enc(v)
    assert out.shape == (2, 4, D)
    torch.testing.assert_close(out[1, 0], out[1, 1], rtol=0, atol=0)
    torch.testing.assert_close(out, enc.enc_norm(enc.embedding(v.long())), rtol=0, atol=0)
    out.pow(2).sum().backward()
    assert torch.all(enc.embedding.weight.grad[5] == 0)
    _assert_finite_grads(enc)


def test_scaling_value_encoder():
    v = torch.tensor([[1.0, 2.0], [3.0, -2.0]])
    out = ScalingValueEncoder()(v)
    assert out.shape == (2, 2, 1)
    assert torch.equal(out[..., 0], v)


@pytest.mark.parametrize(
    ("style", "cls"),
    [
        ("continuous", ContinuousValueEncoder),
        ("category", CategoryValueEncoder),
        ("scaling", ScalingValueEncoder),
    ],
)
def test_make_value_encoder_styles(style, cls):
    enc = make_value_encoder(style, D, 0.1, n_input_bins=10, pad_value=8)
    assert isinstance(enc, cls)


def test_make_value_encoder_unknown_style_lists_choices():
    with pytest.raises(ValueError, match="input_emb_style") as err:
        make_value_encoder("bogus", D, 0.1, None, -2.0)
    for choice in VALUE_ENCODER_STYLES:
        assert choice in str(err.value)


@pytest.mark.parametrize(("n_bins", "pad_value"), [(None, 0.0), (10, -2.0), (10, 10.0)])
def test_make_value_encoder_category_needs_valid_table(n_bins, pad_value):
    with pytest.raises(ValueError, match="category"):
        make_value_encoder("category", D, 0.1, n_bins, pad_value)
