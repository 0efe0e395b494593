"""Tests of the Transformer teacher against the seq2seq contract (tiny configs, CPU)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from seq2seq_harness import greedy_eager, losses_on_repeated_batch, teacher_forced

from nmt_kd import BOS_ID, PAD_ID
from nmt_kd.models.teacher_transformer import TransformerTeacher

V, D, LAYERS, HEADS, FF = 50, 32, 2, 2, 64
MAX_LEN = 7

# Three sources of different lengths (right-padded with PAD_ID).
SRC = np.array(
    [
        [5, 9, 14, 22, 7, 3],
        [11, 4, 3, 0, 0, 0],
        [30, 31, 8, 3, 0, 0],
    ],
    dtype=np.int32,
)


def make_model(pre_norm: bool = True, seed: int = 0, **kwargs) -> TransformerTeacher:
    keras.utils.set_random_seed(seed)
    config = dict(
        vocab_size=V,
        d_model=D,
        num_encoder_layers=LAYERS,
        num_decoder_layers=LAYERS,
        num_heads=HEADS,
        ff_dim=FF,
        dropout=0.0,
        pre_norm=pre_norm,
        max_positions=64,
    )
    config.update(kwargs)
    model = TransformerTeacher(**config)
    model((tf.constant(SRC[:1]), tf.constant([[BOS_ID]])))  # build
    return model


@pytest.fixture(scope="module")
def model() -> TransformerTeacher:
    return make_model(pre_norm=True)


@pytest.fixture(scope="module")
def post_norm_model() -> TransformerTeacher:
    return make_model(pre_norm=False, seed=1)


def expected_params(pre_norm: bool, output_bias: bool = True) -> int:
    """Parameter count from the architecture formula (tied embeddings)."""
    embedding = V * D + (V if output_bias else 0)
    attention = 4 * D * D + 4 * D  # fused QKV (or Q + fused KV) and the output projection
    ffn = D * FF + FF + FF * D + D
    norm = 2 * D
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    final_norms = 2 * norm if pre_norm else 0
    return embedding + LAYERS * (encoder_layer + decoder_layer) + final_norms


def test_shapes_dtypes_and_padding_invariance(model):
    tgt_in = tf.constant([[BOS_ID, 7, 8], [BOS_ID, 9, 0], [BOS_ID, 4, 5]])
    logits = model((tf.constant(SRC), tgt_in))
    assert logits.shape == (3, 3, V) and logits.dtype == tf.float32

    encoded = model.encode(tf.constant(SRC))
    assert encoded["memory"].shape == (3, SRC.shape[1], D)
    np.testing.assert_array_equal(encoded["src_mask"].numpy(), (SRC != PAD_ID).astype(np.float32))

    state = model.init_decode_state(encoded, MAX_LEN)
    assert state["dec0_self_k"].shape == (3, HEADS, MAX_LEN, D // HEADS)
    assert state["dec0_cross_k"].shape == (3, HEADS, SRC.shape[1], D // HEADS)
    assert all(value.shape[0] == 3 for value in state.values())
    step_logits, new_state = model.decode_step(tf.fill([3], BOS_ID), tf.constant(0), state)
    assert step_logits.shape == (3, V) and step_logits.dtype == tf.float32
    assert {k: v.shape for k, v in new_state.items()} == {k: v.shape for k, v in state.items()}

    # Extra padding on the source must not change anything for the real tokens.
    padded = np.pad(SRC, ((0, 0), (0, 4)), constant_values=PAD_ID)
    padded_logits = model((tf.constant(padded), tgt_in))
    np.testing.assert_allclose(padded_logits.numpy(), logits.numpy(), atol=1e-5)


@pytest.mark.parametrize("which", ["model", "post_norm_model"])
def test_guard_greedy_matches_teacher_forcing(which, request):
    model = request.getfixturevalue(which)
    tokens, step_logits = greedy_eager(model, SRC, MAX_LEN, max_len=MAX_LEN)
    forced = teacher_forced(model, SRC, tokens)
    np.testing.assert_array_equal(forced.argmax(-1), tokens)
    np.testing.assert_allclose(forced, step_logits, atol=1e-4)


def test_decode_in_tf_function_while_loop(model):
    @tf.function
    def greedy(src):
        state = model.init_decode_state(model.encode(src), MAX_LEN)
        batch = tf.shape(src)[0]

        def body(step, token, state, out):
            logits, state = model.decode_step(token, step, state)
            token = tf.argmax(logits, axis=-1, output_type=tf.int32)
            return step + 1, token, state, out.write(step, token)

        loop_vars = (
            tf.constant(0),
            tf.fill([batch], BOS_ID),
            state,
            tf.TensorArray(tf.int32, MAX_LEN),
        )
        _, _, _, out = tf.while_loop(lambda step, *_: step < MAX_LEN, body, loop_vars)
        return tf.transpose(out.stack())

    eager_tokens, _ = greedy_eager(model, SRC, MAX_LEN, max_len=MAX_LEN)
    np.testing.assert_array_equal(greedy(tf.constant(SRC)).numpy(), eager_tokens)


def test_causality(model):
    src = tf.constant(SRC)
    tgt_a = np.array([[BOS_ID, 7, 8, 9, 10]] * 3, np.int32)
    tgt_b = tgt_a.copy()
    tgt_b[:, 3:] = [40, 41]
    logits_a = model((src, tf.constant(tgt_a))).numpy()
    logits_b = model((src, tf.constant(tgt_b))).numpy()
    np.testing.assert_allclose(logits_a[:, :3], logits_b[:, :3], atol=1e-6)
    assert np.abs(logits_a[:, 3:] - logits_b[:, 3:]).max() > 1e-3


def test_save_load_and_config_round_trip(model, tmp_path):
    import nmt_kd.models.teacher_transformer  # noqa: F401  (registers the classes)

    path = tmp_path / "teacher.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, TransformerTeacher)
    inputs = (tf.constant(SRC), tf.constant([[BOS_ID, 7, 8]] * 3))
    np.testing.assert_array_equal(loaded(inputs).numpy(), model(inputs).numpy())

    config = model.get_config()
    clone = TransformerTeacher.from_config(config)
    assert clone.get_config() == config


@pytest.mark.parametrize("which,pre_norm", [("model", True), ("post_norm_model", False)])
def test_tied_embeddings_and_param_count(which, pre_norm, request):
    model = request.getfixturevalue(which)
    vocab_matrices = [w for w in model.trainable_weights if tuple(w.shape) == (V, D)]
    assert len(vocab_matrices) == 1
    # Besides E, only the [V] output bias has a vocabulary axis: no separate projection.
    assert [tuple(w.shape) for w in model.trainable_weights if V in tuple(w.shape)] == [
        (V, D),
        (V,),
    ]
    assert model.count_params() == expected_params(pre_norm)


def test_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = make_model(pre_norm=True)
        assert all(w.dtype == "float32" for w in model.weights)
        tokens, step_logits = greedy_eager(model, SRC, 3, max_len=MAX_LEN)
        assert step_logits.dtype == np.float32 and np.isfinite(step_logits).all()
        forced = teacher_forced(model, SRC, tokens)
        assert forced.dtype == np.float32 and np.isfinite(forced).all()
        np.testing.assert_array_equal(forced[:, 0].argmax(-1), tokens[:, 0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_training_reduces_loss():
    model = make_model(pre_norm=True, seed=2, dropout=0.1)
    losses = losses_on_repeated_batch(model, SRC, steps=20)
    assert losses[-1] < 0.5 * losses[0], losses
