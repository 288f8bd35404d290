"""Two-process CPU DDP training of SCGPT (run by test_model_ddp.py in a subprocess).

Usage: ``python tests/model/ddp_train.py OUT.npy``. Lightning's DDP launcher re-runs this script
for rank 1; rank 0 writes the embeddings after training.
"""

from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pandas as pd
import torch

from scgpt_scvi import SCGPT


def main(out: str) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    X = rng.negative_binomial(2, 0.6, size=(64, 30)).astype(np.float32)
    adata = ad.AnnData(
        X=X,
        obs=pd.DataFrame(
            {"batch": pd.Categorical(["a", "b"] * 32)}, index=[f"c{i}" for i in range(64)]
        ),
        var=pd.DataFrame(index=[f"G{j}" for j in range(30)]),
    )
    SCGPT.setup_anndata(adata, batch_key="batch")
    model = SCGPT(
        adata,
        d_model=16,
        nhead=2,
        d_hid=16,
        nlayers=1,
        max_seq_len=16,
        dropout=0.0,
        use_batch_labels=True,
        do_mvc=True,
    )
    model.train(
        max_epochs=2,
        batch_size=8,
        accelerator="cpu",
        devices=2,
        strategy="ddp_find_unused_parameters_true",
        enable_progress_bar=False,
        datasplitter_kwargs={"drop_dataset_tail": True},
        plan_kwargs={"cce_weight": 1.0},
    )
    if model.trainer.global_rank == 0:
        np.save(out, model.get_latent_representation())


if __name__ == "__main__":
    main(sys.argv[1])
