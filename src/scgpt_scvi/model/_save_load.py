"""Safe model folders: weights as safetensors, everything else as JSON, never a pickle.

scvi-tools' ``save`` writes one ``model.pt``: a full pickle read back with
``torch.load(weights_only=False)``, so loading a folder from someone else runs any code it
carries. The scGPT family saves instead:

* ``{prefix}model.safetensors``: the module's ``state_dict`` (tensors only);
* ``{prefix}model.json``: the registry, the ``__init__`` parameters, the ``var_names`` and
  the other trailing-underscore attributes (training history, indices, vocabulary, ...) in
  a tagged JSON that decodes only to plain values, numpy arrays and data frames; plus the
  SHA-256 of the weights file, checked on load;
* ``{prefix}adata.h5ad`` / ``mdata.h5mu`` with ``save_anndata=True``.

Every file is written to a temporary name inside the folder and renamed into place once all
were written (:func:`~scgpt_scvi.checkpoint.commit_files`), so a failed save leaves an
earlier one loadable. Folders in scvi-tools' pickle format load only with
``allow_pickle=True`` or after :func:`convert_pickle_folder`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from mudata import MuData

from ..checkpoint import commit_files

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_FILE",
    "PICKLE_FILE",
    "SafeSaveLoadMixin",
    "WEIGHTS_FILE",
    "convert_pickle_folder",
    "from_json",
    "read_model_folder",
    "to_json",
]

MANIFEST_FILE, WEIGHTS_FILE = "model.json", "model.safetensors"
#: scvi-tools' pickled model file (``SAVE_KEYS.MODEL_FNAME``).
PICKLE_FILE = "model.pt"
FORMAT, FORMAT_VERSION = "scgpt-scvi model", 1
_TAG = "__type__"


# ---------------------------------------------------------------------- tagged JSON
def to_json(obj: Any, where: str = "value") -> Any:
    """A JSON-serialisable form of ``obj`` that :func:`from_json` turns back into it.

    Handles ``None``, booleans, numbers, strings, lists, tuples, dicts (any hashable scalar
    keys), numpy scalars and arrays, pandas ``DataFrame``, ``Series`` and ``Index``.

    Raises
    ------
    TypeError
        For any other type, naming where in the structure it sits.
    """
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.generic):
        return to_json(obj.item(), where)
    if isinstance(obj, tuple):
        return {_TAG: "tuple", "items": [to_json(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj) and _TAG not in obj:
            return {k: to_json(v, f"{where}[{k!r}]") for k, v in obj.items()}
        return {
            _TAG: "dict",
            "items": [[to_json(k, where), to_json(v, f"{where}[{k!r}]")] for k, v in obj.items()],
        }
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            items = [to_json(v, f"{where}[...]") for v in obj.ravel().tolist()]
            return {_TAG: "ndarray", "dtype": "object", "shape": list(obj.shape), "items": items}
        if obj.dtype.kind not in "biufc":
            return {
                _TAG: "ndarray",
                "dtype": obj.dtype.str,
                "shape": list(obj.shape),
                "items": obj.ravel().tolist(),
            }
        data = base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode("ascii")
        return {_TAG: "ndarray", "dtype": obj.dtype.str, "shape": list(obj.shape), "b64": data}
    if isinstance(obj, pd.DataFrame):
        return {
            _TAG: "DataFrame",
            "columns": to_json(obj.columns, f"{where}.columns"),
            "index": to_json(obj.index, f"{where}.index"),
            "data": {
                str(i): to_json(obj.iloc[:, i].to_numpy(), where) for i in range(obj.shape[1])
            },
        }
    if isinstance(obj, pd.Series):
        return {
            _TAG: "Series",
            "name": to_json(obj.name, where),
            "index": to_json(obj.index, f"{where}.index"),
            "values": to_json(obj.to_numpy(), where),
        }
    if isinstance(obj, pd.Index):
        return {
            _TAG: "Index",
            "name": to_json(obj.name, where),
            "values": to_json(obj.to_numpy(), where),
        }
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which the safe model "
        "format cannot store (plain values, numpy arrays and pandas tables only)."
    )


def from_json(obj: Any) -> Any:
    """Inverse of :func:`to_json`; builds nothing but plain values, arrays and pandas tables."""
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    kind = obj.get(_TAG)
    if kind is None:
        return {k: from_json(v) for k, v in obj.items()}
    if kind == "tuple":
        return tuple(from_json(v) for v in obj["items"])
    if kind == "dict":
        return {_hashable(from_json(k)): from_json(v) for k, v in obj["items"]}
    if kind == "ndarray":
        shape = tuple(obj["shape"])
        if "b64" in obj:
            dtype = np.dtype(obj["dtype"])
            if dtype.kind not in "biufc":
                raise ValueError(f"Unsupported array dtype {dtype} in a model file.")
            raw = base64.b64decode(obj["b64"])
            return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        items = [from_json(v) for v in obj["items"]]
        dtype = object if obj["dtype"] == "object" else np.dtype(obj["dtype"])
        out = np.empty(len(items), dtype=dtype)
        out[:] = items
        return out.reshape(shape)
    if kind == "DataFrame":
        data = {i: from_json(v) for i, v in enumerate(obj["data"].values())}
        frame = pd.DataFrame(data, index=from_json(obj["index"]))
        frame.columns = from_json(obj["columns"])
        return frame
    if kind == "Series":
        return pd.Series(
            from_json(obj["values"]), index=from_json(obj["index"]), name=from_json(obj["name"])
        )
    if kind == "Index":
        return pd.Index(from_json(obj["values"]), name=from_json(obj["name"]))
    raise ValueError(f"Unknown entry type {kind!r} in a model file.")


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


# ---------------------------------------------------------------------- folder I/O
def _file(dir_path: Path, prefix: str | None, name: str) -> Path:
    return dir_path / f"{prefix or ''}{name}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_tensors(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write tensors with safetensors (the one place weights are written; tests patch it)."""
    from safetensors.torch import save_file

    save_file(dict(state), str(path), metadata={"format": "pt"})


