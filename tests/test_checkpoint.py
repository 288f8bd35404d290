"""scGPT checkpoint folders: strict loading, parity with the original, zero-shot, export."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from scgpt_scvi import SCGPT
from scgpt_scvi._checkpoint import (
    args_to_kwargs,
    kwargs_to_args,
    load_pretrained_parts,
    load_state_dict_strict,
    read_state_dict,
    to_released_layout,
    to_torch_layout,
)
from scgpt_scvi.data import GeneVocab
from scgpt_scvi.data._random import STREAM_TIES, keyed_uniform
from scgpt_scvi.model._fields import cell_keys_from_names
from scgpt_scvi.module import SCGPTModule

SCGPT_FOLDERS = ("scgpt_pretrained_layout", "scgpt_integration", "scgpt_category_wpool")
PBMC = "data/pbmc68k_reduced_counts_700cells.h5ad"
TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pbmc_full(shared_dir: Path) -> ad.AnnData:
    path = shared_dir / PBMC
    if not path.is_file():
        pytest.skip(f"{path} not found (shared pbmc68k data).")
    return ad.read_h5ad(path)


@pytest.fixture
def pbmc(pbmc_full):
    """A fresh copy of ``n`` pbmc cells (default 16)."""
    return lambda n=16: pbmc_full[:n].copy()


def _sd(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _copy_folder(src: Path, dst: Path, state: dict | None = None, args: dict | None = None):
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("args.json", "vocab.json", "best_model.pt"):
        shutil.copy(src / name, dst / name)
    if state is not None:
        torch.save(state, dst / "best_model.pt")
    if args is not None:
        (dst / "args.json").write_text(json.dumps(args))
    return dst


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


def test_save_pretrained_refuses_overwrite_and_writes_safetensors(fixtures_dir, pbmc, tmp_path):
    model = SCGPT.from_pretrained(fixtures_dir / "scgpt_pretrained_layout", pbmc(8))
    model.save_pretrained(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path, overwrite=True, safetensors=True)
    assert not (tmp_path / "best_model.pt").exists()
    assert (tmp_path / "best_model.safetensors").is_file()
    again = SCGPT.from_pretrained(tmp_path, pbmc(8))
    for key, value in model.module.state_dict().items():
        assert torch.equal(again.module.state_dict()[key], value), key


# ------------------------------------------------------------------ key layouts
def _module_like(fixtures_dir: Path, folder: str, **kwargs) -> SCGPTModule:
    cfg = json.loads((fixtures_dir / folder / "config.json").read_text())["kwargs"]
    return SCGPTModule(
        ntoken=cfg["ntoken"],
        d_model=cfg["d_model"],
        nhead=cfg["nhead"],
        d_hid=kwargs.pop("d_hid", cfg["d_hid"]),
        nlayers=cfg["nlayers"],
        **kwargs,
    )


@pytest.mark.parametrize("folder", ["generator", "multiomic", "scgpt_pretrained_layout"])
def test_converter_renames_attention_only(folder, fixtures_dir):
    released = read_state_dict(fixtures_dir / folder)
    ours = to_torch_layout(released)
    n_layers = 2
    assert not any("Wqkv" in k for k in ours)
    assert sum(k.endswith("self_attn.in_proj_weight") for k in ours) == n_layers
    assert len(ours) == len(released)
    back = to_released_layout(ours)
    assert list(back) == list(released)
    assert all(back[k] is released[k] for k in released)


def test_three_attention_layouts_load_identically(fixtures_dir):
    released = read_state_dict(fixtures_dir / "scgpt_pretrained_layout")
    impl = {
        re.sub(r"self_attn\.(Wqkv|out_proj)\.", r"self_attn._impl.\1.", k): v
        for k, v in released.items()
    }
    torch_names = to_torch_layout(released)
    assert any("_impl.Wqkv" in k for k in impl) and any("_impl.out_proj" in k for k in impl)
    states = []
    for layout in (released, impl, torch_names):
        module = _module_like(fixtures_dir, "scgpt_pretrained_layout", do_mvc=True)
        report = load_state_dict_strict(module, layout)
        assert len(report["loaded"]) == len(released)
        states.append(module.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]) and torch.equal(
            states[0][key], states[2][key]
        )


def test_load_pretrained_parts_maps_vocab_rows_by_token(fixtures_dir):
    src = fixtures_dir / "scgpt_pretrained_layout"
    target_vocab = GeneVocab.from_file(fixtures_dir / "multiomic" / "vocab.json")
    torch.manual_seed(0)
    module = _module_like(fixtures_dir, "multiomic")
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


def test_load_pretrained_parts_is_strict_within_prefixes(fixtures_dir):
    src = fixtures_dir / "generator"
    # the generator's shared parts load into a TransformerModel-like module
    report = load_pretrained_parts(_module_like(fixtures_dir, "generator"), src)
    assert len(report["loaded"]) == 9 + 2 * 12 and report["new"] == report["skipped"] == []
    with pytest.raises(ValueError, match=r"linear1\.weight: checkpoint \(64, 64\) vs model"):
        load_pretrained_parts(_module_like(fixtures_dir, "generator", d_hid=32), src)
    wrong_vocab = _module_like(fixtures_dir, "multiomic")  # 778 rows, no vocab given
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
def test_corrupted_checkpoint_names_the_key(change, key, fixtures_dir, pbmc, tmp_path):
    src = fixtures_dir / "scgpt_pretrained_layout"
    state = _sd(src / "best_model.pt")
    if change == "remove":
        del state[key]
    elif change == "rename":
        state["decoder.fc.2.weights"] = state.pop(key)
    else:
        state[key] = torch.zeros(64, 32)
    folder = _copy_folder(src, tmp_path / "bad", state=state)
    with pytest.raises(ValueError, match=re.escape(key)) as err:
        SCGPT.from_pretrained(folder, pbmc(4))
    if change == "rename":
        assert "decoder.fc.2.weights" in str(err.value)
    if change == "shape":
        assert "checkpoint (64, 32) vs model (64, 64)" in str(err.value)


class _Payload:
    """Not a tensor: torch.load(weights_only=True) must not unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save(
        {"encoder.embedding.weight": torch.zeros(2, 2), "extra": _Payload()},
        tmp_path / "best_model.pt",
    )
    with pytest.raises(ValueError, match="pickled Python objects.*weights_only=True"):
        read_state_dict(tmp_path)
    torch.save({"model_state_dict": {"w": torch.zeros(1)}, "epoch": 3}, tmp_path / "best_model.pt")
    with pytest.raises(ValueError, match=r"flat \{name: tensor\}"):
        read_state_dict(tmp_path)


