"""Transformer building blocks: tied embedding, sinusoidal positions, layer norm, blocks.

Every block supports pre-layer-norm (``pre_norm=True``: ``x + f(LN(x))``, stable without
warm-up tricks) and post-layer-norm (``pre_norm=False``: ``LN(x + f(x))``, the original
"Attention Is All You Need" layout). Dropout is applied to each sub-layer's output before
the residual add.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from nmt_kd.layers.attention import MultiHeadAttention, linear

__all__ = [
    "FeedForward",
    "LayerNorm",
    "SharedEmbedding",
    "SinusoidalPositionEncoding",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
    "sinusoidal_table",
]


def sinusoidal_table(max_positions: int, d_model: int) -> np.ndarray:
    """``[max_positions, d_model]`` float32 table: sin on even dims, cos on odd dims."""
    positions = np.arange(max_positions, dtype=np.float64)[:, None]
    rates = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2, dtype=np.float64) / d_model)
    angles = positions * rates[None, :]
    table = np.zeros((max_positions, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : d_model // 2])
    return table.astype(np.float32)


@keras.saving.register_keras_serializable(package="nmt_kd")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Adds fixed sinusoidal position encodings (no weights).

    Example:
        >>> pe = SinusoidalPositionEncoding(max_positions=64, d_model=8)
        >>> pe(tf.zeros([2, 5, 8])).shape
        TensorShape([2, 5, 8])
        >>> pe.at(3).shape  # the encoding of one position, for incremental decoding
        TensorShape([8])
    """

    def __init__(self, max_positions: int, d_model: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_positions = int(max_positions)
        self.d_model = int(d_model)
        # A constant, not a variable: it is not trained and need not be saved.
        self._table = tf.constant(sinusoidal_table(self.max_positions, self.d_model))
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        """``x`` ``[B, T, D]`` + encodings of positions ``0..T-1``."""
        length = tf.shape(x)[1]
        return x + tf.cast(self._table[:length], x.dtype)[None]

    def at(self, step: tf.Tensor | int, dtype: tf.DType | str = "float32") -> tf.Tensor:
        """The ``[D]`` encoding of position ``step``."""
        return tf.cast(tf.gather(self._table, step), dtype)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"max_positions": self.max_positions, "d_model": self.d_model})
        return config


@keras.saving.register_keras_serializable(package="nmt_kd")
class SharedEmbedding(keras.layers.Layer):
    """One ``[V, D]`` matrix used for source and target embeddings and the output layer.

    ``call(ids)`` looks tokens up; ``project(h)`` returns float32 logits ``h @ E^T (+ b)``.

    Example:
        >>> emb = SharedEmbedding(vocab_size=50, d_model=8)
        >>> h = emb(tf.constant([[2, 5, 3]]))
        >>> emb.project(h).shape
        TensorShape([1, 3, 50])
    """

    def __init__(
        self, vocab_size: int, d_model: int, use_output_bias: bool = True, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.d_model = int(d_model)
        self.use_output_bias = bool(use_output_bias)

    def build(self, input_shape=None) -> None:
        # std D^-0.5: after the sqrt(D) input scaling the embeddings have unit scale, and
        # the tied output projection starts with logits of moderate size.
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocab_size, self.d_model),
            initializer=keras.initializers.RandomNormal(stddev=self.d_model**-0.5),
            # Gather rows in float32 and cast only those, instead of casting all of E.
            autocast=False,
        )
        self.output_bias = (
            self.add_weight(
                name="output_bias", shape=(self.vocab_size,), initializer="zeros", autocast=False
            )
            if self.use_output_bias
            else None
        )

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.gather(self.embeddings, tf.cast(ids, tf.int32)), self.compute_dtype)

    def project(self, h: tf.Tensor) -> tf.Tensor:
        """``[..., D]`` hidden states -> float32 logits ``[..., V]``."""
        h = tf.cast(h, self.compute_dtype)
        kernel = tf.cast(self.embeddings, self.compute_dtype)
        lead = tf.shape(h)[:-1]
        logits = tf.matmul(tf.reshape(h, [-1, self.d_model]), kernel, transpose_b=True)
        logits = tf.cast(logits, tf.float32)
        if self.output_bias is not None:
            logits = tf.nn.bias_add(logits, tf.convert_to_tensor(self.output_bias))
        return tf.reshape(logits, tf.concat([lead, [self.vocab_size]], axis=0))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "d_model": self.d_model,
                "use_output_bias": self.use_output_bias,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="nmt_kd")
