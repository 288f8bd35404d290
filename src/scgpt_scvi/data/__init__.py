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
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "GeneVocab",
    "TokenizedBatch",
    "bin_values",
    "check_values",
    "keyed_uniform",
    "mask_values",
    "tokenize",
]
