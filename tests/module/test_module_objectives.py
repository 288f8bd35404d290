"""The objectives registry: regression losses (MSE, Huber), weights, head groups, do_sample."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS

from scgpt_scvi.module import (
    OBJECTIVES,
    REGRESSION_LOSSES,
    SCGPTConfig,
    SCGPTModule,
    SCGPTMultiomicModule,
    SCGPTPerturbationModule,
    head_groups,
    regression,
)

SMALL = {"d_model": 16, "nhead": 2, "d_hid": 24, "nlayers": 1, "nlayers_cls": 2, "dropout": 0.0}


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target, pred = torch.randn(4, 30, generator=g) * 3, torch.randn(4, 30, generator=g) * 3
    mask = torch.rand(4, 30, generator=g) < 0.5
    return pred, target, mask


def test_grouped_regression_weighs_each_group_equally():
    """With groups (the multi-omic modalities), each group's MSE is normalised by its own
    target variance and the groups are averaged: a small group counts as much as a large one."""
    pred, target, mask = _data()
    groups = (torch.arange(30) >= 27).long().expand(4, -1)  # 27 "RNA" + 3 "protein" positions
    got = regression({"mlm_output": pred}, "mlm", target, mask, groups)
    expected = []
    for k in (0, 1):
        m = mask & (groups == k)
        mse = ((pred - target)[m] ** 2).mean()
        expected.append(mse / target[m].var())
    torch.testing.assert_close(got, torch.stack(expected).mean())
    pooled = regression({"mlm_output": pred}, "mlm", target, mask)
    torch.testing.assert_close(pooled, ((pred - target)[mask] ** 2).mean() / target[mask].var())
    assert not torch.isclose(got, pooled)


@pytest.mark.parametrize("delta", [0.3, 1.0, 2.5])
def test_huber_regression_is_torch_huber_on_the_normalised_scale(delta):
    pred, target, mask = _data(1)
    got = regression({"mlm_output": pred}, "mlm", target, mask, kind="huber", delta=delta)
    s = target[mask].std()
    expected = 2 * F.huber_loss(pred[mask] / s, target[mask] / s, delta=delta)
    torch.testing.assert_close(got, expected)
    # small errors: Huber and MSE agree; large ones: Huber is smaller (linear tails)
    near = target + 0.01 * s
    huber = regression({"mlm_output": near}, "mlm", target, mask, kind="huber", delta=delta)
    mse = regression({"mlm_output": near}, "mlm", target, mask)
    torch.testing.assert_close(huber, mse)
    assert got < regression({"mlm_output": pred}, "mlm", target, mask)
    assert set(REGRESSION_LOSSES) == {"mse", "huber"}


def _tensors(n: int = 6, n_genes: int = 20):
    g = torch.Generator().manual_seed(0)
    return {
        REGISTRY_KEYS.X_KEY: torch.poisson(torch.rand(n, n_genes, generator=g) * 3, generator=g),
        REGISTRY_KEYS.LABELS_KEY: (torch.arange(n) % 2).float()[:, None],
        "cell_key": torch.arange(n).float()[:, None],
    }


def _scgpt(**kw) -> SCGPTModule:
    torch.manual_seed(0)
    return SCGPTModule(
        ntoken=23, pad_id=20, cls_id=21, gene_token_ids=torch.arange(20), n_bins=11, **SMALL, **kw
    )


def test_mlm_loss_option_switches_the_module_loss_to_huber():
    mse, huber = _scgpt(), _scgpt(mlm_loss="huber", huber_delta=0.5)
    huber.load_state_dict(mse.state_dict())
    tensors = _tensors()
    _, _, out_mse = mse(tensors)
    inf, gen, out_huber = huber(tensors)
    target, mask = inf["target_values"], inf["mlm_mask"]
    s = target[mask].std()
    expected = 2 * F.huber_loss(gen["mlm_output"][mask] / s, target[mask] / s, delta=0.5)
    torch.testing.assert_close(out_huber.extra_metrics["loss_mlm"], expected)
    assert out_huber.extra_metrics["loss_mlm"] != out_mse.extra_metrics["loss_mlm"]
    with pytest.raises(ValueError, match="mlm_loss"):
        _scgpt(mlm_loss="l1")
    with pytest.raises(ValueError, match="huber_delta"):
        _scgpt(mlm_loss="huber", huber_delta=0)


def test_default_weights_follow_the_registry():
    m = _scgpt(n_cls=2, do_mvc=True)
    tensors = _tensors()
    _, _, with_labels = m(tensors)
    _, _, no_labels = m({k: v for k, v in tensors.items() if k != REGISTRY_KEYS.LABELS_KEY})
    t = with_labels.extra_metrics
    rule = OBJECTIVES["mlm"].weight_with_labels
    expected = t["loss_cls"] + rule * (t["loss_mlm"] + t["loss_mvc"])
    torch.testing.assert_close(with_labels.loss, expected)
    t = no_labels.extra_metrics
    assert "loss_cls" not in t
    torch.testing.assert_close(no_labels.loss, t["loss_mlm"] + t["loss_mvc"])
    with pytest.raises(TypeError, match="Unknown objective weights"):
        m(tensors, loss_kwargs={"dab_weight": 1.0, "kl_weight": 1.0})


def test_each_module_reads_its_heads_from_the_registry():
    """Every head a module has is an entry's ``head`` and each entry's head exists exactly when
    its option is on; the checkpoint head groups come from the same entries."""
    modules = [
        _scgpt(do_mvc=True, do_dab=True, num_batch_labels=2),
        SCGPTMultiomicModule(ntoken=23, pad_id=20, cls_id=21, **SMALL, do_mvc=True),
        SCGPTPerturbationModule(ntoken=23, pad_id=20, cls_id=21, **SMALL),
    ]
    for m in modules:
        for name in m.OBJECTIVE_NAMES:
            obj = OBJECTIVES[name]
            if obj.head is not None:
                expected = obj.option is None or bool(getattr(m, obj.option))
                assert hasattr(m, obj.head) == expected, (type(m).__name__, name)
    groups = head_groups(SCGPTModule.OBJECTIVE_NAMES)
    assert groups["do_mvc"] == ("mvc_decoder.",)
    assert groups["do_dab"] == ("grad_reverse_discriminator.",)
    assert groups["n_cls"] == ("cls_decoder.",)


def test_discriminator_options_reach_the_head():
    m = _scgpt(
        do_dab=True, num_batch_labels=3, dab_nlayers=2, dab_lambd=0.5, dab_reverse_grad=False
    )
    dab = m.grad_reverse_discriminator
    assert (dab.lambd, dab.reverse_grad) == (0.5, False)
    assert len(dab._decoder) == 3 * (2 - 1)  # (Linear, LeakyReLU, LayerNorm) x (nlayers - 1)
    # reversed gradient: the cell embedding's gradient flips sign with reverse_grad
    x = torch.randn(4, 16, requires_grad=True)
    m.grad_reverse_discriminator(x).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    dab.reverse_grad, dab.lambd = True, 1.0
    dab(x).sum().backward()
    torch.testing.assert_close(x.grad, -plain)


def test_do_sample_multiplies_by_a_bernoulli_draw():
    m = _scgpt(explicit_zero_prob=True, do_mvc=True).eval()
    tensors = _tensors()
    inf = m.inference(**m._get_inference_input(tensors))
    args = (inf["h"], inf["cell_emb"], inf["gene_embs"])
    plain = m.generative(*args)
    torch.manual_seed(1)
    sampled = m.generative(*args, do_sample=True)
    for name in ("mlm", "mvc"):
        out, ref = sampled[f"{name}_output"], plain[f"{name}_output"]
        kept = out != 0
        torch.testing.assert_close(out[kept], ref[kept])
        assert 0 < kept.float().mean() < 1
    # forward_tokens passes it through
    torch.manual_seed(1)
    fw = m.forward_tokens(
        inf["gene_ids"], inf["values"], inf["padding_mask"], MVC=True, do_sample=True
    )
    torch.testing.assert_close(fw["mlm_output"], sampled["mlm_output"])


def test_fast_transformer_aliases_warn_and_map_to_attention_backend():
    with pytest.warns(DeprecationWarning, match="attention_backend"):
        m = _scgpt(use_fast_transformer=False)
    assert m.attention_backend == "sdpa"
    with pytest.warns(DeprecationWarning):
        cfg = SCGPTConfig.from_options(
            {"use_fast_transformer": True, "fast_transformer_backend": "flash"}
        )
    assert cfg.attention_backend == "flash"
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="linear"):
        SCGPTConfig.from_options(
            {"use_fast_transformer": True, "fast_transformer_backend": "linear"}
        )
    with pytest.raises(TypeError, match="Unknown module options"):
        SCGPTConfig.from_options({"d_modle": 8})


def test_multiomic_use_mod_false_has_no_modality_parts():
    kw = {"ntoken": 23, "pad_id": 20, "cls_id": 21, **SMALL, "do_mvc": True}
    m = SCGPTMultiomicModule(use_mod=False, **kw)
    assert not hasattr(m, "mod_encoder")
    assert m.decoder.fc[0].in_features == SMALL["d_model"]  # not conditioned: SCGPTModule's
    ref = SCGPTModule(**kw)
    assert set(m.state_dict()) - {"token_mod_ids"} == set(ref.state_dict())
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if k != "token_mod_ids"})
    ids = torch.tensor([[21, 0, 3, 5, 20]])
    values, pad = torch.tensor([[0.0, 1, 2, 3, -2]]), ids.eq(20)
    m.eval(), ref.eval()
    torch.testing.assert_close(
        m.forward_tokens(ids, values, pad, MVC=True)["mvc_output"],
        ref.forward_tokens(ids, values, pad, MVC=True)["mvc_output"],
    )
    with pytest.raises(ValueError, match="use_mod"):
        SCGPTMultiomicModule(use_mod=False, mod_in_input=True, **kw)
