"""The ``args.json`` schema: essential keys, the keyword mapping and its inverse, value types."""

from __future__ import annotations

import json

import pytest

from scgpt_scvi import SCGPT
from scgpt_scvi.checkpoint import args_to_kwargs, kwargs_to_args

SCGPT_FOLDERS = ("scgpt_pretrained_layout", "scgpt_integration", "scgpt_category_wpool")


def test_missing_essential_arg_is_named(fixtures_dir, pbmc, tmp_path, copy_folder):
    src = fixtures_dir / "scgpt_pretrained_layout"
    args = json.loads((src / "args.json").read_text())
    del args["nheads"]
    with pytest.raises(KeyError, match="nheads"):
        SCGPT.from_pretrained(copy_folder(src, tmp_path, args=args), pbmc(4))


def test_args_mapping_round_trips(fixtures_dir):
    for folder in SCGPT_FOLDERS:
        args = json.loads((fixtures_dir / folder / "args.json").read_text())
        kwargs = args_to_kwargs(args)
        assert kwargs["d_model"] == args["embsize"] and kwargs["nhead"] == args["nheads"]
        assert args_to_kwargs(kwargs_to_args(kwargs)) == kwargs


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("nlayers", "4", "nlayers must be an integer; got '4'"),
        ("embsize", 0, "embsize must be >= 1"),
        ("dropout", "0.1", r"dropout must be a number in \[0, 1\)"),
        ("MVC", "yes", "MVC must be true or false"),
    ],
)
def test_wrong_arg_types_are_named(tmp_path, key, value, match, tiny_folder):
    folder, adata = tiny_folder(tmp_path)
    args = json.loads((folder / "args.json").read_text())
    args[key] = value
    (folder / "args.json").write_text(json.dumps(args))
    with pytest.raises(ValueError, match=f"args.json: {match}"):
        SCGPT.from_pretrained(folder, adata.copy())
