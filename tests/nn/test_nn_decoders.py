"""Output heads: expression, cell-type, adversarial, MVC and affine (perturbation) decoders."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from scgpt_scvi.nn import (
    MVC_DECODER_STYLES,
    AdversarialDiscriminator,
    AffineExprDecoder,
    ClsDecoder,
    ExprDecoder,
    MVCDecoder,
)

B, L, D = 3, 5, 16


def _assert_finite_grads(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"


def _loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum((v * torch.randn_like(v)).sum() for v in out.values())


# --------------------------------------------------------------------------- ExprDecoder
@pytest.mark.parametrize("explicit_zero_prob", [False, True])
@pytest.mark.parametrize("use_batch_labels", [False, True])
def test_expr_decoder(explicit_zero_prob, use_batch_labels):
    torch.manual_seed(0)
    dec = ExprDecoder(D, explicit_zero_prob, use_batch_labels)
    d_in = 2 * D if use_batch_labels else D
    x = torch.randn(B, L, d_in)
    out = dec(x)
    assert set(out) == ({"pred", "nonzero_prob"} if explicit_zero_prob else {"pred"})
    assert out["pred"].shape == (B, L)
    torch.testing.assert_close(out["pred"], dec.fc(x)[..., 0], rtol=0, atol=0)
    if explicit_zero_prob:
        p = out["nonzero_prob"]
        assert p.shape == (B, L) and torch.all((p > 0) & (p < 1))
        torch.testing.assert_close(p, torch.sigmoid(dec.zero_logit(x)[..., 0]))
    _loss(out).backward()
    _assert_finite_grads(dec)
    with pytest.raises(RuntimeError):
        dec(torch.randn(B, L, 3 * D))


# --------------------------------------------------------------------------- ClsDecoder
@pytest.mark.parametrize("nlayers", [1, 3])
def test_cls_decoder_shape_grad(nlayers):
    torch.manual_seed(0)
    dec = ClsDecoder(D, 5, nlayers=nlayers)
    assert len(dec._decoder) == 3 * (nlayers - 1)
    x = torch.randn(B, D)
    out = dec(x)
    assert out.shape == (B, 5)
    F.cross_entropy(out, torch.tensor([0, 4, 2])).backward()
    _assert_finite_grads(dec)


def test_cls_decoder_checkpoint_names():
    keys = set(ClsDecoder(D, 5, nlayers=3).state_dict())
    assert keys == {
        "_decoder.0.weight",
        "_decoder.0.bias",
        "_decoder.2.weight",
        "_decoder.2.bias",
        "_decoder.3.weight",
        "_decoder.3.bias",
        "_decoder.5.weight",
        "_decoder.5.bias",
        "out_layer.weight",
        "out_layer.bias",
    }


def test_adversarial_discriminator_shape_and_reversal():
    torch.manual_seed(0)
    disc = AdversarialDiscriminator(D, 4, lambd=1.0)
    plain = AdversarialDiscriminator(D, 4, reverse_grad=False)
    plain.load_state_dict(disc.state_dict())
    assert isinstance(disc._decoder[1], torch.nn.LeakyReLU)
    x1 = torch.randn(B, D, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    out1, out2 = disc(x1), plain(x2)
    assert out1.shape == (B, 4)
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    target = torch.tensor([0, 3, 1])
    F.cross_entropy(out1, target).backward()
    F.cross_entropy(out2, target).backward()
    _assert_finite_grads(disc)
    torch.testing.assert_close(x1.grad, -x2.grad)
    assert x2.grad.abs().sum() > 0


# --------------------------------------------------------------------------- MVCDecoder
@pytest.mark.parametrize("style", MVC_DECODER_STYLES)
@pytest.mark.parametrize("explicit_zero_prob", [False, True])
@pytest.mark.parametrize("use_batch_labels", [False, True])
def test_mvc_decoder_styles(style, explicit_zero_prob, use_batch_labels):
    torch.manual_seed(0)
    dec = MVCDecoder(D, style, explicit_zero_prob, use_batch_labels)
    d_in = 2 * D if use_batch_labels else D
    cell = torch.randn(B, d_in, requires_grad=True)
    genes = torch.randn(B, L, D, requires_grad=True)
    out = dec(cell, genes)
    assert set(out) == ({"pred", "nonzero_prob"} if explicit_zero_prob else {"pred"})
    assert out["pred"].shape == (B, L)
    if explicit_zero_prob:
        assert out["nonzero_prob"].shape == (B, L)
        assert torch.all((out["nonzero_prob"] > 0) & (out["nonzero_prob"] < 1))
    _loss(out).backward()
    _assert_finite_grads(dec)
    assert cell.grad is not None and cell.grad.abs().sum() > 0
    if style.endswith("detach"):
        assert genes.grad is None, "the detach variant must not send gradient to gene_embs"
    else:
        assert genes.grad is not None and genes.grad.abs().sum() > 0


@pytest.mark.parametrize("explicit_zero_prob", [False, True])
def test_mvc_inner_product_formula_and_detach_equivalence(explicit_zero_prob):
    torch.manual_seed(0)
    dec = MVCDecoder(D, "inner product", explicit_zero_prob, use_batch_labels=True)
    det = MVCDecoder(D, "inner product, detach", explicit_zero_prob, use_batch_labels=True)
    det.load_state_dict(dec.state_dict(), strict=True)
    cell, genes = torch.randn(B, 2 * D), torch.randn(B, L, D)
    out = dec(cell, genes)
    q = torch.sigmoid(genes @ dec.gene2query.weight.T + dec.gene2query.bias)
    manual = torch.einsum("bld,bd->bl", q @ dec.W.weight.T, cell)
    torch.testing.assert_close(out["pred"], manual, rtol=1e-5, atol=1e-5)
    if explicit_zero_prob:
        logit = torch.einsum("bld,bd->bl", dec.W_zero_logit(q), cell)
        torch.testing.assert_close(out["nonzero_prob"], torch.sigmoid(logit))
    for k, v in det(cell, genes).items():
        torch.testing.assert_close(v, out[k], rtol=0, atol=0)


def test_mvc_query_styles_formula():
    torch.manual_seed(0)
    cell, genes = torch.randn(B, D), torch.randn(B, L, D)
    concat = MVCDecoder(D, "concat query")
    q = torch.sigmoid(concat.gene2query(genes))
    assert q.shape == (B, L, 64)
    joint = torch.cat([cell[:, None].expand(-1, L, -1), q], 2)
    manual = concat.fc2(F.prelu(concat.fc1(joint), concat.hidden_activation.weight))[..., 0]
    torch.testing.assert_close(concat(cell, genes)["pred"], manual)

    summ = MVCDecoder(D, "sum query")
    q = torch.sigmoid(summ.gene2query(genes))
    manual = summ.fc2(F.prelu(summ.fc1(cell[:, None] + q), summ.hidden_activation.weight))[..., 0]
    torch.testing.assert_close(summ(cell, genes)["pred"], manual)


def test_mvc_unknown_style_lists_choices():
    with pytest.raises(ValueError, match="mvc_decoder_style") as err:
        MVCDecoder(D, "outer product")
    for choice in MVC_DECODER_STYLES:
        assert repr(choice) in str(err.value)


# --------------------------------------------------------------------------- AffineExprDecoder
def _affine_inputs():
    torch.manual_seed(0)
    x = torch.randn(B, L, D)
    values = torch.tensor(
        [[0.0, 1.0, 2.0, 0.0, 3.0], [0.5, 0.5, 0.0, 0.0, 0.0], [4.0, 1.0, 1.0, 2.0, 2.0]]
    )
    return x, values


@pytest.mark.parametrize("tanh_coeff", [False, True])
def test_affine_decoder_pred_is_coeff_x_plus_bias(tanh_coeff):
    x, values = _affine_inputs()
    dec = AffineExprDecoder(D, tanh_coeff=tanh_coeff)
    coeff = dec.coeff_decoder(x)["pred"]
    if tanh_coeff:
        coeff = torch.tanh(coeff)
    bias = dec.bias_decoder(x)["pred"]
    out = dec(x, values)
    assert set(out) == {"pred"}
    torch.testing.assert_close(out["pred"], coeff * values + bias, rtol=0, atol=1e-6)
    _loss(out).backward()
    _assert_finite_grads(dec)


def test_affine_decoder_adaptive_bias_and_zero_prob():
    x, values = _affine_inputs()
    dec = AffineExprDecoder(D, explicit_zero_prob=True, adaptive_bias=True)
    coeff = dec.coeff_decoder(x)
    bias = dec.bias_decoder(x)["pred"]
    # mean of each cell's non-zero input values: 2.0, 0.5, 2.0
    m = torch.tensor([[2.0], [0.5], [2.0]])
    out = dec(x, values)
    torch.testing.assert_close(out["pred"], coeff["pred"] * values + bias * m, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["nonzero_prob"], coeff["nonzero_prob"], rtol=0, atol=0)
    # an all-zero row does not give inf/nan (upstream divides by zero)
    out0 = dec(x[:1], torch.zeros(1, L))
    assert torch.isfinite(out0["pred"]).all()


def test_affine_decoder_activation():
    x, values = _affine_inputs()
    dec = AffineExprDecoder(D, activation="ReLU")
    with torch.no_grad():
        dec.bias_decoder.fc[4].bias.fill_(-0.4)
    raw = dec.coeff_decoder(x)["pred"] * values + dec.bias_decoder(x)["pred"]
    assert (raw < 0).any() and (raw > 0).any(), "test needs raw predictions of both signs"
    torch.testing.assert_close(dec(x, values)["pred"], torch.relu(raw), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="activation"):
        AffineExprDecoder(D, activation="NotAnActivation")


def test_affine_decoder_and_cls_decoder_match_generator_fixture(fixtures_dir):
    """Upstream ``TransformerGenerator``'s heads on its own transformer output (adaptive bias)."""
    folder = fixtures_dir / "generator"
    cfg = json.loads((folder / "config.json").read_text())["kwargs"]
    sd = torch.load(folder / "best_model.pt", weights_only=True)
    case = torch.load(folder / "case.pt", weights_only=True)
    d = cfg["d_model"]
    dec = AffineExprDecoder(d, adaptive_bias=cfg["decoder_adaptive_bias"])
    dec.load_state_dict(
        {k[len("decoder.") :]: v for k, v in sd.items() if k.startswith("decoder.")}
    )
    cls = ClsDecoder(d, cfg["n_cls"], nlayers=cfg["nlayers_cls"])
    prefix = "cls_decoder."
    cls.load_state_dict({k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)})
    dec.eval(), cls.eval()
    pm = case["inputs"]["src_key_padding_mask"]
    with torch.no_grad():
        pred = dec(case["extras"]["transformer_output"], case["inputs"]["values"])["pred"]
        logits = cls(case["extras"]["cell_emb"])
    assert (pred - case["outputs"]["mlm_output"])[~pm].abs().max() <= 1e-5
    assert (logits - case["outputs"]["cls_output"]).abs().max() <= 1e-5