class LayerNorm(keras.layers.Layer):
    """Layer normalization over the last axis, always computed in float32.

    Example:
        >>> LayerNorm()(tf.random.normal([2, 3, 8])).shape
        TensorShape([2, 3, 8])
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape) -> None:
        dim = int(input_shape[-1])
        # autocast=False: gamma/beta are used in float32 (bf16 would round them).
        self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones", autocast=False)
        self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros", autocast=False)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        x32 = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(x32, axes=[-1], keepdims=True)
        y = (x32 - mean) * tf.math.rsqrt(variance + self.epsilon)
        y = y * tf.convert_to_tensor(self.gamma) + tf.convert_to_tensor(self.beta)
        return tf.cast(y, self.compute_dtype)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="nmt_kd")
class FeedForward(keras.layers.Layer):
    """Position-wise ``W2 act(W1 x + b1) + b2``.

    Example:
        >>> FeedForward(d_model=8, ff_dim=16)(tf.zeros([2, 3, 8])).shape
        TensorShape([2, 3, 8])
    """

    def __init__(self, d_model: int, ff_dim: int, activation: str = "relu", **kwargs) -> None:
        super().__init__(**kwargs)
        self.d_model = int(d_model)
        self.ff_dim = int(ff_dim)
        self.activation = activation
        self._act = keras.activations.get(activation)

    def build(self, input_shape=None) -> None:
        init = keras.initializers.GlorotUniform()
        self.kernel_in = self.add_weight(
            name="kernel_in", shape=(self.d_model, self.ff_dim), initializer=init
        )
        self.bias_in = self.add_weight(name="bias_in", shape=(self.ff_dim,), initializer="zeros")
        self.kernel_out = self.add_weight(
            name="kernel_out", shape=(self.ff_dim, self.d_model), initializer=init
        )
        self.bias_out = self.add_weight(name="bias_out", shape=(self.d_model,), initializer="zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        dt = self.compute_dtype
        x = tf.cast(x, dt)
        h = self._act(linear(x, tf.cast(self.kernel_in, dt), tf.cast(self.bias_in, dt)))
        return linear(h, tf.cast(self.kernel_out, dt), tf.cast(self.bias_out, dt))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {"d_model": self.d_model, "ff_dim": self.ff_dim, "activation": self.activation}
        )
        return config


class _BlockBase(keras.layers.Layer):
    """Shared constructor/config and the residual wiring of encoder and decoder blocks."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        ff_dim: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation: str = "relu",
        pre_norm: bool = True,
        epsilon: float = 1e-5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.d_model = int(d_model)
        self.num_heads = int(num_heads)
        self.ff_dim = int(ff_dim)
        self.dropout = float(dropout)
        self.attention_dropout = float(attention_dropout)
        self.activation = activation
        self.pre_norm = bool(pre_norm)
        self.epsilon = float(epsilon)
        policy = self.dtype_policy
        self.self_attn = MultiHeadAttention(
            d_model,
            num_heads,
            attention_dropout,
            self_attention=True,
            dtype=policy,
            name="self_attention",
        )
        self.self_attn_norm = LayerNorm(epsilon, dtype=policy, name="self_attention_norm")
        self.ffn = FeedForward(d_model, ff_dim, activation, dtype=policy, name="ffn")
        self.ffn_norm = LayerNorm(epsilon, dtype=policy, name="ffn_norm")
        # One stateless dropout layer serves every residual branch of the block.
        self.residual_dropout = (
            keras.layers.Dropout(self.dropout, dtype=policy) if self.dropout > 0 else None
        )

    def _residual(self, x, norm, fn, training):
        """Pre-LN: ``x + drop(fn(LN(x)))``; post-LN: ``LN(x + drop(fn(x)))``."""
        y = fn(norm(x) if self.pre_norm else x)
        if self.residual_dropout is not None and training:
            y = self.residual_dropout(y, training=training)
        x = x + tf.cast(y, x.dtype)
        return x if self.pre_norm else norm(x)

    def build(self, input_shape=None) -> None:
        shape = (None, None, self.d_model)
        for layer in (self.self_attn, self.self_attn_norm, self.ffn, self.ffn_norm):
            layer.build(shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "d_model": self.d_model,
                "num_heads": self.num_heads,
                "ff_dim": self.ff_dim,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "activation": self.activation,
                "pre_norm": self.pre_norm,
                "epsilon": self.epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="nmt_kd")
