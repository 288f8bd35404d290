"""Write the refactor safety-net snapshots (run once, before a refactor of the family).

``python tests/snapshots/make_snapshots.py`` saves, under ``tests/snapshots/``:

- ``demo_model/``: the ``make demo`` model (pbmc68k_reduced, demo split, seed 0, defaults),
  trained 2 epochs, saved with ``SCGPT.save``; ``demo_outputs.npz``: its embeddings of all 700
  cells and its class probabilities.
- ``modules.pt``: for a handful of module configurations of the three architectures, the
  constructor keywords, the weights, an input minibatch and every output of ``inference``,
  ``generative`` and ``loss`` (training mode, so masking and control pairing are on) plus
  the eval-mode outputs.

``tests/test_snapshots.py`` rebuilds each from the current code and asserts the outputs are
the same, so a refactor that changes behaviour fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from scvi import REGISTRY_KEYS

HERE = Path(__file__).parent


def demo_model() -> None:
    from scgpt_scvi import SCGPT
    from scgpt_scvi.demo import _split, load_pbmc68k_counts

    adata = load_pbmc68k_counts()
    labels = adata.obs["bulk_labels"].to_numpy()
    train, _ = _split(labels, 0.7, 0)
    ref = adata[train].copy()
    SCGPT.setup_anndata(ref, labels_key="bulk_labels")
    torch.manual_seed(0)
    model = SCGPT(ref, seed=0)
    model.train(max_epochs=2, enable_progress_bar=False)
    out = HERE / "demo_model"
    if out.exists():
        shutil.rmtree(out)
    model.save(out, save_anndata=False)
    z = model.get_latent_representation(adata)
    p = model.predict(adata, soft=True).to_numpy()
    np.savez_compressed(HERE / "demo_outputs.npz", latent=z, probs=p)


def module_cases() -> dict[str, dict]:
    """Constructor keywords and inputs of each module snapshot."""
    g = torch.Generator().manual_seed(0)
    n_genes, n_cells = 30, 8
    x = torch.poisson(torch.rand(n_cells, n_genes, generator=g) * 2.5, generator=g)
    base = {
        "ntoken": n_genes + 3,
        "pad_id": n_genes,
        "cls_id": n_genes + 1,
        "d_model": 16,
        "nhead": 2,
        "d_hid": 24,
        "nlayers": 2,
        "nlayers_cls": 2,
        "dropout": 0.0,
        "gene_token_ids": torch.arange(n_genes),
        "max_seq_len": 20,
        "n_bins": 11,
    }
    tensors = {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: (torch.arange(n_cells) % 2).float()[:, None],
        REGISTRY_KEYS.LABELS_KEY: (torch.arange(n_cells) % 3).float()[:, None],
        "cell_key": torch.arange(100, 100 + n_cells).float()[:, None],
    }
    cases = {
        "scgpt_plain": ("SCGPTModule", {**base, "do_mvc": True}, {}),
        "scgpt_labels_dab_dsbn": (
            "SCGPTModule",
            {
                **base,
                "n_cls": 3,
                "do_mvc": True,
                "do_dab": True,
                "use_batch_labels": True,
                "domain_spec_batchnorm": True,
                "num_batch_labels": 2,
                "explicit_zero_prob": True,
            },
            {"cce_weight": 1.0, "ecs_weight": 1.0},
        ),
        "scgpt_category_wpool": (
            "SCGPTModule",
            {
                **base,
                "input_emb_style": "category",
                "n_input_bins": 13,
                "pad_value": 12,
                "mask_value": 11,
                "cell_emb_style": "w-pool",
                "do_mvc": True,
                "mvc_decoder_style": "concat query",
                "domain_spec_batchnorm": "batchnorm",
            },
            {},
        ),
        "scgpt_scaling_avg": (
            "SCGPTModule",
            {**base, "input_emb_style": "scaling", "cell_emb_style": "avg-pool", "pre_norm": True},
            {},
        ),
    }
    mo = {k: v for k, v in base.items() if k != "max_seq_len"}
    mo_ids = torch.arange(n_genes)
    token_mod = torch.zeros(n_genes + 3, dtype=torch.long)
    token_mod[20:n_genes] = 1
    token_mod[n_genes:] = torch.tensor([2, 3, 4])
    cases["multiomic"] = (
        "SCGPTMultiomicModule",
        {
            **mo,
            "gene_token_ids": mo_ids,
            "ntokens_mod": 5,
            "mod_pad_id": 2,
            "token_mod_ids": token_mod,
            "modality_sizes": [20, 10],
            "modality_max_tokens": [12, 6],
            "do_mvc": True,
            "use_batch_labels": True,
            "num_batch_labels": 2,
            "n_cls": 3,
        },
        {},
    )
    cases["multiomic_mod_in_input"] = (
        "SCGPTMultiomicModule",
        {**cases["multiomic"][1], "mod_in_input": True, "explicit_zero_prob": True},
        {},
    )
    pert = {k: v for k, v in base.items() if k not in ("max_seq_len", "n_bins")}
    pert["ntoken"] = n_genes + 4  # one unmeasured target gene (id n_genes + 2)
    pert["cls_id"] = n_genes + 1
    n_ctrl = 6
    control_x = torch.poisson(torch.rand(n_ctrl, n_genes, generator=g) * 2.0, generator=g)
    cond = torch.tensor([[-1, -1], [3, -1], [3, 7], [n_genes + 2, -1]])
    pert_common = {
        **pert,
        "condition_targets": cond,
        "control_x": control_x,
        "normalize_counts": True,
        "do_mvc": True,
    }
    deltas = torch.randn(2, n_genes, generator=g) * 0.3
    cases["perturbation_direct"] = (
        "SCGPTPerturbationModule",
        {**pert_common, "combination": "direct", "explicit_zero_prob": True},
        {"ecs_weight": 1.0},
    )
    cases["perturbation_additive"] = (
        "SCGPTPerturbationModule",
        {
            **pert_common,
            "combination": "additive_interaction",
            "gene_selection": "all",
            "decoder_adaptive_bias": True,
            "single_targets": torch.tensor([3, 7]),
            "single_deltas": deltas,
        },
        {},
    )
    pert_tensors = {
        REGISTRY_KEYS.X_KEY: x[:, :n_genes],
        "perturbation": torch.tensor([0, 1, 2, 3, 1, 2, 3, 0]).float()[:, None],
        "cell_key": tensors["cell_key"],
    }
    return {
        name: {
            "cls": cls_name,
            "kwargs": kwargs,
            "loss_kwargs": loss_kwargs,
            "tensors": pert_tensors if cls_name == "SCGPTPerturbationModule" else tensors,
        }
        for name, (cls_name, kwargs, loss_kwargs) in cases.items()
    }


def run_module(case: dict, state: dict | None = None) -> tuple[dict, dict]:
    """Build the case's module (weights ``state`` or a seeded init), return its weights and
    outputs: training-mode inference / generative / loss terms, eval-mode inference."""
    import scgpt_scvi.module as mod

    torch.manual_seed(0)
    module = getattr(mod, case["cls"])(**case["kwargs"])
    if state is not None:
        module.load_state_dict(state)
    state = {k: v.clone() for k, v in module.state_dict().items()}  # before BN stats move
    module.epoch = 1
    out = {}
    module.train()
    inf, gen, loss = module(case["tensors"], loss_kwargs=case["loss_kwargs"])
    for prefix, d in (("inf", inf), ("gen", gen)):
        for k, v in d.items():
            if isinstance(v, torch.Tensor):
                out[f"train.{prefix}.{k}"] = v.detach().clone()
    out["train.loss"] = loss.loss.detach().clone()
    for k, v in loss.extra_metrics.items():
        out[f"train.{k}"] = torch.as_tensor(v).detach().clone()
    module.eval()
    with torch.no_grad():
        inf, gen = module(case["tensors"], compute_loss=False)
    for prefix, d in (("inf", inf), ("gen", gen)):
        for k, v in d.items():
            if isinstance(v, torch.Tensor):
                out[f"eval.{prefix}.{k}"] = v.detach().clone()
    return state, out


def modules() -> None:
    snapshots = {}
    for name, case in module_cases().items():
        state, outputs = run_module(case)
        snapshots[name] = {"state": state, "outputs": outputs}
    torch.save(snapshots, HERE / "modules.pt")


if __name__ == "__main__":
    modules()
    demo_model()
