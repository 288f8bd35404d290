"""AnnData fields specific to scgpt-scvi."""

from __future__ import annotations

import zlib

import numpy as np
from anndata import AnnData
from scvi.data.fields import NumericalObsField

from ..module import CELL_KEY

__all__ = ["CellKeyObsField", "cell_keys_from_names", "CELL_KEY_COLUMN"]

CELL_KEY_COLUMN = "_scgpt_cell_key"


def cell_keys_from_names(names) -> np.ndarray:
    """Stable integer key per cell name (CRC32 folded to 24 bits, exact in float32)."""
    return np.array([zlib.crc32(str(n).encode()) & 0xFFFFFF for n in names], dtype=np.float32)


class CellKeyObsField(NumericalObsField):
    """Registers ``obs['_scgpt_cell_key']``, a hash of ``obs_names`` that seeds tokenisation.

    Keyed on the cell's name, a cell's sampled genes and tie-broken bins are the same in any
    minibatch, any subset and any chunking of the data. The column is (re)written on setup and
    on transfer to new data, like scvi-tools' ``_scvi_batch`` columns.
    """

    def __init__(self):
        super().__init__(CELL_KEY, CELL_KEY_COLUMN)

    @staticmethod
    def _write(adata: AnnData) -> None:
        adata.obs[CELL_KEY_COLUMN] = cell_keys_from_names(adata.obs_names)

    def register_field(self, adata: AnnData) -> dict:
        """Write the key column, then register it."""
        self._write(adata)
        return super().register_field(adata)

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs) -> dict:
        """Write the key column on the new data, then transfer."""
        self._write(adata_target)
        return super().transfer_field(state_registry, adata_target, **kwargs)