def write_model_folder(
    dir_path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    manifest: dict,
    prefix: str | None = None,
    extra_writers: Mapping[str, Any] | None = None,
) -> None:
    """Write ``{prefix}model.safetensors`` and ``{prefix}model.json`` (plus ``extra_writers``,
    file name -> ``writer(tmp_path)``) into ``dir_path``, all or nothing."""
    dir_path = Path(dir_path)
    dir_path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    weights_name = f"{prefix or ''}{WEIGHTS_FILE}"
    digest = {}

    def write_weights(tmp: Path) -> None:
        _save_tensors(tensors, tmp)
        digest["sha256"] = _sha256(tmp)

    def write_manifest(tmp: Path) -> None:
        content = {**manifest, "weights": {"file": weights_name, **digest}}
        tmp.write_text(json.dumps(content, allow_nan=True), encoding="utf-8")

    writers = {**(extra_writers or {}), weights_name: write_weights}
    writers[f"{prefix or ''}{MANIFEST_FILE}"] = write_manifest  # written last: it needs the hash
    commit_files(dir_path, writers)
    stale = _file(dir_path, prefix, PICKLE_FILE)
    if stale.exists():  # an older pickle save in the same folder would confuse readers
        stale.unlink()


def read_model_folder(
    dir_path: str | os.PathLike,
    prefix: str | None = None,
    allow_pickle: bool = False,
    map_location: str | torch.device = "cpu",
) -> tuple[dict, Any, dict[str, torch.Tensor]]:
    """``(attr_dict, var_names, state_dict)`` of a saved model folder.

    Reads the safe format; never unpickles unless ``allow_pickle=True`` and the folder holds
    only scvi-tools' pickled ``model.pt``.

    Raises
    ------
    ValueError
        For a pickle-format folder without ``allow_pickle``, a weights file whose checksum does
        not match ``model.json``, or a file that is not a model of this format (each naming the
        file).
    FileNotFoundError
        When the folder holds no model.
    """
    dir_path = Path(dir_path)
    manifest_path = _file(dir_path, prefix, MANIFEST_FILE)
    pickle_path = _file(dir_path, prefix, PICKLE_FILE)
    if not manifest_path.is_file():
        if pickle_path.is_file():
            return _read_pickle_folder(pickle_path, allow_pickle, map_location)
        raise FileNotFoundError(
            f"No saved model in {dir_path}: expected {manifest_path.name} and "
            f"{_file(dir_path, prefix, WEIGHTS_FILE).name} (written by model.save)."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{manifest_path} is not valid JSON ({err}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path} is not an scgpt-scvi model file.")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{manifest_path} has format version {manifest['format_version']}; this "
            f"scgpt-scvi reads up to {FORMAT_VERSION}: upgrade scgpt-scvi."
        )
    weights = manifest.get("weights", {})
    weights_path = dir_path / Path(weights.get("file", WEIGHTS_FILE)).name
    if not weights_path.is_file():
        raise FileNotFoundError(f"{manifest_path} names {weights_path.name}, which is missing.")
    if weights.get("sha256") and _sha256(weights_path) != weights["sha256"]:
        raise ValueError(
            f"{weights_path} does not match {manifest_path.name} (checksum differs): the "
            "folder holds parts of two saves, or the weights file was changed or truncated."
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights_path} is not a readable safetensors file ({err}).") from None
    return from_json(manifest["attr_dict"]), from_json(manifest["var_names"]), dict(state)


