"""Keras layers for the nmt_kd models."""

from nmt_kd.layers.attention import MultiHeadAttention, linear, mask_value, write_cache
from nmt_kd.layers.conv import (
    ConvAttention,
    ConvDecoderBlock,
    ConvEncoderBlock,
    GLUConv1D,
    LearnedPositionEmbedding,
    Projection,
    glu,
    source_attention_terms,
)
from nmt_kd.layers.rnn import (
    BahdanauAttention,
    BidirectionalRNN,
    BridgeProjection,
    LuongAttention,
    RecurrentCell,
    cell_update,
    time_loop,
)
from nmt_kd.layers.transformer import (
    FeedForward,
    LayerNorm,
    SharedEmbedding,
    SinusoidalPositionEncoding,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
    sinusoidal_table,
)

__all__ = [
    "BahdanauAttention",
    "BidirectionalRNN",
    "BridgeProjection",
    "ConvAttention",
    "ConvDecoderBlock",
    "ConvEncoderBlock",
    "FeedForward",
    "GLUConv1D",
    "LayerNorm",
    "LearnedPositionEmbedding",
    "LuongAttention",
    "MultiHeadAttention",
    "Projection",
    "RecurrentCell",
    "SharedEmbedding",
    "SinusoidalPositionEncoding",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
    "cell_update",
    "glu",
    "linear",
    "mask_value",
    "sinusoidal_table",
    "source_attention_terms",
    "time_loop",
    "write_cache",
]
