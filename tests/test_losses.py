import math

import numpy as np
import pytest
import tensorflow as tf

from nmt_kd.losses import kd_kl, label_smoothed_ce, teacher_topk, topk_kd_kl, word_kd_loss


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - np.log(np.exp(x - x.max()).sum()) - x.max()


# batch 1, 3 target positions (the last is padding), vocabulary 3
STUDENT = np.array([[[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [9.0, -9.0, 3.0]]], np.float32)
TEACHER = np.array([[[1.0, 1.0, 0.0], [-1.0, 2.0, 0.5], [-5.0, 5.0, 0.0]]], np.float32)
TARGETS = np.array([[1, 2, 0]], np.int32)


def test_label_smoothed_ce_by_hand():
    eps = 0.1
    expected = 0.0
    for t in range(2):  # position 2 is padding
        lp = log_softmax(STUDENT[0, t])
        expected += (1 - eps) * -lp[TARGETS[0, t]] + eps * -lp.mean()
    loss, n = label_smoothed_ce(tf.constant(STUDENT), tf.constant(TARGETS), eps)
    assert float(n) == 2.0
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    plain, _ = label_smoothed_ce(tf.constant(STUDENT), tf.constant(TARGETS), 0.0)
    assert float(plain) == pytest.approx(-log_softmax(STUDENT[0, 0])[1] - log_softmax(STUDENT[0, 1])[2], rel=1e-5)


def test_word_kd_loss_by_hand_with_temperature_squared_and_padding_masked():
    alpha, T, eps = 0.7, 2.0, 0.1
    ce = kl = 0.0
    for t in range(2):
        lp = log_softmax(STUDENT[0, t])
        ce += (1 - eps) * -lp[TARGETS[0, t]] + eps * -lp.mean()
        p_t, lp_s = np.exp(log_softmax(TEACHER[0, t] / T)), log_softmax(STUDENT[0, t] / T)
        kl += float((p_t * (np.log(p_t) - lp_s)).sum())
    expected = (1 - alpha) * ce + alpha * T * T * kl
    loss, n = word_kd_loss(tf.constant(STUDENT), tf.constant(TARGETS), alpha, T, eps,
                           teacher_logits=tf.constant(TEACHER))
    assert float(n) == 2.0
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # the padded position holds wildly different logits: it must not matter
    other = STUDENT.copy()
    other[0, 2] = [-50.0, 50.0, 0.0]
    loss2, _ = word_kd_loss(tf.constant(other), tf.constant(TARGETS), alpha, T, eps,
                            teacher_logits=tf.constant(TEACHER))
    assert float(loss2) == pytest.approx(float(loss), rel=1e-6)


def test_alpha_extremes():
    s, t, y = tf.constant(STUDENT), tf.constant(TEACHER), tf.constant(TARGETS)
    gold, _ = label_smoothed_ce(s, y, 0.1)
    only_gold, _ = word_kd_loss(s, y, 0.0, 3.0, 0.1, teacher_logits=t)
    assert float(only_gold) == pytest.approx(float(gold), rel=1e-6)
    only_kd, _ = word_kd_loss(s, y, 1.0, 3.0, 0.1, teacher_logits=t)
    kl, _ = kd_kl(s, t, y, 3.0)
    assert float(only_kd) == pytest.approx(9.0 * float(kl), rel=1e-6)
    same, _ = kd_kl(s, s, y, 1.0)
    assert abs(float(same)) < 1e-6  # KL of a distribution with itself


def test_topk_with_k_equal_vocab_equals_full_kd():
    rng = np.random.default_rng(0)
    s = tf.constant(rng.normal(size=(2, 4, 11)).astype(np.float32))
    t = tf.constant(rng.normal(size=(2, 4, 11)).astype(np.float32) * 3)
    y = tf.constant([[5, 6, 7, 0], [1, 2, 0, 0]], tf.int32)
    full, n_full = word_kd_loss(s, y, 0.5, 2.0, 0.1, teacher_logits=t)
    topk, n_topk = word_kd_loss(s, y, 0.5, 2.0, 0.1, topk=teacher_topk(t, 11, 2.0))
    assert float(n_full) == float(n_topk) == 5.0
    assert float(topk) == pytest.approx(float(full), rel=1e-5)
    small, _ = topk_kd_kl(s, *teacher_topk(t, 3, 2.0), y, 2.0)
    kl_full, _ = kd_kl(s, t, y, 2.0)
    assert not math.isclose(float(small), float(kl_full), rel_tol=1e-3)  # k < V really truncates


def test_topk_renormalises():
    ids, lp = teacher_topk(tf.constant(TEACHER), 2, 1.0)
    np.testing.assert_allclose(tf.reduce_sum(tf.exp(lp), -1).numpy(), 1.0, rtol=1e-6)
    assert ids.numpy()[0, 1].tolist() == [1, 2]
