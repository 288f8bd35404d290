"""Streaming corpus of on-disk AnnData files for pretraining.

A *corpus* is a list of ``.h5ad`` files, ``.zarr`` stores, ``.h5mu`` files (one modality) or
folders of them. Nothing is loaded whole: a first pass reads each file's ``var`` (gene names)
and shape only; training then reads rows in blocks of consecutive cells from disk, straight
from the CSR arrays (``indptr`` / ``indices`` / ``data``), and builds each minibatch as a small
dense matrix over the genes the minibatch expresses (never wider).

Order. In the manner of `scdataset <https://github.com/Kidara/scDataset>`_'s
``BlockShuffling``: the cells of all files are laid end to end, cut into blocks of
``block_size`` consecutive cells, the blocks are shuffled (seeded by ``seed`` and the epoch;
an incomplete last block goes to a random block boundary), and minibatches are consecutive runs
of that order, so each minibatch reads ``batch_size / block_size`` contiguous runs from disk.
Only the block permutation is held (``n_cells / block_size`` integers), so memory does not grow
with the corpus beyond that.

Sharding. Step ``s`` of an epoch is a *global* batch of ``world_size * batch_size`` consecutive
cells of the order, split into ``world_size`` contiguous parts, one per rank: each rank reads
different blocks, every rank gets the same number of steps, and every cell is used exactly once
per epoch (when the last global batch would leave a rank empty, its cells join the previous
step, whose parts are then at most one cell larger). The order depends on the seed, the epoch,
the batch size and the world size only, not on the number of DataLoader workers.

Resume. :class:`CorpusDataLoader` implements Lightning's stateful-loader protocol
(``state_dict`` / ``load_state_dict``): the state is ``(epoch, steps done)``, and a restored
loader continues mid-epoch with the exact order an uninterrupted run would have had.

Why not ``scdataset.scDataset`` itself (it is a fine loader, and the block order here follows
its ``BlockShuffling`` strategy): (1) it deals fetches to ranks round-robin, so when the number
of fetches is not a multiple of the world size ranks get different numbers of minibatches and
DDP waits forever at the last collective; (2) it cannot start mid-epoch (no position state, and
the strategies sort any index list they are given, so a precomputed order cannot be fed in);
(3) its epoch counter advances inside the dataset object, which under DataLoader workers is the
workers' copy; (4) ``BlockShuffling.get_indices`` materialises an ``n_cells`` int64 array each
epoch (8 bytes per cell), where the block permutation here is ``block_size`` times smaller.
"""

from __future__ import annotations

import logging
import os
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ._vocab import GeneVocab

logger = logging.getLogger(__name__)

__all__ = [
    "SYMBOL_COLUMNS",
    "Corpus",
    "CorpusDataLoader",
    "CorpusDataset",
    "CorpusFile",
    "CorpusSampler",
    "BlockPlan",
    "corpus_files",
    "iter_plan_cells",
]

#: ``var`` columns tried (in order) for gene symbols when ``var_names`` look like Ensembl IDs.
SYMBOL_COLUMNS = ("gene_symbol", "gene_symbols", "feature_name", "gene_name", "symbol")
_SUFFIXES = (".h5ad", ".zarr", ".h5mu")


# ---------------------------------------------------------------------- files
def corpus_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Corpus members of ``paths``: files/stores as given, folders searched recursively.

    Raises
    ------
    FileNotFoundError
        When a path does not exist (naming it).
    ValueError
        When no ``.h5ad`` / ``.zarr`` / ``.h5mu`` member is found (an empty corpus).
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"Corpus path {p} does not exist.")
        if p.suffix in _SUFFIXES:
            out.append(p)
        elif p.is_dir():
            found = sorted(
                q
                for q in p.rglob("*")
                if q.suffix in _SUFFIXES and not any(s.suffix == ".zarr" for s in q.parents)
            )
            out.extend(found)
        else:
            raise ValueError(f"Corpus path {p} is not a .h5ad/.zarr/.h5mu file or a folder.")
    if not out:
        raise ValueError(f"The corpus is empty: no .h5ad, .zarr or .h5mu file in {list(paths)}.")
    return out


