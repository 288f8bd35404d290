"""Write the small intersphinx inventories committed beside this script (offline docs builds).

Sphinx's online inventories (``objects.inv``) cannot be downloaded on the build machines, and
none ship inside the installed packages. This script writes, for each external project, an
inventory of the objects our docs and docstrings refer to, each pointing at its real page in
that project's documentation. Links therefore work offline and go to the right place online.

Add an object here when a new docstring refers to it, then run::

    python docs/_inventories/make_inventories.py

(``SCGPT_DOCS_ONLINE_INVENTORIES=1 make docs`` uses the projects' full inventories instead.)
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).parent

# project -> {dotted name: (domain:role, uri relative to the project's docs root)}
OBJECTS: dict[str, dict[str, tuple[str, str]]] = {
    "python": {
        **{
            n: ("py:class", f"library/functions.html#{n}")
            for n in (
                "int",
                "float",
                "str",
                "bool",
                "dict",
                "list",
                "tuple",
                "set",
                "bytes",
                "object",
                "type",
            )
        },
        "None": ("py:data", "library/constants.html#None"),
        "os.PathLike": ("py:class", "library/os.html#os.PathLike"),
        "pathlib.Path": ("py:class", "library/pathlib.html#pathlib.Path"),
        "argparse.ArgumentParser": ("py:class", "library/argparse.html#argparse.ArgumentParser"),
        "argparse.Namespace": ("py:class", "library/argparse.html#argparse.Namespace"),
        "typing.Any": ("py:data", "library/typing.html#typing.Any"),
        "typing.Literal": ("py:data", "library/typing.html#typing.Literal"),
        "typing.NamedTuple": ("py:class", "library/typing.html#typing.NamedTuple"),
        **{
            f"collections.abc.{n}": (
                "py:class",
                f"library/collections.abc.html#collections.abc.{n}",
            )
            for n in ("Mapping", "Sequence", "Iterable", "Iterator", "Callable")
        },
        "dataclasses.dataclass": ("py:function", "library/dataclasses.html#dataclasses.dataclass"),
        "UserWarning": ("py:exception", "library/exceptions.html#UserWarning"),
        "ValueError": ("py:exception", "library/exceptions.html#ValueError"),
        "KeyError": ("py:exception", "library/exceptions.html#KeyError"),
        "FileNotFoundError": ("py:exception", "library/exceptions.html#FileNotFoundError"),
        "FileExistsError": ("py:exception", "library/exceptions.html#FileExistsError"),
    },
    "numpy": {
        "numpy.ndarray": ("py:class", "reference/generated/numpy.ndarray.html"),
        "numpy.quantile": ("py:function", "reference/generated/numpy.quantile.html"),
        "numpy.random.Generator": ("py:class", "reference/random/generator.html"),
    },
    "pandas": {
        "pandas.DataFrame": ("py:class", "reference/api/pandas.DataFrame.html"),
        "pandas.Series": ("py:class", "reference/api/pandas.Series.html"),
        "pandas.Index": ("py:class", "reference/api/pandas.Index.html"),
        "pandas.Categorical": ("py:class", "reference/api/pandas.Categorical.html"),
    },
    "scipy": {
        "scipy.sparse.csr_matrix": ("py:class", "reference/generated/scipy.sparse.csr_matrix.html"),
        "scipy.sparse.spmatrix": ("py:class", "reference/generated/scipy.sparse.spmatrix.html"),
    },
    "anndata": {
        "anndata.AnnData": ("py:class", "generated/anndata.AnnData.html"),
        "anndata.read_h5ad": ("py:function", "generated/anndata.io.read_h5ad.html"),
        "anndata.io.read_h5ad": ("py:function", "generated/anndata.io.read_h5ad.html"),
    },
    "mudata": {
        "mudata.MuData": ("py:class", "api/generated/mudata.MuData.html"),
    },
    "scanpy": {
        "scanpy.pp.neighbors": ("py:function", "generated/scanpy.pp.neighbors.html"),
        "scanpy.tl.umap": ("py:function", "generated/scanpy.tl.umap.html"),
        "scanpy.pl.umap": ("py:function", "generated/scanpy.pl.umap.html"),
        "scanpy.pp.highly_variable_genes": (
            "py:function",
            "generated/scanpy.pp.highly_variable_genes.html",
        ),
        "scanpy.datasets.pbmc68k_reduced": (
            "py:function",
            "generated/scanpy.datasets.pbmc68k_reduced.html",
        ),
    },
    "scvi": {
        **{
            f"scvi.model.base.{n}": ("py:class", f"api/reference/scvi.model.base.{n}.html")
            for n in ("BaseModelClass", "ArchesMixin", "UnsupervisedTrainingMixin")
        },
        "scvi.module.base.BaseModuleClass": (
            "py:class",
            "api/reference/scvi.module.base.BaseModuleClass.html",
        ),
        "scvi.module.base.LossOutput": (
            "py:class",
            "api/reference/scvi.module.base.LossOutput.html",
        ),
        "scvi.train.TrainingPlan": ("py:class", "api/reference/scvi.train.TrainingPlan.html"),
        "scvi.data.AnnDataManager": ("py:class", "api/reference/scvi.data.AnnDataManager.html"),
        "scvi.hub.HubModel": ("py:class", "api/reference/scvi.hub.HubModel.html"),
        "scvi.hub.HubMetadata": ("py:class", "api/reference/scvi.hub.HubMetadata.html"),
        "scvi.hub.HubModelCardHelper": (
            "py:class",
            "api/reference/scvi.hub.HubModelCardHelper.html",
        ),
        "scvi.model.SCVI": ("py:class", "api/reference/scvi.model.SCVI.html"),
    },
    "torch": {
        "torch.Tensor": ("py:class", "tensors.html#torch.Tensor"),
        "torch.nn.Module": ("py:class", "generated/torch.nn.Module.html"),
        "torch.nn.Linear": ("py:class", "generated/torch.nn.Linear.html"),
        "torch.nn.Embedding": ("py:class", "generated/torch.nn.Embedding.html"),
        "torch.nn.BatchNorm1d": ("py:class", "generated/torch.nn.BatchNorm1d.html"),
        "torch.nn.functional.scaled_dot_product_attention": (
            "py:function",
            "generated/torch.nn.functional.scaled_dot_product_attention.html",
        ),
        "torch.autograd.Function": ("py:class", "autograd.html#torch.autograd.Function"),
        "torch.device": ("py:class", "tensor_attributes.html#torch.device"),
        "torch.dtype": ("py:class", "tensor_attributes.html#torch.dtype"),
        "torch.load": ("py:function", "generated/torch.load.html"),
    },
    "lightning": {
        "lightning.pytorch.Trainer": ("py:class", "common/trainer.html"),
    },
    "huggingface_hub": {
        "huggingface_hub.ModelCard": (
            "py:class",
            "package_reference/cards#huggingface_hub.ModelCard",
        ),
        "huggingface_hub.snapshot_download": (
            "py:function",
            "package_reference/file_download#huggingface_hub.snapshot_download",
        ),
        "huggingface_hub.upload_folder": (
            "py:function",
            "package_reference/hf_api#huggingface_hub.HfApi.upload_folder",
        ),
    },
}


def write_inventory(project: str, objects: dict[str, tuple[str, str]], path: Path) -> None:
    """Sphinx inventory format version 2: a plain header, then zlib-compressed lines."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        "# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    body = "".join(
        f"{name} {role} 1 {uri} -\n" for name, (role, uri) in sorted(objects.items())
    ).encode()
    path.write_bytes(header + zlib.compress(body, 9))


if __name__ == "__main__":
    for project, objects in OBJECTS.items():
        write_inventory(project, objects, HERE / f"{project}.inv")
        print(f"{project}.inv: {len(objects)} objects")
