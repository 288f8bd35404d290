"""Gradient reversal and (domain-specific) batch normalisation over token embeddings."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from scgpt_scvi.nn import DomainSpecificBatchNorm1d, TokenBatchNorm1d, grad_reverse

D = 8


# --------------------------------------------------------------------------- grad_reverse
@pytest.mark.parametrize("lambd", [1.0, 0.3, 2.5])
def test_grad_reverse_is_identity_forward_and_negates_gradient(lambd):
    torch.manual_seed(0)
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    y = grad_reverse(x, lambd)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -lambd * w)


def test_grad_reverse_default_lambda_is_one():
    x = torch.ones(3, requires_grad=True)
    (grad_reverse(x) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-1.0, -2.0, -3.0]))


# --------------------------------------------------------------------------- helpers
def _tokens(B: int = 6, L: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D, generator=g) * 2 + 1
    lengths = torch.randint(2, L + 1, (B,), generator=g)
    keep = torch.arange(L)[None] < lengths[:, None]
    return x, keep


# --------------------------------------------------------------------------- TokenBatchNorm1d
def test_token_batchnorm_uses_non_pad_tokens_only():
    x, keep = _tokens()
    tbn = TokenBatchNorm1d(D, eps=6.1e-5)
    ref = nn.BatchNorm1d(D, eps=6.1e-5)
    ref.load_state_dict(tbn.state_dict())
    x2 = x.clone()
    x2[~keep] = 1e3  # pad content must not enter the statistics
    out = tbn(x2, keep)
    torch.testing.assert_close(out[keep], ref(x[keep]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[~keep], x2[~keep], rtol=0, atol=0)
    torch.testing.assert_close(tbn.running_mean, ref.running_mean)
    torch.testing.assert_close(tbn.running_var, ref.running_var)
    assert tbn(x).shape == x.shape


# --------------------------------------------------------------------------- DSBN
def test_dsbn_keeps_separate_running_stats():
    torch.manual_seed(0)
    dsbn = DomainSpecificBatchNorm1d(D, 3, eps=6.1e-5).train()
    x, keep = _tokens()
    for _ in range(3):
        dsbn(x, torch.zeros(x.shape[0], dtype=torch.long), keep)
    bn0, bn1 = dsbn.bns[0], dsbn.bns[1]
    assert int(bn0.num_batches_tracked) == 3
    assert not torch.allclose(bn0.running_mean, torch.zeros(D))
    assert int(bn1.num_batches_tracked) == 0
    assert torch.equal(bn1.running_mean, torch.zeros(D))
    assert torch.equal(bn1.running_var, torch.ones(D))
    assert not any(k.endswith(("weight", "bias")) for k in dsbn.state_dict()), "affine=False"


def test_dsbn_state_dict_names_match_checkpoints():
    keys = set(DomainSpecificBatchNorm1d(D, 2).state_dict())
    assert keys == {
        f"bns.{i}.{n}"
        for i in range(2)
        for n in ("running_mean", "running_var", "num_batches_tracked")
    }


@pytest.mark.parametrize("train", [True, False])
def test_dsbn_mixed_minibatch_uses_each_cells_domain(train):
    torch.manual_seed(0)
    dsbn = DomainSpecificBatchNorm1d(D, 3, affine=True)
    with torch.no_grad():  # distinct, non-default state per domain
        for i, bn in enumerate(dsbn.bns):
            bn.running_mean.fill_(i - 1.0)
            bn.running_var.fill_(1.0 + i)
            bn.weight.normal_()
            bn.bias.normal_()
    separate = copy.deepcopy(dsbn)
    dsbn.train(train), separate.train(train)
    x, keep = _tokens(B=7)
    domain = torch.tensor([2, 0, 2, 1, 0, 2, 1])
    out = dsbn(x, domain, keep)
    for d in range(3):
        rows = domain == d
        expected = separate(x[rows], domain[rows], keep[rows])
        torch.testing.assert_close(out[rows], expected, rtol=1e-5, atol=1e-5)
        for name in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(dsbn.bns[d], name), getattr(separate.bns[d], name))
    # a cell is normalised differently under another domain (so the check is not vacuous)
    other = dsbn(x[:1], torch.tensor([0]), keep[:1])
    assert not torch.allclose(other[keep[:1]], out[:1][keep[:1]], atol=1e-3)
    torch.testing.assert_close(out[~keep], x[~keep], rtol=0, atol=0)


@pytest.mark.parametrize("domain", [0, 1])
def test_dsbn_single_domain_eval_equals_plain_batchnorm(domain):
    """The original applies ``BatchNorm1d`` to the ``(B, d, L)`` permuted tensor."""
    torch.manual_seed(0)
    dsbn = DomainSpecificBatchNorm1d(D, 2, eps=6.1e-5).train()
    for d in range(2):
        xd, kd = _tokens(seed=10 + d)
        dsbn(xd * (d + 1) + d, torch.full((xd.shape[0],), d), kd)
    dsbn.eval()
    plain = nn.BatchNorm1d(D, eps=6.1e-5, affine=False).eval()
    plain.load_state_dict(dsbn.bns[domain].state_dict())
    x, keep = _tokens(seed=3)
    out = dsbn(x, torch.full((x.shape[0],), domain), keep)
    expected = plain(x.permute(0, 2, 1)).permute(0, 2, 1)
    torch.testing.assert_close(out[keep], expected[keep], rtol=0, atol=1e-6)
    wrong = nn.BatchNorm1d(D, eps=6.1e-5, affine=False).eval()
    wrong.load_state_dict(dsbn.bns[1 - domain].state_dict())
    assert not torch.allclose(out[keep], wrong(x.permute(0, 2, 1)).permute(0, 2, 1)[keep])


def test_dsbn_gradients_flow():
    dsbn = DomainSpecificBatchNorm1d(D, 2, affine=True)
    x, keep = _tokens()
    x.requires_grad_(True)
    out = dsbn(x, torch.tensor([0, 1, 0, 1, 1, 0]), keep)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all()
    for p in dsbn.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_dsbn_rejects_out_of_range_domains():
    dsbn = DomainSpecificBatchNorm1d(D, 2)
    x, keep = _tokens(B=2)
    with pytest.raises(ValueError, match="Domain labels"):
        dsbn(x, torch.tensor([0, 2]), keep)
    with pytest.raises(ValueError, match="Domain labels"):
        dsbn(x, torch.tensor([-1, 0]), keep)
