"""Training losses over padded target batches; padding (id 0) never counts.

Each loss returns `(loss_sum, n_tokens)` rather than a mean, so that a caller can normalise
by the token count of the whole global batch (the same under every `tf.distribute` strategy).

- `label_smoothed_ce`: cross-entropy against (1 - eps) * one-hot + eps / V.
- `word_kd_loss`: (1 - alpha) * gold CE + alpha * T^2 * KL(teacher_T || student_T) (Hinton et
  al., 2015; Kim & Rush, 2016), T^2 keeping the gradient scale independent of T.
- `topk_kd_kl`: the same KL against a teacher distribution stored as its top-k
  log-probabilities, renormalised over those k entries.
"""

from __future__ import annotations

import tensorflow as tf

from nmt_kd import PAD_ID


def target_mask(targets: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.not_equal(targets, PAD_ID), tf.float32)


def label_smoothed_ce(
    logits: tf.Tensor, targets: tf.Tensor, epsilon: float = 0.1
) -> tuple[tf.Tensor, tf.Tensor]:
    """Sum of label-smoothed CE over non-padding positions, and their count."""
    logits = tf.cast(logits, tf.float32)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    nll = -tf.gather(log_probs, targets, axis=-1, batch_dims=2)
    loss = nll
    if epsilon:
        loss = (1.0 - epsilon) * nll - epsilon * tf.reduce_mean(log_probs, axis=-1)
    mask = target_mask(targets)
    return tf.reduce_sum(loss * mask), tf.reduce_sum(mask)


def kd_kl(
    student_logits: tf.Tensor, teacher_logits: tf.Tensor, targets: tf.Tensor, temperature: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Sum over non-padding positions of KL(softmax(t/T) || softmax(s/T)), and the count."""
    s = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / temperature, axis=-1)
    t = tf.nn.log_softmax(tf.cast(teacher_logits, tf.float32) / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(t) * (t - s), axis=-1)
    mask = target_mask(targets)
    return tf.reduce_sum(kl * mask), tf.reduce_sum(mask)


def teacher_topk(teacher_logits: tf.Tensor, k: int, temperature: float) -> tuple[tf.Tensor, tf.Tensor]:
    """The teacher's top-k token ids and temperature-softened log-probs, renormalised over k."""
    scaled = tf.cast(teacher_logits, tf.float32) / temperature
    values, ids = tf.math.top_k(scaled, k=k)
    return ids, tf.nn.log_softmax(values, axis=-1)


def topk_kd_kl(
    student_logits: tf.Tensor, topk_ids: tf.Tensor, topk_log_probs: tf.Tensor,
    targets: tf.Tensor, temperature: float,
) -> tuple[tf.Tensor, tf.Tensor]:
    """KL(teacher_topk || student_T) where the teacher keeps only its k most likely tokens.

    The student's log-probabilities are its full temperature softmax gathered at the k ids, so
    with k = V this equals `kd_kl`.
    """
    s = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / temperature, axis=-1)
    s_k = tf.gather(s, topk_ids, axis=-1, batch_dims=2)
    kl = tf.reduce_sum(tf.exp(topk_log_probs) * (topk_log_probs - s_k), axis=-1)
    mask = target_mask(targets)
    return tf.reduce_sum(kl * mask), tf.reduce_sum(mask)


def word_kd_loss(
    student_logits: tf.Tensor, targets: tf.Tensor, alpha: float, temperature: float,
    epsilon: float = 0.1, teacher_logits: tf.Tensor | None = None,
    topk: tuple[tf.Tensor, tf.Tensor] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """(1 - alpha) * gold CE + alpha * T^2 * KL, summed over tokens; give teacher logits or top-k."""
    ce, n = label_smoothed_ce(student_logits, targets, epsilon)
    if topk is not None:
        kl, _ = topk_kd_kl(student_logits, topk[0], topk[1], targets, temperature)
    elif teacher_logits is not None:
        kl, _ = kd_kl(student_logits, teacher_logits, targets, temperature)
    else:
        raise ValueError("word_kd_loss needs teacher_logits or topk")
    return (1.0 - alpha) * ce + alpha * temperature**2 * kl, n
