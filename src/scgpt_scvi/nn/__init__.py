"""Torch building blocks of the scGPT family (no scvi-tools dependency)."""

from ._attention_weights import (
    attention_probabilities,
    capture_layer_input,
    layer_attention_weights,
)
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
from ._losses import cce_loss, dab_loss, ecs_loss, masked_mse_loss, masked_nonzero_nll
from ._transformer import (
    ATTENTION_BACKENDS,
    MultiheadSelfAttention,
    TransformerEncoder,
    TransformerEncoderLayer,
    flash_attn_available,
)

__all__ = [
    "ATTENTION_BACKENDS",
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
    "flash_attn_available",
    "grad_reverse",
    "layer_attention_weights",
    "make_value_encoder",
    "masked_mse_loss",
    "masked_nonzero_nll",
]
