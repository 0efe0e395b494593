"""Tests of the attentional RNN student against the seq2seq contract (tiny configs, CPU)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from seq2seq_harness import greedy_eager, losses_on_repeated_batch, teacher_forced

from nmt_kd import BOS_ID, PAD_ID
from nmt_kd.decoding import greedy_search
from nmt_kd.models.student_rnn import RNNStudent

V, E, H = 50, 16, 16
MAX_LEN = 6
COMBOS = [("gru", "luong"), ("lstm", "bahdanau"), ("gru", "bahdanau"), ("lstm", "luong")]

# Three sources of different lengths (right-padded with PAD_ID).
SRC = np.array(
    [
        [5, 9, 14, 22, 7, 3],
        [11, 4, 3, 0, 0, 0],
        [30, 31, 8, 3, 0, 0],
    ],
    dtype=np.int32,
)


def make_model(cell="gru", attention="luong", seed=0, **kwargs) -> RNNStudent:
    keras.utils.set_random_seed(seed)
    config = dict(
        vocab_size=V, cell=cell, attention=attention, embed_dim=E, hidden=H,
        encoder_layers=1, decoder_layers=1, dropout=0.0,
    )
    config.update(kwargs)
    model = RNNStudent(**config)
    model((tf.constant(SRC[:1]), tf.constant([[BOS_ID]])))  # build
    return model


_MODELS: dict = {}


def get_model(cell: str, attention: str) -> RNNStudent:
    """One model per combo for the module; 2+2 layers so the stacking paths are covered."""
    key = (cell, attention)
    if key not in _MODELS:
        _MODELS[key] = make_model(cell, attention, seed=len(_MODELS),
                                  encoder_layers=2, decoder_layers=2)
    return _MODELS[key]


def expected_params(cell: str, attention: str, enc: int, dec: int) -> int:
    """Parameter count from the architecture formula (tied embeddings, fused gates)."""
    g = {"gru": 3, "lstm": 4}[cell]
    d = H // 2  # units per encoder direction

    def rnn(din: int, units: int) -> int:  # input kernel + recurrent kernel + one bias
        return din * g * units + units * g * units + g * units

    embedding = V * E + V  # shared matrix + output bias
    encoder = sum(2 * rnn(E if i == 0 else H, d) for i in range(enc))
    bridge = H * dec * H + dec * H
    extra = E if attention == "luong" else H  # input feed h~ or context
    decoder = sum(rnn(E + extra if i == 0 else H, H) for i in range(dec))
    output = 2 * H * E + E  # h~ = tanh(W_c [c; h] + b)
    score = H * H if attention == "luong" else 2 * H * H + H + H  # W_a | W_k, W_q, b, v
    return embedding + encoder + bridge + decoder + output + score


@pytest.mark.parametrize("cell,attention", COMBOS[:2])
def test_shapes_and_dtypes(cell, attention):
    model = get_model(cell, attention)
    tgt_in = tf.constant([[BOS_ID, 7, 8], [BOS_ID, 9, 0], [BOS_ID, 4, 5]])
    logits = model((tf.constant(SRC), tgt_in))
    assert logits.shape == (3, 3, V) and logits.dtype == tf.float32

    encoded = model.encode(tf.constant(SRC))
    assert encoded["memory"].shape == (3, SRC.shape[1], H)
    np.testing.assert_array_equal(encoded["src_mask"].numpy(), (SRC != PAD_ID).astype(np.float32))
    padded_rows = encoded["memory"].numpy()[SRC == PAD_ID]
    assert np.all(padded_rows == 0)

    state = model.init_decode_state(encoded, MAX_LEN)
    expected_keys = {"memory", "keys", "src_mask", "h0", "h1"}
    expected_keys |= {"c0", "c1"} if cell == "lstm" else set()
    expected_keys |= {"feed"} if attention == "luong" else set()
    assert set(state) == expected_keys
    assert state["keys"].shape == (3, SRC.shape[1], H)
    assert state["h1"].shape == (3, H) and state["h1"].dtype == tf.float32
    if attention == "luong":
        assert state["feed"].shape == (3, E)
    step_logits, new_state = model.decode_step(tf.fill([3], BOS_ID), tf.constant(0), state)
    assert step_logits.shape == (3, V) and step_logits.dtype == tf.float32
    assert {k: v.shape for k, v in new_state.items()} == {k: v.shape for k, v in state.items()}
    assert {k: v.dtype for k, v in new_state.items()} == {k: v.dtype for k, v in state.items()}


@pytest.mark.parametrize("cell,attention", COMBOS[:2])
def test_source_padding_invariance(cell, attention):
    model = get_model(cell, attention)
    tgt_in = tf.constant([[BOS_ID, 7, 8], [BOS_ID, 9, 0], [BOS_ID, 4, 5]])
    logits = model((tf.constant(SRC), tgt_in)).numpy()
    padded = np.pad(SRC, ((0, 0), (0, 4)), constant_values=PAD_ID)
    padded_logits = model((tf.constant(padded), tgt_in)).numpy()
    np.testing.assert_allclose(padded_logits, logits, atol=1e-5)
    # And a sentence alone gives the same as inside the batch (its own length only).
    alone = model((tf.constant(SRC[1:2, :3]), tgt_in[1:2])).numpy()
    np.testing.assert_allclose(alone, logits[1:2], atol=1e-5)
    # An empty source (all padding) still gives finite logits.
    empty = model((tf.zeros([1, 4], tf.int32), tgt_in[:1])).numpy()
    assert np.isfinite(empty).all()


@pytest.mark.parametrize("cell,attention", COMBOS)
def test_guard_greedy_matches_teacher_forcing(cell, attention):
    model = get_model(cell, attention)
    tokens, step_logits = greedy_eager(model, SRC, MAX_LEN, max_len=MAX_LEN)
    forced = teacher_forced(model, SRC, tokens)
    np.testing.assert_array_equal(forced.argmax(-1), tokens)
    np.testing.assert_allclose(forced, step_logits, atol=1e-4)


def test_decode_in_tf_function_matches_eager():
    model = get_model("lstm", "luong")

    @tf.function
    def greedy(src):
        state = model.init_decode_state(model.encode(src), MAX_LEN)
        return greedy_search(model.decode_step, state, tf.shape(src)[0], MAX_LEN, eos_id=-1)

    out = greedy(tf.constant(SRC))
    eager_tokens, eager_logits = greedy_eager(model, SRC, MAX_LEN, max_len=MAX_LEN)
    np.testing.assert_array_equal(out["ids"].numpy(), eager_tokens)
    log_probs = tf.nn.log_softmax(eager_logits).numpy()
    expected = np.take_along_axis(log_probs, eager_tokens[..., None], -1).sum((1, 2))
    np.testing.assert_allclose(out["scores"].numpy(), expected, atol=1e-4)


def test_save_load_and_config_round_trip(tmp_path):
    model = get_model("gru", "bahdanau")
    path = tmp_path / "student.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, RNNStudent)
    inputs = (tf.constant(SRC), tf.constant([[BOS_ID, 7, 8]] * 3))
    np.testing.assert_array_equal(loaded(inputs).numpy(), model(inputs).numpy())

    config = model.get_config()
    clone = RNNStudent.from_config(config)
    assert clone.get_config() == config


def test_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = make_model("lstm", "bahdanau", decoder_layers=2)
        assert all(w.dtype == "float32" for w in model.weights)
        tokens, step_logits = greedy_eager(model, SRC, 3, max_len=MAX_LEN)
        assert step_logits.dtype == np.float32 and np.isfinite(step_logits).all()
        forced = teacher_forced(model, SRC, tokens)
        assert forced.dtype == np.float32 and np.isfinite(forced).all()
        np.testing.assert_array_equal(forced[:, 0].argmax(-1), tokens[:, 0])
        luong = make_model("gru", "luong")
        logits = luong((tf.constant(SRC), tf.constant([[BOS_ID, 7]] * 3)))
        assert logits.dtype == tf.float32 and np.isfinite(logits.numpy()).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_training_reduces_loss():
    model = make_model("gru", "luong", seed=2, dropout=0.1, decoder_layers=2)
    losses = losses_on_repeated_batch(model, SRC, steps=15, learning_rate=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("cell,attention", [("gru", "luong"), ("lstm", "bahdanau")])
def test_tied_embeddings_and_param_count(cell, attention):
    model = get_model(cell, attention)
    # Only E [V, E] and the output bias [V] have a vocabulary axis: no separate projection.
    assert [tuple(w.shape) for w in model.trainable_weights if V in tuple(w.shape)] == [
        (V, E),
        (V,),
    ]
    assert model.count_params() == expected_params(cell, attention, enc=2, dec=2)
    small = make_model(cell, attention, seed=5)
    assert small.count_params() == expected_params(cell, attention, enc=1, dec=1)


def test_rejects_bad_config():
    with pytest.raises(ValueError, match="even"):
        RNNStudent(vocab_size=V, hidden=15)
    with pytest.raises(ValueError, match="cell"):
        RNNStudent(vocab_size=V, cell="rnn")
    with pytest.raises(ValueError, match="attention"):
        RNNStudent(vocab_size=V, attention="dot")
