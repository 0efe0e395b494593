"""The Transformer teacher: an encoder-decoder implementing the seq2seq contract.

See ``nmt_kd/models/contract.md``. One embedding matrix is shared by the source, the target
and the output projection; positions are sinusoidal; pre-layer-norm by default.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from nmt_kd import PAD_ID
from nmt_kd.layers.attention import mask_value
from nmt_kd.layers.transformer import (
    LayerNorm,
    SharedEmbedding,
    SinusoidalPositionEncoding,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
)

__all__ = ["TransformerTeacher"]


@keras.saving.register_keras_serializable(package="nmt_kd")
class TransformerTeacher(keras.Model):
    """Encoder-decoder Transformer with tied embeddings and incremental decoding.

    Args:
        vocab_size: size of the joint source/target vocabulary.
        d_model: model width; ``num_heads`` must divide it.
        num_encoder_layers, num_decoder_layers: stack depths.
        num_heads: attention heads.
        ff_dim: inner width of the feed-forward sub-layers.
        dropout: dropout on embeddings and on every sub-layer output (residual branch).
        attention_dropout: dropout on attention probabilities.
        activation: feed-forward activation (a Keras activation name, e.g. "relu", "gelu").
        pre_norm: pre-layer-norm blocks plus a final LayerNorm after each stack when True;
            post-layer-norm blocks when False.
        max_positions: longest source or target sequence the position table covers.
        output_bias: add a learned ``[V]`` bias to the tied output projection.

    Example:
        >>> model = TransformerTeacher(vocab_size=50, d_model=32, num_heads=2, ff_dim=64)
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
        d_model: int = 256,
        num_encoder_layers: int = 3,
        num_decoder_layers: int = 3,
        num_heads: int = 4,
        ff_dim: int = 1024,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation: str = "relu",
        pre_norm: bool = True,
        max_positions: int = 512,
        output_bias: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.d_model = int(d_model)
        self.num_encoder_layers = int(num_encoder_layers)
        self.num_decoder_layers = int(num_decoder_layers)
        self.num_heads = int(num_heads)
        self.ff_dim = int(ff_dim)
        self.dropout = float(dropout)
        self.attention_dropout = float(attention_dropout)
        self.activation = activation
        self.pre_norm = bool(pre_norm)
        self.max_positions = int(max_positions)
        self.output_bias = bool(output_bias)
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.head_dim = self.d_model // self.num_heads
        self._embed_scale = math.sqrt(self.d_model)

        # Sub-layers follow this model's dtype policy rather than whatever global policy is
        # set when the model happens to be rebuilt (e.g. at load time).
        policy = self.dtype_policy
        self.embedding = SharedEmbedding(
            self.vocab_size,
            self.d_model,
            use_output_bias=self.output_bias,
            dtype=policy,
            name="shared_embedding",
        )
        self.positions = SinusoidalPositionEncoding(
            self.max_positions, self.d_model, dtype=policy, name="positions"
        )
        self.embed_dropout = (
            keras.layers.Dropout(self.dropout, dtype=policy, name="embed_dropout")
            if self.dropout > 0
            else None
        )
        block_kwargs = dict(
            d_model=self.d_model,
            num_heads=self.num_heads,
            ff_dim=self.ff_dim,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            activation=self.activation,
            pre_norm=self.pre_norm,
            dtype=policy,
        )
        self.encoder_layers = [
            TransformerEncoderBlock(name=f"encoder_layer_{i}", **block_kwargs)
            for i in range(self.num_encoder_layers)
        ]
        self.decoder_layers = [
            TransformerDecoderBlock(name=f"decoder_layer_{i}", **block_kwargs)
            for i in range(self.num_decoder_layers)
        ]
        # Pre-LN leaves the residual stream un-normalized, so each stack ends with a LayerNorm.
        self.encoder_norm = LayerNorm(dtype=policy, name="encoder_norm") if self.pre_norm else None
        self.decoder_norm = LayerNorm(dtype=policy, name="decoder_norm") if self.pre_norm else None

    # -- building -----------------------------------------------------------------------

    def build(self, input_shape=None) -> None:
        """Create every weight; ``input_shape`` is ignored (all shapes follow the config)."""
        shape = (None, None, self.d_model)
        self.embedding.build()
        for layer in (*self.encoder_layers, *self.decoder_layers):
            layer.build(shape)
        for norm in (self.encoder_norm, self.decoder_norm):
            if norm is not None:
                norm.build(shape)

    # -- helpers ------------------------------------------------------------------------

    def _embed(self, ids: tf.Tensor, training: bool | None) -> tf.Tensor:
        """Scaled token embeddings plus positions ``0..T-1``: ``[B,T]`` -> ``[B,T,D]``."""
        x = self.embedding(ids) * tf.cast(self._embed_scale, self.compute_dtype)
        x = self.positions(x)
        if self.embed_dropout is not None and training:
            x = self.embed_dropout(x, training=training)
        return x

    def _padding_bias(self, src_mask: tf.Tensor) -> tf.Tensor:
        """``[B,S]`` 1/0 mask -> ``[B,1,1,S]`` additive bias (0 or a large negative)."""
        dtype = self.compute_dtype
        return ((1.0 - tf.cast(src_mask, dtype)) * mask_value(dtype))[:, None, None, :]

    def _causal_bias(self, length: tf.Tensor) -> tf.Tensor:
        """``[1,1,T,T]`` bias masking future positions."""
        dtype = self.compute_dtype
        allowed = tf.linalg.band_part(tf.ones([length, length], dtype), -1, 0)
        return ((1.0 - allowed) * mask_value(dtype))[None, None]

    # -- the contract -------------------------------------------------------------------

    def call(self, inputs, training: bool | None = False) -> tf.Tensor:
        """Teacher forcing: ``(src [B,S], tgt_in [B,T])`` -> float32 logits ``[B,T,V]``."""
        src, tgt_in = inputs
        encoded = self.encode(src, training=training)
        return self.decode_sequence(tgt_in, encoded, training=training)

    def encode(self, src: tf.Tensor, training: bool | None = False) -> dict[str, tf.Tensor]:
        """``src`` ``[B,S]`` -> ``{"memory": [B,S,D], "src_mask": [B,S] float32}``."""
        src = tf.cast(src, tf.int32)
        src_mask = tf.cast(tf.not_equal(src, PAD_ID), tf.float32)
        bias = self._padding_bias(src_mask)
        x = self._embed(src, training)
        for layer in self.encoder_layers:
            x = layer(x, attention_bias=bias, training=training)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return {"memory": x, "src_mask": src_mask}

    def decode_sequence(
        self, tgt_in: tf.Tensor, encoded: dict[str, tf.Tensor], training: bool | None = False
    ) -> tf.Tensor:
        """Teacher-forced decoder over the whole ``tgt_in`` ``[B,T]`` -> logits ``[B,T,V]``."""
        tgt_in = tf.cast(tgt_in, tf.int32)
        memory = encoded["memory"]
        cross_bias = self._padding_bias(encoded["src_mask"])
        # Causal masking alone suffices: target padding only ever follows real tokens, and
        # the loss ignores padded positions.
        self_bias = self._causal_bias(tf.shape(tgt_in)[1])
        x = self._embed(tgt_in, training)
        for layer in self.decoder_layers:
            x = layer(
                x,
                memory,
                self_attention_bias=self_bias,
                cross_attention_bias=cross_bias,
                training=training,
            )
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        return self.embedding.project(x)

    def init_decode_state(
        self, encoded: dict[str, tf.Tensor], max_len: int
    ) -> dict[str, tf.Tensor]:
        """Fixed-shape decoding state for up to ``max_len`` target positions.

        Keys (all batch-first): ``"src_mask"`` ``[B,S]``; for each decoder layer ``i``,
        ``f"dec{i}_cross_k"``/``f"dec{i}_cross_v"`` ``[B,H,S,Dh]`` (projected once here) and
        ``f"dec{i}_self_k"``/``f"dec{i}_self_v"`` ``[B,H,max_len,Dh]`` zero caches.
        """
        if isinstance(max_len, int) and max_len > self.max_positions:
            raise ValueError(f"max_len={max_len} exceeds max_positions={self.max_positions}")
        memory = tf.cast(encoded["memory"], self.compute_dtype)
        batch = tf.shape(memory)[0]
        cache = tf.zeros(
            tf.stack([batch, self.num_heads, max_len, self.head_dim]), self.compute_dtype
        )
        state = {"src_mask": tf.cast(encoded["src_mask"], tf.float32)}
        for i, layer in enumerate(self.decoder_layers):
            k, v = layer.precompute_cross_kv(memory)
            state[f"dec{i}_cross_k"] = k
            state[f"dec{i}_cross_v"] = v
            state[f"dec{i}_self_k"] = cache
            state[f"dec{i}_self_v"] = cache
        return state

    def decode_step(
        self, token_ids: tf.Tensor, step: tf.Tensor | int, state: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """One incremental step: ``token_ids`` ``[B]`` at position ``step`` -> logits ``[B,V]``.

        Only the new position is computed: its self-attention K/V are written into the
        caches at ``step`` and it attends over cache positions ``<= step``.
        """
        dtype = self.compute_dtype
        step = tf.cast(step, tf.int32)
        # Sub-layers are invoked through ``.call`` (see TransformerDecoderBlock.step): they
        # cast explicitly, and skipping the Keras call machinery makes eager steps cheaper.
        x = self.embedding.call(tf.cast(token_ids, tf.int32)[:, None])
        x = x * tf.cast(self._embed_scale, dtype) + self.positions.at(step, dtype)
        max_len = tf.shape(state["dec0_self_k"])[2] if self.decoder_layers else 1
        future = tf.cast(tf.range(max_len) > step, dtype)
        self_bias = (future * mask_value(dtype))[None, None, None, :]
        cross_bias = self._padding_bias(state["src_mask"])
        new_state = dict(state)
        for i, layer in enumerate(self.decoder_layers):
            x, k, v = layer.step(
                x,
                step,
                state[f"dec{i}_self_k"],
                state[f"dec{i}_self_v"],
                self_bias,
                state[f"dec{i}_cross_k"],
                state[f"dec{i}_cross_v"],
                cross_bias,
            )
            new_state[f"dec{i}_self_k"] = k
            new_state[f"dec{i}_self_v"] = v
        if self.decoder_norm is not None:
            x = self.decoder_norm.call(x)
        return self.embedding.project(x[:, 0]), new_state

    # -- serialization ------------------------------------------------------------------

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "d_model": self.d_model,
                "num_encoder_layers": self.num_encoder_layers,
                "num_decoder_layers": self.num_decoder_layers,
                "num_heads": self.num_heads,
                "ff_dim": self.ff_dim,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "activation": self.activation,
                "pre_norm": self.pre_norm,
                "max_positions": self.max_positions,
                "output_bias": self.output_bias,
            }
        )
        return config
