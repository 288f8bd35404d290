"""``SCGPTModule``: construction checks, padding invariance, scvi-tools hooks end to end."""

from __future__ import annotations

import math

import pytest
import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput

from scgpt_scvi.module import CELL_EMB_STYLES, CELL_KEY, SCGPTModule, pool_cells

N_GENES, N_CELLS, N_BATCH, N_CLS = 40, 10, 2, 3
PAD_ID, CLS_ID = N_GENES, N_GENES + 1
NTOKEN = N_GENES + 3
SMALL = {"d_model": 16, "nhead": 2, "d_hid": 24, "nlayers": 2, "nlayers_cls": 2}


def _module(**kw) -> SCGPTModule:
    torch.manual_seed(0)
    token_ids = torch.arange(N_GENES)
    token_ids[[3, 17]] = -1  # two columns without a vocabulary id
    args = {
        "ntoken": NTOKEN,
        "pad_id": PAD_ID,
        "cls_id": CLS_ID,
        "dropout": 0.1,
        "gene_token_ids": token_ids,
        "max_seq_len": 24,
        **SMALL,
        **kw,
    }
    return SCGPTModule(**args)


def _tokens(B: int = 3, L: int = 9, seed: int = 0, category: bool = False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([L, L - 3, 4][:B])
    gene_ids = torch.randint(0, N_GENES, (B, L), generator=g)
    gene_ids[:, 0] = CLS_ID
    if category:
        values = torch.randint(1, 9, (B, L), generator=g).float()
    else:
        values = torch.randint(1, 51, (B, L), generator=g).float()
    values[:, 0] = 0.0
    pad = torch.arange(L)[None] >= lengths[:, None]
    return gene_ids, values, pad


def _append_pads(gene_ids, values, pad, k, pad_value):
    B = gene_ids.shape[0]
    return (
        torch.cat([gene_ids, torch.full((B, k), PAD_ID)], 1),
        torch.cat([values, torch.full((B, k), float(pad_value))], 1),
        torch.cat([pad, torch.ones(B, k, dtype=torch.bool)], 1),
    )


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """A minibatch as scvi-tools' data loader gives it: float (B, 1) obs columns."""
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(N_CELLS, N_GENES, generator=g) * 2.5, generator=g)
    x[0] = torch.poisson(torch.full((N_GENES,), 3.0), generator=g)  # needs sub-sampling
    return {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: (torch.arange(N_CELLS) % N_BATCH).float()[:, None],
        REGISTRY_KEYS.LABELS_KEY: (torch.arange(N_CELLS) % N_CLS).float()[:, None],
        CELL_KEY: torch.arange(500, 500 + N_CELLS).float()[:, None],
    }


# --------------------------------------------------------------------------- construction
def test_unknown_styles_raise_listing_choices():
    with pytest.raises(ValueError, match="cell_emb_style") as err:
        _module(cell_emb_style="max-pool")
    assert all(s in str(err.value) for s in CELL_EMB_STYLES)
    with pytest.raises(ValueError, match="input_emb_style") as err:
        _module(input_emb_style="discrete")
    assert all(s in str(err.value) for s in ("continuous", "category", "scaling"))
    with pytest.raises(ValueError, match="mvc_decoder_style") as err:
        _module(do_mvc=True, mvc_decoder_style="outer")
    assert "concat query" in str(err.value) and "sum query" in str(err.value)
    with pytest.raises(ValueError, match="domain_spec_batchnorm"):
        _module(domain_spec_batchnorm="layernorm", num_batch_labels=2)
    with pytest.raises(ValueError, match="cell_emb_style"):
        pool_cells(torch.zeros(1, 2, 4), torch.zeros(1, 2), torch.zeros(1, 2, dtype=bool), "max")


@pytest.mark.parametrize(
    "kw", [{"use_batch_labels": True}, {"do_dab": True}, {"domain_spec_batchnorm": True}]
)
def test_batch_options_need_num_batch_labels(kw):
    with pytest.raises(ValueError, match="num_batch_labels"):
        _module(**kw)


def test_encode_requires_batch_index_when_used():
    m = _module(use_batch_labels=True, num_batch_labels=2).eval()
    with pytest.raises(ValueError, match="batch_index"):
        m.encode(*_tokens())


# --------------------------------------------------------------------------- padding invariance
PAD_CONFIGS = [
    pytest.param({}, id="plain"),
    pytest.param(
        {"domain_spec_batchnorm": True, "num_batch_labels": 2, "use_batch_labels": True},
        id="dsbn",
    ),
    pytest.param(
        {"input_emb_style": "category", "n_input_bins": 11, "pad_value": 10, "mask_value": 9},
        id="category",
    ),
]


