"""Fault-tolerant training: a usable model after a crash or Ctrl+C, checkpoints, exact resume.

Wrap a model's ``train`` with :func:`fault_tolerant_train`; it adds three keywords:

* ``checkpoint_dir``: keep Lightning checkpoints there (``last.ckpt``: weights, optimizer,
  scheduler, loop counters, and the random-number state that drives shuffling, dropout and
  the epoch-keyed masking), written at the end of every epoch and every
  ``checkpoint_every_n_steps`` optimisation steps, each atomically (temporary name, rename);
* ``checkpoint_every_n_steps``: also checkpoint every so many steps (default: epochs only);
* ``resume``: continue from ``checkpoint_dir/last.ckpt``. From an end-of-epoch checkpoint
  the run continues exactly as the uninterrupted one would have; from a mid-epoch one
  Lightning restarts that epoch's data loader (it warns).

Whatever stops training (an exception, Ctrl+C), the model is left in eval mode with its history
up to that point, and Ctrl+C is re-raised as ``KeyboardInterrupt`` (Lightning turns it into
``SystemExit(1)`` and leaves Ctrl+C ignored; both are undone).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import Callback

from ..checkpoint import atomic_path

__all__ = [
    "CheckpointCallback",
    "LAST_CHECKPOINT",
    "SPLIT_FILE",
    "fault_tolerant_train",
    "training_guard",
]

LAST_CHECKPOINT = "last.ckpt"
#: The train / validation / test cell indices of the checkpointed run (resume reuses them).
SPLIT_FILE = "split.json"


def _rng_state() -> dict:
    np_state = np.random.get_state()  # noqa: NPY002 (the global state others draw from)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.as_tensor(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))  # noqa: NPY002
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


def _or_empty(indices):
    return [] if indices is None else indices


class CheckpointCallback(Callback):
    """Keeps ``dirpath/last.ckpt`` up to date and records how training ended.

    Parameters
    ----------
    dirpath
        Folder of the checkpoint (created if needed).
    every_n_steps
        Also checkpoint every so many optimisation steps (``None``: only at epoch ends).
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, every_n_steps: int | None = None):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"checkpoint_every_n_steps must be >= 1; got {every_n_steps}.")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.every_n_steps = every_n_steps
        self.exception: BaseException | None = None

    # -------------------------------------------------------------- checkpoints
    def _save(self, trainer) -> None:
        if self.dirpath is None:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        final = self.dirpath / LAST_CHECKPOINT
        tmp = self.dirpath / f".{LAST_CHECKPOINT}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()

    def on_fit_start(self, trainer, pl_module) -> None:
        """Record the data split, so that a resumed run trains on the same cells."""
        splitter = trainer.datamodule
        if self.dirpath is None or not trainer.is_global_zero or splitter is None:
            return
        split = {
            name: np.asarray(_or_empty(getattr(splitter, f"{name}_idx", None)), np.int64).tolist()
            for name in ("train", "val", "test")
        }
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.dirpath / SPLIT_FILE) as tmp:
            tmp.write_text(json.dumps(split))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def state_dict(self) -> dict:
        return {"rng": _rng_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the checkpoint's random state (Lightning restores callbacks before it
        builds the first data-loader iterator, which draws the shuffling order)."""
        if state_dict.get("rng") is not None:
            _set_rng_state(state_dict["rng"])

    # -------------------------------------------------------------- how it ended
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.exception = exception


@contextlib.contextmanager
def training_guard(model, callback: CheckpointCallback) -> Iterator[None]:
    """Leave ``model`` usable whatever ends the block; re-raise Ctrl+C as ``KeyboardInterrupt``.

    On the way out the module is put in eval mode; scvi-tools has then already stored the
    history logged so far (``model.history_``). Lightning's ``SystemExit(1)`` for Ctrl+C
    becomes ``KeyboardInterrupt`` again and the Ctrl+C handler it switched off is restored.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        yield
    except SystemExit:
        if isinstance(callback.exception, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    finally:
        if main_thread and handler is not None:
            signal.signal(signal.SIGINT, handler)
        if getattr(model, "module", None) is not None:
            model.module.eval()


def _merge_history(before: dict | None, after: dict | None) -> dict | None:
    """History of an interrupted run followed by its resumed continuation."""
    if not before or not after:
        return after if after else before
    merged = dict(before)
    for key, new in after.items():
        old = before.get(key)
        if old is None or old.empty:
            merged[key] = new
            continue
        new = new.copy()
        new.index = np.arange(len(old), len(old) + len(new))
        merged[key] = pd.concat([old, new])
        merged[key].index.name = old.index.name
    return merged


def _resume_split(checkpoint_dir, kwargs: dict) -> dict:
    """``datasplitter_kwargs`` with the checkpointed run's split (unless one is given)."""
    splitter_kwargs = dict(kwargs.get("datasplitter_kwargs") or {})
    path = Path(checkpoint_dir) / SPLIT_FILE
    if "external_indexing" not in splitter_kwargs and path.is_file():
        split = json.loads(path.read_text())
        splitter_kwargs["external_indexing"] = [
            np.asarray(split[name], dtype=np.int64) for name in ("train", "val", "test")
        ]
    return splitter_kwargs


def fault_tolerant_train(train: Callable) -> Callable:
    """Decorate a model's ``train``: checkpoints, ``resume`` and a usable model after a crash.

    Adds the keywords ``checkpoint_dir``, ``checkpoint_every_n_steps`` and ``resume`` (see the
    module docstring); everything else goes to ``train`` unchanged.

    Examples
    --------
    >>> model.train(max_epochs=20, checkpoint_dir="ckpt/", checkpoint_every_n_steps=500)
    >>> # ... crash or Ctrl+C ...
    >>> model.train(max_epochs=20, checkpoint_dir="ckpt/", resume=True)
    """

    @functools.wraps(train)
    def wrapper(
        self,
        *args: Any,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_steps: int | None = None,
        resume: bool = False,
        **kwargs: Any,
    ):
        if (resume or checkpoint_every_n_steps) and checkpoint_dir is None:
            raise ValueError("resume and checkpoint_every_n_steps need checkpoint_dir=...")
        callback = CheckpointCallback(checkpoint_dir, checkpoint_every_n_steps)
        history = self.history_ if resume else None
        if resume:
            last = Path(checkpoint_dir) / LAST_CHECKPOINT
            if not last.is_file():
                raise FileNotFoundError(f"resume=True but {last} does not exist.")
            if kwargs.get("ckpt_path") is not None:
                raise ValueError("Pass either resume=True or ckpt_path, not both.")
            kwargs["ckpt_path"] = str(last)
            kwargs["datasplitter_kwargs"] = _resume_split(checkpoint_dir, kwargs)
            self.is_trained_ = False  # the runner records the continuation's history afresh
        callbacks = list(kwargs.pop("callbacks", None) or [])
        kwargs["callbacks"] = [*callbacks, callback]
        with training_guard(self, callback):
            out = train(self, *args, **kwargs)
        if resume:
            self.history_ = _merge_history(history, self.history_)
        return out

    extra = """
        checkpoint_dir
            Keep Lightning checkpoints (``last.ckpt``) in this folder, written at every epoch
            end and every ``checkpoint_every_n_steps`` steps.
        checkpoint_every_n_steps
            Also checkpoint every so many optimisation steps.
        resume
            Continue from ``checkpoint_dir/last.ckpt`` (optimizer, scheduler, epoch, random
            state); exact from an end-of-epoch checkpoint.
        """
    if wrapper.__doc__ and "**kwargs" in wrapper.__doc__:
        head, tail = wrapper.__doc__.split("        **kwargs", 1)
        wrapper.__doc__ = head + extra.lstrip("\n").rstrip(" ") + "        **kwargs" + tail
    return wrapper
