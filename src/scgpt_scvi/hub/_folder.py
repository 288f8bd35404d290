"""scvi-hub folders for scgpt-scvi models: ``model.save`` + metadata + a model card.

A hub folder is what :class:`scvi.hub.HubModel` reads: the saved model (through the model's
public :meth:`save`, whatever format that writes) with its AnnData / MuData,
``_scvi_required_metadata.json`` (:class:`scvi.hub.HubMetadata`) and ``README.md`` (the model
card). For :class:`~scgpt_scvi.SCGPT` the released scGPT layout is added under ``scgpt/``
(``args.json``, ``vocab.json``, ``best_model.pt``). ``scgpt_scvi_hub.json`` lists every file
written, so :func:`load_hub_model` can name a missing one instead of failing deep in a loader.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from ..module import config_fields

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData
    from scvi.hub import HubModel

__all__ = [
    "HUB_MANIFEST",
    "RELEASED_SUBDIR",
    "write_hub_folder",
    "load_hub_model",
    "pull_hub_model",
]

#: File listing what :func:`write_hub_folder` wrote (checked by :func:`load_hub_model`).
HUB_MANIFEST = "scgpt_scvi_hub.json"
#: Subfolder holding the released scGPT checkpoint layout.
RELEASED_SUBDIR = "scgpt"

_METADATA_FILE = "_scvi_required_metadata.json"
_CARD_FILE = "README.md"
_ORIGINAL = {
    "SCGPT": "TransformerModel",
    "SCGPTPerturbation": "TransformerGenerator",
    "SCGPTMultiomic": "MultiOmicTransformerModel",
}
_CITATION = """\
@article{cui2024scgpt,
  author  = {Cui, Haotian and Wang, Chloe and Maan, Hassaan and Pang, Kuan and Luo, Fengning
             and Duan, Nan and Wang, Bo},
  title   = {scGPT: toward building a foundation model for single-cell multi-omics using
             generative AI},
  journal = {Nature Methods}, volume = {21}, pages = {1470--1480}, year = {2024},
  doi     = {10.1038/s41592-024-02201-0}
}
@article{gayoso2022scvitools,
  author  = {Gayoso, Adam and Lopez, Romain and Xing, Galen and others},
  title   = {A Python library for probabilistic analysis of single-cell omics data},
  journal = {Nature Biotechnology}, volume = {40}, pages = {163--166}, year = {2022},
  doi     = {10.1038/s41587-021-01206-w}
}"""


def _architecture(model) -> dict:
    """The module's options a checkpoint's ``args.json`` holds (the fields of its
    :class:`~scgpt_scvi.module.SCGPTConfig` with an ``args`` key), and its parameter count."""
    config = model.module.config
    arch = {f.name: getattr(config, f.name) for f in config_fields().values() if f.metadata["args"]}
    arch["parameters"] = int(sum(p.numel() for p in model.module.parameters()))
    return arch


def _vocabulary(model) -> dict:
    vocab = getattr(model, "vocab_", None) or {}
    info = {"tokens": len(vocab)}
    specials = [t for t in ("<pad>", "<cls>", "<eoc>") if t in vocab]
    if specials:
        info["special tokens"] = ", ".join(specials)
    overlap = getattr(model, "gene_overlap_", None)
    if overlap:
        info["genes of the training data matched"] = (
            f"{overlap['n_matched']} of {overlap['n_genes']} "
            f"({100 * float(overlap['fraction_matched']):.1f}%)"
        )
    return info


def _training(model, training_data: str) -> dict:
    data = model.adata
    setup = model.adata_manager.registry.get("setup_args", {})
    info = {"description": training_data, "cells": int(data.n_obs)}
    if hasattr(data, "mod"):
        info["modalities"] = ", ".join(f"{k} ({v.n_vars} features)" for k, v in data.mod.items())
    else:
        info["genes"] = int(data.n_vars)
    info.update({f"setup: {k}": v for k, v in setup.items() if v is not None})
    history = getattr(model, "history_", None) or {}
    losses = history.get("train_loss", history.get("train_loss_epoch"))
    if losses is not None and len(losses):
        info["epochs trained"] = int(len(losses))
        info["final train loss"] = f"{float(losses.iloc[-1, 0]):.4g}"
    return info


def _table(rows: dict) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in rows.items()]
    return "\n".join(lines)


def _model_card(model, training_data, description, license_info, tissues, modalities, files):
    import scvi
    from huggingface_hub import ModelCard, ModelCardData

    from .. import __version__

    name = type(model).__name__
    tags = [
        "biology",
        "genomics",
        "single-cell",
        "scgpt",
        f"model_cls_name:{name}",
        f"scvi_version:{scvi.__version__}",
        f"anndata_version:{version('anndata')}",
    ]
    tags += [f"modality:{m}" for m in modalities] + [f"tissue:{t}" for t in tissues]
    data = ModelCardData(license=license_info, library_name="scvi-tools", tags=tags)
    released = (
        f"\n`{RELEASED_SUBDIR}/` holds the same weights in the released scGPT layout "
        "(`args.json`, `vocab.json`, `best_model.pt`) for the original scGPT package.\n"
        if f"{RELEASED_SUBDIR}/args.json" in files
        else ""
    )
    body = f"""
