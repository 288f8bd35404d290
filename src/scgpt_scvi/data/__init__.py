"""Vocabulary, binning and tokenisation; perturbation conditions and multi-omic modalities."""

from ._binning import bin_values
from ._conditions import parse_condition
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
from ._counts import holds_counts, log_normalize
from ._gene_ids import (
    GENE_ID_TYPES,
    check_gene_id_type,
    detect_gene_id_type,
    ensembl_to_symbol,
    to_symbols,
)
from ._modalities import (
    MODALITIES,
    Modality,
    extend_vocab,
    modality_vocab,
    token_modalities,
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
    "MODALITIES",
    "Modality",
    "TokenizedBatch",
    "bin_values",
    "check_gene_id_type",
    "detect_gene_id_type",
    "ensembl_to_symbol",
    "check_values",
    "extend_vocab",
    "holds_counts",
    "log_normalize",
    "keyed_uniform",
    "mask_values",
    "modality_vocab",
    "parse_condition",
    "to_symbols",
    "token_modalities",
    "tokenize",
]