class TransformerEncoderBlock(_BlockBase):
    """Self-attention + feed-forward encoder block.

    Example:
        >>> block = TransformerEncoderBlock(d_model=32, num_heads=4, ff_dim=64)
        >>> block(tf.zeros([2, 7, 32])).shape
        TensorShape([2, 7, 32])
    """

    def call(
        self, x: tf.Tensor, attention_bias: tf.Tensor | None = None, training: bool | None = None
    ) -> tf.Tensor:
        """``x`` ``[B,S,D]``; ``attention_bias`` ``[B,1,1,S]`` masks source padding."""
        x = self._residual(
            x,
            self.self_attn_norm,
            lambda h: self.self_attn(h, attention_bias=attention_bias, training=training),
            training,
        )
        return self._residual(x, self.ffn_norm, self.ffn, training)


@keras.saving.register_keras_serializable(package="nmt_kd")
class TransformerDecoderBlock(_BlockBase):
    """Causal self-attention + cross-attention + feed-forward decoder block.

    ``call`` runs a whole (teacher-forced) target sequence; ``precompute_cross_kv`` and
    ``step`` run incremental decoding with a preallocated self-attention cache and
    cross-attention keys/values projected once.

    Example:
        >>> block = TransformerDecoderBlock(d_model=32, num_heads=4, ff_dim=64)
        >>> memory = tf.zeros([2, 7, 32])
        >>> block(tf.zeros([2, 5, 32]), memory).shape
        TensorShape([2, 5, 32])
    """

    def __init__(self, d_model: int, num_heads: int, ff_dim: int, **kwargs) -> None:
        super().__init__(d_model, num_heads, ff_dim, **kwargs)
        policy = self.dtype_policy
        self.cross_attn = MultiHeadAttention(
            d_model,
            num_heads,
            self.attention_dropout,
            self_attention=False,
            dtype=policy,
            name="cross_attention",
        )
        self.cross_attn_norm = LayerNorm(self.epsilon, dtype=policy, name="cross_attention_norm")

    def build(self, input_shape=None) -> None:
        super().build(input_shape)
        shape = (None, None, self.d_model)
        self.cross_attn.build(shape)
        self.cross_attn_norm.build(shape)

    def call(
        self,
        x: tf.Tensor,
        memory: tf.Tensor,
        self_attention_bias: tf.Tensor | None = None,
        cross_attention_bias: tf.Tensor | None = None,
        training: bool | None = None,
    ) -> tf.Tensor:
        """``x`` ``[B,T,D]``, ``memory`` ``[B,S,D]``; biases ``[1,1,T,T]`` and ``[B,1,1,S]``."""
        x = self._residual(
            x,
            self.self_attn_norm,
            lambda h: self.self_attn(h, attention_bias=self_attention_bias, training=training),
            training,
        )
        x = self._residual(
            x,
            self.cross_attn_norm,
            lambda h: self.cross_attn(
                h, memory, attention_bias=cross_attention_bias, training=training
            ),
            training,
        )
        return self._residual(x, self.ffn_norm, self.ffn, training)

    def precompute_cross_kv(self, memory: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Cross-attention keys and values ``[B,H,S,Dh]``, computed once per source."""
        return self.cross_attn.compute_kv(memory)

    def step(
        self,
        x: tf.Tensor,
        step: tf.Tensor | int,
        self_k: tf.Tensor,
        self_v: tf.Tensor,
        self_attention_bias: tf.Tensor,
        cross_k: tf.Tensor,
        cross_v: tf.Tensor,
        cross_attention_bias: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Decode one position: ``x`` ``[B,1,D]`` -> ``(x, new_self_k, new_self_v)``."""
        new_k, new_v = self_k, self_v

        def self_attention(h):
            nonlocal new_k, new_v
            out, new_k, new_v = self.self_attn.step(h, self_k, self_v, step, self_attention_bias)
            return out

        # ``.call`` instead of ``__call__``: the Keras call machinery costs more than the
        # math of a one-position step in eager mode, and these layers cast their inputs
        # and weights explicitly, so they need no autocast scope.
        x = self._residual(x, self.self_attn_norm.call, self_attention, False)
        x = self._residual(
            x,
            self.cross_attn_norm.call,
            lambda h: self.cross_attn.attend_kv(h, cross_k, cross_v, cross_attention_bias),
            False,
        )
        x = self._residual(x, self.ffn_norm.call, self.ffn.call, False)
        return x, new_k, new_v
