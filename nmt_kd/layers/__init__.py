"""Keras layers for the nmt_kd models."""

from nmt_kd.layers.attention import MultiHeadAttention, linear, mask_value, write_cache
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
    "FeedForward",
    "LayerNorm",
    "MultiHeadAttention",
    "SharedEmbedding",
    "SinusoidalPositionEncoding",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
    "linear",
    "mask_value",
    "sinusoidal_table",
    "write_cache",
]
