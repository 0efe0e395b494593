"""The seq2seq contract's checks, shared by the teacher's and the students' tests."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from nmt_kd import BOS_ID


def greedy_eager(model, src: np.ndarray, steps: int, max_len: int | None = None):
    """Greedy decoding through encode/init_decode_state/decode_step in a plain Python loop.

    Returns (tokens [B, steps], logits [B, steps, V]).
    """
    state = model.init_decode_state(model.encode(tf.constant(src)), max_len or steps)
    token = tf.fill([src.shape[0]], BOS_ID)
    tokens, logits = [], []
    for step in range(steps):
        step_logits, state = model.decode_step(token, tf.constant(step), state)
        token = tf.argmax(step_logits, axis=-1, output_type=tf.int32)
        tokens.append(token.numpy())
        logits.append(step_logits.numpy())
    return np.stack(tokens, axis=1), np.stack(logits, axis=1)


def teacher_forced(model, src: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Logits of the teacher-forced `call` on [bos] + generated[:-1]."""
    bos = np.full((generated.shape[0], 1), BOS_ID, np.int32)
    tgt_in = np.concatenate([bos, generated[:, :-1]], axis=1)
    return model((tf.constant(src), tf.constant(tgt_in))).numpy()


def losses_on_repeated_batch(model, src: np.ndarray, steps: int = 20, learning_rate: float = 3e-3) -> list[float]:
    """Train on one fixed tiny batch with Adam; returns the loss after each step."""
    import keras

    from nmt_kd import PAD_ID

    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    src = tf.constant(src)
    tgt_out = tf.constant([[7, 8, 9, 3], [10, 11, 3, 0], [12, 3, 0, 0]])
    tgt_in = tf.concat([tf.fill([3, 1], BOS_ID), tgt_out[:, :-1]], axis=1)
    weights = tf.cast(tf.not_equal(tgt_out, PAD_ID), tf.float32)

    def train_step() -> float:
        with tf.GradientTape() as tape:
            logits = model((src, tgt_in), training=True)
            loss = loss_fn(tgt_out, logits, sample_weight=weights)
        grads = tape.gradient(loss, model.trainable_variables)
        assert all(g is not None for g in grads), "a trainable variable gets no gradient"
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return float(loss)

    return [train_step() for _ in range(steps)]
