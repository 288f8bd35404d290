"""``scgpt-scvi pretrain``: a short run, then resume; one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest

from scgpt_scvi._cli import main

TINY = {"embsize": 16, "nheads": 2, "d_hid": 16, "nlayers": 1, "max_seq_len": 32, "MVC": True}


@pytest.fixture(scope="module")
def h5ad(shared_dir):
    path = shared_dir / "data" / "pbmc68k_reduced_counts_700cells.h5ad"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def _cli(*argv):
    return main(["pretrain", *map(str, argv), "--quiet"])


def test_cli_pretrain_and_resume(h5ad, tmp_path, capsys):
    config = tmp_path / "args.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    common = (h5ad, "--out", out, "--config", config, "--batch-size", 16, "--checkpoint-every", 2)
    assert _cli(*common, "--max-steps", 2) == 0
    assert "wrote" in capsys.readouterr().err
    assert (out / "pretrained" / "best_model.pt").is_file()
    assert json.loads((out / "pretrained" / "args.json").read_text())["embsize"] == 16
    assert _cli(*common, "--max-steps", 4, "--resume") == 0
    assert (out / "checkpoints" / "step-4.ckpt").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope.h5ad",), "does not exist"),
        (("{h5ad}", "--resume"), "no checkpoint"),
        (("{h5ad}", "--config", "huge"), "neither one of"),
        (("{empty}",), "empty"),
    ],
)
def test_cli_pretrain_errors(h5ad, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(h5ad=h5ad, empty=tmp_path / "empty") for a in args]
    with pytest.raises(SystemExit) as exit_info:
        _cli(*args, "--out", tmp_path / "run", "--max-steps", 1)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_pretrain_bad_option(h5ad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli(h5ad, "--out", tmp_path, "--precision", "64")
    assert exit_info.value.code == 2
    assert "--precision" in capsys.readouterr().err