def _open(path: Path):
    if path.suffix == ".zarr":
        import zarr

        return zarr.open_group(str(path), mode="r")
    import h5py

    return h5py.File(path, "r")


def _root(store, path: Path, modality: str):
    if path.suffix != ".h5mu":
        return store
    if "mod" not in store or modality not in store["mod"]:
        raise KeyError(f"{path} has no modality {modality!r}.")
    return store["mod"][modality]


def _matrix_elem(root, layer: str | None):
    if layer is None:
        return root["X"]
    if "layers" not in root or layer not in root["layers"]:
        raise KeyError(f"no layer {layer!r}")
    return root["layers"][layer]


def _valid_names(names: pd.Index) -> np.ndarray:
    s = pd.Series(names, dtype=object)
    text = s.astype(str).str.strip()
    return (s.notna() & (text != "") & ~text.isin(["nan", "None"])).to_numpy()


def _choose_gene_names(var: pd.DataFrame, gene_col: str | None) -> tuple[pd.Index, str | None]:
    if gene_col is not None and gene_col in var:
        return pd.Index(var[gene_col].astype(str)), gene_col
    names = pd.Index(var.index.astype(str))
    if gene_col is None and len(names) and names.str.startswith("ENS").mean() > 0.5:
        for col in SYMBOL_COLUMNS:
            if col in var:
                return pd.Index(var[col].astype(str)), col
    return names, None


@dataclass
class CorpusFile:
    """One member of a corpus: where its rows are and how its genes map to the vocabulary.

    Attributes
    ----------
    path
        File or store.
    n_obs, n_vars
        Shape of the expression matrix.
    gene_col
        ``var`` column the gene names came from (``None``: ``var_names``).
    genes
        Gene names (dropped once mapped, to keep workers small).
    token_ids
        ``(n_vars,)`` vocabulary id of each column (-1: not in the vocabulary).
    """

    path: Path
    n_obs: int
    n_vars: int
    gene_col: str | None
    genes: pd.Index | None = None
    token_ids: np.ndarray | None = None
    key: int = 0
    shared_tokens: bool = False

    def n_matched(self) -> int:
        return int((self.token_ids >= 0).sum()) if self.token_ids is not None else 0


def _scan(path: Path, layer: str | None, modality: str, gene_col: str | None) -> CorpusFile:
    from anndata.io import read_elem

    store = _open(path)
    try:
        root = _root(store, path, modality)
        var = read_elem(root["var"])
        elem = _matrix_elem(root, layer)
        enc = elem.attrs.get("encoding-type", "array")
        if enc == "csc_matrix":
            raise ValueError("X is stored as CSC; rows cannot be streamed (rewrite it as CSR)")
        if enc not in ("csr_matrix", "array"):
            raise ValueError(f"unsupported matrix encoding {enc!r}")
        shape = tuple(int(s) for s in (elem.attrs["shape"] if enc != "array" else elem.shape))
    finally:
        if hasattr(store, "close"):
            store.close()
    if shape[1] != len(var):
        raise ValueError(f"X has {shape[1]} columns but var has {len(var)} rows")
    genes, col = _choose_gene_names(var, gene_col)
    key = zlib.crc32(path.name.encode())
    return CorpusFile(path, shape[0], shape[1], col, genes=genes, key=key)


