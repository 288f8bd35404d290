"""Checkpoint files: atomic writes, the weights (``best_model.pt`` / ``.safetensors``),
``args.json`` and ``vocab.json``."""

from __future__ import annotations

import contextlib
import os
import pickle
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..data import GeneVocab
from ..data._vocab import read_json_object
from ._layout import StateDict, to_released_layout

__all__ = [
    "ARGS_FILE",
    "VOCAB_FILE",
    "WEIGHT_FILES",
    "atomic_path",
    "commit_files",
    "read_args",
    "read_state_dict",
    "read_vocab",
    "save_state_dict",
]

#: The architecture and vocabulary files of a checkpoint folder.
ARGS_FILE, VOCAB_FILE = "args.json", "vocab.json"
#: The weights file of a checkpoint folder, in the order they are looked for.
WEIGHT_FILES = ("best_model.pt", "best_model.safetensors")


# ---------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (in the same folder) that replaces ``path`` on success.

    Write to the yielded path; when the block ends without an exception it is renamed onto
    ``path`` (``os.replace``, atomic on one file system), otherwise it is removed. A failed
    write therefore leaves any earlier ``path`` untouched and no file outside its folder.

    Examples
    --------
    >>> with atomic_path("out/model.safetensors") as tmp:
    ...     save_file(tensors, str(tmp))
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def commit_files(
    dir_path: str | os.PathLike, writers: Mapping[str, Callable[[Path], None]]
) -> list[Path]:
    """Write several files of one folder, all or nothing.

    Each ``writers[name](tmp_path)`` writes its file to a temporary path inside ``dir_path``;
    only when every writer has succeeded are the files renamed into place. A failing writer
    leaves the folder as it was (the temporary files are removed).

    Returns
    -------
    The paths written.
    """
    dir_path = Path(dir_path)
    with contextlib.ExitStack() as stack:
        tmps = {name: stack.enter_context(atomic_path(dir_path / name)) for name in writers}
        for name, write in writers.items():
            write(tmps[name])
    return [dir_path / name for name in writers]


# ---------------------------------------------------------------------- files
def _weights_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"No {' or '.join(WEIGHT_FILES)} in {path}.")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:  # files written without the zip format cannot be mmapped
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read checkpoint weights: a folder's ``best_model.pt`` (else ``best_model.safetensors``)
    or that file itself.

    ``.pt`` files are read with ``torch.load(weights_only=True)`` (memory-mapped when possible):
    they must hold a plain ``{name: tensor}`` dict.

    Raises
    ------
    ValueError
        When the file holds pickled Python objects other than tensors (refused, never
        unpickled) or is not a flat name -> tensor mapping.
    """
    file = _weights_path(path)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(file), device="cpu"))
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{file} is not a readable safetensors file (truncated or corrupt? {err})."
            ) from None
    try:
        state = _torch_load(file)
    except (RuntimeError, EOFError, OSError) as err:  # a truncated or corrupt file
        raise ValueError(
            f"{file} is not a readable torch checkpoint (truncated or corrupt? "
            f"{(str(err) or type(err).__name__).splitlines()[0]})."
        ) from None
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{file} holds pickled Python objects, not only tensors, so it is refused: it is "
            "read with torch.load(weights_only=True) and never unpickled. Re-save the weights "
            "as a plain state dict (torch.save(model.state_dict(), path)) or as safetensors. "
            f"(torch: {str(err).splitlines()[0]})"
        ) from None
    bad = (
        [type(state).__name__]
        if not isinstance(state, Mapping)
        else [k for k, v in state.items() if not isinstance(v, torch.Tensor)][:5]
    )
    if bad:
        raise ValueError(
            f"{file} must hold a flat {{name: tensor}} state dict; found {bad} that are not "
            "tensors."
        )
    return dict(state)


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, suffix: str | None = None
) -> None:
    """Write ``state_dict`` in the released layout (``self_attn.Wqkv.*``, no local buffers).

    The format follows ``suffix`` (default: ``path``'s): ``.safetensors`` or torch's ``.pt``.
    """
    released = {k: v.detach().cpu().contiguous() for k, v in to_released_layout(state_dict).items()}
    if (suffix or Path(path).suffix) == ".safetensors":
        from safetensors.torch import save_file

        save_file(released, str(path))
    else:
        torch.save(released, path)


def read_args(model_dir: str | os.PathLike) -> dict:
    """The raw ``args.json`` of a checkpoint folder."""
    path = Path(model_dir) / ARGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {ARGS_FILE} in {model_dir}.")
    return read_json_object(path)


def read_vocab(model_dir: str | os.PathLike) -> GeneVocab:
    """The folder's ``vocab.json`` (missing special tokens are appended, with a warning)."""
    path = Path(model_dir) / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {VOCAB_FILE} in {model_dir}.")
    return GeneVocab.from_file(path)
