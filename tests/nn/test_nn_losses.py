"""scGPT's objectives against hand-written formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scgpt_scvi.nn import cce_loss, dab_loss, ecs_loss, masked_mse_loss, masked_nonzero_nll


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(4, 6, generator=g)
    target = torch.randint(0, 3, (4, 6), generator=g).float()
    mask = torch.rand(4, 6, generator=g) < 0.5
    mask[0, 0] = True
    return pred, target, mask


def test_masked_mse_loss():
    pred, target, mask = _data()
    expected = ((pred[mask] - target[mask]) ** 2).mean()
    torch.testing.assert_close(masked_mse_loss(pred, target, mask), expected)
    # scGPT's formula: mse_loss(input * mask, target * mask, reduction="sum") / mask.sum()
    m = mask.float()
    upstream = F.mse_loss(pred * m, target * m, reduction="sum") / m.sum()
    torch.testing.assert_close(masked_mse_loss(pred, target, mask), upstream)
    # positions outside the mask do not matter
    pred2 = torch.where(mask, pred, torch.full_like(pred, 1e4))
    torch.testing.assert_close(masked_mse_loss(pred2, target, mask), expected)


def test_masked_losses_with_empty_mask_are_zero():
    pred, target, mask = _data()
    none = torch.zeros_like(mask)
    assert masked_mse_loss(pred, target, none) == 0
    assert masked_nonzero_nll(torch.sigmoid(pred), target, none) == 0


def test_masked_nonzero_nll_matches_bernoulli():
    pred, target, mask = _data()
    p = torch.sigmoid(pred).clamp(0.05, 0.95)
    manual = (
        -(torch.distributions.Bernoulli(probs=p).log_prob((target > 0).float()) * mask).sum()
        / mask.sum()
    )
    torch.testing.assert_close(masked_nonzero_nll(p, target, mask), manual)
    # explicit log formula: the input is P(non-zero)
    nz = target > 0
    explicit = -torch.where(nz, p.log(), (1 - p).log())[mask].mean()
    torch.testing.assert_close(masked_nonzero_nll(p, target, mask), explicit)


def test_masked_nonzero_nll_is_finite_at_0_and_1():
    p = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss = masked_nonzero_nll(p, torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("threshold", [0.3, 0.8])
def test_ecs_loss_formula(threshold):
    torch.manual_seed(0)
    emb = torch.randn(5, 7)
    B = emb.shape[0]
    sim = torch.empty(B, B)
    for i in range(B):
        for j in range(B):
            sim[i, j] = 0.0 if i == j else F.cosine_similarity(emb[i], emb[j], dim=0)
    expected = (1 - (sim.clamp(min=0) - threshold) ** 2).mean()
    torch.testing.assert_close(ecs_loss(emb, threshold), expected)


def test_ecs_loss_known_value():
    # two identical cells: off-diagonal S = 1, diagonal 0 -> (2 * 0.51 + 2 * 0.91) / 4
    emb = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    torch.testing.assert_close(ecs_loss(emb, 0.3), torch.tensor(0.71))


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_cce_loss_is_ce_of_cosine_over_temperature(temperature):
    torch.manual_seed(0)
    c1, c2 = torch.randn(6, 8), torch.randn(6, 8)
    cos = (F.normalize(c1, dim=1) @ F.normalize(c2, dim=1).T) / temperature
    expected = F.cross_entropy(cos, torch.arange(6))
    torch.testing.assert_close(cce_loss(c1, c2, temperature), expected)
    if temperature == 0.5:
        torch.testing.assert_close(cce_loss(c1, c2), expected)


def test_cce_loss_gradients_reach_both_views():
    c1 = torch.randn(4, 8, requires_grad=True)
    c2 = torch.randn(4, 8, requires_grad=True)
    cce_loss(c1, c2).backward()
    assert c1.grad.abs().sum() > 0 and c2.grad.abs().sum() > 0


def test_dab_loss_is_batch_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    batch = torch.tensor([[0.0], [2.0], [1.0], [1.0], [0.0]])  # scvi-style (B, 1) float
    torch.testing.assert_close(
        dab_loss(logits, batch), F.cross_entropy(logits, torch.tensor([0, 2, 1, 1, 0]))
    )
