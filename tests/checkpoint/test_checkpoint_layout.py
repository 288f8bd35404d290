"""Key layouts: the released attention names <-> PyTorch's, and the three layouts in the wild."""

from __future__ import annotations

import re

import pytest
import torch

from scgpt_scvi.checkpoint import (
    load_state_dict_strict,
    read_state_dict,
    to_released_layout,
    to_torch_layout,
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


def test_three_attention_layouts_load_identically(fixtures_dir, module_like):
    released = read_state_dict(fixtures_dir / "scgpt_pretrained_layout")
    impl = {
        re.sub(r"self_attn\.(Wqkv|out_proj)\.", r"self_attn._impl.\1.", k): v
        for k, v in released.items()
    }
    torch_names = to_torch_layout(released)
    assert any("_impl.Wqkv" in k for k in impl) and any("_impl.out_proj" in k for k in impl)
    states = []
    for layout in (released, impl, torch_names):
        module = module_like(fixtures_dir, "scgpt_pretrained_layout", do_mvc=True)
        report = load_state_dict_strict(module, layout)
        assert len(report["loaded"]) == len(released)
        states.append(module.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]) and torch.equal(
            states[0][key], states[2][key]
        )
