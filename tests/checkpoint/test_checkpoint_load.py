"""Strict loading: parity with the original, shared parts mapped by token, zero-shot embeddings,
refused mismatches and the heads fine-tuning renews."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from scgpt_scvi import SCGPT
from scgpt_scvi.checkpoint import (
    load_pretrained_parts,
    read_state_dict,
    to_torch_layout,
)
from scgpt_scvi.data import GeneVocab
from scgpt_scvi.data._random import STREAM_TIES, keyed_uniform
from scgpt_scvi.model._fields import cell_keys_from_names

SCGPT_FOLDERS = ("scgpt_pretrained_layout", "scgpt_integration", "scgpt_category_wpool")
TOL = 1e-5


def _sd(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _assert_case(module, case: dict) -> None:
    inp = case["inputs"]
    flags = {k: v for k, v in case["forward_kwargs"].items() if k != "do_sample"}
    module.eval()
    with torch.no_grad():
        out = module.forward_tokens(
            inp["gene_ids"],
            inp["values"],
            inp["src_key_padding_mask"],
            inp.get("batch_labels"),
            **flags,
        )
    keep = ~inp["src_key_padding_mask"]
    for name, ref in case["outputs"].items():
        got = out[name.replace("_zero_probs", "_nonzero_prob")]
        if ref.shape == keep.shape:
            got, ref = got[keep], ref[keep]
        torch.testing.assert_close(got, ref, atol=TOL, rtol=0, msg=f"output {name}")


# ------------------------------------------------------------------ fixture round trips
@pytest.mark.parametrize("folder", SCGPT_FOLDERS)
def test_fixture_loads_matches_original_and_saves_released_layout(
    folder, fixtures_dir, pbmc, tmp_path
):
    src = fixtures_dir / folder
    model = SCGPT.from_pretrained(src, pbmc(8))
    report = model.checkpoint_report_
    released = _sd(src / "best_model.pt")
    assert len(report["loaded"]) == len(released)
    assert report["new"] == report["replaced"] == report["skipped"] == []
    assert model.is_trained_ and model.normalize_embeddings_
    for case_file in sorted(src.glob("case*.pt")):
        _assert_case(model.module, torch.load(case_file, weights_only=True))

    model.save_pretrained(tmp_path / "out")
    saved = _sd(tmp_path / "out" / "best_model.pt")
    assert set(saved) == set(released)
    for key, ref in released.items():
        assert saved[key].dtype == ref.dtype and torch.equal(saved[key], ref), key
    assert json.loads((tmp_path / "out" / "vocab.json").read_text()) == json.loads(
        (src / "vocab.json").read_text()
    )
    # the written args.json rebuilds the same model
    again = SCGPT.from_pretrained(tmp_path / "out", pbmc(8))
    assert again.checkpoint_report_["new"] == []
    for case_file in sorted(src.glob("case*.pt")):
        _assert_case(again.module, torch.load(case_file, weights_only=True))


# ------------------------------------------------------------------ shared parts
def test_load_pretrained_parts_maps_vocab_rows_by_token(fixtures_dir, module_like):
    src = fixtures_dir / "scgpt_pretrained_layout"
    target_vocab = GeneVocab.from_file(fixtures_dir / "multiomic" / "vocab.json")
    torch.manual_seed(0)
    module = module_like(fixtures_dir, "multiomic")
    before = module.state_dict()["encoder.embedding.weight"].clone()
    report = load_pretrained_parts(module, src, vocab=target_vocab)
    source_vocab = json.loads((src / "vocab.json").read_text())
    released = to_torch_layout(read_state_dict(src))
    emb = module.state_dict()["encoder.embedding.weight"]
    assert report["n_tokens_mapped"] == len(source_vocab) == 768
    assert report["n_tokens_new"] == 10
    for token in ("CD3E", "MS4A1", "<pad>", "<cls>"):
        assert torch.equal(
            emb[target_vocab[token]], released["encoder.embedding.weight"][source_vocab[token]]
        )
    proteins = [i for t, i in target_vocab.items() if t.startswith("p_")]
    assert torch.equal(emb[proteins], before[proteins])
    key = "transformer_encoder.layers.1.self_attn.in_proj_weight"
    assert torch.equal(module.state_dict()[key], released[key])
    assert all(
        k.startswith(("encoder.", "value_encoder.", "transformer_encoder."))
        for k in report["loaded"]
    )
    assert not any(k.startswith("decoder.") for k in report["loaded"] + report["skipped"])


def test_load_pretrained_parts_is_strict_within_prefixes(fixtures_dir, module_like):
    src = fixtures_dir / "generator"
    # the generator's shared parts load into a TransformerModel-like module
    report = load_pretrained_parts(module_like(fixtures_dir, "generator"), src)
    assert len(report["loaded"]) == 9 + 2 * 12 and report["new"] == report["skipped"] == []
    with pytest.raises(ValueError, match=r"linear1\.weight: checkpoint \(64, 64\) vs model"):
        load_pretrained_parts(module_like(fixtures_dir, "generator", d_hid=32), src)
    wrong_vocab = module_like(fixtures_dir, "multiomic")  # 778 rows, no vocab given
    with pytest.raises(ValueError, match=r"encoder\.embedding\.weight: checkpoint \(768, 64\)"):
        load_pretrained_parts(wrong_vocab, src)


# ------------------------------------------------------------------ zero-shot parity
def _embed_data_tokens(X: np.ndarray, token_ids: np.ndarray, keys, cls_id, pad_id, seed=0):
    """Tokens the way ``scgpt.tasks.embed_data`` builds them (numpy, one cell at a time).

    Expressed in-vocabulary genes in column order; values binned per cell over the non-zero
    values (``np.quantile`` edges, ``np.digitize``, ties spread by uniform draws); ``<cls>``
    first with value pad_value (-2). The tie draws come from the same keyed stream the model uses.
    """
    n_bins = 51
    u = keyed_uniform(seed, torch.as_tensor(keys), torch.arange(X.shape[1]), STREAM_TIES).numpy()
    rows = []
    for i, x in enumerate(X):
        nz = np.flatnonzero((x > 0) & (token_ids >= 0))
        v = x[nz].astype(np.float32)
        edges = np.quantile(v, np.linspace(0, 1, n_bins - 1))
        left, right = np.digitize(v, edges), np.digitize(v, edges, right=True)
        bins = np.ceil(u[i, nz] * (right - left) + left)
        rows.append((np.r_[cls_id, token_ids[nz]], np.r_[-2.0, bins]))
    L = max(len(g) for g, _ in rows)
    genes = torch.full((len(rows), L), pad_id, dtype=torch.long)
    values = torch.full((len(rows), L), -2.0)
    for i, (g, v) in enumerate(rows):
        genes[i, : len(g)], values[i, : len(v)] = torch.as_tensor(g), torch.as_tensor(v)
    return genes, values, genes.eq(pad_id)


def test_zero_shot_embedding_matches_embed_data_reference(fixtures_dir, pbmc):
    adata = pbmc(32)
    src = fixtures_dir / "scgpt_pretrained_layout"
    model = SCGPT.from_pretrained(src, adata)
    z = model.get_latent_representation(batch_size=10)
    raw = model.get_latent_representation(normalize=False)

    vocab = json.loads((src / "vocab.json").read_text())
    token_ids = np.array([vocab.get(g, -1) for g in adata.var_names])
    genes, values, pad = _embed_data_tokens(
        adata.X.toarray(),
        token_ids,
        cell_keys_from_names(adata.obs_names),
        vocab["<cls>"],
        vocab["<pad>"],
    )
    assert genes.shape[1] <= 1200  # no cell is long enough to be sampled
    model.module.eval()
    with torch.no_grad():
        ref = model.module.forward_tokens(genes, values, pad)["cell_emb"].numpy()
    np.testing.assert_allclose(raw, ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(z, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=TOL)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    assert model.gene_overlap_["n_matched"] == adata.n_vars


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("remove", "transformer_encoder.layers.1.linear2.bias"),
        ("rename", "decoder.fc.2.weight"),
        ("shape", "value_encoder.linear2.weight"),
        ("remove", "cls_decoder.out_layer.bias"),
    ],
)
def test_corrupted_checkpoint_names_the_key(change, key, fixtures_dir, pbmc, tmp_path, copy_folder):
    src = fixtures_dir / "scgpt_pretrained_layout"
    state = _sd(src / "best_model.pt")
    if change == "remove":
        del state[key]
    elif change == "rename":
        state["decoder.fc.2.weights"] = state.pop(key)
    else:
        state[key] = torch.zeros(64, 32)
    folder = copy_folder(src, tmp_path / "bad", state=state)
    with pytest.raises(ValueError, match=re.escape(key)) as err:
        SCGPT.from_pretrained(folder, pbmc(4))
    if change == "rename":
        assert "decoder.fc.2.weights" in str(err.value)
    if change == "shape":
        assert "checkpoint (64, 32) vs model (64, 64)" in str(err.value)


# ------------------------------------------------------------------ fine-tuning heads
def _train_one_epoch(model) -> dict:
    key = "transformer_encoder.layers.1.linear1.weight"
    before = model.module.state_dict()[key].clone()
    model.train(
        max_epochs=1,
        batch_size=8,
        accelerator="cpu",
        devices=1,
        train_size=1.0,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    losses = model.history_["train_loss"].to_numpy().astype(float)
    assert len(losses) == 1 and np.isfinite(losses).all()
    assert not torch.equal(model.module.state_dict()[key], before)
    return model.history_


def test_annotation_from_checkpoint_replaces_cls_head_and_trains(fixtures_dir, pbmc):
    src = fixtures_dir / "scgpt_pretrained_layout"
    adata = pbmc(24)
    model = SCGPT.from_pretrained(src, adata, labels_key="bulk_labels")
    report = model.checkpoint_report_
    n_labels = adata.obs["bulk_labels"].nunique()
    assert model.module.n_cls == n_labels > 1
    assert report["changed_options"] == ["n_cls"]
    assert "cls_decoder.out_layer.weight" in report["replaced"]
    assert all(k.startswith("cls_decoder.") for k in report["replaced"])
    assert report["new"] == report["skipped"] == []
    released = to_torch_layout(_sd(src / "best_model.pt"))
    key = "transformer_encoder.layers.0.self_attn.in_proj_weight"
    assert torch.equal(model.module.state_dict()[key], released[key])
    assert "loss_cls_train" in _train_one_epoch(model)
    assert set(model.predict()) <= set(adata.obs["bulk_labels"])


def test_integration_from_checkpoint_adds_batch_parts_and_trains(fixtures_dir, pbmc):
    src = fixtures_dir / "scgpt_pretrained_layout"
    adata = pbmc(24)
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    model = SCGPT.from_pretrained(
        src, adata, batch_key="batch", use_batch_labels=True, domain_spec_batchnorm=True
    )
    report = model.checkpoint_report_
    assert set(report["changed_options"]) == {"use_batch_labels", "domain_spec_batchnorm"}
    assert {k.split(".")[0] for k in report["new"]} == {"batch_encoder", "dsbn"}
    assert report["replaced"] == ["decoder.fc.0.weight", "mvc_decoder.W.weight"]
    assert "decoder.fc.2.weight" in report["loaded"]
    _train_one_epoch(model)


def test_other_batch_count_replaces_batch_heads(fixtures_dir, pbmc):
    adata = pbmc(8)
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    model = SCGPT.from_pretrained(fixtures_dir / "scgpt_integration", adata, batch_key="batch")
    report = model.checkpoint_report_
    assert report["changed_options"] == ["num_batch_labels"]
    assert "batch_encoder.embedding.weight" in report["replaced"]
    assert any(k.startswith("dsbn.bns.2.") for k in report["skipped"])
    assert "grad_reverse_discriminator.out_layer.weight" in report["replaced"]
    assert "decoder.fc.0.weight" in report["loaded"]  # same batch-embedding width
