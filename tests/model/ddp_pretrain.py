"""Two-process CPU DDP pretraining (run by test_model_pretrain.py in a subprocess).

Usage: ``python tests/model/ddp_pretrain.py OUT CORPUS...``. Lightning's DDP launcher re-runs
this script for rank 1; each rank saves the cell keys of its minibatches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from scgpt_scvi import SCGPT


class Cells(Callback):
    def __init__(self, out):
        self.out, self.keys = Path(out), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.keys.append(batch["cell_key"].cpu().numpy())

    def on_train_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        np.save(self.out / f"cells_rank{trainer.global_rank}.npy", np.stack(self.keys))


def main(out: str, corpus: list[str]) -> None:
    torch.set_num_threads(1)
    SCGPT.pretrain(
        corpus,
        out,
        config={"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1, "max_seq_len": 48},
        max_steps=4,
        batch_size=8,
        devices=2,
        accelerator="cpu",
        checkpoint_every=2,
        progress=False,
        callbacks=[Cells(out)],
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
