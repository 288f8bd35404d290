"""Vocabulary, binning and tokenisation."""

from ._binning import bin_values
from ._corpus import (
    BlockPlan,
    Corpus,
    CorpusDataLoader,
    CorpusDataset,
    CorpusFile,
    CorpusSampler,
    corpus_files,
    iter_plan_cells,
)
from ._gene_ids import (
    GENE_ID_TYPES,
    check_gene_id_type,
    detect_gene_id_type,
    ensembl_to_symbol,
    to_symbols,
)
from ._random import keyed_uniform
from ._tokenizer import TokenizedBatch, check_values, mask_values, tokenize
from ._vocab import CLS_TOKEN, EOC_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, GeneVocab

__all__ = [
    "BlockPlan",
    "Corpus",
    "CorpusDataLoader",
    "CorpusDataset",
    "CorpusFile",
    "CorpusSampler",
    "corpus_files",
    "iter_plan_cells",
    "CLS_TOKEN",
    "EOC_TOKEN",
    "GENE_ID_TYPES",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "GeneVocab",
    "TokenizedBatch",
    "bin_values",
    "check_gene_id_type",
    "detect_gene_id_type",
    "ensembl_to_symbol",
    "check_values",
    "keyed_uniform",
    "mask_values",
    "to_symbols",
    "tokenize",
]
