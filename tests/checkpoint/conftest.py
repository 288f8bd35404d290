"""Fixtures of the checkpoint tests: pbmc cells, checkpoint folders to edit and bare modules
shaped like the reference fixtures' (one torch thread per test: ``tests/conftest.py``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from scgpt_scvi import SCGPT
from scgpt_scvi.module import SCGPTModule

PBMC = "data/pbmc68k_reduced_counts_700cells.h5ad"


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


def _copy_folder(src: Path, dst: Path, state: dict | None = None, args: dict | None = None):
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("args.json", "vocab.json", "best_model.pt"):
        shutil.copy(src / name, dst / name)
    if state is not None:
        torch.save(state, dst / "best_model.pt")
    if args is not None:
        (dst / "args.json").write_text(json.dumps(args))
    return dst


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


@pytest.fixture
def copy_folder():
    """``copy_folder(src, dst, state=None, args=None)``: a copy of checkpoint folder ``src`` in
    ``dst``, with its weights / ``args.json`` replaced by ``state`` / ``args`` when given."""
    return _copy_folder


@pytest.fixture
def tiny_folder():
    """``tiny_folder(tmp_path)``: a tiny model's checkpoint folder and its AnnData (no
    ../shared needed)."""
    return _tiny_folder


@pytest.fixture
def module_like():
    """``module_like(fixtures_dir, folder, **kwargs)``: an :class:`SCGPTModule` with a reference
    fixture's width, heads, feed-forward size and depth."""
    return _module_like
