"""The attentional RNN student: a bidirectional GRU/LSTM encoder and an attentional decoder.

Implements the seq2seq contract of ``nmt_kd/models/contract.md``. Design:

* **Embedding**: one ``[V, embed_dim]`` matrix (:class:`SharedEmbedding`) embeds source and
  target tokens (scaled by ``sqrt(embed_dim)``, as in the teacher) and is the output layer:
  ``logits = h~ E^T + b``. The attentional vector ``h~`` has ``embed_dim`` units, so the
  tie needs no extra projection.
* **Encoder**: ``encoder_layers`` bidirectional layers (:class:`BidirectionalRNN`), each
  direction ``hidden // 2`` units, concatenated to ``hidden`` (so ``hidden`` must be even).
  Padding-aware: the backward direction reverses each sentence within its length.
* **Bridge**: the initial state of decoder layer ``l`` is ``tanh(W_l mean(memory) + b_l)``
  (mean over real tokens); LSTM cells start with ``c = 0``.
* **Decoder**: ``decoder_layers`` stacked GRU/LSTM cells of ``hidden`` units.

  - ``attention="luong"``: general score ``h_t . (W_a m_s)`` from the top state ``h_t``;
    ``h~_t = tanh(W_c [c_t; h_t] + b_c)`` feeds the output layer and, input feeding, is
    concatenated to the next target embedding.
  - ``attention="bahdanau"``: additive score ``v . tanh(W_k m_s + W_q s_{t-1} + b)`` from
    the previous top state; the context is concatenated to the target embedding (the cell
    input); ``h~_t = tanh(W_c [c_t; h_t] + b_c)`` feeds the output layer only.

* **Speed**: the input projections of whole sequences are one GEMM each before the time
  loops (:func:`time_loop`, a ``tf.while_loop``); both encoder directions share one loop;
  attention keys are projected once per source. ``decode_step`` is one cell step per layer
  plus one attention and the tied output GEMM.
* **Dropout** (training only): on the source and target embeddings, between encoder
  layers, between decoder layers (masks drawn before the time loop) and on ``h~`` before
  the output layer. The fed-back ``h~`` is not dropped.
* **Mixed precision**: matmuls run in the compute dtype; recurrent states and gate
  arithmetic in float32; logits are float32.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from nmt_kd import PAD_ID
from nmt_kd.layers.attention import dynamic_zeros, linear
from nmt_kd.layers.rnn import (
    BahdanauAttention,
    BidirectionalRNN,
    BridgeProjection,
    LuongAttention,
    RecurrentCell,
    time_loop,
)
from nmt_kd.layers.transformer import SharedEmbedding

__all__ = ["RNNStudent"]

CELLS = ("gru", "lstm")
ATTENTIONS = ("luong", "bahdanau")


@keras.saving.register_keras_serializable(package="nmt_kd")
class RNNStudent(keras.Model):
    """Bidirectional-RNN encoder, attentional RNN decoder, tied embeddings.

    Args:
        vocab_size: size of the joint source/target vocabulary.
        cell: "gru" or "lstm" (encoder and decoder).
        attention: "luong" (general score, input feeding) or "bahdanau" (additive).
        embed_dim: embedding width; also the width of the attentional vector ``h~``.
        hidden: encoder output width (two directions of ``hidden // 2``) and decoder state
            width; must be even.
        encoder_layers, decoder_layers: stack depths (>= 1).
        dropout: dropout rate (see the module docstring for where it applies).

    Decoding state (:meth:`init_decode_state`), all batch-first and fixed-shape:
    ``"memory"`` ``[B,S,hidden]``, ``"keys"`` ``[B,S,hidden]`` (attention keys),
    ``"src_mask"`` ``[B,S]`` float32, ``"h{i}"`` ``[B,hidden]`` float32 per decoder layer,
    ``"c{i}"`` too for LSTM, and ``"feed"`` ``[B,embed_dim]`` float32 (Luong only).

    Example:
        >>> model = RNNStudent(vocab_size=50, embed_dim=16, hidden=16)
        >>> src = tf.constant([[5, 6, 7, 3, 0]])
        >>> model((src, tf.constant([[2, 8, 9]]))).shape
        TensorShape([1, 3, 50])
        >>> state = model.init_decode_state(model.encode(src), max_len=10)
        >>> logits, state = model.decode_step(tf.constant([2]), tf.constant(0), state)
        >>> logits.shape
        TensorShape([1, 50])
    """

    def __init__(
        self,
        vocab_size: int,
        cell: str = "gru",
        attention: str = "luong",
        embed_dim: int = 256,
        hidden: int = 256,
        encoder_layers: int = 1,
        decoder_layers: int = 1,
        dropout: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if int(hidden) % 2:
            raise ValueError(f"hidden must be even (two encoder directions), got {hidden}")
        if int(encoder_layers) < 1 or int(decoder_layers) < 1:
            raise ValueError("encoder_layers and decoder_layers must be >= 1")
        self.vocab_size = int(vocab_size)
        self.cell = cell
        self.attention = attention
        self.embed_dim = int(embed_dim)
        self.hidden = int(hidden)
        self.encoder_layers = int(encoder_layers)
        self.decoder_layers = int(decoder_layers)
        self.dropout = float(dropout)
        self._embed_scale = math.sqrt(self.embed_dim)
        self._luong = self.attention == "luong"

        policy = self.dtype_policy
        e, h = self.embed_dim, self.hidden
        self.embedding = SharedEmbedding(
            self.vocab_size, e, use_output_bias=True, dtype=policy, name="shared_embedding"
        )
        self.encoder_rnns = [
            BidirectionalRNN(h, e if i == 0 else h, cell, dtype=policy, name=f"encoder_rnn_{i}")
            for i in range(self.encoder_layers)
        ]
        self.bridge = BridgeProjection(
            self.decoder_layers * h, h, activation="tanh", dtype=policy, name="bridge"
        )
        # Layer 0 reads [target embedding; input feed h~ (Luong) or context (Bahdanau)].
        extra = e if self._luong else h
        self.decoder_cells = [
            RecurrentCell(h, e + extra if i == 0 else h, cell, dtype=policy, name=f"decoder_cell_{i}")
            for i in range(self.decoder_layers)
        ]
        attention_cls = LuongAttention if self._luong else BahdanauAttention
        self.attention_layer = attention_cls(h, h, e, dtype=policy, name="attention")
        self.dropout_layer = (
            keras.layers.Dropout(self.dropout, dtype=policy, name="dropout")
            if self.dropout > 0
            else None
        )
        self._recurrent_keys = [f"h{i}" for i in range(self.decoder_layers)]
        if self.cell == "lstm":
            self._recurrent_keys += [f"c{i}" for i in range(self.decoder_layers)]
        if self._luong:
            self._recurrent_keys.append("feed")

    # -- building -----------------------------------------------------------------------

    def build(self, input_shape=None) -> None:
        """Create every weight; ``input_shape`` is ignored (all shapes follow the config)."""
        self.embedding.build()
        for layer in (*self.encoder_rnns, self.bridge, *self.decoder_cells, self.attention_layer):
            layer.build()

    # -- helpers ------------------------------------------------------------------------

    def _drop(self, x: tf.Tensor, training: bool | None) -> tf.Tensor:
        if self.dropout_layer is not None and training:
            return self.dropout_layer(x, training=True)
        return x

    def _embed(self, ids: tf.Tensor, training: bool | None = False) -> tf.Tensor:
        x = self.embedding.call(ids) * tf.cast(self._embed_scale, self.compute_dtype)
        return self._drop(x, training)

    def _decoder_weights(self) -> dict:
        """Every decoder weight cast once to the compute dtype (hoisted out of time loops)."""
        cells = [cell.compute_weights() for cell in self.decoder_cells]
        w_in0, u0, b0 = cells[0]
        return {
            "emb_kernel": w_in0[: self.embed_dim],  # rows for the target embedding
            "extra_kernel": w_in0[self.embed_dim :],  # rows for the feed / context
            "bias0": b0,
            "cells": [(None, u0, None), *cells[1:]],
            "attention": self.attention_layer.compute_weights(),
        }

    def _step(
        self,
        emb_proj: tf.Tensor,
        rec: dict[str, tf.Tensor],
        const: dict[str, tf.Tensor],
        w: dict,
        drop_masks: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """One decoder time step shared by teacher forcing and incremental decoding.

        Args:
            emb_proj: float32 ``[B, G*hidden]``: the target embedding times layer 0's input
                kernel, plus its bias.
            rec: the recurrent part of the state (``h{i}``, ``c{i}``, ``feed``).
            const: the constant part (``memory``, ``keys``, ``src_mask``).
            w: :meth:`_decoder_weights`.
            drop_masks: optional float32 ``[decoder_layers - 1, B, hidden]`` dropout masks
                for the inputs of layers ``1..``.

        Returns:
            ``(out, new_rec)``: ``out`` is float32 ``h~`` ``[B, embed_dim]`` (Luong) or
            ``[context; h]`` ``[B, 2*hidden]`` (Bahdanau, combined after the loop).
        """
        cd = self.compute_dtype
        att, att_w = self.attention_layer, w["attention"]
        memory, keys, src_mask = const["memory"], const["keys"], const["src_mask"]
        top = self.decoder_layers - 1
        if self._luong:
            extra = rec["feed"]
        else:
            context = att.attend(rec[f"h{top}"], keys, memory, src_mask, att_w)
            extra = context
        extra_proj = tf.matmul(tf.cast(extra, cd), w["extra_kernel"])
        x_proj = emb_proj + tf.cast(extra_proj, tf.float32)
        new_rec = {}
        below = None
        for i, cell in enumerate(self.decoder_cells):
            if i > 0:
                if drop_masks is not None:
                    below = below * drop_masks[i - 1]
                x_proj = cell.project_inputs(below, w["cells"][i])
            state = (rec[f"h{i}"], rec[f"c{i}"]) if self.cell == "lstm" else (rec[f"h{i}"],)
            state = cell.step(x_proj, state, w["cells"][i])
            new_rec[f"h{i}"] = state[0]
            if self.cell == "lstm":
                new_rec[f"c{i}"] = state[1]
            below = state[0]
        h_top = new_rec[f"h{top}"]
        if self._luong:
            context = att.attend(h_top, keys, memory, src_mask, att_w)
            feed = att.combine(tf.concat([context, tf.cast(h_top, cd)], axis=-1), att_w)
            new_rec["feed"] = feed
            return feed, new_rec
        return tf.concat([tf.cast(context, tf.float32), h_top], axis=-1), new_rec

    def _output(self, out: tf.Tensor, w: dict, training: bool | None) -> tf.Tensor:
        """Step output(s) ``[..., *]`` -> float32 logits ``[..., V]``."""
        if not self._luong:
            out = self.attention_layer.combine(out, w["attention"])
        return self.embedding.project(self._drop(out, training))

    # -- the contract -------------------------------------------------------------------

    def call(self, inputs, training: bool | None = False) -> tf.Tensor:
        """Teacher forcing: ``(src [B,S], tgt_in [B,T])`` -> float32 logits ``[B,T,V]``."""
        src, tgt_in = inputs
        encoded = self.encode(src, training=training)
        state = self.init_decode_state(encoded, tf.shape(tgt_in)[1])
        return self.decode_sequence(tgt_in, state, training=training)

    def encode(self, src: tf.Tensor, training: bool | None = False) -> dict[str, tf.Tensor]:
        """``src`` ``[B,S]`` -> ``{"memory": [B,S,hidden], "src_mask": [B,S] float32}``.

        Padding positions of ``memory`` are zero.
        """
        src = tf.cast(src, tf.int32)
        src_mask = tf.cast(tf.not_equal(src, PAD_ID), tf.float32)
        lengths = tf.reduce_sum(tf.cast(src_mask, tf.int32), axis=1)
        x = self._embed(src, training)
        for i, rnn in enumerate(self.encoder_rnns):
            if i > 0:
                x = self._drop(x, training)
            x = rnn(x, lengths=lengths)
        return {"memory": x, "src_mask": src_mask}

    def init_decode_state(
        self, encoded: dict[str, tf.Tensor], max_len: int | tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """Fixed-shape decoding state (see the class docstring); ``max_len`` is unused.

        Nothing grows during RNN decoding, so the state is the same for any ``max_len``.
        """
        del max_len
        cd = self.compute_dtype
        memory = tf.cast(encoded["memory"], cd)
        src_mask = tf.cast(encoded["src_mask"], tf.float32)
        att_w = self.attention_layer.compute_weights()
        count = tf.maximum(tf.reduce_sum(src_mask, axis=1, keepdims=True), 1.0)
        pooled = tf.reduce_sum(tf.cast(memory, tf.float32) * tf.expand_dims(src_mask, -1), axis=1) / count
        initial = tf.cast(self.bridge.call(pooled), tf.float32)  # [B, layers*hidden]
        state = {
            "memory": memory,
            "keys": self.attention_layer.precompute_keys(memory, att_w),
            "src_mask": src_mask,
        }
        for i, h in enumerate(tf.split(initial, self.decoder_layers, axis=-1)):
            state[f"h{i}"] = h
            if self.cell == "lstm":
                state[f"c{i}"] = tf.zeros_like(h)
        if self._luong:
            state["feed"] = dynamic_zeros([tf.shape(memory)[0], self.embed_dim], tf.float32)
        return state

    def decode_sequence(
        self, tgt_in: tf.Tensor, state: dict[str, tf.Tensor], training: bool | None = False
    ) -> tf.Tensor:
        """Teacher-forced decoder over ``tgt_in`` ``[B,T]`` from an initial decoding state."""
        tgt_in = tf.cast(tgt_in, tf.int32)
        w = self._decoder_weights()
        emb = self._embed(tgt_in, training)
        emb_proj = tf.cast(linear(emb, w["emb_kernel"], w["bias0"]), tf.float32)
        inputs = {"emb_proj": tf.transpose(emb_proj, [1, 0, 2])}  # time-major [T, B, G*H]
        if training and self.dropout_layer is not None and self.decoder_layers > 1:
            shape = tf.stack(
                [tf.shape(tgt_in)[1], self.decoder_layers - 1, tf.shape(tgt_in)[0], self.hidden]
            )
            ones = tf.ones(shape, self.compute_dtype)
            inputs["drop"] = tf.cast(self.dropout_layer(ones, training=True), tf.float32)
        const = {k: state[k] for k in ("memory", "keys", "src_mask")}
        rec = {k: state[k] for k in self._recurrent_keys}

        def step(x_t, rec):
            return self._step(x_t["emb_proj"], rec, const, w, x_t.get("drop"))

        outputs, _ = time_loop(step, inputs, rec)  # [T, B, *]
        return self._output(tf.transpose(outputs, [1, 0, 2]), w, training)

    def decode_step(
        self, token_ids: tf.Tensor, step: tf.Tensor | int, state: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """One incremental step: ``token_ids`` ``[B]`` -> (float32 logits ``[B,V]``, state).

        ``step`` is unused (an RNN needs no position): one cell step per layer, one attention.
        """
        del step
        w = self._decoder_weights()
        emb = self._embed(tf.cast(token_ids, tf.int32))
        emb_proj = tf.cast(tf.nn.bias_add(tf.matmul(emb, w["emb_kernel"]), w["bias0"]), tf.float32)
        out, rec = self._step(emb_proj, {k: state[k] for k in self._recurrent_keys}, state, w)
        new_state = dict(state)
        for key, value in rec.items():
            value.set_shape(state[key].shape)
            new_state[key] = value
        return self._output(out, w, False), new_state

    # -- serialization ------------------------------------------------------------------

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "cell": self.cell,
                "attention": self.attention,
                "embed_dim": self.embed_dim,
                "hidden": self.hidden,
                "encoder_layers": self.encoder_layers,
                "decoder_layers": self.decoder_layers,
                "dropout": self.dropout,
            }
        )
        return config
