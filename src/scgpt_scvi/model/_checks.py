"""Setup checks run before anything is registered, so a failing setup leaves the data untouched.

Every error and warning names the offending column, layer or cells. Choices:

* NaN in a batch column is an error naming the column and the count;
* NaN in a labels column is an error too (fill the cells with a label such as ``"unknown"``,
  or drop them): the CLS objective has no unlabeled class, and scvi-tools' categorical
  field would otherwise fail with an unreadable message;
* one class in the labels column warns (no CLS head is trained; ``predict`` says so), and so
  does a class with fewer than 3 cells;
* duplicated ``obs_names`` warn: tokenisation keys are hashed from cell names, so cells that
  share a name share their sampled genes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import pandas as pd
from anndata import AnnData

__all__ = ["check_cells", "check_obs_keys", "layer_matrix", "MIN_CELLS_PER_CLASS"]

#: Classes with fewer cells than this get a warning at setup.
MIN_CELLS_PER_CLASS = 3


def layer_matrix(adata: AnnData, layer: str | None, what: str = "adata"):
    """``adata.layers[layer]`` (``adata.X`` for ``None``); a missing layer names the layer and
    lists the available ones."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"layer {layer!r} is not in {what}.layers; available layers: {list(adata.layers)}."
        )
    return adata.layers[layer]


def check_cells(adata, what: str = "adata") -> None:
    """Raise for no cells; warn about duplicated ``obs_names``."""
    if adata.n_obs == 0:
        raise ValueError(f"{what} has 0 cells; there is nothing to set up.")
    names = adata.obs_names
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()
        warnings.warn(
            f"{what}.obs_names has {int(names.duplicated().sum())} duplicated names (e.g. "
            f"{list(dup[:3])}); tokenisation is keyed on cell names, so cells with the same name "
            "get the same sampled genes. Make them unique with obs_names_make_unique().",
            UserWarning,
            stacklevel=3,
        )


def check_obs_keys(
    obs: pd.DataFrame,
    keys: Mapping[str, str | None],
    what: str = "adata.obs",
    transfer: bool = False,
) -> None:
    """Check ``obs`` columns named by setup arguments (``{"batch_key": ..., "labels_key": ...}``).

    All columns must exist and hold no missing values; for ``labels_key`` (when not
    ``transfer``-ring a registry to query data) a single class or a class with fewer than
    :data:`MIN_CELLS_PER_CLASS` cells warns.

    Raises
    ------
    KeyError
        When a column is missing (listing a few available ones).
    ValueError
        When a column holds missing values (naming the column and the count).
    """
    for arg, key in keys.items():
        if key is None:
            continue
        if key not in obs:
            raise KeyError(
                f"{arg} {key!r} is not a column of {what}; columns: {list(obs.columns[:10])}"
                + (" ..." if obs.shape[1] > 10 else "")
                + "."
            )
        column = obs[key]
        n_missing = int(column.isna().sum())
        if n_missing:
            raise ValueError(
                f"{what}[{key!r}] ({arg}) has {n_missing} missing values (NaN) of "
                f"{len(column)}; fill them (e.g. with 'unknown') or drop those cells first."
            )
        if arg == "labels_key" and not transfer:
            _check_classes(column, key, what)


def _check_classes(column: pd.Series, key: str, what: str) -> None:
    counts = column.astype(str).value_counts()
    if len(counts) == 1:
        warnings.warn(
            f"{what}[{key!r}] (labels_key) holds a single class ({counts.index[0]!r}): no "
            "cell-type (CLS) head is trained, and predict() will not be available.",
            UserWarning,
            stacklevel=3,
        )
        return
    small = counts[counts < MIN_CELLS_PER_CLASS]
    if len(small):
        warnings.warn(
            f"{what}[{key!r}] (labels_key) has classes with fewer than {MIN_CELLS_PER_CLASS} "
            f"cells: {small.to_dict()}; the CLS head can barely learn them.",
            UserWarning,
            stacklevel=3,
        )
