"""The convolutional student (ConvS2S, Gehring et al., 2017) implementing the seq2seq contract.

See ``nmt_kd/models/contract.md``. One embedding matrix is shared by the source, the target
and the output projection; positions are learned (one table for the source, one for the
target). The encoder and the decoder are stacks of gated (GLU) convolutions with scaled
residuals; every decoder layer attends over the encoder output with ConvS2S attention
(keys ``z``, values ``(z + e) * sqrt(.5)``). Decoding is incremental: each decoder layer
keeps only the last ``kernel_size - 1`` inputs of its convolution, so a step costs the same
at every position.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from nmt_kd import PAD_ID
from nmt_kd.layers.conv import (
    ConvDecoderBlock,
    ConvEncoderBlock,
    LearnedPositionEmbedding,
    Projection,
    source_attention_terms,
)
from nmt_kd.layers.transformer import SharedEmbedding

__all__ = ["CNNStudent"]

_SQRT_HALF = math.sqrt(0.5)


@keras.saving.register_keras_serializable(package="nmt_kd")
class CNNStudent(keras.Model):
    """ConvS2S encoder-decoder with tied embeddings and incremental decoding.

    Args:
        vocab_size: size of the joint source/target vocabulary.
        embed_dim: width of the token/position embeddings, of the attention space and of the
            tied output projection.
        hidden: number of channels of the convolutions.
        encoder_layers, decoder_layers: stack depths (every decoder layer has attention).
        kernel_size: convolution width (encoder: centred; decoder: causal).
        dropout: dropout on the embeddings, on the input of every convolution and before the
            output projection.
        max_positions: longest source or target sequence the position tables cover.
        output_bias: add a learned ``[V]`` bias to the tied output projection.

    Example:
        >>> model = CNNStudent(vocab_size=50, embed_dim=16, hidden=16)
        >>> src = tf.constant([[5, 6, 7, 3, 0]])
        >>> tgt_in = tf.constant([[2, 8, 9]])
        >>> model((src, tgt_in)).shape
        TensorShape([1, 3, 50])
        >>> state = model.init_decode_state(model.encode(src), max_len=10)
        >>> logits, state = model.decode_step(tf.constant([2]), tf.constant(0), state)
        >>> logits.shape
        TensorShape([1, 50])
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 256,
        hidden: int = 256,
        encoder_layers: int = 4,
        decoder_layers: int = 3,
        kernel_size: int = 3,
        dropout: float = 0.1,
        max_positions: int = 256,
        output_bias: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.embed_dim = int(embed_dim)
        self.hidden = int(hidden)
        self.encoder_layers = int(encoder_layers)
        self.decoder_layers = int(decoder_layers)
        self.kernel_size = int(kernel_size)
        self.dropout = float(dropout)
        self.max_positions = int(max_positions)
        self.output_bias = bool(output_bias)
        if self.kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        if self.decoder_layers < 1:
            raise ValueError(f"decoder_layers must be >= 1, got {decoder_layers}")

        # Sub-layers follow this model's dtype policy rather than whatever global policy is
        # set when the model happens to be rebuilt (e.g. at load time).
        policy = self.dtype_policy
        keep = 1.0 - self.dropout  # fairseq fconv init: linear maps followed by dropout
        self.embedding = SharedEmbedding(
            self.vocab_size,
            self.embed_dim,
            use_output_bias=self.output_bias,
            dtype=policy,
            name="shared_embedding",
        )
        self.src_positions = LearnedPositionEmbedding(
            self.max_positions, self.embed_dim, dtype=policy, name="src_positions"
        )
        self.tgt_positions = LearnedPositionEmbedding(
            self.max_positions, self.embed_dim, dtype=policy, name="tgt_positions"
        )
        self.dropout_layer = (
            keras.layers.Dropout(self.dropout, dtype=policy, name="dropout")
            if self.dropout > 0
            else None
        )
        self.encoder_in = Projection(self.hidden, keep, dtype=policy, name="encoder_in")
        self.encoder_blocks = [
            ConvEncoderBlock(
                self.hidden, self.kernel_size, self.dropout, dtype=policy, name=f"encoder_{i}"
            )
            for i in range(self.encoder_layers)
        ]
        self.encoder_out = Projection(self.embed_dim, dtype=policy, name="encoder_out")
        self.decoder_in = Projection(self.hidden, keep, dtype=policy, name="decoder_in")
        self.decoder_blocks = [
            ConvDecoderBlock(
                self.hidden,
                self.embed_dim,
                self.kernel_size,
                self.dropout,
                dtype=policy,
                name=f"decoder_{i}",
            )
            for i in range(self.decoder_layers)
        ]
        self.decoder_out = Projection(self.embed_dim, dtype=policy, name="decoder_out")

    # -- building -----------------------------------------------------------------------

    def build(self, input_shape=None) -> None:
        """Create every weight; ``input_shape`` is ignored (all shapes follow the config)."""
        embed_shape = (None, None, self.embed_dim)
        hidden_shape = (None, None, self.hidden)
        self.embedding.build()
        self.src_positions.build()
        self.tgt_positions.build()
        self.encoder_in.build(embed_shape)
        self.decoder_in.build(embed_shape)
        self.encoder_out.build(hidden_shape)
        self.decoder_out.build(hidden_shape)
        for block in (*self.encoder_blocks, *self.decoder_blocks):
            block.build(hidden_shape)

    # -- helpers ------------------------------------------------------------------------

    def _drop(self, x: tf.Tensor, training: bool | None) -> tf.Tensor:
        if self.dropout_layer is not None and training:
            return self.dropout_layer(x, training=training)
        return x

    # -- the contract -------------------------------------------------------------------

    def call(self, inputs, training: bool | None = False) -> tf.Tensor:
        """Teacher forcing: ``(src [B,S], tgt_in [B,T])`` -> float32 logits ``[B,T,V]``."""
        src, tgt_in = inputs
        encoded = self.encode(src, training=training)
        return self.decode_sequence(tgt_in, encoded, training=training)

    def encode(self, src: tf.Tensor, training: bool | None = False) -> dict[str, tf.Tensor]:
        """``src`` ``[B,S]`` -> ``{"keys": z [B,S,E], "values": (z+e)*sqrt(.5) [B,S,E],
        "src_mask": [B,S] float32}``; ``z`` is zero at padded positions."""
        src = tf.cast(src, tf.int32)
        src_mask = tf.cast(tf.not_equal(src, PAD_ID), tf.float32)
        dtype = self.compute_dtype
        keep = tf.expand_dims(tf.cast(src_mask, dtype), -1)  # (no new_axis slices: TFLite)
        e = self._drop(self.src_positions(self.embedding(src)), training)
        x = self.encoder_in(e)
        for block in self.encoder_blocks:
            x = block(x, keep, training=training)
        z = self.encoder_out(x) * keep
        values = (z + e) * tf.cast(_SQRT_HALF, dtype)
        return {"keys": z, "values": values, "src_mask": src_mask}

    def decode_sequence(
        self, tgt_in: tf.Tensor, encoded: dict[str, tf.Tensor], training: bool | None = False
    ) -> tf.Tensor:
        """Teacher-forced decoder over the whole ``tgt_in`` ``[B,T]`` -> logits ``[B,T,V]``."""
        tgt_in = tf.cast(tgt_in, tf.int32)
        # Causal convolutions suffice: target padding only ever follows real tokens, and the
        # loss ignores padded positions.
        bias, scale = source_attention_terms(encoded["src_mask"], self.compute_dtype)
        g = self._drop(self.tgt_positions(self.embedding(tgt_in)), training)
        x = self.decoder_in(g)
        for block in self.decoder_blocks:
            x = block(x, g, encoded["keys"], encoded["values"], bias, scale, training=training)
        x = self._drop(self.decoder_out(x), training)
        return self.embedding.project(x)

    def init_decode_state(
        self, encoded: dict[str, tf.Tensor], max_len: int
    ) -> dict[str, tf.Tensor]:
        """Fixed-shape decoding state (its shapes do not depend on ``max_len``).

        Keys (all batch-first): ``"keys"``/``"values"`` ``[B,S,E]``, ``"src_mask"`` ``[B,S]``
        float32 and, for each decoder layer ``i``, ``f"dec{i}_buffer"`` ``[B,kernel_size-1,H]``:
        that layer's last ``kernel_size - 1`` convolution inputs (zeros = the causal padding).
        """
        if isinstance(max_len, int) and max_len > self.max_positions:
            raise ValueError(f"max_len={max_len} exceeds max_positions={self.max_positions}")
        dtype = self.compute_dtype
        keys = tf.cast(encoded["keys"], dtype)
        batch = tf.shape(keys)[0]
        state = {
            "keys": keys,
            "values": tf.cast(encoded["values"], dtype),
            "src_mask": tf.cast(encoded["src_mask"], tf.float32),
        }
        for i, block in enumerate(self.decoder_blocks):
            state[f"dec{i}_buffer"] = block.initial_buffer(batch)
        return state

    def decode_step(
        self, token_ids: tf.Tensor, step: tf.Tensor | int, state: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """One incremental step: ``token_ids`` ``[B]`` at position ``step`` -> logits ``[B,V]``.

        Each decoder layer convolves its buffered ``kernel_size - 1`` previous inputs with the
        new one (one window, one GEMM), shifts the buffer and attends; the prefix is never
        recomputed.
        """
        dtype = self.compute_dtype
        step = tf.cast(step, tf.int32)
        # Sub-layers are invoked through ``.call``: they cast explicitly, and skipping the
        # Keras call machinery makes eager steps cheaper.
        g = self.embedding.call(tf.expand_dims(tf.cast(token_ids, tf.int32), 1))
        g = g + self.tgt_positions.at(step, dtype)
        x = self.decoder_in.call(g)
        keys, values = state["keys"], state["values"]
        bias, scale = source_attention_terms(state["src_mask"], dtype)
        new_state = dict(state)
        for i, block in enumerate(self.decoder_blocks):
            name = f"dec{i}_buffer"
            x, new_state[name] = block.step(x, g, state[name], keys, values, bias, scale)
        x = self.decoder_out.call(x)
        return self.embedding.project(x[:, 0]), new_state

    # -- serialization ------------------------------------------------------------------

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "embed_dim": self.embed_dim,
                "hidden": self.hidden,
                "encoder_layers": self.encoder_layers,
                "decoder_layers": self.decoder_layers,
                "kernel_size": self.kernel_size,
                "dropout": self.dropout,
                "max_positions": self.max_positions,
                "output_bias": self.output_bias,
            }
        )
        return config