def _read_pickle_folder(path: Path, allow_pickle: bool, map_location) -> tuple:
    if not allow_pickle:
        raise ValueError(
            f"{path} is a scvi-tools pickle (torch.save of Python objects); loading it would run "
            "any code it carries, so it is refused. If you trust where it came from, load it "
            "once with allow_pickle=True, or convert the folder with "
            "scgpt_scvi.model.convert_pickle_folder(dir_path), which writes the safe format "
            "(model.safetensors + model.json)."
        )
    warnings.warn(
        f"Unpickling {path} (allow_pickle=True): a pickle can run arbitrary code, so only do "
        "this for folders you trust; convert it once with convert_pickle_folder().",
        UserWarning,
        stacklevel=4,
    )
    saved = torch.load(path, map_location=map_location, weights_only=False)
    state = dict(saved["model_state_dict"])
    state.pop("pyro_param_store", None)
    return saved["attr_dict"], saved["var_names"], state


def convert_pickle_folder(
    dir_path: str | os.PathLike,
    output_dir_path: str | os.PathLike | None = None,
    prefix: str | None = None,
) -> Path:
    """Convert a scvi-tools pickle model folder (``model.pt``) to the safe format, once.

    This unpickles ``model.pt`` (``torch.load(weights_only=False)``), which runs any code the
    file carries: only convert folders you trust. The result (``model.safetensors`` and
    ``model.json``, plus any ``adata.h5ad``) loads without unpickling anything.

    Parameters
    ----------
    dir_path
        Folder written by scvi-tools' ``save`` (or an older scgpt-scvi).
    output_dir_path
        Where to write the safe folder; default: ``dir_path`` itself (``model.pt`` is then
        removed once the safe files are in place).
    prefix
        File-name prefix of the saved files.

    Returns
    -------
    The folder holding the converted model.

    Examples
    --------
    >>> convert_pickle_folder("old_model/")
    >>> model = SCGPT.load("old_model/", adata)
    """
    dir_path = Path(dir_path)
    out = Path(output_dir_path) if output_dir_path is not None else dir_path
    pickle_path = _file(dir_path, prefix, PICKLE_FILE)
    if not pickle_path.is_file():
        raise FileNotFoundError(f"No {pickle_path.name} in {dir_path}.")
    attr_dict, var_names, state = _read_pickle_folder(pickle_path, True, "cpu")
    manifest = _manifest(attr_dict, var_names)
    out.mkdir(parents=True, exist_ok=True)
    if out != dir_path:
        for name in ("adata.h5ad", "mdata.h5mu"):
            src = _file(dir_path, prefix, name)
            if src.is_file():
                import shutil

                shutil.copyfile(src, _file(out, prefix, name))
    write_model_folder(out, state, manifest, prefix)
    return out


def _manifest(attr_dict: Mapping[str, Any], var_names) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": attr_dict.get("registry_", {}).get("model_name"),
        "var_names": to_json(var_names, "var_names"),
        "attr_dict": {k: to_json(v, k) for k, v in attr_dict.items()},
    }


