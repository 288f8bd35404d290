"""SCGPT.pretrain: export + from_pretrained, exact resume, DDP on 2 CPU processes, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from scgpt_scvi import SCGPT, GeneVocab
from scgpt_scvi.model._pretrain import latest_checkpoint

FILES = (
    "pbmc68k_reduced_counts_700cells.h5ad",
    "cellbench_3celllines_celseq2_dropseq.h5ad",
    "perturbench_devel_norman19_mcfaline23.h5ad",
)
TINY = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1, "max_seq_len": 48, "dropout": 0.1}
SCRIPT = Path(__file__).with_name("ddp_pretrain.py")


@pytest.fixture(scope="module")
def corpus(shared_dir):
    paths = [shared_dir / "data" / f for f in FILES]
    for p in paths:
        if not p.is_file():
            pytest.skip(f"{p} not found")
    return paths


class Losses(Callback):
    """Records the training loss of every batch by (epoch, batch index)."""

    def __init__(self):
        self.losses = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.current_epoch, batch_idx] = float(outputs["loss"])


class Kill(Callback):
    """Raises after optimiser step ``k`` (after that step's checkpoint is written)."""

    def __init__(self, k):
        self.k = k

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.k:
            raise RuntimeError("killed")


def _run(corpus, out, **kw):
    options = {"max_steps": 6, "batch_size": 16, "checkpoint_every": 3, "progress": False}
    options.update(kw)
    return SCGPT.pretrain(corpus, out, config=TINY, **options)


def test_pretrain_exports_and_from_pretrained_loads(corpus, tmp_path):
    export = _run(corpus, tmp_path / "run", max_steps=3, log_every=1)
    assert sorted(p.name for p in export.iterdir()) == ["args.json", "best_model.pt", "vocab.json"]
    args = json.loads((export / "args.json").read_text())
    assert args["embsize"] == 16 and args["MVC"] is True
    report = json.loads((tmp_path / "run" / "corpus.json").read_text())
    assert report["n_cells"] == 700 + 499 + 5961
    metrics = (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").read_text()
    assert "cells/s" in metrics and "tokens/s" in metrics and "train_loss_step" in metrics
    adata = ad.read_h5ad(corpus[1])  # Ensembl var_names, symbols in var
    model = SCGPT.from_pretrained(export, adata, gene_symbols_key="gene_symbol")
    assert model.checkpoint_report_["new"] == []
    z = model.get_latent_representation()
    assert z.shape == (499, 16) and np.isfinite(z).all()
    saved = torch.load(export / "best_model.pt", weights_only=True)
    own = model.module.state_dict()
    assert torch.equal(saved["encoder.embedding.weight"], own["encoder.embedding.weight"])


@pytest.mark.parametrize(
    ("n_files", "batch_size", "kill", "max_steps", "accumulate"),
    [(3, 16, 3, 6, 1), (1, 64, 12, 14, 1), (1, 32, 4, 6, 2)],
    ids=["mid-epoch", "next-epoch", "accumulate"],
)
def test_resume_continues_with_the_same_losses(
    corpus, tmp_path, n_files, batch_size, kill, max_steps, accumulate
):
    kw = {"batch_size": batch_size, "max_steps": max_steps, "accumulate": accumulate}
    kw["checkpoint_every"] = kill
    full = Losses()
    _run(corpus[:n_files], tmp_path / "a", callbacks=[full], **kw)
    with pytest.raises(RuntimeError, match="killed"):
        _run(corpus[:n_files], tmp_path / "b", callbacks=[Kill(kill)], **kw)
    assert latest_checkpoint(tmp_path / "b").name == f"step-{kill}.ckpt"
    # a half-written checkpoint (what a SIGKILL leaves) is never picked up
    (tmp_path / "b" / "checkpoints" / f".step-{kill + 1}.ckpt.tmp").write_bytes(b"partial")
    resumed = Losses()
    _run(corpus[:n_files], tmp_path / "b", callbacks=[resumed], resume=True, **kw)
    assert sorted(resumed.losses) == sorted(full.losses)[kill * accumulate :]
    for key in resumed.losses:
        np.testing.assert_allclose(resumed.losses[key], full.losses[key], rtol=1e-5)
    assert len(set(full.losses.values())) == max_steps * accumulate  # the losses do change


def test_resume_bad_input(corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _run(corpus, out, resume=True)
    _run(corpus, out, max_steps=3)
    with pytest.raises(FileExistsError, match="resume=True"):
        _run(corpus, out, max_steps=3)
    with pytest.raises(ValueError, match=r"training\.batch_size \(16 -> 8\)") as err:
        _run(corpus, out, resume=True, batch_size=8, lr=1e-3)
    assert "training.lr" in str(err.value)
    with pytest.raises(ValueError, match="architecture.d_model"):
        _run(corpus, out, resume=True, d_model=32)
    other = GeneVocab.from_genes(["CD3E", "MS4A1"])
    with pytest.raises(ValueError, match="vocabulary differs"):
        _run(corpus, out, resume=True, vocab=other)
    with pytest.raises(ValueError, match="corpus.files"):
        _run(corpus[:2], out, resume=True)
    with pytest.raises(TypeError, match="unknown options"):
        _run(corpus, tmp_path / "x", max_stepz=3)
    with pytest.raises(ValueError, match="precision"):
        _run(corpus, tmp_path / "x", precision="64")


@pytest.mark.ddp
@pytest.mark.slow
def test_pretrain_two_cpu_processes(corpus, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *map(str, corpus)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = [np.load(out / f"cells_rank{r}.npy") for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4  # the same number of steps on both ranks
    keys = [np.concatenate(list(s)) for s in seen]
    assert not set(keys[0]) & set(keys[1])  # each rank reads different cells
    export = out / "pretrained"
    adata = ad.read_h5ad(corpus[0])
    model = SCGPT.from_pretrained(export, adata)
    assert np.isfinite(model.get_latent_representation()).all()
