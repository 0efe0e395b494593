"""The objective registry, the KD mode table, and the package's status line."""

import numpy as np
import pytest
import tensorflow as tf

from nmt_kd.errors import UserError
from nmt_kd.losses import label_smoothed_ce, word_kd_loss
from nmt_kd.progress import StatusLine, TrainingProgress, fmt_time
from nmt_kd.training.objectives import (
    KD_MODES,
    OBJECTIVES,
    ObjectiveParams,
    kd_mode,
    objective_for,
    register_objective,
)

LOGITS = tf.constant(np.random.default_rng(0).normal(size=(2, 3, 5)), tf.float32)
TEACHER = tf.constant(np.random.default_rng(1).normal(size=(2, 3, 5)), tf.float32)
TARGETS = tf.constant([[1, 2, 0], [3, 0, 0]], tf.int32)
SRC = tf.constant([[4, 3], [5, 3]], tf.int32)


def test_each_mode_names_its_data_and_a_registered_objective():
    assert list(KD_MODES) == ["none", "word", "seq", "seq+word"]
    assert [m for m, k in KD_MODES.items() if k.distilled] == ["seq", "seq+word"]
    assert [m for m, k in KD_MODES.items() if k.word_kd] == ["word", "seq+word"]
    for kd in KD_MODES:
        for teacher_mode in ("online", "offline"):
            assert objective_for(kd, teacher_mode).name in OBJECTIVES
    assert objective_for("seq", "offline").name == "cross_entropy"
    assert objective_for("word", "online").teacher == "online"
    assert objective_for("seq+word", "offline").teacher == "topk"
    with pytest.raises(UserError, match="KD mode must be one of none, word, seq, seq\\+word"):
        kd_mode("topk")


def test_objectives_compute_the_losses_they_name():
    p = ObjectiveParams(label_smoothing=0.1, alpha=0.6, temperature=2.0)
    ce = OBJECTIVES["cross_entropy"].build(p, None)(LOGITS, TARGETS, SRC, TARGETS)
    np.testing.assert_allclose(ce, label_smoothed_ce(LOGITS, TARGETS, 0.1))

    def teacher(_inputs, training=False):
        return TEACHER

    online = OBJECTIVES["word_kd_online"].build(p, teacher)(LOGITS, TARGETS, SRC, TARGETS)
    expected = word_kd_loss(LOGITS, TARGETS, 0.6, 2.0, 0.1, teacher_logits=TEACHER)
    np.testing.assert_allclose(online, expected, rtol=1e-6)
    # a top-k of all 5 entries is the full distribution: the same loss
    values, ids = tf.math.top_k(TEACHER / 2.0, k=5)
    topk = OBJECTIVES["word_kd_topk"].build(p, None)(LOGITS, TARGETS, SRC, TARGETS, ids,
                                                     tf.nn.log_softmax(values, axis=-1))
    np.testing.assert_allclose(topk, expected, rtol=1e-5)


def test_register_objective_refuses_a_name_twice():
    with pytest.raises(ValueError, match="registered already"):
        register_objective("cross_entropy")(lambda params, teacher: None)
    with pytest.raises(ValueError, match="teacher is None"):
        register_objective("x", teacher="somehow")


def test_status_line_rewrites_in_place_or_prints_lines(capsys):
    line = StatusLine(rewrite=True, width=8)
    line.end()  # nothing open: nothing printed
    line.show("a")
    line.show("bb")
    line.end()
    line.end()
    assert capsys.readouterr().err == "\ra       \rbb      \n"
    line = StatusLine(rewrite=False)
    line.show("a")
    line.end()
    assert capsys.readouterr().err == "a\n"


def test_training_progress_line(capsys):
    progress = TrainingProgress(every=2, total_steps=10, total_seconds=0)
    progress.line.rewrite = False
    info = {"epoch": 1, "loss": 2.5, "lr": 1e-3, "tok_s": 12345.0}
    progress.update(3, info, 30.0)  # not a multiple of every: nothing
    progress.update(4, info, 30.0)
    progress.newline()
    assert capsys.readouterr().err == (
        "step 4 | ep 1 | loss 2.500 | lr 1.00e-03 | 12,345 tgt tok/s | 0m30s | ETA 0m45s\n")
    assert fmt_time(3725) == "1h02m" and fmt_time(-1) == "0m00s"