# ---------------------------------------------------------------------- model mixin
class SafeSaveLoadMixin:
    """``save`` / ``load`` in the safe format, shared by the scGPT-family models.

    Put it before scvi-tools' ``BaseModelClass`` in the bases. Uses only scvi-tools' public
    model API (``registry_``, ``init_params_``, ``setup_anndata`` / ``setup_mudata`` with
    ``source_registry``, ``module.on_load``, ``_validate_anndata``).
    """

    #: Whether the model matches genes by name when the data has them in another order.
    _genes_matched_by_name = False

    def _saved_attributes(self) -> dict:
        """The trailing-underscore attributes (as scvi-tools saves them), plus the gene order."""
        attrs = {
            name: value
            for name, value in self._get_user_attributes()
            if name.endswith("_") and not name.startswith("_")
        }
        if hasattr(self, "_model_genes"):
            attrs["model_genes_"] = list(self._model_genes())
        return attrs

    def _var_names(self):
        data = self.adata
        if isinstance(data, MuData):
            return {m: data.mod[m].var_names.astype(str).to_numpy() for m in data.mod}
        return data.var_names.astype(str).to_numpy()

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model: ``model.safetensors`` (weights) and ``model.json`` (the rest).

        No pickle is written, so :meth:`load` never runs code from the folder. All files are
        written under temporary names inside ``dir_path`` and renamed into place together, so
        a failed save leaves an earlier save in ``dir_path`` loadable.

        Parameters
        ----------
        dir_path
            Folder to write (created if needed).
        prefix
            Prefix of the file names.
        overwrite
            Replace a model already saved in ``dir_path``; without it, an existing
            ``dir_path`` is an error (as in scvi-tools).
        save_anndata
            Also write the registered data (``adata.h5ad`` or ``mdata.h5mu``).
        **anndata_write_kwargs
            Passed to ``AnnData.write`` / ``MuData.write``.

        Examples
        --------
        >>> model.save("my_model/", overwrite=True)
        >>> model = SCGPT.load("my_model/", adata)
        """
        dir_path = Path(dir_path)
        if dir_path.exists() and not overwrite:
            raise ValueError(
                f"{dir_path} already exists; pass overwrite=True to replace the model in it."
            )
        manifest = _manifest(self._saved_attributes(), self._var_names())
        writers = {}
        if save_anndata:
            name = "mdata.h5mu" if isinstance(self.adata, MuData) else "adata.h5ad"
            writers[f"{prefix or ''}{name}"] = lambda tmp: self.adata.write(
                tmp, **anndata_write_kwargs
            )
        write_model_folder(dir_path, self.module.state_dict(), manifest, prefix, writers)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | MuData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        allow_pickle: bool = False,
        allowed_classes_names_list: list[str] | None = None,
    ):
        """Load a model saved with :meth:`save` (no code from the folder is run).

        Parameters
        ----------
        dir_path
            The saved folder.
        adata
            Data organised like the training data (set up here with the saved setup
            arguments); default: the ``adata.h5ad`` / ``mdata.h5mu`` saved with the model.
            :class:`~scgpt_scvi.model.SCGPT` matches genes by name, so they may come in
            another order.
        accelerator, device
            Where to put the model (scvi-tools' device arguments).
        prefix
            Prefix of the saved file names.
        allow_pickle
            Load a folder in scvi-tools' pickle format (``model.pt``). Unpickling runs any
            code the file carries: only for folders you trust (a warning says so). Prefer
            converting once with :func:`convert_pickle_folder`.
        allowed_classes_names_list
            Other class names whose saves this class may load.

        Returns
        -------
        The model, in eval mode.

        Examples
        --------
        >>> model = SCGPT.load("my_model/", adata)
        """
        device = _torch_device(accelerator, device)
        attr_dict, var_names, state = read_model_folder(dir_path, prefix, allow_pickle, device)
        if adata is None:
            adata = _saved_data(Path(dir_path), prefix, attr_dict)
        return cls._from_saved(
            attr_dict, var_names, state, adata, device, allowed_classes_names_list
        )

    @classmethod
    def _reference_data(
        cls, reference, device, allow_pickle: bool = False
    ) -> tuple[dict, Any, dict[str, torch.Tensor]]:
        """``(attr_dict, var_names, state_dict)`` of a model object or a saved folder."""
        if isinstance(reference, str | os.PathLike):
            return read_model_folder(reference, None, allow_pickle, device)
        attrs = dict(reference._saved_attributes())
        return attrs, reference._var_names(), reference.module.state_dict()

    @classmethod
    def _check_saved_genes(cls, adata, var_names) -> None:
        """Same genes as the saved model (any order when the class matches genes by name)."""
        pairs = (
            [(m, var_names[m], adata.mod[m].var_names) for m in var_names if m in adata.mod]
            if isinstance(var_names, dict) and isinstance(adata, MuData)
            else [(None, var_names, adata.var_names)]
        )
        for mod, saved, new in pairs:
            saved, new = pd.Index(np.asarray(saved).astype(str)), pd.Index(new.astype(str))
            if saved.equals(new):
                continue
            where = f"modality {mod!r}: " if mod else ""
            if len(saved) == len(new) and set(saved) == set(new):
                if cls._genes_matched_by_name:
                    continue
                raise ValueError(
                    f"{where}the data has the saved model's genes in another order; "
                    f"{cls.__name__} needs them in the saved order: pass "
                    "adata[:, saved_var_names] (the saved order is model.json's var_names)."
                )
            missing = list(saved.difference(new)[:5])
            extra = list(new.difference(saved)[:5])
            raise ValueError(
                f"{where}the data's genes differ from the saved model's ({len(new)} vs "
                f"{len(saved)}; missing e.g. {missing}, extra e.g. {extra}); align them with "
                "prepare_query_anndata(adata, model) or subset to the model's var_names."
            )

    @classmethod
    def _from_saved(
        cls,
        attr_dict: dict,
        var_names,
        state: Mapping[str, torch.Tensor],
        adata,
        device,
        allowed_classes_names_list=None,
        setup_kwargs: Mapping[str, Any] | None = None,
        strict: bool = True,
    ):
        """Set ``adata`` up with the saved registry, build the model and load the weights."""
        attr_dict = dict(attr_dict)
        registry = attr_dict.pop("registry_")
        name = registry.get("model_name")
        if (
            name is not None
            and name != cls.__name__
            and name not in (allowed_classes_names_list or [])
        ):
            raise ValueError(f"The folder holds a {name} model, not a {cls.__name__}.")
        if adata is None:
            raise ValueError(
                f"Pass adata: the folder holds no saved data and {cls.__name__} needs the "
                "registered genes to be built."
            )
        if setup_kwargs is None:
            cls._check_saved_genes(adata, var_names)
        method = registry.get("setup_method_name", "setup_anndata")
        getattr(cls, method)(
            adata, source_registry=registry, **{**registry["setup_args"], **(setup_kwargs or {})}
        )
        model = cls._build_saved(adata, registry, attr_dict)
        if "model_genes_" not in attr_dict and cls._genes_matched_by_name:
            # pickle folders do not record the module's gene order: it is the saved var_names'
            order = pd.Index(adata.var_names.astype(str)).get_indexer(np.asarray(var_names))
            model.model_genes_ = list(model._gene_names(adata)[order])
        if strict:
            model.module.on_load(model)
            model.module.load_state_dict(dict(state))
            model.to_device(device)
            model.module.eval()
            model._validate_anndata(adata)
        return model

    @classmethod
    def _build_saved(cls, adata, registry: dict, attr_dict: dict):
        """``cls(adata, **init_params)``, then the saved attributes set on it."""
        attr_dict = dict(attr_dict)
        init = attr_dict.pop("init_params_", None)
        if init is None:
            raise ValueError("The saved model holds no init_params_, so it cannot be rebuilt.")
        kwargs = {k: v for group in init.get("kwargs", {}).values() for k, v in group.items()}
        model = cls(adata, **init.get("non_kwargs", {}), **kwargs)
        for attr, value in attr_dict.items():
            setattr(model, attr, value)
        return model


def _torch_device(accelerator: str, device) -> torch.device:
    from scvi.model._utils import parse_device_args

    _, _, out = parse_device_args(
        accelerator=accelerator, devices=device, return_device="torch", validate_single_device=True
    )
    return out


def _saved_data(dir_path: Path, prefix: str | None, attr_dict: dict):
    is_mudata = attr_dict.get("registry_", {}).get("setup_method_name") == "setup_mudata"
    path = _file(dir_path, prefix, "mdata.h5mu" if is_mudata else "adata.h5ad")
    if not path.is_file():
        return None
    if is_mudata:
        import mudata

        return mudata.read_h5mu(path)
    import anndata

    return anndata.read_h5ad(path)
