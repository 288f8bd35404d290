"""Checkpoint files: writes that are all or nothing, refused pickles, invalid JSON, safetensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scgpt_scvi import SCGPT
from scgpt_scvi.checkpoint import read_state_dict


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


def test_failed_save_pretrained_leaves_earlier_checkpoint(tmp_path, monkeypatch, tiny_folder):
    folder, adata = tiny_folder(tmp_path)
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
def test_invalid_json_names_the_file(tmp_path, name, tiny_folder):
    folder, adata = tiny_folder(tmp_path)
    (folder / name).write_text('{"embsize": 16,')
    with pytest.raises(ValueError, match=f"{name} is not valid JSON"):
        SCGPT.from_pretrained(folder, adata.copy())


def test_vocab_with_non_integer_ids_names_the_file(tmp_path, tiny_folder):
    folder, adata = tiny_folder(tmp_path)
    (folder / "vocab.json").write_text('{"G0": "zero", "<pad>": 1}')
    with pytest.raises(ValueError, match=r"vocab.json must map each token to an integer.*G0"):
        SCGPT.from_pretrained(folder, adata.copy())
