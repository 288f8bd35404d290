"""``scgpt-scvi embed``: zero-shot embeddings of an .h5ad file from the command line."""

from __future__ import annotations

import os
import re
import shutil
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


pytestmark = pytest.mark.usefixtures("one_thread")


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


# ---------------------------------------------------------- option validation (no ../shared)
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny checkpoint folder and an .h5ad with its genes (no shared data needed)."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        rng.poisson(2.0, (10, 8)).astype(np.float32),
        obs=dict(index=[f"c{i}" for i in range(10)]),
        var=dict(index=[f"G{i}" for i in range(8)]),
    )
    adata.write_h5ad(root / "in.h5ad")
    SCGPT.setup_anndata(adata)
    SCGPT(adata, d_model=16, nhead=2, d_hid=16, nlayers=1, max_seq_len=10).save_pretrained(
        root / "ckpt"
    )
    return root


def _argv(tiny, *extra, out=None):
    out = out if out is not None else tiny / "out.h5ad"
    model = ["--model", str(tiny / "ckpt")]
    return ["embed", str(tiny / "in.h5ad"), *model, "--out", str(out), "--quiet", *extra]


def _fails(argv, capsys, match) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--batch-size", "-3"], r"--batch-size must be >= 1; got -3"),
        (["--batch-size", "0"], r"--batch-size must be >= 1; got 0"),
        (["--batch-size", "many"], r"argument --batch-size: invalid int value: 'many'"),
        (["--max-length", "1"], r"--max-length must be >= 2"),
        (["--key-added", ""], r"--key-added must be a non-empty obsm key"),
        (["--key-added", "a/b"], r"--key-added .* without '/'"),
        (["--device", "nope"], r"--device 'nope' is not a torch device"),
        (["--layer", "counts"], r"--layer 'counts' is not a layer of .*in.h5ad; layers: \[\]"),
        (["--gene-col", "symbol"], r"--gene-col 'symbol' is not a var column"),
    ],
)
def test_bad_option_values_fail_before_loading(tiny, capsys, monkeypatch, extra, match):
    def not_expected(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(SCGPT, "from_pretrained", not_expected)
    _fails(_argv(tiny, *extra), capsys, match)
    assert not (tiny / "out.h5ad").exists()


def test_unavailable_cuda_is_named(tiny, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    _fails(_argv(tiny, "--device", "cuda"), capsys, r"--device cuda: CUDA is not available")


def test_bad_files_are_named(tiny, tmp_path, capsys):
    text = tmp_path / "notes.h5ad"
    text.write_text("not hdf5")
    argv = _argv(tiny)
    _fails([*argv[:1], str(text), *argv[2:]], capsys, r"input .*notes.h5ad is not an .h5ad")
    _fails([*argv[:1], str(tmp_path / "no.h5ad"), *argv[2:]], capsys, r"no.h5ad is not a file")
    before = sorted(tmp_path.iterdir())
    _fails(_argv(tiny, out=tmp_path), capsys, r"--out .* is a folder; give a file path")
    assert sorted(tmp_path.iterdir()) == before and not list(tmp_path.parent.glob("*.partial"))
    _fails(_argv(tiny, out=tmp_path / "no" / "o.h5ad"), capsys, r"folder .*no does not exist")
    _fails(_argv(tiny, out=tiny / "in.h5ad"), capsys, r"--out must differ from the input")


def test_corrupt_checkpoint_files_are_named(tiny, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny / "ckpt", ckpt)
    argv = _argv(tiny)
    argv[3] = str(ckpt)
    weights = (ckpt / "best_model.pt").read_bytes()
    (ckpt / "best_model.pt").write_bytes(weights[: len(weights) // 2])
    _fails(argv, capsys, r"best_model.pt is not a readable torch checkpoint \(truncated")
    (ckpt / "best_model.pt").write_bytes(weights)
    (ckpt / "args.json").write_text("{")
    _fails(argv, capsys, r"args.json is not valid JSON")
    (ckpt / "args.json").unlink()
    _fails(argv, capsys, r"--model .*: No args.json")
    assert not (tiny / "out.h5ad").exists()


def test_failed_write_leaves_no_output(tiny, tmp_path, capsys, monkeypatch):
    import anndata.io

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(anndata.io, "write_elem", full_disk)
    _fails(_argv(tiny, out=tmp_path / "o.h5ad"), capsys, r"OSError: .*No space left")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert main(_argv(tiny, out=tmp_path / "o.h5ad")) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["o.h5ad"]
    assert ad.read_h5ad(tmp_path / "o.h5ad").obsm["X_scGPT"].shape == (10, 16)


def test_console_errors_have_no_traceback(tiny, tmp_path):
    """Through a real process: one line on stderr, exit code 2."""
    argv = _argv(tiny, "--batch-size", "-1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "scgpt_scvi._cli", *argv], capture_output=True, text=True, env=env
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "scgpt-scvi embed: error: --batch-size must be >= 1; got -1."
    ]


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
