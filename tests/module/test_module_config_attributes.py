"""Module options live in one place, ``module.config``: attributes read and write it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from scgpt_scvi.module import SCGPTModule, SCGPTMultiomicModule, SCGPTPerturbationModule


def _modules():
    small = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1, "n_bins": 5}
    yield SCGPTModule(ntoken=20, gene_token_ids=torch.arange(3, 13), **small)
    yield SCGPTMultiomicModule(
        ntoken=20,
        gene_token_ids=torch.arange(3, 13),
        modality_sizes=[6, 4],
        modality_max_tokens=[6, 4],
        **small,
    )
    yield SCGPTPerturbationModule(ntoken=20, gene_token_ids=torch.arange(3, 13), **small)


@pytest.mark.parametrize("module", list(_modules()), ids=lambda m: type(m).__name__)
def test_options_are_read_from_and_written_to_the_config(module):
    for field in dataclasses.fields(module.config):
        assert field.name not in vars(module)  # not copied onto the module
        assert getattr(module, field.name) == getattr(module.config, field.name)
    module.mask_ratio = 0.5
    assert module.config.mask_ratio == 0.5 and module.mask_ratio == 0.5
    assert "mask_ratio" not in vars(module)
    with pytest.raises(AttributeError, match="no_such_option"):
        module.no_such_option  # noqa: B018
    # parameters and submodules still resolve as nn.Module's
    assert module.encoder.embedding.weight.shape[0] == 20