@pytest.mark.parametrize("style", CELL_EMB_STYLES)
@pytest.mark.parametrize("config", PAD_CONFIGS)
def test_appending_pads_changes_nothing(style, config):
    m = _module(cell_emb_style=style, **config).eval()
    gene_ids, values, pad = _tokens(category="n_input_bins" in config)
    batch = torch.tensor([0, 1, 1]) if config.get("num_batch_labels") else None
    with torch.no_grad():
        h, _ = m.encode(gene_ids, values, pad, batch)
        emb = m.cell_embedding(h, values, pad)
        for k in (1, 6):
            g2, v2, p2 = _append_pads(gene_ids, values, pad, k, m.pad_value)
            h2, _ = m.encode(g2, v2, p2, batch)
            emb2 = m.cell_embedding(h2, v2, p2)
            assert (h2[:, : pad.shape[1]] - h)[~pad].abs().max() <= 1e-6
            assert (emb2 - emb).abs().max() <= 1e-6, f"{style}: cell embedding moved with {k} pads"
        # each cell alone, without any padding, gives the same as in the padded minibatch
        for i in range(gene_ids.shape[0]):
            n = int((~pad[i]).sum())
            bi = None if batch is None else batch[i : i + 1]
            hi, _ = m.encode(gene_ids[i : i + 1, :n], values[i : i + 1, :n], pad[i : i + 1, :n], bi)
            assert (hi[0] - h[i, :n]).abs().max() <= 1e-6
            ei = m.cell_embedding(hi, values[i : i + 1, :n], pad[i : i + 1, :n])
            assert (ei[0] - emb[i]).abs().max() <= 1e-6


def test_appending_pads_changes_nothing_via_forward_tokens():
    m = _module(cell_emb_style="w-pool", do_mvc=True, explicit_zero_prob=True).eval()
    gene_ids, values, pad = _tokens()
    with torch.no_grad():
        out = m.forward_tokens(gene_ids, values, pad, CLS=True, MVC=True)
        out2 = m.forward_tokens(
            *_append_pads(gene_ids, values, pad, 4, m.pad_value), CLS=True, MVC=True
        )
    L = pad.shape[1]
    for k, v in out.items():
        v2 = out2[k][:, :L] if v.dim() == 2 and v.shape == pad.shape else out2[k]
        diff = (v2 - v)[~pad] if v.shape == pad.shape else v2 - v
        assert diff.abs().max() <= 1e-6, k


def test_token_batchnorm_train_mode_ignores_pads():
    """``domain_spec_batchnorm="batchnorm"``: batch statistics come from non-pad tokens only."""
    m = _module(domain_spec_batchnorm="batchnorm", dropout=0.0, cell_emb_style="avg-pool")
    m.train()
    gene_ids, values, pad = _tokens()
    h, _ = m.encode(gene_ids, values, pad)
    h2, _ = m.encode(*_append_pads(gene_ids, values, pad, 5, m.pad_value))
    assert (h2[:, : pad.shape[1]] - h)[~pad].abs().max() <= 1e-5


# --------------------------------------------------------------------------- scvi hooks
FULL = {
    "n_cls": N_CLS,
    "do_mvc": True,
    "do_dab": True,
    "use_batch_labels": True,
    "num_batch_labels": N_BATCH,
    "domain_spec_batchnorm": True,
    "explicit_zero_prob": True,
}


def test_end_to_end_loss_and_backward():
    m = _module(**FULL).train()
    tensors = _tensors()
    inf, gen, lo = m(tensors, loss_kwargs={"ecs_weight": 10.0, "cce_weight": 1.0})
    assert isinstance(lo, LossOutput)
    assert lo.loss.dim() == 0 and torch.isfinite(lo.loss)
    metrics = set(lo.extra_metrics)
    assert {"loss_mlm", "loss_mvc", "loss_cls", "loss_dab", "loss_ecs", "loss_cce"} <= metrics
    assert all(torch.isfinite(v) for v in lo.extra_metrics.values())
    # labels registered: CLS drives (1), MLM/MVC regularise (0.1), DAB 0.1 (the loss docstring)
    w = {"mlm": 0.1, "mvc": 0.1, "cls": 1, "dab": 0.1, "ecs": 10, "cce": 1}
    total = sum(w[k] * lo.extra_metrics[f"loss_{k}"] for k in w)
    torch.testing.assert_close(lo.loss.detach(), total)
    assert lo.reconstruction_loss["reconstruction_loss"].shape == (N_CELLS,)
    assert lo.n_obs_minibatch == N_CELLS

    B, L = inf["gene_ids"].shape
    assert L <= m.max_seq_len and inf["h"].shape == (B, L, SMALL["d_model"])
    assert inf["cell_emb"].shape == (B, SMALL["d_model"])
    for k in ("mlm_output", "mlm_nonzero_prob", "mvc_output", "mvc_nonzero_prob"):
        assert gen[k].shape == (B, L), k
    assert gen["cls_output"].shape == (B, N_CLS) and gen["dab_output"].shape == (B, N_BATCH)

    lo.loss.backward()
    for name in (
        "encoder.embedding.weight",
        "value_encoder.linear1.weight",
        "transformer_encoder.layers.0.self_attn.in_proj_weight",
        "decoder.fc.0.weight",
        "decoder.zero_logit.0.weight",
        "cls_decoder.out_layer.weight",
        "mvc_decoder.W.weight",
        "grad_reverse_discriminator.out_layer.weight",
        "batch_encoder.embedding.weight",
    ):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_loss_weights_and_optional_terms():
    m = _module(**FULL).train()
    tensors = _tensors()
    *_, lo = m(tensors)
    assert set(lo.extra_metrics) == {"loss_mlm", "loss_mvc", "loss_cls", "loss_dab"}
    *_, lo0 = m(tensors, loss_kwargs={"cls_weight": 0.0, "dab_weight": 0.0})
    assert "loss_cls" not in lo0.extra_metrics and "loss_dab" not in lo0.extra_metrics
    no_labels = {k: v for k, v in tensors.items() if k != REGISTRY_KEYS.LABELS_KEY}
    *_, lo1 = m(no_labels)
    assert "loss_cls" not in lo1.extra_metrics


