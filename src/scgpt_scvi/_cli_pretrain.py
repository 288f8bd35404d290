"""``scgpt-scvi pretrain``: pretrain scGPT on a corpus of on-disk AnnData files.

::

    scgpt-scvi pretrain CORPUS... --out DIR [--vocab vocab.json] [--config small|human|args.json]
                                  [--max-steps N] [--batch-size B] [--devices D] [--num-nodes N]
                                  [--precision 32|bf16-mixed|16-mixed] [--accumulate K]
                                  [--resume] [--strict]

CORPUS is ``.h5ad`` files (read backed), ``.zarr`` stores, ``.h5mu`` files or folders of them.
The command is :meth:`scgpt_scvi.model.SCGPT.pretrain`; DIR receives the checkpoints, the CSV
log and the ``save_pretrained`` export ``DIR/pretrained`` (load it with
``SCGPT.from_pretrained``). Errors are one line on stderr and exit code 2.

Several GPUs and nodes (Lightning reads the cluster from the environment)::

    # one machine, 4 GPUs: Lightning starts the processes
    scgpt-scvi pretrain atlas/ --out run --devices 4 --precision bf16-mixed

    # 2 nodes x 4 GPUs with torchrun, on each node (NODE_RANK = 0, 1)
    torchrun --nnodes 2 --nproc-per-node 4 --node-rank $NODE_RANK \\
        --master-addr $MASTER_HOST --master-port 29500 \\
        $(which scgpt-scvi) pretrain atlas/ --out run --devices 4 --num-nodes 2

    # SLURM (sbatch script): one task per GPU
    #SBATCH --nodes=2
    #SBATCH --ntasks-per-node=4
    #SBATCH --gres=gpu:4
    srun scgpt-scvi pretrain atlas/ --out run --devices 4 --num-nodes 2 --precision bf16-mixed

    # after a crash or pre-emption: continue from the last checkpoint, same data order
    srun scgpt-scvi pretrain atlas/ --out run --devices 4 --num-nodes 2 --resume
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser", "run_pretrain"]


def _devices(value: str):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        msg = f"--devices must be an integer or 'auto', not {value!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {n}")
    return n


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``pretrain`` subcommand to the ``scgpt-scvi`` subparsers ``sub``."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain scGPT on a corpus of .h5ad/.zarr files (Lightning, DDP, exact resume)",
        description=(
            "Pretrain scGPT on CORPUS (.h5ad files read backed, .zarr stores, .h5mu files, or "
            "folders of them), streamed block by block. Writes checkpoints, logs and a "
            "save_pretrained export (DIR/pretrained) that SCGPT.from_pretrained loads."
        ),
        epilog="Multi-node (torchrun, SLURM): see `python -m pydoc scgpt_scvi._cli_pretrain`.",
    )
    p.add_argument("corpus", nargs="+", type=Path, help="corpus files, stores or folders")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--vocab", type=Path, default=None, help="vocab.json (default: gene union)")
    p.add_argument(
        "--config",
        default="small",
        help="architecture: small, human (the whole-human model's) or an args.json path",
    )
    p.add_argument("--max-steps", type=_positive, default=1000, help="optimiser steps")
    p.add_argument("--batch-size", type=_positive, default=32, help="cells per device and step")
    p.add_argument("--devices", type=_devices, default=1, help="devices per node (or auto)")
    p.add_argument("--num-nodes", type=_positive, default=1, help="machines")
    p.add_argument("--accelerator", default="auto", help="auto, cpu, gpu (default auto)")
    p.add_argument(
        "--precision",
        choices=("32", "bf16-mixed", "16-mixed"),
        default="32",
        help="numeric precision (mixed precision needs a GPU for 16-mixed)",
    )
    p.add_argument("--accumulate", type=_positive, default=1, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and weights")
    p.add_argument("--num-workers", type=int, default=0, help="loader processes per device")
    p.add_argument("--checkpoint-every", type=_positive, default=500, help="steps per checkpoint")
    p.add_argument("--layer", default=None, help="layer to read instead of X")
    p.add_argument("--gene-col", default=None, help="var column of gene symbols")
    p.add_argument("--resume", action="store_true", help="continue from DIR's last checkpoint")
    p.add_argument(
        "--strict", action="store_true", help="fail on an unreadable file instead of skipping it"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_pretrain)
    return p


def run_pretrain(args: argparse.Namespace) -> int:
    """Run the ``pretrain`` subcommand; errors are raised as ``ValueError`` (exit code 2)."""
    from .model import SCGPT

    try:
        export = SCGPT.pretrain(
            args.corpus,
            args.out,
            vocab=args.vocab,
            config=args.config,
            resume=args.resume,
            strict=args.strict,
            layer=args.layer,
            gene_col=args.gene_col,
            progress=not args.quiet,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            devices=args.devices,
            num_nodes=args.num_nodes,
            accelerator=args.accelerator,
            precision=args.precision,
            accumulate=args.accumulate,
            lr=args.lr,
            seed=args.seed,
            num_workers=args.num_workers,
            checkpoint_every=args.checkpoint_every,
        )
    except (FileExistsError, TypeError) as err:
        raise ValueError(str(err)) from None
    except ValueError as err:  # keep multi-line messages to one line
        raise ValueError(" ".join(str(err).split())) from None
    print(f"wrote {export} (load with SCGPT.from_pretrained)", file=sys.stderr)
    return 0
