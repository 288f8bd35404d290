"""Torch building blocks of the scGPT family (no scvi-tools dependency)."""

from ._attention_weights import (
    attention_probabilities,
    capture_layer_input,
    layer_attention_weights,
)
from ._backbone import CELL_EMB_STYLES, DSBN_CHOICES, TokenBackbone, pool_cells
from ._batchnorm import DomainSpecificBatchNorm1d, TokenBatchNorm1d
from ._decoders import (
    MVC_DECODER_STYLES,
    AdversarialDiscriminator,
    AffineExprDecoder,
    ClsDecoder,
    ExprDecoder,
    MVCDecoder,
)
from ._encoders import (
    VALUE_ENCODER_STYLES,
    BatchLabelEncoder,
    CategoryValueEncoder,
    ContinuousValueEncoder,
    GeneEncoder,
    ScalingValueEncoder,
    make_value_encoder,
)
from ._grad_reverse import grad_reverse
from ._inference import (
    PRECISIONS,
    QUANTIZE_MODES,
    autocast,
    check_quantize,
    quantize_int8,
    resolve_precision,
    supported_precisions,
)
from ._losses import cce_loss, dab_loss, ecs_loss, masked_mse_loss, masked_nonzero_nll
from ._transformer import (
    ATTENTION_BACKENDS,
    MultiheadSelfAttention,
    TransformerEncoder,
    TransformerEncoderLayer,
    chunked_dropout_attention,
    flash_attn_available,
    release_freed_memory,
    varlen_attention,
)

__all__ = [
    "CELL_EMB_STYLES",
    "DSBN_CHOICES",
    "TokenBackbone",
    "pool_cells",
    "ATTENTION_BACKENDS",
    "PRECISIONS",
    "QUANTIZE_MODES",
    "autocast",
    "check_quantize",
    "quantize_int8",
    "resolve_precision",
    "supported_precisions",
    "MVC_DECODER_STYLES",
    "VALUE_ENCODER_STYLES",
    "AdversarialDiscriminator",
    "AffineExprDecoder",
    "BatchLabelEncoder",
    "CategoryValueEncoder",
    "ClsDecoder",
    "ContinuousValueEncoder",
    "DomainSpecificBatchNorm1d",
    "ExprDecoder",
    "GeneEncoder",
    "MVCDecoder",
    "MultiheadSelfAttention",
    "ScalingValueEncoder",
    "TokenBatchNorm1d",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "attention_probabilities",
    "capture_layer_input",
    "cce_loss",
    "dab_loss",
    "ecs_loss",
    "chunked_dropout_attention",
    "flash_attn_available",
    "release_freed_memory",
    "varlen_attention",
    "grad_reverse",
    "layer_attention_weights",
    "make_value_encoder",
    "masked_mse_loss",
    "masked_nonzero_nll",
]