class Corpus:
    """The files of a corpus, their genes mapped to one vocabulary (``var`` read only).

    Parameters
    ----------
    paths
        ``.h5ad`` files (read backed), ``.zarr`` stores, ``.h5mu`` files or folders of them.
    vocab
        Vocabulary (:class:`GeneVocab`, token -> id mapping or ``vocab.json`` path). Default:
        the sorted union of the files' genes plus scGPT's special tokens.
    layer
        Layer to read instead of ``X`` (files without it are skipped).
    gene_col
        ``var`` column of gene symbols. Default: ``var_names``, unless most of them look like
        Ensembl IDs and one of :data:`SYMBOL_COLUMNS` exists (used instead, and reported).
    modality
        Modality read from ``.h5mu`` files.
    strict
        Raise on the first unreadable file or file without gene overlap instead of skipping it
        with a warning.

    Attributes
    ----------
    files
        The usable :class:`CorpusFile` s, in corpus order.
    skipped
        ``[{"path", "reason"}]`` of the files left out.
    vocab
        The :class:`GeneVocab`.

    Examples
    --------
    >>> corpus = Corpus(["atlas/", "extra.h5ad"])
    >>> corpus.n_cells, len(corpus.vocab), corpus.skipped
    """

    def __init__(
        self,
        paths: str | os.PathLike | Iterable[str | os.PathLike],
        vocab: GeneVocab | Mapping[str, int] | str | os.PathLike | None = None,
        layer: str | None = None,
        gene_col: str | None = None,
        modality: str = "rna",
        strict: bool = False,
    ):
        self.layer, self.modality, self.strict = layer, modality, strict
        self.skipped: list[dict[str, str]] = []
        scanned = []
        for path in corpus_files(paths):
            try:
                scanned.append(_scan(path, layer, modality, gene_col))
            except Exception as err:  # noqa: BLE001 - any unreadable file is reported
                self._skip(path, f"unreadable: {type(err).__name__}: {err}")
        if vocab is None:
            genes = set()
            for f in scanned:
                genes.update(f.genes[_valid_names(f.genes)])
            vocab = GeneVocab.from_genes(sorted(genes))
        elif not isinstance(vocab, GeneVocab):
            vocab = GeneVocab(vocab) if isinstance(vocab, Mapping) else GeneVocab.from_file(vocab)
        self.vocab = vocab
        self.files: list[CorpusFile] = []
        for f in scanned:
            ids = np.asarray(vocab.lookup(f.genes), dtype=np.int64)
            ids[~_valid_names(f.genes)] = -1
            f.token_ids, f.genes = ids, None
            f.shared_tokens = bool(pd.Index(ids[ids >= 0]).has_duplicates)
            if f.n_obs == 0:
                self._skip(f.path, "no cells")
            elif not (ids >= 0).any():
                self._skip(f.path, f"no gene overlap with the vocabulary ({f.n_vars} genes)")
            else:
                self.files.append(f)
        if not self.files:
            raise ValueError(
                "No usable file in the corpus; skipped: "
                + "; ".join(f"{s['path']} ({s['reason']})" for s in self.skipped)
            )
        self.offsets = np.cumsum([0] + [f.n_obs for f in self.files])

    def _skip(self, path: Path, reason: str) -> None:
        if self.strict:
            raise ValueError(f"Corpus file {path}: {reason}.")
        warnings.warn(f"Skipping corpus file {path}: {reason}.", UserWarning, stacklevel=3)
        self.skipped.append({"path": str(path), "reason": reason})

    @property
    def n_cells(self) -> int:
        """Cells in the usable files."""
        return int(self.offsets[-1])

    def report(self) -> dict[str, Any]:
        """Per-file summary (cells, genes, genes in the vocabulary, gene column) and skips."""
        return {
            "n_cells": self.n_cells,
            "n_tokens": len(self.vocab),
            "files": [
                {
                    "path": str(f.path),
                    "n_obs": f.n_obs,
                    "n_vars": f.n_vars,
                    "n_genes_matched": f.n_matched(),
                    "gene_col": f.gene_col,
                }
                for f in self.files
            ],
            "skipped": list(self.skipped),
        }

    def fingerprint(self) -> list[list]:
        """``[[path, n_obs, n_vars], ...]``: what a resumed run checks it reads again."""
        return [[str(f.path.resolve()), f.n_obs, f.n_vars] for f in self.files]


