"""Analysis methods of :class:`~scgpt_scvi.model.SCGPT`: attention maps and gene programs.

The math lives in :mod:`scgpt_scvi.nn` (attention probabilities) and :mod:`scgpt_scvi.tl`
(gene programs); these methods feed them the model's tokens and write where scanpy users look.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..data import CLS_TOKEN
from ..nn._attention_weights import capture_layer_input, layer_attention_weights
from ..tl._gene_programs import gene_programs, program_members

__all__ = ["SCGPTAnalysisMixin"]

#: Above this many genes, :meth:`SCGPTAnalysisMixin.get_gene_attention` asks for ``genes=``.
MAX_ATTENTION_GENES = 5000


class SCGPTAnalysisMixin:
    """Attention and gene-program methods for :class:`~scgpt_scvi.model.SCGPT`."""

    def _layer(self, layer: int) -> torch.nn.Module:
        layers = self.module.transformer_encoder.layers
        if not -len(layers) <= layer < len(layers):
            raise IndexError(f"layer={layer} is out of range for a {len(layers)}-layer model.")
        return layers[layer]

    @torch.inference_mode()
    def _iter_attention(
        self, adata: AnnData | None, indices, layer: int, batch_size: int | None
    ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """Yield ``(cell rows, attention (B, L, L), gene_index (B, L))`` per minibatch.

        Tokens are the ones :meth:`get_latent_representation` uses (eval mode, no masking).
        """
        block = self._layer(layer)
        adata = self._validate_anndata(adata)
        rows = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        loader = self._make_data_loader(
            adata=adata, indices=rows, batch_size=batch_size or 64, shuffle=False
        )
        module = self.module
        token_ids = self._token_ids_of(adata)
        was_training = module.training
        module.eval()
        try:
            start = 0
            for tensors in loader:
                inp = module._get_inference_input(tensors)
                x = inp["x"].to(module.device)
                keys = inp["cell_keys"]
                keys = None if keys is None else keys.to(module.device).reshape(-1).long()
                batch_index = inp["batch_index"]
                if batch_index is not None:
                    batch_index = batch_index.to(module.device)
                tokens = module.tokenize(x, keys, module._draw_seed(), token_ids)
                with capture_layer_input(block) as seen:
                    module.encode(tokens.gene_ids, tokens.values, tokens.padding_mask, batch_index)
                weights = layer_attention_weights(
                    block, seen["x"].float(), seen["padding_mask"]
                ).cpu()
                n = x.shape[0]
                yield rows[start : start + n], weights, tokens.gene_index.cpu()
                start += n
        finally:
            module.train(was_training)

    def get_attention(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        layer: int = -1,
        batch_size: int | None = None,
    ) -> dict[str, pd.DataFrame]:
        """Per-cell attention maps of one transformer layer, averaged over heads.

        Only ``layer`` computes explicit probabilities (recomputed from its own weights, see
        :func:`scgpt_scvi.nn.layer_attention_weights`); the layers before it run their fused
        kernels and the ones after it do not run.

        Parameters
        ----------
        adata
            AnnData with the model's genes; default: the registered one.
        indices
            Cells to return; default all (mind the memory: one tokens x tokens map per cell).
        layer
            Layer number (negative counts from the end).
        batch_size
            Cells per minibatch (default 64).

        Returns
        -------
        ``{obs_name: DataFrame}``: for each cell, its tokens x tokens probabilities (row token
        attends to column token; ``<cls>`` first, then the cell's genes). Rows sum to 1.

        Examples
        --------
        >>> att = model.get_attention(indices=[0, 1], layer=-1)
        >>> att[adata.obs_names[0]].loc["CD3E"].nlargest(5)
        """
        adata_ = self._validate_anndata(adata)
        names = np.asarray(self._gene_names(adata_), dtype=object)
        obs_names = adata_.obs_names
        out: dict[str, pd.DataFrame] = {}
        for rows, weights, gene_index in self._iter_attention(adata, indices, layer, batch_size):
            for b, row in enumerate(rows):
                cols = gene_index[b].numpy()
                real = np.flatnonzero(cols >= 0)
                keep = np.concatenate([[0], real])
                labels = [CLS_TOKEN, *names[cols[real]]]
                w = weights[b][keep][:, keep].numpy()
                out[str(obs_names[row])] = pd.DataFrame(w, index=labels, columns=labels)
        return out

    def get_gene_attention(
        self,
        adata: AnnData | None = None,
        groupby: str | None = None,
        layer: int = -1,
        genes: Sequence[str] | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame | dict[str, pd.DataFrame]:
        """Genes x genes attention: mean attention from the row gene to the column gene.

        Averaged over the cells in which both genes are tokens (``NaN`` where they never
        co-occur); head-averaged probabilities of ``layer``, as :meth:`get_attention`.

        Parameters
        ----------
        adata
            AnnData with the model's genes; default: the registered one.
        groupby
            ``obs`` column: one matrix per category.
        layer
            Layer number (negative counts from the end).
        genes
            Genes to keep (rows and columns); default: every registered gene in the vocabulary
            (at most 5000).
        indices
            Cells to use; default all.
        batch_size
            Cells per minibatch (default 64).

        Returns
        -------
        A DataFrame, or ``{category: DataFrame}`` with ``groupby``.

        Examples
        --------
        >>> att = model.get_gene_attention(groupby="condition", genes=hvg)
        >>> scgpt_scvi.tl.rank_attention_targets(att["ctrl"], att["stim"], "IRF7")
        """
        adata_ = self._validate_anndata(adata)
        names = self._gene_names(adata_)
        in_vocab = self._token_columns(adata_)
        if genes is None:
            selected = np.flatnonzero(in_vocab)
        else:
            genes = [genes] if isinstance(genes, str) else list(genes)
            known = set(names)
            missing = [g for g in genes if g not in known]
            if missing:
                raise KeyError(f"genes {missing[:5]} are not genes of adata.")
            selected = np.asarray([names.get_loc(g) for g in dict.fromkeys(genes)])
            selected = selected[in_vocab[selected]]
        if len(selected) > MAX_ATTENTION_GENES:
            raise ValueError(
                f"{len(selected)} genes would make a {len(selected)}^2 matrix; pass genes= "
                f"(at most {MAX_ATTENTION_GENES}, e.g. highly variable genes)."
            )
        rows = np.arange(adata_.n_obs) if indices is None else np.asarray(indices)
        if groupby is None:
            return self._gene_attention(adata, rows, layer, selected, names, batch_size)
        if groupby not in adata_.obs:
            raise KeyError(
                f"groupby {groupby!r} is not a column of adata.obs; columns: "
                f"{list(adata_.obs.columns)}."
            )
        groups = adata_.obs[groupby].iloc[rows]
        return {
            str(g): self._gene_attention(
                adata, rows[(groups == g).to_numpy()], layer, selected, names, batch_size
            )
            for g in pd.unique(groups.dropna())
        }

    def _token_columns(self, adata: AnnData) -> np.ndarray:
        """Which columns of ``adata`` are in the vocabulary (in ``adata``'s gene order)."""
        ids = self.module.gene_token_ids.cpu().numpy()
        ref = self._gene_names(self.adata)
        names = self._gene_names(adata)
        return ids[ref.get_indexer(names)] >= 0 if not names.equals(ref) else ids >= 0

    def _gene_attention(self, adata, rows, layer, selected, names, batch_size) -> pd.DataFrame:
        n_vars = len(names)
        position = torch.full((n_vars + 1,), -1, dtype=torch.long)  # last entry: non-gene token
        position[torch.as_tensor(selected)] = torch.arange(len(selected))
        G = len(selected)
        total = torch.zeros(G * G, dtype=torch.float64)
        count = torch.zeros(G * G, dtype=torch.float64)
        for _, weights, gene_index in self._iter_attention(adata, rows, layer, batch_size):
            pos = position[torch.where(gene_index >= 0, gene_index, n_vars)]
            for b in range(weights.shape[0]):
                t = torch.nonzero(pos[b] >= 0).flatten()
                p = pos[b][t]
                flat = (p[:, None] * G + p[None, :]).reshape(-1)
                total.index_add_(0, flat, weights[b][t][:, t].reshape(-1).double())
                count.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
        mean = (total / count).reshape(G, G).float().numpy()  # NaN where never together
        labels = names[selected]
        return pd.DataFrame(mean, index=labels, columns=labels)

    # ------------------------------------------------------------------ gene programs
    def get_gene_programs(
        self,
        n_neighbors: int = 15,
        resolution: float = 1.0,
        min_size: int = 5,
        random_state: int = 0,
        key_added: str = "scgpt_gene_programs",
        inplace: bool = True,
    ) -> pd.DataFrame:
        """Gene programs: Leiden clusters of the model's gene embeddings (scGPT's GRN recipe).

        Builds a cosine kNN graph of :meth:`get_gene_embeddings` and runs Leiden
        (:func:`scgpt_scvi.tl.gene_programs`). Every gene is in exactly one program or, when its
        cluster has fewer than ``min_size`` genes (or it is not in the vocabulary), unassigned.

        Parameters
        ----------
        n_neighbors
            Neighbours per gene in the graph.
        resolution
            Leiden resolution (higher: more, smaller programs).
        min_size
            Smallest program kept.
        random_state
            Leiden seed (same seed, same programs).
        key_added
            With ``inplace``: ``adata.varm[key_added]`` gets a genes x programs membership
            DataFrame (bool), and ``adata.uns[key_added]`` the genes of each program.
        inplace
            Write into the registered AnnData.

        Returns
        -------
        DataFrame indexed by gene (the registered genes in the vocabulary) with ``program``
        (``NaN`` = unassigned) and ``program_size``.

        Examples
        --------
        >>> programs = model.get_gene_programs(resolution=2.0)
        >>> scgpt_scvi.tl.score_gene_programs(adata, programs)
        """
        programs = gene_programs(
            self.get_gene_embeddings(),
            n_neighbors=n_neighbors,
            resolution=resolution,
            min_size=min_size,
            random_state=random_state,
        )
        if inplace:
            names = self._gene_names(self.adata)
            keep = self._token_columns(self.adata)
            per_gene = pd.Series(pd.NA, index=range(len(names)), dtype=object)
            per_gene[np.flatnonzero(keep)] = programs["program"].astype(object).to_numpy()
            cats = list(programs["program"].cat.categories)
            membership = pd.DataFrame(
                {c: (per_gene == c).fillna(False).to_numpy(dtype=bool) for c in cats},
                index=self.adata.var_names.copy(),
            )
            self.adata.varm[key_added] = membership
            self.adata.uns[key_added] = program_members(programs)
        return programs
