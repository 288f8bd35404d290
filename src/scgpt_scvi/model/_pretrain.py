"""Pretraining an scGPT ``TransformerModel`` on a corpus of on-disk AnnData files.

The implementation of :meth:`scgpt_scvi.model.SCGPT.pretrain`. Lightning is the engine: a
:class:`CorpusDataModule` streams the corpus (:mod:`scgpt_scvi.data._corpus`), scvi-tools'
training plan (:class:`~scgpt_scvi.model.SCGPTTrainingPlan`) wraps
:class:`~scgpt_scvi.module.SCGPTModule`, and ``lightning.Trainer`` runs it on any number of
devices and nodes (DDP: gloo on CPU, nccl on GPU), in 32-bit or mixed precision, with gradient
accumulation, a CSV logger and a progress bar showing cells/s and tokens/s.

Output folder ``out_dir``::

    pretrain.json          configuration (architecture, training, corpus) - checked on resume
    vocab.json             the vocabulary
    corpus.json            per-file report (cells, genes matched, gene column, skipped files)
    checkpoints/step-N.ckpt  Lightning checkpoints (weights, optimiser, scheduler, loader
                           position); written to a temporary name, then renamed
    pretrained/            save_pretrained export (args.json, vocab.json, best_model.pt) of the
                           latest checkpoint and, at the end, of the final weights
    logs/version_K/metrics.csv  per-step losses, cells/s, tokens/s, learning rate

Multi-node. Lightning reads the cluster from the environment, so the same command runs under
``torchrun`` or SLURM; ``devices`` and ``num_nodes`` must match the launch::

    # one node, 4 GPUs (Lightning starts the 4 processes itself)
    scgpt-scvi pretrain atlas/ --out run --devices 4 --precision bf16-mixed

    # 2 nodes x 4 GPUs with torchrun (run on each node; NODE_RANK 0 and 1)
    torchrun --nnodes 2 --nproc-per-node 4 --node-rank $NODE_RANK \\
        --master-addr $MASTER_HOST --master-port 29500 \\
        $(which scgpt-scvi) pretrain atlas/ --out run --devices 4 --num-nodes 2

    # SLURM: one task per GPU; Lightning's SLURMEnvironment picks up the ranks
    #SBATCH --nodes=2 --ntasks-per-node=4 --gres=gpu:4
    srun scgpt-scvi pretrain atlas/ --out run --devices 4 --num-nodes 2 --precision bf16-mixed
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from ..checkpoint import args_to_kwargs, read_args
from ..data import BlockPlan, Corpus, CorpusDataLoader, CorpusDataset, GeneVocab
from ..module import SCGPTModule, config_fields
from ._base import as_vocab
from ._pretrained import SavePretrainedMixin
from ._training_plan import SCGPTTrainingPlan

logger = logging.getLogger(__name__)

__all__ = [
    "PRETRAIN_CONFIGS",
    "TRAINING_DEFAULTS",
    "AtomicCheckpointIO",
    "CorpusDataModule",
    "Throughput",
    "export_pretrained",
    "pretrain",
    "pretrain_classmethod",
    "latest_checkpoint",
]

Precision = Literal["32", "bf16-mixed", "16-mixed"]

#: Architectures by name: ``small`` (SCGPT's defaults) and ``human`` (the released
#: whole-human model: 512 wide, 12 layers, 8 heads, MVC).
PRETRAIN_CONFIGS: dict[str, dict[str, Any]] = {
    "small": {
        "d_model": 128,
        "nhead": 4,
        "d_hid": 128,
        "nlayers": 4,
        "nlayers_cls": 3,
        "dropout": 0.2,
        "max_seq_len": 1200,
        "do_mvc": True,
    },
    "human": {
        "d_model": 512,
        "nhead": 8,
        "d_hid": 512,
        "nlayers": 12,
        "nlayers_cls": 3,
        "dropout": 0.2,
        "max_seq_len": 1200,
        "do_mvc": True,
    },
}

#: Training options of :func:`pretrain` and their defaults.
TRAINING_DEFAULTS: dict[str, Any] = {
    "max_steps": 1000,
    "batch_size": 32,
    "accumulate": 1,
    "lr": 1e-4,
    "weight_decay": 0.0,
    "warmup_ratio": 0.1,
    "lr_schedule": "cosine",
    "gradient_clip_val": 1.0,
    "precision": "32",
    "devices": 1,
    "num_nodes": 1,
    "accelerator": "auto",
    "seed": 0,
    "block_size": 16,
    "num_workers": 0,
    "checkpoint_every": 500,
    "keep_checkpoints": 2,
    "log_every": 10,
    "mask_ratio": 0.4,
    "mvc_weight": None,
}
#: Options that may change on ``resume`` (they do not change the data order or the model).
RESUMABLE_CHANGES = (
    "max_steps",
    "num_workers",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "accelerator",
)
_PLAN_KEYS = ("lr", "weight_decay", "warmup_ratio", "lr_schedule", "mvc_weight")
_CONFIG, _VOCAB, _CKPT_DIR, _EXPORT = "pretrain.json", "vocab.json", "checkpoints", "pretrained"


# ---------------------------------------------------------------------- configuration
def _architecture(config: str | os.PathLike | Mapping | None, overrides: dict) -> dict:
    """Module options: a named config, an ``args.json`` (file or folder) or a mapping, then
    keyword overrides."""
    if config is None:
        config = "small"
    if isinstance(config, Mapping):
        base = {**PRETRAIN_CONFIGS["small"], **config}
    elif str(config) in PRETRAIN_CONFIGS:
        base = dict(PRETRAIN_CONFIGS[str(config)])
    else:
        path = Path(config)
        if not path.exists():
            raise FileNotFoundError(
                f"config {config!r} is neither one of {list(PRETRAIN_CONFIGS)} nor an args.json."
            )
        folder = path if path.is_dir() else path.parent
        if path.is_file() and path.name != "args.json":
            with open(path) as f:
                raw = json.load(f)
        else:
            raw = read_args(folder)
        base = args_to_kwargs(raw, source=str(path))
        base.pop("n_cls", None)
    return {**base, **overrides}


def _split_options(options: dict) -> tuple[dict, dict]:
    """(training options with defaults, architecture overrides)."""
    unknown = [k for k in options if k not in TRAINING_DEFAULTS and not _is_module_option(k)]
    if unknown:
        raise TypeError(f"pretrain() got unknown options {unknown}.")
    training = {**TRAINING_DEFAULTS, **{k: v for k, v in options.items() if k in TRAINING_DEFAULTS}}
    arch = {k: v for k, v in options.items() if k not in TRAINING_DEFAULTS}
    return training, arch


def _is_module_option(key: str) -> bool:
    return key in config_fields() and key not in ("ntoken", "pad_id", "cls_id")


def _differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b and not (prefix == "training." and k in RESUMABLE_CHANGES):
            out.append(f"{prefix}{k} ({a!r} -> {b!r})")
    return out


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint of the highest step in ``out_dir/checkpoints`` (or ``None``).

    Checkpoints are written to ``.step-N.ckpt.tmp`` and renamed when complete, so a run
    killed while writing leaves nothing this picks up.
    """
    folder = Path(out_dir) / _CKPT_DIR
    found = sorted(folder.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
    return found[-1] if found else None


# ---------------------------------------------------------------------- Lightning parts
class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the same folder, fsync, then rename."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class CorpusDataModule(pl.LightningDataModule):
    """Lightning data module over a :class:`~scgpt_scvi.data.Corpus`.

    Each rank gets a :class:`~scgpt_scvi.data.CorpusDataLoader` of its shard; the loader's
    position (epoch, steps done) travels in Lightning's checkpoints, read from the trainer's
    progress. Data order depends on ``seed``, ``batch_size``, ``block_size`` and the world
    size only.

    Parameters
    ----------
    corpus
        The corpus.
    batch_size
        Cells per rank and step.
    block_size
        Consecutive cells read together.
    seed
        Seed of the block order.
    num_workers
        DataLoader worker processes per rank.
    max_seq_len
        Model sequence length (for the tokens/s count).
    """

    def __init__(
        self,
        corpus: Corpus,
        batch_size: int = 32,
        block_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
        max_seq_len: int | None = None,
    ):
        super().__init__()
        self.corpus, self.batch_size, self.block_size = corpus, batch_size, block_size
        self.seed, self.num_workers, self.max_seq_len = seed, num_workers, max_seq_len
        self.plan: BlockPlan | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build the order for this trainer's world size."""
        world = self.trainer.world_size if self.trainer is not None else 1
        self.plan = BlockPlan(
            self.corpus.n_cells, self.batch_size, world, self.block_size, self.seed
        )

    def _position(self) -> tuple[int, int]:
        trainer = self.trainer
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return trainer.current_epoch, done

    def train_dataloader(self) -> CorpusDataLoader:
        """This rank's loader."""
        if self.plan is None:
            self.setup()
        rank = self.trainer.global_rank if self.trainer is not None else 0
        dataset = CorpusDataset(self.corpus, self.plan, self.max_seq_len)
        return CorpusDataLoader(
            dataset, rank=rank, num_workers=self.num_workers, position_fn=self._position
        )


class _CorpusBatches(Callback):
    """Per step: the minibatch's gene columns as the module's token ids, the epoch for the
    keyed masks, and a dropout seed from (seed, step, rank), so a resumed run draws what an
    uninterrupted one would."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        module = pl_module.module
        self._placeholder = module.gene_token_ids
        module.gene_token_ids = batch["token_ids"]
        module.epoch = int(trainer.current_epoch)
        step = trainer.global_step
        rank = trainer.global_rank
        torch.manual_seed(self.seed * 1_000_003 + step * 7919 + batch_idx * 31 + rank)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.module.gene_token_ids = self._placeholder


class Throughput(Callback):
    """Logs ``cells/s`` and ``tokens/s`` (all ranks together) to the progress bar and logger."""

    def __init__(self, window: int = 20):
        self.window, self._t, self._n = window, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self._t.append(now)
        self._n.append((batch["X"].shape[0], int(batch["n_tokens"])))
        self._t, self._n = self._t[-self.window :], self._n[-self.window :]
        if len(self._t) < 2:
            return
        dt = self._t[-1] - self._t[0]
        world = trainer.world_size
        cells = sum(c for c, _ in self._n[1:]) * world / dt
        tokens = sum(t for _, t in self._n[1:]) * world / dt
        pl_module.log("cells/s", cells, prog_bar=True, on_step=True, rank_zero_only=True)
        pl_module.log("tokens/s", tokens, prog_bar=True, on_step=True, rank_zero_only=True)


class SCGPTPretrainExport(SavePretrainedMixin):
    """The minimal model face :meth:`SavePretrainedMixin.save_pretrained` needs."""

    _module_cls = SCGPTModule

    def __init__(self, module: SCGPTModule, vocab: GeneVocab, module_kwargs: dict):
        self.module, self.vocab_ = module, vocab.get_stoi()
        self.init_params_ = {"non_kwargs": {}, "kwargs": {"module_kwargs": module_kwargs}}


def export_pretrained(module, vocab: GeneVocab, module_kwargs: dict, dest: Path) -> None:
    """``save_pretrained`` layout in ``dest``, swapped in whole (temporary folder + rename)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    old = dest.with_name(f".{dest.name}.old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    SCGPTPretrainExport(module, vocab, module_kwargs).save_pretrained(tmp)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


class _Checkpoints(Callback):
    """Every ``every`` optimiser steps and at the last: a Lightning checkpoint (all ranks
    call, rank 0 writes) and the ``save_pretrained`` export."""

    def __init__(self, out_dir: Path, every: int, keep: int, vocab: GeneVocab, arch: dict):
        self.out_dir, self.every, self.keep = out_dir, every, keep
        self.vocab, self.arch = vocab, arch
        self._last = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last or (step % self.every and step < trainer.max_steps):
            return
        self._last = step
        folder = self.out_dir / _CKPT_DIR
        trainer.save_checkpoint(folder / f"step-{step}.ckpt")
        if trainer.is_global_zero:
            export_pretrained(pl_module.module, self.vocab, self.arch, self.out_dir / _EXPORT)
            done = sorted(folder.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
            for p in done[: -self.keep] if self.keep > 0 else []:
                p.unlink(missing_ok=True)
        trainer.strategy.barrier("scgpt-export")


# ---------------------------------------------------------------------- entry point
def _strategy(training: dict):
    from lightning.pytorch.strategies import DDPStrategy

    if int(training["devices"]) * int(training["num_nodes"]) <= 1 and training["devices"] != -1:
        return "auto"
    gpu = training["accelerator"] in ("gpu", "cuda") or (
        training["accelerator"] == "auto" and torch.cuda.is_available()
    )
    return DDPStrategy(
        find_unused_parameters=True,
        broadcast_buffers=False,  # the token-id buffer differs by rank: it is per minibatch
        process_group_backend="nccl" if gpu else "gloo",
    )


def pretrain(
    corpus: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    vocab: GeneVocab | Mapping[str, int] | str | os.PathLike | None = None,
    config: Literal["small", "human"] | str | os.PathLike | Mapping | None = "small",
    resume: bool = False,
    strict: bool = False,
    layer: str | None = None,
    gene_col: str | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    **options,
) -> Path:
    """Pretrain an scGPT model on a corpus of on-disk AnnData files (Lightning, DDP-ready).

    Streams the corpus block by block (never loading a file whole), maps every file's genes to
    one vocabulary, trains :class:`~scgpt_scvi.module.SCGPTModule` with the masked-expression
    (and, with ``do_mvc``, MVC) objectives through :class:`~scgpt_scvi.model.SCGPTTrainingPlan`
    and Lightning's ``Trainer``, checkpoints every ``checkpoint_every`` steps, and exports a
    ``save_pretrained`` folder that :meth:`SCGPT.from_pretrained` loads. See
    :mod:`scgpt_scvi.model._pretrain` for the output layout and the multi-node commands.

    Parameters
    ----------
    corpus
        ``.h5ad`` files (read backed), ``.zarr`` stores, ``.h5mu`` files (``rna`` modality) or
        folders of them.
    out_dir
        Output folder (checkpoints, logs, export).
    vocab
        Vocabulary (``vocab.json`` path, mapping or :class:`~scgpt_scvi.data.GeneVocab`), e.g.
        the whole-human one to continue from it. Default: the union of the corpus' genes.
    config
        ``"small"`` or ``"human"`` (:data:`PRETRAIN_CONFIGS`), an ``args.json`` (file or
        checkpoint folder) or a mapping of module options (over ``"small"``).
    resume
        Continue the run in ``out_dir`` from its latest checkpoint, with the data order an
        uninterrupted run would have had. The configuration must match (an error names the
        keys that differ; only :data:`RESUMABLE_CHANGES` may change, e.g. ``max_steps``).
    strict
        Raise on an unreadable file or a file without gene overlap (default: skip it with a
        warning; skipped files are listed in ``out_dir/corpus.json``).
    layer
        Layer to read instead of ``X``.
    gene_col
        ``var`` column of gene symbols (default: ``var_names``, or a symbol column when they
        are Ensembl IDs).
    callbacks
        Extra Lightning callbacks.
    progress
        Show the progress bar (cells/s, tokens/s, loss).
    **options
        Module options overriding ``config`` (``d_model``, ``nlayers``, ``max_seq_len``,
        ``do_mvc``, ``attention_backend``, ...) and training options (:data:`TRAINING_DEFAULTS`):
        ``max_steps``, ``batch_size`` (cells per device), ``accumulate``, ``lr``,
        ``weight_decay``, ``warmup_ratio``, ``lr_schedule`` (``"cosine"`` or ``"constant"``),
        ``gradient_clip_val``, ``precision`` (``"32"``, ``"bf16-mixed"``, ``"16-mixed"``),
        ``devices``, ``num_nodes``, ``accelerator``, ``seed``, ``block_size``,
        ``num_workers``, ``checkpoint_every``, ``keep_checkpoints``, ``log_every``,
        ``mask_ratio``, ``mvc_weight``.

    Returns
    -------
    The export folder ``out_dir/pretrained`` (``args.json``, ``vocab.json``,
    ``best_model.pt``).

    Examples
    --------
    >>> export = SCGPT.pretrain(["atlas/", "extra.h5ad"], "run", config="small", max_steps=2000)
    >>> model = SCGPT.from_pretrained(export, adata)
    >>> SCGPT.pretrain(["atlas/", "extra.h5ad"], "run", max_steps=4000, resume=True)
    """
    out_dir = Path(out_dir)
    training, arch_overrides = _split_options(options)
    if training["precision"] not in ("32", "bf16-mixed", "16-mixed", 32):
        raise ValueError(
            f"precision {training['precision']!r} is not one of '32', 'bf16-mixed', '16-mixed'."
        )
    arch = _architecture(config, arch_overrides)
    arch.setdefault("mask_ratio", training["mask_ratio"])
    if arch.get("include_zero_genes"):
        raise ValueError("include_zero_genes is not supported for pretraining on a corpus.")
    if arch.get("use_batch_labels") or arch.get("do_dab") or arch.get("domain_spec_batchnorm"):
        raise ValueError("Batch-label options need batch labels, which corpus pretraining lacks.")
    config_path, vocab_path = out_dir / _CONFIG, out_dir / _VOCAB
    ckpt = None
    if resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None or not config_path.is_file():
            raise FileNotFoundError(
                f"resume: no checkpoint in {out_dir / _CKPT_DIR} to resume from "
                "(run without resume to start)."
            )
        saved_vocab = GeneVocab.from_file(vocab_path)
        if vocab is not None:
            new = as_vocab(vocab, ())
            if new.get_stoi() != saved_vocab.get_stoi():
                a, b = set(saved_vocab), set(new)
                moved = sum(saved_vocab[t] != new[t] for t in a & b)
                raise ValueError(
                    f"The vocabulary differs from the one of the run being resumed ({vocab_path}):"
                    f" {len(b - a)} tokens added, {len(a - b)} removed, {moved} with another id."
                    " Resume without vocab, or start a new run."
                )
        vocab = saved_vocab
    elif latest_checkpoint(out_dir) is not None:
        raise FileExistsError(
            f"{out_dir} already holds checkpoints; pass resume=True to continue that run or "
            "choose another out_dir."
        )
    data = Corpus(corpus, vocab=vocab, layer=layer, gene_col=gene_col, strict=strict)
    record = {
        "architecture": arch,
        "training": {k: v for k, v in training.items()},
        "corpus": {"files": data.fingerprint(), "layer": layer, "gene_col": gene_col},
        "n_tokens": len(data.vocab),
    }
    record = json.loads(json.dumps(record))
    if resume:
        with open(config_path) as f:
            old = json.load(f)
        diff = _differences(old, record)
        if diff:
            raise ValueError(
                "resume: the configuration differs from the run being resumed in "
                + ", ".join(diff)
                + f" (see {config_path}). Only {list(RESUMABLE_CHANGES)} may change."
            )
    out_dir.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(training["seed"], workers=True, verbose=False)
    module = SCGPTModule(
        ntoken=data.vocab.ntoken,
        pad_id=data.vocab.pad_id,
        cls_id=data.vocab.cls_id,
        gene_token_ids=torch.zeros(0, dtype=torch.long),
        seed=training["seed"],
        **arch,
    )
    plan = SCGPTTrainingPlan(
        module,
        optimizer="AdamW",
        on_step=True,
        on_epoch=False,
        **{k: training[k] for k in _PLAN_KEYS if training[k] is not None},
    )
    datamodule = CorpusDataModule(
        data,
        batch_size=training["batch_size"],
        block_size=training["block_size"],
        seed=training["seed"],
        num_workers=training["num_workers"],
        max_seq_len=arch.get("max_seq_len"),
    )
    module_kwargs = {**arch, "seed": training["seed"]}
    trainer = pl.Trainer(
        accelerator=training["accelerator"],
        devices=training["devices"],
        num_nodes=training["num_nodes"],
        strategy=_strategy(training),
        precision=training["precision"],
        max_steps=training["max_steps"],
        max_epochs=-1,
        accumulate_grad_batches=training["accumulate"],
        gradient_clip_val=training["gradient_clip_val"],
        logger=CSVLogger(out_dir, name="logs"),
        log_every_n_steps=training["log_every"],
        callbacks=[
            _CorpusBatches(training["seed"]),
            Throughput(),
            _Checkpoints(
                out_dir,
                training["checkpoint_every"],
                training["keep_checkpoints"],
                data.vocab,
                module_kwargs,
            ),
            *callbacks,
        ],
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        plugins=[AtomicCheckpointIO()],
    )
    if trainer.is_global_zero:
        data.vocab.save_json(vocab_path)
        with open(config_path, "w") as f:
            json.dump(record, f, indent=2)
        with open(out_dir / "corpus.json", "w") as f:
            json.dump(data.report(), f, indent=2)
    trainer.fit(plan, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    return out_dir / _EXPORT


def pretrain_classmethod(cls, corpus, out_dir, vocab=None, **kwargs) -> Path:
    """Bound as ``SCGPT.pretrain``."""
    return pretrain(corpus, out_dir, vocab, **kwargs)


pretrain_classmethod.__doc__ = pretrain.__doc__
