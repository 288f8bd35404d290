"""Analysis tools on the scanpy path: reference mapping, attention GRNs, gene programs."""

from ._attention import rank_attention_targets
from ._gene_programs import gene_programs, program_members, score_gene_programs
from ._reference import INDEX_BACKENDS, INDEX_METRICS, ReferenceIndex, transfer_labels

__all__ = [
    "INDEX_BACKENDS",
    "INDEX_METRICS",
    "ReferenceIndex",
    "gene_programs",
    "program_members",
    "rank_attention_targets",
    "score_gene_programs",
    "transfer_labels",
]
