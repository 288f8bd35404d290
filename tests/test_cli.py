"""``scgpt-scvi embed``: zero-shot embeddings of an .h5ad file from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from scgpt_scvi import SCGPT
from scgpt_scvi._cli import main

N_CELLS = 100
PBMC = "data/pbmc68k_reduced_counts_700cells.h5ad"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "scgpt_pretrained_layout"


@pytest.fixture(scope="module")
def pbmc_file(shared_dir: Path, tmp_path_factory) -> Path:
    path = shared_dir / PBMC
    if not path.is_file():
        pytest.skip(f"{path} not found (shared pbmc68k data).")
    out = tmp_path_factory.mktemp("cli") / "pbmc100.h5ad"
    ad.read_h5ad(path)[:N_CELLS].copy().write_h5ad(out)
    return out


@pytest.fixture(scope="module")
def in_memory_run(pbmc_file, model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out.h5ad"
    assert main(["embed", str(pbmc_file), "--model", str(model_dir), "--out", str(out)]) == 0
    return out


def test_embed_writes_obsm_and_keeps_the_rest(in_memory_run, pbmc_file, model_dir, capsys):
    out, src = ad.read_h5ad(in_memory_run), ad.read_h5ad(pbmc_file)
    emb = out.obsm["X_scGPT"]
    assert emb.shape == (N_CELLS, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert out.obs.equals(src.obs) and out.var.equals(src.var)
    assert (out.X != src.X).nnz == 0
    assert set(out.obsm) == set(src.obsm) | {"X_scGPT"}
    assert out.uns["scGPT"]["n_genes_matched"] == src.n_vars
    # the same numbers as the Python API
    direct = SCGPT.from_pretrained(model_dir, src).get_latent_representation()
    np.testing.assert_allclose(emb, direct, atol=1e-6, rtol=0)


def test_two_runs_are_identical(in_memory_run, pbmc_file, model_dir, tmp_path):
    """The second run is a separate process through ``python -m scgpt_scvi._cli``."""
    out = tmp_path / "again.h5ad"
    argv = ["embed", str(pbmc_file), "--model", str(model_dir), "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "scgpt_scvi._cli", *argv], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stderr
    assert np.array_equal(
        ad.read_h5ad(out).obsm["X_scGPT"], ad.read_h5ad(in_memory_run).obsm["X_scGPT"]
    )


def test_backed_input_is_streamed(in_memory_run, pbmc_file, model_dir, tmp_path, capsys):
    out = tmp_path / "backed.h5ad"
    argv = ["embed", str(pbmc_file), "--model", str(model_dir), "--out", str(out), "--backed"]
    assert main([*argv, "--batch-size", "32"]) == 0
    err = capsys.readouterr().err
    assert f"{N_CELLS}/{N_CELLS}" in err  # the progress bar reached every cell
    np.testing.assert_allclose(
        ad.read_h5ad(out).obsm["X_scGPT"],
        ad.read_h5ad(in_memory_run).obsm["X_scGPT"],
        atol=1e-6,
        rtol=0,
    )


def test_gene_col_matches_symbols(in_memory_run, pbmc_file, model_dir, tmp_path):
    renamed = ad.read_h5ad(pbmc_file)
    renamed.var["symbol"] = renamed.var_names.to_numpy()
    renamed.var_names = [f"ENSG{i:011d}" for i in range(renamed.n_vars)]
    src, out = tmp_path / "ids.h5ad", tmp_path / "ids_out.h5ad"
    renamed.write_h5ad(src)
    argv = ["embed", str(src), "--model", str(model_dir), "--out", str(out), "--quiet"]
    assert main([*argv, "--gene-col", "symbol"]) == 0
    np.testing.assert_allclose(
        ad.read_h5ad(out).obsm["X_scGPT"],
        ad.read_h5ad(in_memory_run).obsm["X_scGPT"],
        atol=1e-6,
        rtol=0,
    )
    with pytest.raises(SystemExit) as exit_:  # without --gene-col no gene is in the vocabulary
        main(argv)
    assert exit_.value.code == 2


def test_errors_exit_with_a_message(pbmc_file, model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["embed", str(pbmc_file), "--model", str(model_dir), "--out", str(pbmc_file)])
    assert exit_.value.code == 2
    assert "--out must differ" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["embed", str(pbmc_file), "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert "No args.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_embed_quantize_and_precision(in_memory_run, pbmc_file, model_dir, tmp_path, capsys):
    """``--quantize int8`` stays close to fp32; an unsupported ``--precision`` is a clean error."""
    out = tmp_path / "int8.h5ad"
    args = ["embed", str(pbmc_file), "--model", str(model_dir), "--quiet"]
    assert main([*args, "--out", str(out), "--quantize", "int8", "--precision", "fp32"]) == 0
    z8, z32 = ad.read_h5ad(out).obsm["X_scGPT"], ad.read_h5ad(in_memory_run).obsm["X_scGPT"]
    assert not np.array_equal(z8, z32)
    assert (z8 * z32).sum(1).min() >= 0.99  # both L2-normalised: the per-cell cosine
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path / "fp16.h5ad"), "--precision", "fp16"])
    assert exit_.value.code == 2
    assert "supported there: ('fp32', 'bf16')" in capsys.readouterr().err