def test_mlm_masking_in_training():
    m = _module(**FULL, mask_ratio=0.4).train()
    tensors = _tensors()
    inf = m.inference(**m._get_inference_input(tensors))
    mask, pad = inf["mlm_mask"], inf["padding_mask"]
    n_genes = (~pad).sum(1) - 1
    assert torch.equal(mask.sum(1), torch.floor(n_genes * 0.4).long())
    assert not mask[:, 0].any() and not (mask & pad).any()
    assert torch.all(inf["values"][mask] == m.mask_value)
    assert torch.equal(inf["values"][~mask], inf["target_values"][~mask])
    assert torch.all(inf["target_values"][mask] >= 1)


def test_training_draws_change_with_epoch_not_with_repeat():
    m = _module(**FULL).train()
    inputs = m._get_inference_input(_tensors())
    m.epoch = 0
    a, a2 = m.inference(**inputs), m.inference(**inputs)
    m.epoch = 1
    b = m.inference(**inputs)
    assert torch.equal(a["mlm_mask"], a2["mlm_mask"])
    assert torch.equal(a["gene_ids"], a2["gene_ids"])

    def masked_genes(inf):
        return [sorted(inf["gene_ids"][i][inf["mlm_mask"][i]].tolist()) for i in range(N_CELLS)]

    assert masked_genes(a) != masked_genes(b), "masked genes must be redrawn each epoch"


def test_eval_inference_is_deterministic_and_unmasked():
    m = _module(**FULL).eval()
    inputs = m._get_inference_input(_tensors())
    with torch.no_grad():
        a, b = m.inference(**inputs), m.inference(**inputs)
        m.epoch = 5
        c = m.inference(**inputs)
    assert not a["mlm_mask"].any()
    for k in ("gene_ids", "values", "h", "cell_emb"):
        assert torch.equal(a[k], b[k]), k
        assert torch.equal(a[k], c[k]), f"{k}: eval must not depend on the epoch"
    # explicit mask_ratio in eval
    with torch.no_grad():
        d = m.inference(**inputs, mask_ratio=0.5)
    n_genes = (~d["padding_mask"]).sum(1) - 1
    assert torch.equal(d["mlm_mask"].sum(1), torch.floor(n_genes * 0.5).long())


def test_cell_embedding_does_not_depend_on_minibatch():
    """Tokenisation keyed on cell keys + non-pad pooling: a cell's embedding is its own."""
    m = _module(**FULL, cell_emb_style="avg-pool").eval()
    tensors = _tensors()
    with torch.no_grad():
        full = m.inference(**m._get_inference_input(tensors))["cell_emb"]
        order = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]
        parts = []
        for s in range(0, N_CELLS, 3):
            idx = order[s : s + 3]
            sub = {k: v[idx] for k, v in tensors.items()}
            parts.append((idx, m.inference(**m._get_inference_input(sub))["cell_emb"]))
    for idx, emb in parts:
        assert (emb - full[idx]).abs().max() <= 1e-5


def test_inference_respects_max_seq_len_and_vocab():
    m = _module(**FULL).eval()
    tensors = _tensors()
    with torch.no_grad():
        inf = m.inference(**m._get_inference_input(tensors))
    assert inf["gene_ids"].shape[1] == m.max_seq_len, "cell 0 has more genes than max_seq_len"
    ids = inf["gene_ids"][~inf["padding_mask"]]
    assert not torch.isin(ids, torch.tensor([3, 17])).any(), "columns without a vocab id dropped"
    assert math.isclose(float(inf["values"][0, 0]), m.cls_value)
