"""A toy architecture from one file: a one-layer LSTM encoder-decoder without attention.

It implements the seq2seq contract (`nmt_kd/models/contract.md`, `nmt_kd.models.protocol.
Seq2Seq`) and nothing more; `tests/test_toy_architecture.py` registers it with one line

    register_architecture(Architecture("student_toy", "student", ToyConfig, ToyLSTM,
                                       param_split=toy_param_split))

and drives it through the package's commands. It has no `SharedEmbedding`, so the TFLite
export (which feeds embedding rows into the graph) does not apply: its entry leaves tflite out.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class ToyConfig:
    """Section `model.student_toy` of the YAML config."""

    embed_dim: int = 16
    hidden: int = 32


@keras.saving.register_keras_serializable(package="nmt_kd_toy")
class ToyLSTM(keras.Model):
    """Embedding (shared by both sides) -> LSTM encoder; its final state starts an LSTM
    decoder; a dense output layer. Decoding state: {"h": [B, H], "c": [B, H]} float32."""

    def __init__(self, vocab_size: int, embed_dim: int = 16, hidden: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.embed_dim, self.hidden = int(vocab_size), int(embed_dim), int(hidden)
        self.embedding = keras.layers.Embedding(self.vocab_size, self.embed_dim, name="embedding")
        self.encoder = keras.layers.LSTM(self.hidden, return_state=True, name="encoder")
        self.decoder = keras.layers.RNN(keras.layers.LSTMCell(self.hidden), return_sequences=True,
                                        name="decoder")
        self.output_layer = keras.layers.Dense(self.vocab_size, name="output")

    def _state(self, state):
        return [tf.cast(state["h"], self.compute_dtype), tf.cast(state["c"], self.compute_dtype)]

    def encode(self, src, training=False):
        src = tf.cast(src, tf.int32)
        _, h, c = self.encoder(self.embedding(src), mask=tf.not_equal(src, 0), training=training)
        return {"h": tf.cast(h, tf.float32), "c": tf.cast(c, tf.float32)}

    def init_decode_state(self, encoded, max_len):
        del max_len  # nothing grows
        return {"h": encoded["h"], "c": encoded["c"]}

    def call(self, inputs, training=False):
        src, tgt_in = inputs
        state = self.encode(src, training=training)
        y = self.decoder(self.embedding(tf.cast(tgt_in, tf.int32)), initial_state=self._state(state),
                         training=training)
        return tf.cast(self.output_layer(y), tf.float32)

    def decode_step(self, token_ids, step, state):
        del step
        y, (h, c) = self.decoder.cell(self.embedding(tf.cast(token_ids, tf.int32)), self._state(state))
        logits = tf.cast(self.output_layer(y), tf.float32)
        return logits, {"h": tf.cast(h, tf.float32), "c": tf.cast(c, tf.float32)}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, embed_dim=self.embed_dim, hidden=self.hidden)
        return config


def toy_param_split(model: ToyLSTM) -> dict:
    """Parameters by role for bench's flop estimate, by layer (the embedding is only looked
    up: the output layer is not tied to it)."""
    def count(layer):
        return sum(int(np.prod(v.shape)) for v in layer.trainable_variables)

    return {"encoder": count(model.encoder),
            "decoder": count(model.decoder) + count(model.output_layer),
            "lookup": count(model.embedding)}