# {name} (scgpt-scvi)

{description or "An scGPT-family model trained with scgpt-scvi."}

`{name}` is scGPT's `{_ORIGINAL.get(name, name)}` (Cui et al., Nature Methods 2024) as an
scvi-tools model, from [scgpt-scvi](https://github.com/scverse/scgpt-scvi) {__version__}.
{"" if model.is_trained_ else chr(10) + "**This model is not trained** (random weights)." + chr(10)}
## Architecture

{_table(_architecture(model))}

## Vocabulary

{_table(_vocabulary(model))}

## Training data

{_table(_training(model, training_data))}

## Usage

```python
from scgpt_scvi.hub import load_hub_model, pull_hub_model

hub_model = pull_hub_model("<user>/<repo>")        # or load_hub_model("local/folder")
model = hub_model.model                            # {name}, with its training data
emb = model.get_latent_representation()
```
{released}
## Files

{chr(10).join(f"- `{f}`" for f in files)}

## Citation

```bibtex
{_CITATION}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def write_hub_folder(
    model,
    path: str | os.PathLike,
    training_data: str,
    *,
    description: str | None = None,
    license_info: str = "mit",
    tissues: Sequence[str] = (),
    data_modalities: Sequence[str] | None = None,
    training_data_url: str | None = None,
    released_layout: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a folder that :class:`scvi.hub.HubModel` reads, with a model card.

    The model is saved with its own ``model.save(path, save_anndata=True)``; then come
    ``_scvi_required_metadata.json`` (:class:`scvi.hub.HubMetadata`), ``README.md`` (a model
    card filled from the model: architecture, parameter count, vocabulary and gene overlap,
    training data and epochs, usage, the scGPT and scvi-tools citations), for
    :class:`~scgpt_scvi.SCGPT` the released scGPT layout in ``scgpt/`` (``save_pretrained``), and
    :data:`HUB_MANIFEST` listing every file.

    Parameters
    ----------
    model
        A :class:`~scgpt_scvi.SCGPT`, :class:`~scgpt_scvi.SCGPTPerturbation` or
        :class:`~scgpt_scvi.SCGPTMultiomic`. An untrained model gives a warning (the card says
        so).
    path
        Folder to create. It must not exist unless ``overwrite``.
    training_data
        What the model was trained on, for the card (data set, tissue, preprocessing).
    description
        A paragraph for the card.
    license_info
        License identifier for the Hugging Face card (``"mit"``, ``"cc-by-4.0"``, ...).
    tissues, data_modalities
        Card tags; modalities default to ``["rna"]`` or the MuData's modality names.
    training_data_url
        URL of the training data when it is too large to upload (scvi-hub's field;
        scvi-tools checks it with a web request).
    released_layout
        Also write ``scgpt/`` (only models with ``save_pretrained``).
    overwrite
        Replace an existing folder's contents.

    Returns
    -------
    The folder.

    Examples
    --------
    >>> from scgpt_scvi.hub import load_hub_model, write_hub_folder
    >>> write_hub_folder(model, "pbmc_hub", training_data="pbmc68k_reduced, raw counts")
    >>> load_hub_model("pbmc_hub").model.get_latent_representation()
    """
    import scvi
    from scvi.hub import HubMetadata

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.")
    if not model.is_trained_:
        warnings.warn(
            f"{type(model).__name__} is not trained: the model card describes random weights.",
            UserWarning,
            stacklevel=2,
        )
    if path.exists():
        shutil.rmtree(path)
    model.save(path, overwrite=True, save_anndata=True)
    if released_layout and hasattr(model, "save_pretrained"):
        model.save_pretrained(path / RELEASED_SUBDIR)
    if data_modalities is None:
        data_modalities = list(model.adata.mod) if hasattr(model.adata, "mod") else ["rna"]
    metadata = HubMetadata(
        scvi_version=scvi.__version__,
        anndata_version=version("anndata"),
        model_cls_name=type(model).__name__,
        training_data_url=training_data_url,
        model_parent_module="scgpt_scvi",
    )
    metadata.save(str(path / _METADATA_FILE), overwrite=True)
    files = sorted([*_files(path), _CARD_FILE, HUB_MANIFEST])
    card = _model_card(
        model,
        training_data,
        description,
        license_info,
        list(tissues),
        list(data_modalities),
        files,
    )
    card.save(path / _CARD_FILE)
    manifest = {"model_cls_name": type(model).__name__, "files": files}
    (path / HUB_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return path


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"Hub folder {path} does not exist.")
    manifest = path / HUB_MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(
            f"Hub folder {path} has no {HUB_MANIFEST}; it was not written by "
            "scgpt_scvi.hub.write_hub_folder (or the file was removed)."
        )
    missing = [f for f in json.loads(manifest.read_text())["files"] if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"Hub folder {path} is missing {', '.join(missing)}.")


def load_hub_model(path: str | os.PathLike, adata: AnnData | MuData | None = None) -> HubModel:
    """Open a hub folder written by :func:`write_hub_folder` as a :class:`scvi.hub.HubModel`.

    Every file the folder's :data:`HUB_MANIFEST` lists is checked first; a missing one is named
    in a :class:`FileNotFoundError`.

    Parameters
    ----------
    path
        The hub folder (local, or a downloaded snapshot).
    adata
        Data to load the model with instead of the folder's AnnData / MuData (loaded now).

    Returns
    -------
    The :class:`scvi.hub.HubModel`; ``.model`` loads the model, ``.metadata`` and
    ``.model_card`` hold the rest.

    Examples
    --------
    >>> hub_model = load_hub_model("pbmc_hub")
    >>> model = hub_model.model
    """
    from scvi.hub import HubModel

    path = Path(path)
    _check_folder(path)
    hub_model = HubModel(str(path))
    if adata is not None:
        hub_model.load_model(adata=adata)
    return hub_model


def pull_hub_model(
    repo_name: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    **snapshot_kwargs,
) -> HubModel:
    """Download a hub repository (needs the network) and open it with :func:`load_hub_model`.

    Unlike ``HubModel.pull_from_huggingface_hub``, which fetches only ``model.pt`` and the
    AnnData, the whole repository is downloaded
    (:func:`huggingface_hub.snapshot_download`), so any save format and the ``scgpt/`` layout
    come along.

    Parameters
    ----------
    repo_name
        Hugging Face repository id, ``"user/name"``.
    revision
        Branch, tag or commit (default: the latest).
    cache_dir
        Where to keep the download (default: Hugging Face's cache).
    **snapshot_kwargs
        Passed to :func:`huggingface_hub.snapshot_download` (e.g. ``token``).

    Returns
    -------
    The :class:`scvi.hub.HubModel`.

    Examples
    --------
    >>> hub_model = pull_hub_model("your-name/scgpt-pbmc", revision="main")
    >>> model = hub_model.model
    """
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        repo_id=repo_name, revision=revision, cache_dir=cache_dir, **snapshot_kwargs
    )
    hub_model = load_hub_model(folder)
    hub_model._repo_name = repo_name
    return hub_model
