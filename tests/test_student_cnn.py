"""Tests of the ConvS2S student against the seq2seq contract (tiny configs, CPU)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from seq2seq_harness import greedy_eager, losses_on_repeated_batch, teacher_forced

from nmt_kd import BOS_ID, EOS_ID, PAD_ID
from nmt_kd.decoding import greedy_search
from nmt_kd.models.student_cnn import CNNStudent

V, E, H, LAYERS, K = 50, 16, 16, 2, 3
MAX_POS = 64
STEPS = 9  # >= kernel_size + 3 for kernel sizes 3 and 5: the buffers roll several times

# Three sources of different lengths (right-padded with PAD_ID).
SRC = np.array(
    [
        [5, 9, 14, 22, 7, 3],
        [11, 4, 3, 0, 0, 0],
        [30, 31, 8, 3, 0, 0],
    ],
    dtype=np.int32,
)


def make_model(seed: int = 0, **kwargs) -> CNNStudent:
    keras.utils.set_random_seed(seed)
    config = dict(
        vocab_size=V,
        embed_dim=E,
        hidden=H,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        kernel_size=K,
        dropout=0.0,
        max_positions=MAX_POS,
    )
    config.update(kwargs)
    model = CNNStudent(**config)
    model((tf.constant(SRC[:1]), tf.constant([[BOS_ID]])))  # build
    return model


@pytest.fixture(scope="module")
def model() -> CNNStudent:
    return make_model()


@pytest.fixture(scope="module")
def model_k5() -> CNNStudent:
    return make_model(seed=1, kernel_size=5)


def expected_params(kernel_size: int = K) -> int:
    """Parameter count from the architecture formula (tied embeddings, learned positions)."""
    embedding = V * E + V  # shared matrix + output bias
    positions = 2 * MAX_POS * E  # source and target tables
    projections = 2 * (E * H + H) + 2 * (H * E + E)  # in/out maps of encoder and decoder
    conv = kernel_size * H * 2 * H + 2 * H
    attention = (H * E + E) + (E * H + H)
    return embedding + positions + projections + LAYERS * conv + LAYERS * (conv + attention)


def test_shapes_and_dtypes(model):
    tgt_in = tf.constant([[BOS_ID, 7, 8], [BOS_ID, 9, 0], [BOS_ID, 4, 5]])
    logits = model((tf.constant(SRC), tgt_in))
    assert logits.shape == (3, 3, V) and logits.dtype == tf.float32

    encoded = model.encode(tf.constant(SRC))
    assert encoded["keys"].shape == encoded["values"].shape == (3, SRC.shape[1], E)
    np.testing.assert_array_equal(encoded["src_mask"].numpy(), (SRC != PAD_ID).astype(np.float32))
    # The encoder output z is zero on padding.
    assert np.all(encoded["keys"].numpy()[SRC == PAD_ID] == 0)

    state = model.init_decode_state(encoded, STEPS)
    assert state["dec0_buffer"].shape == (3, K - 1, H)
    assert all(value.shape[0] == 3 for value in state.values())
    step_logits, new_state = model.decode_step(tf.fill([3], BOS_ID), tf.constant(0), state)
    assert step_logits.shape == (3, V) and step_logits.dtype == tf.float32
    assert {k: (v.shape, v.dtype) for k, v in new_state.items()} == {
        k: (v.shape, v.dtype) for k, v in state.items()
    }
    with pytest.raises(ValueError):
        model.init_decode_state(encoded, MAX_POS + 1)


def test_padding_invariance(model):
    tgt_in = tf.constant([[BOS_ID, 7, 8], [BOS_ID, 9, 0], [BOS_ID, 4, 5]])
    logits = model((tf.constant(SRC), tgt_in)).numpy()
    padded = np.pad(SRC, ((0, 0), (0, 4)), constant_values=PAD_ID)
    padded_logits = model((tf.constant(padded), tgt_in)).numpy()
    np.testing.assert_allclose(padded_logits, logits, atol=1e-5)


def test_causality(model):
    src = tf.constant(SRC)
    tgt_a = np.array([[BOS_ID, 7, 8, 9, 10, 11]] * 3, np.int32)
    tgt_b = tgt_a.copy()
    tgt_b[:, 3:] = [40, 41, 42]
    logits_a = model((src, tf.constant(tgt_a))).numpy()
    logits_b = model((src, tf.constant(tgt_b))).numpy()
    np.testing.assert_allclose(logits_a[:, :3], logits_b[:, :3], atol=1e-6)
    assert np.abs(logits_a[:, 3:] - logits_b[:, 3:]).max() > 1e-3


@pytest.mark.parametrize("which", ["model", "model_k5"])
def test_guard_greedy_matches_teacher_forcing(which, request):
    model = request.getfixturevalue(which)
    assert STEPS >= model.kernel_size + 3
    tokens, step_logits = greedy_eager(model, SRC, STEPS)
    forced = teacher_forced(model, SRC, tokens)
    np.testing.assert_array_equal(forced.argmax(-1), tokens)
    np.testing.assert_allclose(forced, step_logits, atol=1e-4)


def test_greedy_search_in_tf_function_matches_eager(model):
    @tf.function
    def decode(src):
        state = model.init_decode_state(model.encode(src), STEPS)
        return greedy_search(model.decode_step, state, tf.shape(src)[0], STEPS)

    out = decode(tf.constant(SRC))
    tokens, step_logits = greedy_eager(model, SRC, STEPS)
    log_probs = tf.nn.log_softmax(step_logits).numpy()
    for row in range(SRC.shape[0]):
        eos = np.flatnonzero(tokens[row] == EOS_ID)
        n = int(eos[0]) if eos.size else STEPS
        scored = n + 1 if eos.size else n  # the eos log-prob counts, then the row stops
        expected_ids = np.zeros(STEPS, np.int32)
        expected_ids[:n] = tokens[row, :n]
        np.testing.assert_array_equal(out["ids"].numpy()[row], expected_ids)
        assert int(out["lengths"][row]) == n
        expected_score = log_probs[row, np.arange(scored), tokens[row, :scored]].sum()
        np.testing.assert_allclose(float(out["scores"][row]), expected_score, atol=1e-4)


def test_save_load_and_config_round_trip(model, tmp_path):
    path = tmp_path / "student_cnn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, CNNStudent)
    inputs = (tf.constant(SRC), tf.constant([[BOS_ID, 7, 8]] * 3))
    np.testing.assert_array_equal(loaded(inputs).numpy(), model(inputs).numpy())
    state = loaded.init_decode_state(loaded.encode(tf.constant(SRC)), STEPS)
    step_logits, _ = loaded.decode_step(tf.fill([3], BOS_ID), tf.constant(0), state)
    np.testing.assert_allclose(step_logits.numpy(), model(inputs).numpy()[:, 0], atol=1e-5)

    config = model.get_config()
    clone = CNNStudent.from_config(config)
    assert clone.get_config() == config


def test_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = make_model(seed=3)
        assert all(w.dtype == "float32" for w in model.weights)
        tokens, step_logits = greedy_eager(model, SRC, 3)
        assert step_logits.dtype == np.float32 and np.isfinite(step_logits).all()
        forced = teacher_forced(model, SRC, tokens)
        assert forced.dtype == np.float32 and np.isfinite(forced).all()
        np.testing.assert_array_equal(forced[:, 0].argmax(-1), tokens[:, 0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_training_reduces_loss():
    model = make_model(seed=2, dropout=0.1)
    losses = losses_on_repeated_batch(model, SRC, steps=20)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("which,kernel_size", [("model", K), ("model_k5", 5)])
def test_tied_embeddings_and_param_count(which, kernel_size, request):
    model = request.getfixturevalue(which)
    # Only E and the [V] output bias have a vocabulary axis: no separate output projection.
    assert [tuple(w.shape) for w in model.trainable_weights if V in tuple(w.shape)] == [
        (V, E),
        (V,),
    ]
    assert model.count_params() == expected_params(kernel_size)
