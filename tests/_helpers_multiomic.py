"""Multiomic parity helpers shared by ``tests/module/test_module_multiomic.py`` and
``tests/model/test_model_multiomic.py``: the reference fixture's keywords, weights and outputs
(``<shared>/fixtures/multiomic``; the ``fixture_dir`` fixture is in ``tests/conftest.py``)."""

from __future__ import annotations

import json

import torch

from scgpt_scvi.checkpoint import to_torch_layout

ATOL = 1e-5


def _fixture_kwargs(folder) -> dict:
    cfg = json.loads((folder / "config.json").read_text())["kwargs"]
    keep = (
        "d_model",
        "nhead",
        "d_hid",
        "nlayers",
        "nlayers_cls",
        "n_cls",
        "dropout",
        "pad_value",
        "do_mvc",
        "do_dab",
        "use_batch_labels",
        "num_batch_labels",
        "input_emb_style",
        "cell_emb_style",
        "mvc_decoder_style",
        "explicit_zero_prob",
        "pre_norm",
    )
    return {k: cfg[k] for k in keep}


def _load_fixture(module, folder):
    sd = to_torch_layout(torch.load(folder / "best_model.pt", weights_only=True))
    result = module.load_state_dict(sd, strict=False)
    return sd, result


def _check_outputs(out, case, key="outputs"):
    pad = case["inputs"]["src_key_padding_mask"]
    for name in ("cell_emb", "mlm_output", "mvc_output"):
        ref = case[key][name]
        diff = (out[name] - ref)[~pad] if ref.shape == pad.shape else out[name] - ref
        assert diff.abs().max().item() <= ATOL, name