def test_missing_essential_arg_is_named(fixtures_dir, pbmc, tmp_path):
    src = fixtures_dir / "scgpt_pretrained_layout"
    args = json.loads((src / "args.json").read_text())
    del args["nheads"]
    with pytest.raises(KeyError, match="nheads"):
        SCGPT.from_pretrained(_copy_folder(src, tmp_path, args=args), pbmc(4))


def test_args_mapping_round_trips(fixtures_dir):
    for folder in SCGPT_FOLDERS:
        args = json.loads((fixtures_dir / folder / "args.json").read_text())
        kwargs = args_to_kwargs(args)
        assert kwargs["d_model"] == args["embsize"] and kwargs["nhead"] == args["nheads"]
        assert args_to_kwargs(kwargs_to_args(kwargs)) == kwargs


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


# ------------------------------------------------------------------ hardening (no ../shared)
def _tiny_folder(tmp_path: Path) -> tuple[Path, ad.AnnData]:
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        rng.poisson(2.0, (12, 10)).astype(np.float32),
        var=dict(index=[f"G{i}" for i in range(10)]),
    )
    SCGPT.setup_anndata(adata)
    model = SCGPT(adata, d_model=16, nhead=2, d_hid=16, nlayers=1, max_seq_len=12)
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt", adata


def test_failed_save_pretrained_leaves_earlier_checkpoint(tmp_path, monkeypatch):
    folder, adata = _tiny_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    listing = sorted(str(p) for p in tmp_path.rglob("*"))

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    model = SCGPT(adata, d_model=16, nhead=2, d_hid=16, nlayers=1, max_seq_len=12)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(folder, overwrite=True)
    monkeypatch.undo()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == listing  # no stray file
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    SCGPT.from_pretrained(folder, adata.copy())  # still loadable


@pytest.mark.parametrize("name", ["args.json", "vocab.json"])
def test_invalid_json_names_the_file(tmp_path, name):
    folder, adata = _tiny_folder(tmp_path)
    (folder / name).write_text('{"embsize": 16,')
    with pytest.raises(ValueError, match=f"{name} is not valid JSON"):
        SCGPT.from_pretrained(folder, adata.copy())


def test_vocab_with_non_integer_ids_names_the_file(tmp_path):
    folder, adata = _tiny_folder(tmp_path)
    (folder / "vocab.json").write_text('{"G0": "zero", "<pad>": 1}')
    with pytest.raises(ValueError, match=r"vocab.json must map each token to an integer.*G0"):
        SCGPT.from_pretrained(folder, adata.copy())


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("nlayers", "4", "nlayers must be an integer; got '4'"),
        ("embsize", 0, "embsize must be >= 1"),
        ("dropout", "0.1", r"dropout must be a number in \[0, 1\)"),
        ("MVC", "yes", "MVC must be true or false"),
    ],
)
def test_wrong_arg_types_are_named(tmp_path, key, value, match):
    folder, adata = _tiny_folder(tmp_path)
    args = json.loads((folder / "args.json").read_text())
    args[key] = value
    (folder / "args.json").write_text(json.dumps(args))
    with pytest.raises(ValueError, match=f"args.json: {match}"):
        SCGPT.from_pretrained(folder, adata.copy())