# ---------------------------------------------------------------------- order and sharding
@dataclass(frozen=True)
class BlockPlan:
    """Block-shuffled, rank-sharded order of ``n_cells`` cells (see the module docstring).

    Parameters
    ----------
    n_cells
        Cells in the corpus.
    batch_size
        Cells per rank and step.
    world_size
        Number of ranks (processes).
    block_size
        Consecutive cells that stay together.
    seed
        Seed of the block permutation (combined with the epoch).
    shuffle
        Shuffle blocks (``False``: corpus order).
    """

    n_cells: int
    batch_size: int
    world_size: int = 1
    block_size: int = 16
    seed: int = 0
    shuffle: bool = True
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.batch_size < 1 or self.block_size < 1 or self.world_size < 1:
            raise ValueError("batch_size, block_size and world_size must be >= 1.")
        if self.n_cells < self.world_size:
            raise ValueError(
                f"The corpus has {self.n_cells} cells, fewer than the {self.world_size} ranks."
            )

    @property
    def n_steps(self) -> int:
        """Steps per epoch, the same on every rank."""
        k, r = divmod(self.n_cells, self.world_size * self.batch_size)
        return max(k + (r >= self.world_size), 1)

    def _blocks(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Start and end (exclusive, in the epoch order) of each block of the epoch.

        Complete blocks are permuted; the incomplete last block, if any, goes to a random
        block boundary (as scdataset's ``BlockShuffling`` does).
        """
        if epoch not in self._cache:
            n_full, rest = divmod(self.n_cells, self.block_size)
            starts = np.arange(n_full, dtype=np.int64) * self.block_size
            at = n_full
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch])
                starts = rng.permutation(starts)
                at = int(rng.integers(0, n_full + 1))
            lengths = np.full(n_full, self.block_size, dtype=np.int64)
            if rest:
                starts = np.insert(starts, at, n_full * self.block_size)
                lengths = np.insert(lengths, at, rest)
            self._cache.clear()
            self._cache[epoch] = (starts, np.cumsum(lengths))
        return self._cache[epoch]

    def positions(self, step: int, rank: int) -> tuple[int, int]:
        """``[start, stop)`` of the epoch order that rank ``rank`` reads at step ``step``."""
        if not 0 <= step < self.n_steps or not 0 <= rank < self.world_size:
            raise IndexError(f"step {step} / rank {rank} out of range.")
        g = self.world_size * self.batch_size
        lo = step * g
        hi = self.n_cells if step == self.n_steps - 1 else lo + g
        n, w = hi - lo, self.world_size
        bounds = lo + np.concatenate([[0], np.cumsum([n // w + (i < n % w) for i in range(w)])])
        return int(bounds[rank]), int(bounds[rank + 1])

    def cells(self, epoch: int, step: int, rank: int) -> np.ndarray:
        """Sorted corpus indices of the cells rank ``rank`` reads at ``(epoch, step)``."""
        start, stop = self.positions(step, rank)
        starts, ends = self._blocks(epoch)
        first = int(np.searchsorted(ends, start, side="right"))
        last = int(np.searchsorted(ends, stop - 1, side="right"))
        out = []
        for b in range(first, last + 1):
            b_lo = int(ends[b - 1]) if b else 0
            a, z = max(start, b_lo) - b_lo, min(stop, int(ends[b])) - b_lo
            out.append(np.arange(starts[b] + a, starts[b] + z))
        return np.sort(np.concatenate(out))


class CorpusSampler(Sampler):
    """Yields ``(epoch, step, rank)`` for each step of the epoch on this rank.

    ``set_epoch`` (called by Lightning) picks the epoch; :meth:`resume` makes the next epoch
    ``epoch`` start at step ``step``.
    """

    def __init__(self, plan: BlockPlan, rank: int = 0):
        self.plan, self.rank = plan, rank
        self.epoch, self._start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (keeps a pending resume position for that epoch)."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = int(epoch)

    def resume(self, epoch: int, step: int) -> None:
        """Continue epoch ``epoch`` from step ``step``."""
        if step >= self.plan.n_steps:
            epoch, step = epoch + 1, 0
        self.epoch, self._start = int(epoch), int(step)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        start, self._start = self._start, 0
        epoch = self.epoch
        for step in range(start, self.plan.n_steps):
            yield epoch, step, self.rank

    def __len__(self) -> int:
        return self.plan.n_steps


# ---------------------------------------------------------------------- reading
class _Matrix:
    """Row reader of one on-disk CSR group or dense array (datasets looked up once)."""

    def __init__(self, elem):
        self.sparse = hasattr(elem, "keys")
        if self.sparse:
            self.indptr, self.indices, self.data = elem["indptr"], elem["indices"], elem["data"]
        else:
            self.dense = elem

    def rows(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``[lo, hi)`` as ``(row of each non-zero (from 0), column, value)``."""
        if self.sparse:
            ptr = np.asarray(self.indptr[lo : hi + 1], dtype=np.int64)
            a, z = int(ptr[0]), int(ptr[-1])
            cols = np.asarray(self.indices[a:z], dtype=np.int64)
            vals = np.asarray(self.data[a:z], dtype=np.float32)
            return np.repeat(np.arange(hi - lo), np.diff(ptr)), cols, vals
        block = np.asarray(self.dense[lo:hi], dtype=np.float32)
        r, c = np.nonzero(block)
        return r, c, block[r, c]


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs ``[lo, hi)`` of sorted ``rows``."""
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(rows, cuts)]


class CorpusDataset(Dataset):
    """Map-style dataset whose items are whole minibatches: ``dataset[(epoch, step, rank)]``.

    Each item is a dict with ``X`` ``(B, U)`` float32 (dense over the ``U`` genes the
    minibatch expresses), ``token_ids`` ``(U,)`` vocabulary ids of those columns,
    ``cell_key`` ``(B,)`` stable per-cell keys (file and row) for the keyed tokenizer, and
    ``n_tokens`` (tokens the minibatch will have at ``max_seq_len``, for throughput). Duplicate
    gene names within a file share a token, and their values are summed.
    """

    def __init__(self, corpus: Corpus, plan: BlockPlan, max_seq_len: int | None = None):
        self.files = corpus.files
        self.offsets = corpus.offsets
        self.layer, self.modality = corpus.layer, corpus.modality
        self.plan, self.max_seq_len = plan, max_seq_len
        self.n_tokens = corpus.vocab.ntoken
        self._handles: dict[int, Any] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}  # each worker opens its own file handles
        return state

    def _elem(self, i: int) -> _Matrix:
        if i not in self._handles:
            f = self.files[i]
            store = _open(f.path)
            root = _root(store, f.path, self.modality)
            self._handles[i] = (store, _Matrix(_matrix_elem(root, self.layer)))
        return self._handles[i][1]

    def close(self) -> None:
        """Close the open files."""
        for store, _ in self._handles.values():
            if hasattr(store, "close"):
                store.close()
        self._handles = {}

    def __len__(self) -> int:
        return self.plan.n_steps

    def read(self, cells: np.ndarray) -> dict[str, torch.Tensor]:
        """The minibatch of sorted corpus indices ``cells``."""
        file_idx = np.searchsorted(self.offsets, cells, side="right") - 1
        rows_out, toks_out, vals_out, keys = [], [], [], []
        row0, dups = 0, False
        for i in np.unique(file_idx):
            local = cells[file_idx == i] - self.offsets[i]
            f, matrix = self.files[i], self._elem(int(i))
            for lo, hi in _runs(local):
                r, c, v = matrix.rows(lo, hi)
                tok = f.token_ids[c]
                keep = (tok >= 0) & (v != 0)
                rows_out.append(r[keep] + row0)
                toks_out.append(tok[keep])
                vals_out.append(v[keep])
                row0 += hi - lo
            dups |= f.shared_tokens
            keys.append((np.int64(f.key) * 0x9E3779B1 + local.astype(np.int64)) & 0xFFFFFFFF)
        rows, toks, vals = (np.concatenate(a) for a in (rows_out, toks_out, vals_out))
        present = np.zeros(self.n_tokens, dtype=bool)
        present[toks] = True
        token_ids = np.flatnonzero(present)
        column = np.cumsum(present) - 1
        X = np.zeros((len(cells), len(token_ids)), dtype=np.float32)
        if dups:  # two columns of a file with one token: sum them
            np.add.at(X, (rows, column[toks]), vals)
        else:
            X[rows, column[toks]] = vals
        n_expr = (X > 0).sum(1)
        cap = (self.max_seq_len - 1) if self.max_seq_len else n_expr.max(initial=0)
        return {
            "X": torch.from_numpy(X),
            "token_ids": torch.from_numpy(token_ids),
            "cell_key": torch.from_numpy(np.concatenate(keys)),
            "n_tokens": torch.tensor(int(np.minimum(n_expr, cap).sum() + len(cells))),
        }

    def __getitem__(self, item: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        epoch, step, rank = item
        return self.read(self.plan.cells(epoch, step, rank))


class CorpusDataLoader(DataLoader):
    """DataLoader over a :class:`CorpusDataset` with a checkpointable position.

    Implements Lightning's stateful-loader protocol: ``state_dict()`` is ``{"epoch", "step"}``
    (steps done in the epoch, read from ``position_fn`` - by default the trainer's progress -
    because the loader itself runs ahead of training by its prefetch), and
    ``load_state_dict`` makes the next iteration continue from there.

    Parameters
    ----------
    dataset
        The corpus dataset.
    rank
        This process's rank (default 0).
    num_workers
        Worker processes reading blocks (each opens its own file handles).
    position_fn
        Callable returning ``(epoch, steps done)``; set by the pretraining data module.
    **kwargs
        Other ``DataLoader`` options (``pin_memory``, ``prefetch_factor``, ...).

    Examples
    --------
    >>> corpus = Corpus("atlas/")
    >>> plan = BlockPlan(corpus.n_cells, batch_size=64, seed=0)
    >>> loader = CorpusDataLoader(CorpusDataset(corpus, plan), num_workers=2)
    >>> batch = next(iter(loader))  # {"X", "token_ids", "cell_key", "n_tokens"}
    """

    def __init__(
        self,
        dataset: CorpusDataset,
        rank: int = 0,
        num_workers: int = 0,
        position_fn=None,
        **kwargs,
    ):
        sampler = CorpusSampler(dataset.plan, rank)
        kwargs.setdefault("persistent_workers", False)
        if num_workers == 0:
            kwargs.pop("persistent_workers")
        super().__init__(
            dataset,
            batch_size=None,
            sampler=sampler,
            num_workers=num_workers,
            **kwargs,
        )
        self.position_fn = position_fn

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "step"}``: where the next step of training starts."""
        if self.position_fn is None:
            raise RuntimeError("CorpusDataLoader.state_dict needs a position_fn.")
        epoch, step = self.position_fn()
        return {"epoch": int(epoch), "step": int(step), "n_steps": self.sampler.plan.n_steps}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a :meth:`state_dict`."""
        if int(state.get("n_steps", self.sampler.plan.n_steps)) != self.sampler.plan.n_steps:
            raise ValueError(
                f"The checkpoint's epochs have {state['n_steps']} steps but this corpus and "
                f"configuration give {self.sampler.plan.n_steps}; the data order would differ."
            )
        self.sampler.resume(int(state["epoch"]), int(state["step"]))


def iter_plan_cells(plan: BlockPlan, epoch: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(step, rank, cells)`` of every rank's minibatch of an epoch (for checks)."""
    for step in range(plan.n_steps):
        for rank in range(plan.world_size):
            yield step, rank, plan.cells(epoch, step, rank)
