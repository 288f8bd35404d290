"""Interrupted training leaves a usable model; checkpoints resume to the uninterrupted result."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback

from scgpt_scvi import SCGPT
from scgpt_scvi.model import _base as model_base
from scgpt_scvi.model._base import (
    EPOCHS_MAX,
    EPOCHS_MIN,
    FINETUNE_EPOCHS_MAX,
    MIN_STEPS,
    TRAINING_FLOP_BUDGET,
    default_max_epochs,
)
from scgpt_scvi.model._training import LAST_CHECKPOINT, SPLIT_FILE

TINY = {"d_model": 16, "nhead": 2, "d_hid": 16, "nlayers": 1, "max_seq_len": 12, "dropout": 0.1}
N_OBS, BATCH = 40, 8  # 36 training cells -> 5 steps per epoch (last one partial)
STEPS_PER_EPOCH = 5
FIT = {
    "max_epochs": 3,
    "batch_size": BATCH,
    "enable_progress_bar": False,
    "accelerator": "cpu",
    "plan_kwargs": {"lr": 1e-3},
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def make_model(counts_adata):
    def make() -> SCGPT:
        adata = counts_adata(N_OBS, 10)
        SCGPT.setup_anndata(adata, labels_key="cell_type")
        torch.manual_seed(0)
        return SCGPT(adata, **TINY)

    return make


class _Crash(Callback):
    """Raise ``error`` after optimisation step ``step``."""

    def __init__(self, step: int, error: BaseException):
        self.step, self.error = step, error

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise self.error


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def test_exception_leaves_model_usable_with_history(make_model):
    model = make_model()
    with pytest.raises(RuntimeError, match="boom"):
        model.train(**FIT, callbacks=[_Crash(STEPS_PER_EPOCH + 2, RuntimeError("boom"))])
    assert not model.module.training
    assert len(model.history_["train_loss"]) == 1  # the one finished epoch
    assert np.isfinite(model.get_latent_representation()).all()


def test_ctrl_c_is_a_keyboard_interrupt_and_leaves_ctrl_c_working(make_model):
    model = make_model()
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        model.train(**FIT, callbacks=[_Crash(STEPS_PER_EPOCH + 1, KeyboardInterrupt())])
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning set SIG_IGN
    assert not model.module.training and "train_loss" in model.history_
    assert np.isfinite(model.get_latent_representation()).all()


def test_resume_after_crash_matches_uninterrupted_run(make_model, tmp_path):
    perm = np.random.default_rng(0).permutation(N_OBS)
    split = {"datasplitter_kwargs": {"external_indexing": [perm[:36], perm[36:], np.array([])]}}
    reference = make_model()
    torch.manual_seed(1)
    reference.train(**FIT, **split)

    model = make_model()
    torch.manual_seed(1)
    crash = _Crash(STEPS_PER_EPOCH + 3, RuntimeError("node lost"))
    with pytest.raises(RuntimeError, match="node lost"):
        model.train(**FIT, **split, checkpoint_dir=tmp_path, callbacks=[crash])
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST_CHECKPOINT, SPLIT_FILE]
    torch.manual_seed(123)  # the checkpoint's random state wins over whatever comes before
    model.train(**FIT, checkpoint_dir=tmp_path, resume=True)  # the split comes from split.json

    ref, got = _weights(reference), _weights(model)
    assert ref.keys() == got.keys()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    assert model.is_trained_ and not model.module.training
    assert len(model.history_["train_loss"]) == FIT["max_epochs"], model.history_["train_loss"]
    np.testing.assert_allclose(
        model.history_["train_loss"].to_numpy(float),  # scvi-tools' history is object dtype
        reference.history_["train_loss"].to_numpy(float),
        rtol=1e-5,
    )


def test_step_checkpoints_and_argument_errors(make_model, tmp_path):
    model = make_model()
    fit = {**FIT, "max_epochs": 1}
    model.train(**fit, checkpoint_dir=tmp_path, checkpoint_every_n_steps=2)
    state = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=False)
    assert state["global_step"] == STEPS_PER_EPOCH and "optimizer_states" in state
    with pytest.raises(ValueError, match="need checkpoint_dir"):
        model.train(**fit, resume=True)
    with pytest.raises(FileNotFoundError, match="resume=True but .*last.ckpt does not exist"):
        model.train(**fit, checkpoint_dir=tmp_path / "none", resume=True)
    with pytest.raises(ValueError, match="checkpoint_every_n_steps must be >= 1"):
        model.train(**fit, checkpoint_dir=tmp_path, checkpoint_every_n_steps=0)


def test_zero_epochs_is_an_error_and_leaves_the_model_untrained(make_model):
    model = make_model()
    with pytest.raises(ValueError, match="max_epochs must be >= 1"):
        model.train(**{**FIT, "max_epochs": 0})
    assert not model.is_trained_ and model.history_ is None


# ---------------------------------------------------------------- default training length
def test_default_epochs_fill_the_budget_when_data_are_large():
    flop = TRAINING_FLOP_BUDGET / (50_000 * 8)  # the budget holds 8 passes over 50,000 cells
    assert default_max_epochs(50_000, flop) == 8
    assert default_max_epochs(5_000_000, flop) == EPOCHS_MIN


def test_default_epochs_give_small_data_the_minimum_steps():
    flop = TRAINING_FLOP_BUDGET / (200 * 30)  # the budget alone: 30 epochs of 200 cells
    steps_per_epoch = math.ceil(200 / 32)
    epochs = default_max_epochs(200, flop)
    assert epochs == math.ceil(MIN_STEPS / steps_per_epoch) > 30
    assert (epochs - 1) * steps_per_epoch < MIN_STEPS <= epochs * steps_per_epoch
    assert default_max_epochs(20, flop) == EPOCHS_MAX  # 1 step an epoch: capped
    # fine-tuning a pretrained model keeps scGPT's few epochs
    assert default_max_epochs(200, flop, pretrained=True) == FINETUNE_EPOCHS_MAX


def test_train_sizes_epochs_with_its_batch_size(make_model, monkeypatch):
    seen = {}

    def fake(n_cells, flop, pretrained=False, budget=None, batch_size=32):
        seen.update(n_cells=n_cells, pretrained=pretrained, batch_size=batch_size)
        return 1

    monkeypatch.setattr(model_base, "default_max_epochs", fake)
    model = make_model()
    model.train(**{**FIT, "max_epochs": None})
    assert seen == {"n_cells": N_OBS - 4, "pretrained": False, "batch_size": BATCH}
    assert len(model.history_["train_loss"]) == 1
