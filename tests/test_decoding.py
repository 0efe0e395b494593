"""Tests for nmt_kd.decoding: greedy and beam search over fake step functions.

The fake models are tiny tables, so every expected value is computed by hand (or, for the
random Markov model, by a few lines of numpy). Everything runs inside `tf.function`, as the
real callers do.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from nmt_kd import BOS_ID, EOS_ID, PAD_ID
from nmt_kd.decode_policy import max_lengths_from_source
from nmt_kd.decoding import (
    beam_search,
    greedy_search,
    tile_state,
)

V = 8
A, B, C, D = 4, 5, 6, 7  # the "words"; 0-3 are pad/unk/bos/eos
L = math.log


def pen(length: int, alpha: float) -> float:
    """GNMT length penalty, by hand."""
    return ((5 + length) / 6) ** alpha


class TreeLM:
    """A fake stateful model defined by prefix trees, one tree per sentence.

    `trees[s][prefix] = {token: prob}` gives the next-token distribution after `prefix` (a tuple
    of emitted tokens) for sentence `s`; the mass left over is spread evenly over the other
    tokens. Unlisted prefixes lead to a sink node that says eos with probability 0.99.

    The state is the current tree node per row. The step function moves to the child reached by
    the input token and returns that node's log-probs, so the output is right only if every
    row's state belongs to the hypothesis whose token it is fed: a beam search that tiled or
    reordered the state wrongly would land on the wrong node (usually the sink).
    """

    def __init__(self, trees: list[dict[tuple[int, ...], dict[int, float]]]):
        self.trees = trees
        keys = [(s, prefix) for s, tree in enumerate(trees) for prefix in tree]
        self.node = {key: i + 1 for i, key in enumerate(keys)}  # node 0 is the sink
        self.start = [len(keys) + 1 + s for s in range(len(trees))]
        n_nodes = len(keys) + 1 + len(trees)
        child = np.zeros([n_nodes, V], np.int32)
        logp = np.full([n_nodes, V], -math.log(V), np.float32)
        logp[0] = self._log_dist({EOS_ID: 0.99})
        for (s, prefix), i in self.node.items():
            logp[i] = self._log_dist(trees[s][prefix])
            for tok in range(V):
                child[i, tok] = self.node.get((s, prefix + (tok,)), 0)
        for s, start in enumerate(self.start):
            child[start, BOS_ID] = self.node[(s, ())]
        self.child = tf.constant(child)
        self.logp = tf.constant(logp)
        self.calls = tf.Variable(0, dtype=tf.int32)

    @staticmethod
    def _log_dist(dist: dict[int, float]) -> np.ndarray:
        rest = 1.0 - sum(dist.values())
        assert rest > 0
        probs = np.full(V, rest / (V - len(dist)))
        for tok, p in dist.items():
            probs[tok] = p
        return np.log(probs).astype(np.float32)

    def init_state(self, sentences: tf.Tensor) -> dict:
        return {"node": tf.gather(tf.constant(self.start, tf.int32), sentences)}

    def step_fn(self, tokens: tf.Tensor, step: tf.Tensor, state: dict):
        with tf.control_dependencies([self.calls.assign_add(1)]):
            node = tf.gather_nd(self.child, tf.stack([state["node"], tokens], axis=1))
        return tf.gather(self.logp, node), {"node": node}


def run_beam(lm: TreeLM, sentences, int_batch: bool = False, **kwargs) -> dict:
    """Beam search on `lm` for the given sentence indices, inside tf.function, as numpy.

    The batch size is passed as `tf.shape(...)[0]`, or as a Python int with `int_batch`.
    """

    @tf.function
    def fn(sent):
        batch = len(sentences) if int_batch else tf.shape(sent)[0]
        return beam_search(lm.step_fn, lm.init_state(sent), batch, **kwargs)

    return {k: v.numpy() for k, v in fn(tf.constant(sentences, tf.int32)).items()}


def run_greedy(lm: TreeLM, sentences, int_batch: bool = False, **kwargs) -> dict:
    """Greedy search on `lm`, like `run_beam`."""

    @tf.function
    def fn(sent):
        batch = len(sentences) if int_batch else tf.shape(sent)[0]
        return greedy_search(lm.step_fn, lm.init_state(sent), batch, **kwargs)

    return {k: v.numpy() for k, v in fn(tf.constant(sentences, tf.int32)).items()}


def padded(tokens: list[int], max_len: int) -> list[int]:
    return tokens + [PAD_ID] * (max_len - len(tokens))


def test_tile_state_repeats_each_row_beam_times():
    state = {"a": tf.constant([[1, 2], [3, 4]]), "n": {"b": tf.constant([5.0, 6.0])}}
    tiled = tile_state(state, 3)
    np.testing.assert_array_equal(tiled["a"], [[1, 2]] * 3 + [[3, 4]] * 3)
    np.testing.assert_array_equal(tiled["n"]["b"], [5.0, 5.0, 5.0, 6.0, 6.0, 6.0])


def test_max_lengths_from_source():
    out = max_lengths_from_source(tf.constant([0, 3, 10, 40]), 1.5, 5, 50)
    assert out.dtype == tf.int32
    np.testing.assert_array_equal(out, [5, 9, 20, 50])


def test_greedy_matches_reference_and_beam_size_one_matches_greedy():
    """(1) Greedy equals a numpy reference; beam_size=1 (no length penalty) equals greedy."""
    rng = np.random.default_rng(12)
    table = (2.0 * rng.normal(size=[V, V])).astype(np.float32)
    bias = (2.0 * rng.normal(size=[4, V])).astype(np.float32)
    limits = np.array([6, 2, 4, 6], np.int32)
    max_len = 6

    def step_fn(tokens, step, state):
        # A Markov model on the previous token, with a per-sentence bias carried in the state.
        return tf.gather(table, tokens) + state["bias"], state

    @tf.function
    def both(bias_t, limits_t):
        batch = tf.shape(bias_t)[0]
        greedy = greedy_search(step_fn, {"bias": bias_t}, batch, max_len, limits_t)
        beam = beam_search(step_fn, {"bias": bias_t}, batch, 1, max_len, limits_t,
                           length_penalty=0.0)
        unscored = greedy_search(step_fn, {"bias": bias_t}, batch, max_len, limits_t,
                                 with_scores=False)
        return greedy, beam, unscored

    greedy, beam, unscored = both(tf.constant(bias), tf.constant(limits))
    greedy = {k: v.numpy() for k, v in greedy.items()}
    beam = {k: v.numpy() for k, v in beam.items()}
    # without scores (argmax on the logits, no softmax): the same tokens, zero scores
    np.testing.assert_array_equal(unscored["ids"].numpy(), greedy["ids"])
    np.testing.assert_array_equal(unscored["lengths"].numpy(), greedy["lengths"])
    assert not unscored["scores"].numpy().any()

    for s in range(4):
        prev, toks, score = BOS_ID, [], 0.0
        while True:
            logits = table[prev].astype(np.float64) + bias[s]
            logp = logits - np.log(np.exp(logits).sum())
            tok = int(np.argmax(logp))
            score += logp[tok]
            if tok == EOS_ID:
                break
            toks.append(tok)
            prev = tok
            if len(toks) == limits[s]:
                break
        np.testing.assert_array_equal(greedy["ids"][s], padded(toks, max_len))
        assert greedy["lengths"][s] == len(toks)
        assert greedy["scores"][s] == pytest.approx(score, abs=1e-4)
    # The seed gives both kinds of ending: sentences 0 and 2 stop on eos (0 with an empty
    # output), 1 and 3 at their limits.
    assert greedy["lengths"].tolist() == [0, 2, 2, 6]

    np.testing.assert_array_equal(beam["ids"][:, 0], greedy["ids"])
    np.testing.assert_array_equal(beam["lengths"][:, 0], greedy["lengths"])
    np.testing.assert_allclose(beam["log_probs"][:, 0], greedy["scores"], atol=1e-5)
    np.testing.assert_allclose(beam["scores"][:, 0], greedy["scores"], atol=1e-5)


def test_length_penalty_changes_ranking():
    """(2) "A" beats "A B C" without normalisation; with alpha=2 the longer one wins."""
    lm = TreeLM([{
        (): {A: 0.9},
        (A,): {EOS_ID: 0.5, B: 0.45},
        (A, B): {C: 0.95},
        (A, B, C): {EOS_ID: 0.95},
    }])
    short_lp = L(0.9) + L(0.5)
    long_lp = L(0.9) + L(0.45) + L(0.95) + L(0.95)

    raw = run_beam(lm, [0], beam_size=2, max_len=6, length_penalty=0.0, nbest=2)
    np.testing.assert_array_equal(raw["ids"][0], [padded([A], 6), padded([A, B, C], 6)])
    np.testing.assert_array_equal(raw["lengths"][0], [1, 3])
    np.testing.assert_allclose(raw["scores"][0], [short_lp, long_lp], atol=1e-5)

    norm = run_beam(lm, [0], beam_size=2, max_len=6, length_penalty=2.0, nbest=2)
    np.testing.assert_array_equal(norm["ids"][0], [padded([A, B, C], 6), padded([A], 6)])
    np.testing.assert_array_equal(norm["lengths"][0], [3, 1])
    np.testing.assert_allclose(
        norm["scores"][0], [long_lp / pen(4, 2.0), short_lp / pen(2, 2.0)], atol=1e-5
    )
    np.testing.assert_allclose(norm["log_probs"][0], [long_lp, short_lp], atol=1e-5)


def test_finished_hypothesis_is_not_extended():
    """(3) "A eos" ends at step 1: it is returned as is, and frees its beam for "B C D"."""
    lm = TreeLM([{
        (): {A: 0.6, B: 0.35},
        (A,): {EOS_ID: 0.9},
        (B,): {C: 0.9},
        (B, C): {D: 0.9},
        (B, C, D): {EOS_ID: 0.9},
    }])
    out = run_beam(lm, [0], beam_size=2, max_len=6, length_penalty=1.0, nbest=2)
    np.testing.assert_array_equal(out["ids"][0], [padded([A], 6), padded([B, C, D], 6)])
    np.testing.assert_array_equal(out["lengths"][0], [1, 3])
    assert not (out["ids"] == EOS_ID).any()
    # Exactly the log-probs up to eos, divided by the penalty at length+1: an extended
    # hypothesis would have picked up more (negative) log-probs and a longer penalty.
    a_lp = L(0.6) + L(0.9)
    bcd_lp = L(0.35) + 3 * L(0.9)
    np.testing.assert_allclose(out["log_probs"][0], [a_lp, bcd_lp], atol=1e-5)
    np.testing.assert_allclose(
        out["scores"][0], [a_lp / pen(2, 1.0), bcd_lp / pen(4, 1.0)], atol=1e-5
    )


def test_beam_escapes_greedy_trap():
    """(4) Greedy takes A (0.5) and is stuck with a flat continuation; beam finds B C."""
    lm = TreeLM([{
        (): {A: 0.5, B: 0.45},
        (A,): {C: 0.34, D: 0.32, EOS_ID: 0.3},
        (A, C): {EOS_ID: 0.9},
        (B,): {C: 0.95},
        (B, C): {EOS_ID: 0.95},
    }])
    greedy = run_greedy(lm, [0], int_batch=True, max_len=5)
    np.testing.assert_array_equal(greedy["ids"][0], padded([A, C], 5))
    assert greedy["scores"][0] == pytest.approx(L(0.5) + L(0.34) + L(0.9), abs=1e-5)

    beam = run_beam(lm, [0], int_batch=True, beam_size=2, max_len=5, length_penalty=0.0)
    np.testing.assert_array_equal(beam["ids"][0, 0], padded([B, C], 5))
    assert beam["log_probs"][0, 0] == pytest.approx(L(0.45) + 2 * L(0.95), abs=1e-5)
    assert beam["log_probs"][0, 0] > greedy["scores"][0]


def test_batch_limits_early_exit_and_no_cross_talk():
    """(5) Three sentences, three outcomes: cut at its limit, empty output, normal eos."""
    lm = TreeLM([
        {(): {A: 0.9}, (A,): {B: 0.9}, (A, B): {C: 0.9}, (A, B, C): {D: 0.9}},
        {(): {EOS_ID: 0.8, C: 0.1}},
        {(): {B: 0.7}, (B,): {D: 0.8}, (B, D): {EOS_ID: 0.9}},
    ])
    max_len = 8
    spec = [tf.TensorSpec([None], tf.int32)] * 2

    @tf.function(input_signature=spec)
    def greedy(sent, limits):
        return greedy_search(lm.step_fn, lm.init_state(sent), tf.shape(sent)[0], max_len, limits)

    @tf.function(input_signature=spec)
    def beam(sent, limits):
        return beam_search(lm.step_fn, lm.init_state(sent), tf.shape(sent)[0], 2, max_len,
                           limits, length_penalty=0.0, nbest=2)

    sent, limits = tf.constant([0, 1, 2]), tf.constant([2, 5, 5])
    want_ids = [padded([A, B], max_len), padded([], max_len), padded([B, D], max_len)]
    want_lp = [2 * L(0.9), L(0.8), L(0.7) + L(0.8) + L(0.9)]

    lm.calls.assign(0)
    g = {k: v.numpy() for k, v in greedy(sent, limits).items()}
    # Sentence 2 ends on eos at step 2; the loop stops there instead of running max_len steps.
    assert int(lm.calls.numpy()) == 3
    np.testing.assert_array_equal(g["ids"], want_ids)
    np.testing.assert_array_equal(g["lengths"], [2, 0, 2])
    np.testing.assert_allclose(g["scores"], want_lp, atol=1e-5)

    lm.calls.assign(0)
    bm = {k: v.numpy() for k, v in beam(sent, limits).items()}
    # Sentence 0 hits its limit at step 1, sentence 1 can no longer improve at step 1,
    # sentence 2 at step 2 (its alive hypotheses are far below its two finished ones).
    assert int(lm.calls.numpy()) == 3
    np.testing.assert_array_equal(bm["ids"][:, 0], want_ids)
    np.testing.assert_array_equal(bm["lengths"][:, 0], [2, 0, 2])
    np.testing.assert_allclose(bm["scores"][:, 0], want_lp, atol=1e-5)
    # The limit holds for every returned hypothesis, not only the best.
    assert (bm["lengths"][0] <= 2).all() and (bm["ids"][0][:, 2:] == PAD_ID).all()

    # Each sentence alone gives the same result as in the batch: no cross-talk.
    for s in range(3):
        g1 = greedy(sent[s:s + 1], limits[s:s + 1])
        b1 = beam(sent[s:s + 1], limits[s:s + 1])
        np.testing.assert_array_equal(g1["ids"][0], g["ids"][s])
        np.testing.assert_allclose(g1["scores"][0], g["scores"][s], atol=1e-6)
        np.testing.assert_array_equal(b1["ids"][0], bm["ids"][s])
        np.testing.assert_allclose(b1["scores"][0], bm["scores"][s], atol=1e-6)


def test_nbest_returns_distinct_hypotheses_sorted_with_hand_scores():
    """(6) nbest = K = 3 in a tree with exactly four plausible hypotheses."""
    lm = TreeLM([{
        (): {A: 0.5, B: 0.3, C: 0.15},
        (A,): {EOS_ID: 0.6, D: 0.35},
        (B,): {EOS_ID: 0.9},
        (C,): {EOS_ID: 0.9},
        (A, D): {EOS_ID: 0.9},
    }])
    alpha = 0.6
    out = run_beam(lm, [0], beam_size=3, max_len=5, length_penalty=alpha, nbest=3)
    # "C" (0.135) is the fourth best and must have been pushed out by "A D" (0.1575).
    np.testing.assert_array_equal(
        out["ids"][0], [padded([A], 5), padded([B], 5), padded([A, D], 5)]
    )
    np.testing.assert_array_equal(out["lengths"][0], [1, 1, 2])
    want_lp = [L(0.5) + L(0.6), L(0.3) + L(0.9), L(0.5) + L(0.35) + L(0.9)]
    want_scores = [want_lp[0] / pen(2, alpha), want_lp[1] / pen(2, alpha),
                   want_lp[2] / pen(3, alpha)]
    np.testing.assert_allclose(out["log_probs"][0], want_lp, atol=1e-5)
    np.testing.assert_allclose(out["scores"][0], want_scores, atol=1e-5)
    assert (np.diff(out["scores"][0]) < 0).all()


def test_state_follows_its_beam_after_reordering():
    """(7) At step 1 the two beams swap places; the state must swap with them.

    Sentence 0: beams [A, B] after step 0, then [B D, A C] (parents 1, 0). Each continuation
    ("B D" -> B, "A C" -> A) exists only at the right tree node, so a state left in place
    would send both beams to the sink and end them with eos. Sentence 1 has its own tree, so a
    wrong tiling or batch offset would also show.
    """
    lm = TreeLM([
        {
            (): {A: 0.5, B: 0.4},
            (A,): {C: 0.7},
            (B,): {D: 0.99},
            (A, C): {A: 0.9},
            (B, D): {B: 0.9},
            (A, C, A): {EOS_ID: 0.9},
            (B, D, B): {EOS_ID: 0.9},
        },
        {(): {C: 0.6, D: 0.3}, (C,): {C: 0.9}, (D,): {D: 0.9}, (C, C): {EOS_ID: 0.9},
         (D, D): {EOS_ID: 0.9}},
    ])
    out = run_beam(lm, [0, 1], beam_size=2, max_len=6, length_penalty=0.0, nbest=2)
    np.testing.assert_array_equal(out["ids"][0], [padded([B, D, B], 6), padded([A, C, A], 6)])
    np.testing.assert_allclose(
        out["log_probs"][0],
        [L(0.4) + L(0.99) + 2 * L(0.9), L(0.5) + L(0.7) + 2 * L(0.9)],
        atol=1e-5,
    )
    np.testing.assert_array_equal(out["ids"][1], [padded([C, C], 6), padded([D, D], 6)])
    np.testing.assert_allclose(
        out["log_probs"][1], [L(0.6) + 2 * L(0.9), L(0.3) + 2 * L(0.9)], atol=1e-5
    )


def test_sentence_stopped_early_is_frozen_while_its_neighbour_runs():
    """A sentence stopped by the bound rule stays as it was while the batch keeps going.

    Sentence 0 ends at step 0: "" (eos, 0.5) scores ln 0.5, and "A" (0.3), even at the
    penalty of its limit of 2 tokens, cannot beat it. Sentence 1 runs six more steps. Were
    sentence 0 still expanded, the growing penalty at those later lengths (alpha=2) would let
    an over-long "A ..." overtake "".
    """
    chain = {(B,) * i: {B: 0.9} for i in range(6)} | {(B,) * 6: {EOS_ID: 0.9}}
    lm = TreeLM([{(): {EOS_ID: 0.5, A: 0.3}}, chain])
    out = run_beam(lm, [0, 1], beam_size=1, max_len=8, length_penalty=2.0,
                   max_lengths=tf.constant([2, 8]))
    np.testing.assert_array_equal(out["ids"][:, 0], [padded([], 8), padded([B] * 6, 8)])
    np.testing.assert_array_equal(out["lengths"][:, 0], [0, 6])
    np.testing.assert_allclose(
        out["scores"][:, 0], [L(0.5), 7 * L(0.9) / pen(7, 2.0)], atol=1e-5
    )
