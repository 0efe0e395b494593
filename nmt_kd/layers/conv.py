"""Convolutional sequence-to-sequence (ConvS2S) building blocks (Gehring et al., 2017).

Layout conventions (all batch-first): sequences are ``[B, T, C]``; source masks are
``[B, S]`` with 1 for real tokens and 0 for padding.

* :class:`GLUConv1D`: dropout -> Conv1D to ``2C`` channels -> gated linear unit, either
  centred ("same" padding, encoder) or causal (left padding of ``kernel_size - 1``,
  decoder). The causal variant decodes incrementally with :meth:`GLUConv1D.step`, which keeps
  a buffer of the last ``kernel_size - 1`` inputs and applies the kernel to exactly one
  window, as one GEMM.
* :class:`ConvAttention`: ConvS2S single-hop dot-product attention of one decoder layer over
  the encoder output (keys ``z``, values ``z + e``).
* :class:`ConvEncoderBlock` / :class:`ConvDecoderBlock`: the residual blocks.
* :class:`Projection`, :class:`LearnedPositionEmbedding`: plain linear maps and learned
  positions with explicit casts, so they can be called through ``.call`` in a decode step.

Every layer casts its inputs and weights to its compute dtype explicitly, so the public
methods also work outside ``__call__`` (where Keras' autocast scope is not active) and under
``mixed_bfloat16``; attention scores and softmax are computed in float32.

Initialisation follows fairseq's ``fconv``: normal with std ``sqrt(4 (1 - p) / (k Cin))`` for
the GLU convolutions and ``sqrt((1 - p) / Din)`` for linear maps followed by dropout. The
convolutions are plain (not weight-normalised).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from nmt_kd.layers.attention import dynamic_zeros, linear, mask_value

__all__ = [
    "ConvAttention",
    "ConvDecoderBlock",
    "ConvEncoderBlock",
    "GLUConv1D",
    "LearnedPositionEmbedding",
    "Projection",
    "glu",
    "source_attention_terms",
]

SQRT_HALF = math.sqrt(0.5)


def glu(x: tf.Tensor) -> tf.Tensor:
    """Gated linear unit over the last axis: ``[..., 2C]`` -> ``a * sigmoid(b)``, ``[..., C]``."""
    a, b = tf.split(x, 2, axis=-1)
    return a * tf.sigmoid(b)


def source_attention_terms(
    src_mask: tf.Tensor, dtype: tf.DType | str
) -> tuple[tf.Tensor, tf.Tensor]:
    """From a ``[B, S]`` 1/0 source mask: the additive score bias ``[B, 1, S]`` (float32) and
    the ConvS2S context scale ``sqrt(real source length)`` ``[B, 1, 1]`` in ``dtype``.

    ConvS2S multiplies the attention context by ``m * sqrt(1/m)`` for a source of ``m`` real
    tokens (the variance of a sum of ``m`` terms); an all-padding row gets scale 0.
    """
    src_mask = tf.cast(src_mask, tf.float32)
    bias = tf.expand_dims((1.0 - src_mask) * mask_value(tf.float32), 1)
    scale = tf.reshape(tf.sqrt(tf.reduce_sum(src_mask, axis=1)), [-1, 1, 1])
    return bias, tf.cast(scale, dtype)


@keras.saving.register_keras_serializable(package="nmt_kd")
class Projection(keras.layers.Layer):
    """``x @ W + b`` over the last axis, with ``W ~ N(0, init_scale / Din)``.

    Example:
        >>> Projection(units=8)(tf.zeros([2, 3, 4])).shape
        TensorShape([2, 3, 8])
    """

    def __init__(self, units: int, init_scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.init_scale = float(init_scale)

    def build(self, input_shape) -> None:
        fan_in = int(input_shape[-1])
        std = math.sqrt(self.init_scale / fan_in)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(fan_in, self.units),
            initializer=keras.initializers.RandomNormal(stddev=std),
        )
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        dt = self.compute_dtype
        return linear(tf.cast(x, dt), tf.cast(self.kernel, dt), tf.cast(self.bias, dt))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"units": self.units, "init_scale": self.init_scale})
        return config


@keras.saving.register_keras_serializable(package="nmt_kd")
class LearnedPositionEmbedding(keras.layers.Layer):
    """Adds a learned ``[max_positions, d_model]`` position embedding.

    Example:
        >>> pe = LearnedPositionEmbedding(max_positions=64, d_model=8)
        >>> pe(tf.zeros([2, 5, 8])).shape
        TensorShape([2, 5, 8])
        >>> pe.at(3).shape  # the embedding of one position, for incremental decoding
        TensorShape([8])
    """

    def __init__(self, max_positions: int, d_model: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_positions = int(max_positions)
        self.d_model = int(d_model)

    def build(self, input_shape=None) -> None:
        self.table = self.add_weight(
            name="table",
            shape=(self.max_positions, self.d_model),
            initializer=keras.initializers.RandomNormal(stddev=self.d_model**-0.5),
            # Slice/gather the rows in float32 and cast only those.
            autocast=False,
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        """``x`` ``[B, T, D]`` + embeddings of positions ``0..T-1``."""
        x = tf.cast(x, self.compute_dtype)
        rows = tf.convert_to_tensor(self.table)[: tf.shape(x)[1]]
        return x + tf.expand_dims(tf.cast(rows, x.dtype), 0)

    def at(self, step: tf.Tensor | int, dtype: tf.DType | str = "float32") -> tf.Tensor:
        """The ``[D]`` embedding of position ``step``."""
        return tf.cast(tf.gather(self.table, step), dtype)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"max_positions": self.max_positions, "d_model": self.d_model})
        return config


@keras.saving.register_keras_serializable(package="nmt_kd")
class GLUConv1D(keras.layers.Layer):
    """Dropout -> Conv1D (``channels`` -> ``2 * channels``) -> GLU, length-preserving.

    ``causal=False`` pads ``(k-1)//2`` positions on the left and ``k//2`` on the right;
    ``causal=True`` pads ``k-1`` on the left, so output ``t`` sees inputs ``<= t`` only.

    Incremental decoding (causal only): :meth:`initial_buffer` gives the zero buffer of the
    last ``k-1`` inputs (the left padding), and :meth:`step` consumes one new input.

    Example:
        >>> conv = GLUConv1D(channels=8, kernel_size=3, causal=True)
        >>> conv(tf.zeros([2, 5, 8])).shape
        TensorShape([2, 5, 8])
        >>> y, buffer = conv.step(tf.zeros([2, 1, 8]), conv.initial_buffer(2))
        >>> y.shape, buffer.shape
        (TensorShape([2, 1, 8]), TensorShape([2, 2, 8]))
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        causal: bool = False,
        dropout: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.channels = int(channels)
        self.kernel_size = int(kernel_size)
        self.causal = bool(causal)
        self.dropout = float(dropout)
        self._dropout = (
            keras.layers.Dropout(self.dropout, dtype=self.dtype_policy) if self.dropout > 0 else None
        )

    def build(self, input_shape=None) -> None:
        k, c = self.kernel_size, self.channels
        std = math.sqrt(4.0 * (1.0 - self.dropout) / (k * c))
        self.kernel = self.add_weight(
            name="kernel",
            shape=(k, c, 2 * c),
            initializer=keras.initializers.RandomNormal(stddev=std),
        )
        self.bias = self.add_weight(name="bias", shape=(2 * c,), initializer="zeros")

    def _padding(self) -> tuple[int, int]:
        k = self.kernel_size
        return (k - 1, 0) if self.causal else ((k - 1) // 2, k // 2)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """``x`` ``[B, T, C]`` -> ``[B, T, C]``."""
        dt = self.compute_dtype
        x = tf.cast(x, dt)
        if self._dropout is not None and training:
            x = self._dropout(x, training=training)
        left, right = self._padding()
        if left or right:
            x = tf.pad(x, [[0, 0], [left, right], [0, 0]])
        y = tf.nn.conv1d(x, tf.cast(self.kernel, dt), stride=1, padding="VALID")
        return glu(tf.nn.bias_add(y, tf.cast(self.bias, dt)))

    def initial_buffer(self, batch_size: int | tf.Tensor) -> tf.Tensor:
        """Zeros ``[B, kernel_size - 1, C]``: the causal left padding before position 0."""
        return dynamic_zeros([batch_size, self.kernel_size - 1, self.channels], self.compute_dtype)

    def step(self, x: tf.Tensor, buffer: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One causal position: ``x`` ``[B, 1, C]`` and the previous ``k-1`` inputs ``buffer``
        ``[B, k-1, C]`` -> (output ``[B, 1, C]``, the shifted buffer ``[B, k-1, C]``).

        The window ``[buffer; x]`` is flattened to ``[B, k*C]`` and multiplied by the kernel
        viewed as ``[k*C, 2C]``: one GEMM, the same arithmetic as the convolution at that
        position.
        """
        if not self.causal:
            raise ValueError("step is for causal convolutions")
        dt = self.compute_dtype
        k, c = self.kernel_size, self.channels
        window = tf.concat([tf.cast(buffer, dt), tf.cast(x, dt)], axis=1)  # [B, k, C]
        kernel = tf.reshape(tf.cast(self.kernel, dt), [k * c, 2 * c])
        y = tf.matmul(tf.reshape(window, [-1, k * c]), kernel)
        y = tf.expand_dims(glu(tf.nn.bias_add(y, tf.cast(self.bias, dt))), 1)
        new_buffer = window[:, 1:]
        new_buffer.set_shape(buffer.shape)  # keep the loop-invariant static shape
        return y, new_buffer

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "kernel_size": self.kernel_size,
                "causal": self.causal,
                "dropout": self.dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="nmt_kd")
class ConvAttention(keras.layers.Layer):
    """ConvS2S attention of decoder states over the encoder output.

    ``q = (W_in h + b_in + g) * sqrt(.5)`` (``g``: target embedding), scores ``q . z_j``
    against the encoder keys, context ``sum_j a_j (z_j + e_j)`` scaled by
    ``sqrt(source length)``, then ``(W_out c + b_out + h) * sqrt(.5)``.

    Example:
        >>> attn = ConvAttention(hidden=8, embed_dim=4)
        >>> h, g, z = tf.zeros([2, 3, 8]), tf.zeros([2, 3, 4]), tf.zeros([2, 5, 4])
        >>> bias, scale = source_attention_terms(tf.ones([2, 5]), "float32")
        >>> attn(h, g, z, z, bias, scale).shape
        TensorShape([2, 3, 8])
    """

    def __init__(self, hidden: int, embed_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hidden = int(hidden)
        self.embed_dim = int(embed_dim)
        policy = self.dtype_policy
        self.in_projection = Projection(self.embed_dim, dtype=policy, name="in_projection")
        self.out_projection = Projection(self.hidden, dtype=policy, name="out_projection")

    def build(self, input_shape=None) -> None:
        self.in_projection.build((None, None, self.hidden))
        self.out_projection.build((None, None, self.embed_dim))

    def call(
        self,
        x: tf.Tensor,
        target_embedding: tf.Tensor,
        keys: tf.Tensor,
        values: tf.Tensor,
        attention_bias: tf.Tensor,
        context_scale: tf.Tensor,
    ) -> tf.Tensor:
        """``x`` ``[B,T,H]``, ``target_embedding`` ``[B,T,E]``, ``keys``/``values`` ``[B,S,E]``,
        ``attention_bias`` ``[B,1,S]`` and ``context_scale`` ``[B,1,1]`` from
        :func:`source_attention_terms` -> ``[B,T,H]``."""
        dt = self.compute_dtype
        x = tf.cast(x, dt)
        half = tf.cast(SQRT_HALF, dt)
        q = (self.in_projection.call(x) + tf.cast(target_embedding, dt)) * half
        scores = tf.cast(tf.matmul(q, tf.cast(keys, dt), transpose_b=True), tf.float32)
        probs = tf.nn.softmax(scores + tf.cast(attention_bias, tf.float32), axis=-1)
        context = tf.matmul(tf.cast(probs, dt), tf.cast(values, dt))
        context = context * tf.cast(context_scale, dt)
        return (self.out_projection.call(context) + x) * half

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"hidden": self.hidden, "embed_dim": self.embed_dim})
        return config


@keras.saving.register_keras_serializable(package="nmt_kd")
class ConvEncoderBlock(keras.layers.Layer):
    """Mask padding -> dropout -> "same" GLU convolution -> residual, scaled by ``sqrt(.5)``.

    Example:
        >>> block = ConvEncoderBlock(hidden=8, kernel_size=3)
        >>> block(tf.zeros([2, 5, 8]), tf.ones([2, 5, 1])).shape
        TensorShape([2, 5, 8])
    """

    def __init__(self, hidden: int, kernel_size: int, dropout: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hidden = int(hidden)
        self.kernel_size = int(kernel_size)
        self.dropout = float(dropout)
        self.conv = GLUConv1D(
            self.hidden,
            self.kernel_size,
            causal=False,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name="conv",
        )

    def build(self, input_shape=None) -> None:
        self.conv.build((None, None, self.hidden))

    def call(
        self, x: tf.Tensor, keep: tf.Tensor | None = None, training: bool | None = None
    ) -> tf.Tensor:
        """``x`` ``[B,S,H]``; ``keep`` ``[B,S,1]`` (1 real, 0 padding) zeroes padded inputs
        before the convolution, so padding never leaks into real positions."""
        x = tf.cast(x, self.compute_dtype)
        h = x if keep is None else x * tf.cast(keep, x.dtype)
        h = self.conv(h, training=training)
        return (h + x) * tf.cast(SQRT_HALF, x.dtype)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {"hidden": self.hidden, "kernel_size": self.kernel_size, "dropout": self.dropout}
        )
        return config


@keras.saving.register_keras_serializable(package="nmt_kd")
class ConvDecoderBlock(keras.layers.Layer):
    """Dropout -> causal GLU convolution -> attention -> residual, scaled by ``sqrt(.5)``.

    ``call`` runs a whole (teacher-forced) target sequence; ``step`` decodes one position
    with the buffer of the convolution's previous inputs (see :meth:`GLUConv1D.step`).

    Example:
        >>> block = ConvDecoderBlock(hidden=8, embed_dim=4, kernel_size=3)
        >>> z = tf.zeros([2, 5, 4])
        >>> bias, scale = source_attention_terms(tf.ones([2, 5]), "float32")
        >>> block(tf.zeros([2, 3, 8]), tf.zeros([2, 3, 4]), z, z, bias, scale).shape
        TensorShape([2, 3, 8])
    """

    def __init__(
        self, hidden: int, embed_dim: int, kernel_size: int, dropout: float = 0.0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.hidden = int(hidden)
        self.embed_dim = int(embed_dim)
        self.kernel_size = int(kernel_size)
        self.dropout = float(dropout)
        policy = self.dtype_policy
        self.conv = GLUConv1D(
            self.hidden, self.kernel_size, causal=True, dropout=self.dropout, dtype=policy,
            name="conv",
        )
        self.attention = ConvAttention(self.hidden, self.embed_dim, dtype=policy, name="attention")

    def build(self, input_shape=None) -> None:
        self.conv.build((None, None, self.hidden))
        self.attention.build()

    def call(
        self,
        x: tf.Tensor,
        target_embedding: tf.Tensor,
        keys: tf.Tensor,
        values: tf.Tensor,
        attention_bias: tf.Tensor,
        context_scale: tf.Tensor,
        training: bool | None = None,
    ) -> tf.Tensor:
        """``x`` ``[B,T,H]`` -> ``[B,T,H]`` (see :class:`ConvAttention` for the rest)."""
        x = tf.cast(x, self.compute_dtype)
        h = self.conv(x, training=training)
        h = self.attention(h, target_embedding, keys, values, attention_bias, context_scale)
        return (h + x) * tf.cast(SQRT_HALF, x.dtype)

    def initial_buffer(self, batch_size: int | tf.Tensor) -> tf.Tensor:
        return self.conv.initial_buffer(batch_size)

    def step(
        self,
        x: tf.Tensor,
        target_embedding: tf.Tensor,
        buffer: tf.Tensor,
        keys: tf.Tensor,
        values: tf.Tensor,
        attention_bias: tf.Tensor,
        context_scale: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Decode one position: ``x`` ``[B,1,H]`` -> ``(x [B,1,H], new_buffer)``."""
        # ``.call`` on the sub-layers: they cast explicitly, and skipping the Keras call
        # machinery makes eager steps cheaper.
        x = tf.cast(x, self.compute_dtype)
        h, buffer = self.conv.step(x, buffer)
        h = self.attention.call(h, target_embedding, keys, values, attention_bias, context_scale)
        return (h + x) * tf.cast(SQRT_HALF, x.dtype), buffer

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "hidden": self.hidden,
                "embed_dim": self.embed_dim,
                "kernel_size": self.kernel_size,
                "dropout": self.dropout,
            }
        )
        return config
