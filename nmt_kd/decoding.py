"""Batched greedy and beam search over a model-agnostic step function.

The searches only know a *step function* (see `StepFn`): given the previous token of every
hypothesis, the step index and a dict of batch-first state tensors, it returns the next-token
logits and the updated state. Every model's `decode_step` fits this signature, so this module
never imports a model class (the same split as OpenNMT-tf's `dynamic_decode`).

Both searches are written for graph mode: the caller wraps them in `tf.function`, the token loop
is a `tf.while_loop` with a static bound `max_len`, and they exit early once every sentence is
finished.

Length conventions shared by both searches:

* the output `ids` hold the emitted tokens only: no bos, no eos, padded with `PAD_ID` (0);
* `lengths` count those tokens (eos excluded);
* a hypothesis that emits `limit` tokens without eos (`limit` = its sentence's entry of
  `max_lengths`, clipped to `[1, max_len]`) is forced to end there, as if eos followed; no eos
  log-prob is added for it, because the step function is never called for position `limit`
  (a model's cache holds only `max_len` positions).

Scores are float32 throughout; impossible hypotheses are masked with `NEG_INF` (-1e9) rather
than -inf so that sums and divisions never produce NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

from nmt_kd import BOS_ID, EOS_ID

StepFn = Callable[[tf.Tensor, tf.Tensor, dict], tuple[tf.Tensor, dict]]
"""step_fn(token_ids [N] int32, step scalar int32, state) -> (logits [N, V] float32, new_state).

`state` is a dict (possibly nested) of batch-first tensors; `new_state` has the same structure
and shapes."""

NEG_INF = -1e9
# Anything below this threshold is a masked (impossible) hypothesis: masked scores stay near
# NEG_INF even after adding a few hundred log-probs, far from any real score.
_INVALID = NEG_INF / 2


def tile_state(state: dict, beam_size: int) -> dict:
    """Repeat every row of every state tensor `beam_size` times along axis 0.

    `[B, ...] -> [B*K, ...]`; rows `b*K .. b*K+K-1` are copies of row `b`, which is the layout
    beam search uses for its flat beam index `b*K + k`.
    """
    return tf.nest.map_structure(lambda x: tf.repeat(x, beam_size, axis=0), state)


def _as_int32(batch_size: int | tf.Tensor) -> tf.Tensor:
    return tf.cast(batch_size, tf.int32)


def _limits(max_lengths: tf.Tensor | None, batch_size: tf.Tensor, max_len: int) -> tf.Tensor:
    """The effective per-sentence token limit, int32 [B] in [1, max_len]."""
    if max_lengths is None:
        return tf.fill([batch_size], tf.constant(max_len, tf.int32))
    # At least one step is always taken, so a limit of 0 behaves like 1.
    return tf.clip_by_value(tf.cast(max_lengths, tf.int32), 1, max_len)


def _length_penalty(length: tf.Tensor, alpha: float) -> tf.Tensor:
    """GNMT length penalty ((5 + length) / 6) ** alpha, float32, same shape as `length`."""
    length = tf.cast(length, tf.float32)
    if alpha == 0:
        return tf.ones_like(length)
    return tf.pow((5.0 + length) / 6.0, alpha)


def _relaxed(x: tf.Tensor) -> tf.TensorShape:
    """Loop shape invariant: the batch dimension may be unknown, the rest is fixed."""
    shape = x.shape
    if shape.rank is None or shape.rank == 0:
        return shape
    return tf.TensorShape([None]).concatenate(shape[1:])


def _check_max_len(max_len: int) -> None:
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive Python int, got {max_len!r}")


def greedy_search(
    step_fn: StepFn,
    state: dict,
    batch_size: int | tf.Tensor,
    max_len: int,
    max_lengths: tf.Tensor | None = None,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    with_scores: bool = True,
) -> dict[str, tf.Tensor]:
    """Batched greedy (argmax) decoding.

    Returns `{"ids": int32 [B, max_len], "lengths": int32 [B], "scores": float32 [B]}`: the
    emitted tokens (no bos, no eos, pad 0 after the end), their count, and the sum of the
    log-probs of the emitted tokens including eos when one was emitted. With
    `with_scores=False` the argmax is taken on the logits and no softmax is computed (the
    same tokens: a softmax does not change a row's order); "scores" are then zeros. A
    translation needs no greedy score, and the softmax over the vocabulary costs ~10% of the
    teacher's greedy step at batch 64 (docs/benchmarks.md, "Student shapes for the speed bar").
    """
    _check_max_len(max_len)
    batch = _as_int32(batch_size)
    limits = _limits(max_lengths, batch, max_len)
    positions = tf.range(max_len, dtype=tf.int32)

    def cond(step, tokens, finished, lengths, scores, ids, state):
        return tf.logical_not(tf.reduce_all(finished))

    def body(step, tokens, finished, lengths, scores, ids, state):
        logits, new_state = step_fn(tokens, step, state)
        alive = tf.logical_not(finished)
        if with_scores:
            log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
            next_tokens = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
            token_lp = tf.gather(log_probs, next_tokens, batch_dims=1)
            scores = scores + tf.where(alive, token_lp, 0.0)
        else:
            next_tokens = tf.argmax(logits, axis=-1, output_type=tf.int32)

        is_eos = tf.equal(next_tokens, eos_id)
        emit = tf.logical_and(alive, tf.logical_not(is_eos))
        write = tf.logical_and(tf.expand_dims(emit, 1), tf.expand_dims(tf.equal(positions, step), 0))
        ids = tf.where(write, tf.expand_dims(next_tokens, 1), ids)
        lengths = lengths + tf.cast(emit, tf.int32)
        finished = finished | is_eos | (step + 1 >= limits)
        # Finished rows keep being fed (the batch runs as one); their outputs are ignored.
        return step + 1, next_tokens, finished, lengths, scores, ids, new_state

    loop_vars = (
        tf.constant(0, tf.int32),
        tf.fill([batch], tf.constant(bos_id, tf.int32)),
        tf.zeros([batch], tf.bool),
        tf.zeros([batch], tf.int32),
        tf.zeros([batch], tf.float32),
        tf.zeros([batch, max_len], tf.int32),
        state,
    )
    out = tf.while_loop(
        cond,
        body,
        loop_vars,
        shape_invariants=tf.nest.map_structure(_relaxed, loop_vars),
        maximum_iterations=max_len,
    )
    _, _, _, lengths, scores, ids, _ = out
    return {"ids": ids, "lengths": lengths, "scores": scores}


class BeamState(NamedTuple):
    """The `tf.while_loop` state of `beam_search` (a nested structure the loop carries).

    `alive_*`: the K hypotheses per sentence that have not ended (`alive_len` is shared by a
    sentence's beams); `fin_*`: the K best that ended (eos or the length limit), `fin_flag`
    marking real entries; `done`: sentences that stop; `model_state`: the step function's
    state, `[B*K, ...]`, row `b*K + k` belonging to beam k of sentence b.
    """

    step: tf.Tensor  # int32 scalar
    tokens: tf.Tensor  # int32 [B*K], the last token of each alive beam
    alive_seq: tf.Tensor  # int32 [B, K, max_len]
    alive_lp: tf.Tensor  # float32 [B, K]
    alive_len: tf.Tensor  # int32 [B]
    fin_seq: tf.Tensor  # int32 [B, K, max_len]
    fin_score: tf.Tensor  # float32 [B, K], normalised
    fin_lp: tf.Tensor  # float32 [B, K]
    fin_len: tf.Tensor  # int32 [B, K]
    fin_flag: tf.Tensor  # bool [B, K]
    done: tf.Tensor  # bool [B]
    model_state: dict


class _BeamSetup(NamedTuple):
    """What every step of one `beam_search` call shares (constants of the loop)."""

    k: int
    alpha: float
    batch: tf.Tensor
    limits: tf.Tensor  # int32 [B]
    best_penalty: tf.Tensor  # float32 [B]: the most favourable penalty still reachable
    positions: tf.Tensor  # int32 [max_len]
    batch_offsets: tf.Tensor  # int32 [B, 1], to turn (b, beam) into b*K + beam
    eos_id: int


class _Candidates(NamedTuple):
    """The top 2K expansions of one step, per sentence."""

    lp: tf.Tensor  # float32 [B, 2K]
    parent: tf.Tensor  # int32 [B, 2K]
    tok: tf.Tensor  # int32 [B, 2K]
    valid: tf.Tensor  # bool [B, 2K]
    eos: tf.Tensor  # bool [B, 2K]
    at_limit: tf.Tensor  # bool [B]: this step is the sentence's last
    ends: tf.Tensor  # bool [B, 2K]: ended with eos or at the sentence's limit
    seq: tf.Tensor  # int32 [B, 2K, max_len]
    len: tf.Tensor  # int32 [B, 2K]


def beam_search(
    step_fn: StepFn,
    state: dict,
    batch_size: int | tf.Tensor,
    beam_size: int,
    max_len: int,
    max_lengths: tf.Tensor | None = None,
    length_penalty: float = 0.6,
    nbest: int = 1,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
) -> dict[str, tf.Tensor]:
    """Batched beam search with a GNMT length penalty.

    `state` is the untiled `[B, ...]` state; it is tiled to `[B*K, ...]` here and reordered each
    step with `tf.gather` on the flat parent index `b*K + parent`.

    Each sentence keeps K *alive* hypotheses (never ended) and a separate set of K *finished*
    ones (ended with eos or forced at the length limit), ranked by
    `log_prob / ((5 + length) / 6) ** length_penalty`, where `length` counts the emitted tokens
    including eos. Each step takes the top 2K expansions, so that even if K of them end there
    are still K to keep alive; finished hypotheses are never extended. A sentence stops when its
    finished set is full and its best alive hypothesis, even with the most favourable penalty
    (that of the longest length still allowed), cannot beat the worst finished one; or when it
    reaches its length limit. If fewer than `nbest` hypotheses finished, the best alive ones
    fill the gap (penalised at their current length).

    A beam of 1 follows greedy's path, but it is not greedy: because each step looks at the top
    2K = 2 expansions, eos as the runner-up at step t finishes greedy's prefix there, and the
    finished set keeps the best of those endings and greedy's own output. With
    `length_penalty=0` the result is greedy's output unless one of those endings has a higher
    log-probability (tests/test_beam_real_models.py checks exactly this on each architecture).
    With a positive penalty the ranking is by normalised score, so a beam of 1 may also return
    a longer hypothesis than the one greedy ended.

    Returns `{"ids": int32 [B, nbest, max_len], "lengths": int32 [B, nbest],
    "scores": float32 [B, nbest] (normalised, best first), "log_probs": float32 [B, nbest]}`.
    """
    _check_max_len(max_len)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest must be in [1, beam_size={beam_size}], got {nbest}")
    if length_penalty < 0:
        # The early-stopping bound assumes the penalty grows with length.
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
    alpha = float(length_penalty)
    batch = _as_int32(batch_size)
    limits = _limits(max_lengths, batch, max_len)
    setup = _BeamSetup(
        k=beam_size, alpha=alpha, batch=batch, limits=limits,
        # Log-probs only decrease with more tokens and the penalty only grows, so an alive
        # hypothesis can at best reach its current log-prob divided by the penalty at the limit.
        best_penalty=_length_penalty(limits, alpha),
        positions=tf.range(max_len, dtype=tf.int32),
        batch_offsets=tf.range(batch)[:, None] * beam_size,
        eos_id=eos_id,
    )
    loop_vars = _initial_beam_state(state, batch, beam_size, max_len, bos_id)
    final = tf.while_loop(
        lambda s: tf.logical_not(tf.reduce_all(s.done)),
        lambda s: (_beam_step(step_fn, setup, s),),
        (loop_vars,),
        shape_invariants=(tf.nest.map_structure(_relaxed, loop_vars),),
        maximum_iterations=max_len,
    )[0]
    return _beam_results(final, beam_size, alpha, nbest)


def _initial_beam_state(state: dict, batch: tf.Tensor, k: int, max_len: int,
                        bos_id: int) -> BeamState:
    neg = tf.constant(NEG_INF, tf.float32)
    # Only beam 0 of each sentence is live at first, so step 0 does not expand K duplicates.
    first_beam = tf.constant([[0.0] + [NEG_INF] * (k - 1)], tf.float32)
    return BeamState(
        step=tf.constant(0, tf.int32),
        tokens=tf.fill([batch * k], tf.constant(bos_id, tf.int32)),
        alive_seq=tf.zeros([batch, k, max_len], tf.int32),
        alive_lp=tf.tile(first_beam, [batch, 1]),
        alive_len=tf.zeros([batch], tf.int32),
        fin_seq=tf.zeros([batch, k, max_len], tf.int32),
        fin_score=tf.fill([batch, k], neg),
        fin_lp=tf.fill([batch, k], neg),
        fin_len=tf.zeros([batch, k], tf.int32),
        fin_flag=tf.zeros([batch, k], tf.bool),
        done=tf.zeros([batch], tf.bool),
        model_state=tile_state(state, k),
    )


def _expand(setup: _BeamSetup, s: BeamState, log_probs: tf.Tensor) -> _Candidates:
    """Expand every alive beam by every token and keep the best 2K; sentences already done
    expand nothing."""
    k, batch, step = setup.k, setup.batch, s.step
    neg = tf.constant(NEG_INF, tf.float32)
    vocab_static = log_probs.shape[-1]
    vocab = tf.shape(log_probs)[-1]
    n_cand = 2 * k if vocab_static is None else min(2 * k, k * vocab_static)

    cand = s.alive_lp[:, :, None] + tf.reshape(log_probs, [batch, k, vocab])
    cand = tf.where(s.done[:, None, None], neg, cand)
    cand_lp, cand_idx = tf.math.top_k(tf.reshape(cand, [batch, k * vocab]), k=n_cand)
    cand_parent = cand_idx // vocab
    cand_tok = cand_idx % vocab
    cand_eos = tf.equal(cand_tok, setup.eos_id)
    at_limit = step + 1 >= setup.limits  # [B]

    # Parent's tokens plus the new one (eos is not stored in the output ids).
    cand_seq = tf.gather(s.alive_seq, cand_parent, batch_dims=1)
    write = tf.logical_not(cand_eos)[:, :, None] & tf.equal(setup.positions, step)[None, None, :]
    cand_seq = tf.where(write, cand_tok[:, :, None], cand_seq)
    return _Candidates(
        lp=cand_lp, parent=cand_parent, tok=cand_tok, valid=cand_lp > _INVALID, eos=cand_eos,
        at_limit=at_limit, ends=cand_eos | at_limit[:, None], seq=cand_seq,
        len=step + 1 - tf.cast(cand_eos, tf.int32),
    )


def _beam_step(step_fn: StepFn, setup: _BeamSetup, s: BeamState) -> BeamState:
    """One step of `beam_search`: the loop body."""
    k, step = setup.k, s.step
    neg = tf.constant(NEG_INF, tf.float32)
    logits, new_state = step_fn(s.tokens, step, s.model_state)
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    c = _expand(setup, s, log_probs)

    # New alive set: the best K expansions that did not end.
    alive_key = tf.where(c.ends | tf.logical_not(c.valid), neg, c.lp)
    new_alive_lp, alive_sel = tf.math.top_k(alive_key, k=k)
    new_alive_seq = tf.gather(c.seq, alive_sel, batch_dims=1)
    new_alive_tok = tf.gather(c.tok, alive_sel, batch_dims=1)
    new_alive_parent = tf.gather(c.parent, alive_sel, batch_dims=1)

    # New finished set: the best K of the old finished ones and those that just ended.
    # Every hypothesis ending at this step has penalty length step + 1 (eos included).
    ended = c.ends & c.valid
    ended_score = tf.where(ended, c.lp / _length_penalty(step + 1, setup.alpha), neg)
    new_fin_score, fin_sel = tf.math.top_k(tf.concat([s.fin_score, ended_score], 1), k=k)
    fin_seq = tf.gather(tf.concat([s.fin_seq, c.seq], 1), fin_sel, batch_dims=1)
    fin_lp = tf.gather(tf.concat([s.fin_lp, c.lp], 1), fin_sel, batch_dims=1)
    fin_len = tf.gather(tf.concat([s.fin_len, c.len], 1), fin_sel, batch_dims=1)
    fin_flag = tf.gather(tf.concat([s.fin_flag, ended], 1), fin_sel, batch_dims=1)

    # Sentences done before this step keep their last alive set for the final fill-in.
    done = s.done
    alive_seq = tf.where(done[:, None, None], s.alive_seq, new_alive_seq)
    alive_lp = tf.where(done[:, None], s.alive_lp, new_alive_lp)
    alive_len = tf.where(done, s.alive_len, step + 1)

    no_alive = new_alive_lp[:, 0] <= _INVALID
    alive_bound = new_alive_lp[:, 0] / setup.best_penalty
    cannot_improve = tf.reduce_all(fin_flag, axis=1) & (new_fin_score[:, k - 1] > alive_bound)
    done = done | c.at_limit | no_alive | cannot_improve

    # Each surviving beam continues from its parent's state.
    flat_parent = tf.reshape(new_alive_parent + setup.batch_offsets, [-1])
    return BeamState(
        step=step + 1,
        tokens=tf.reshape(new_alive_tok, [-1]),
        alive_seq=alive_seq, alive_lp=alive_lp, alive_len=alive_len,
        fin_seq=fin_seq, fin_score=new_fin_score, fin_lp=fin_lp, fin_len=fin_len,
        fin_flag=fin_flag, done=done,
        model_state=tf.nest.map_structure(lambda x: tf.gather(x, flat_parent), new_state),
    )


def _beam_results(s: BeamState, k: int, alpha: float, nbest: int) -> dict[str, tf.Tensor]:
    """The n-best of each sentence from the final loop state.

    Pool finished (best first, real ones before empty slots) and alive (best first: all alive
    beams of a sentence share a length); take finished first, alive only to fill up.
    """
    neg = tf.constant(NEG_INF, tf.float32)
    alive_score = tf.where(
        s.alive_lp > _INVALID, s.alive_lp / _length_penalty(s.alive_len, alpha)[:, None], neg
    )
    pool_seq = tf.concat([s.fin_seq, s.alive_seq], 1)
    pool_score = tf.concat([s.fin_score, alive_score], 1)
    pool_lp = tf.concat([s.fin_lp, s.alive_lp], 1)
    pool_len = tf.concat([s.fin_len, tf.tile(s.alive_len[:, None], [1, k])], 1)
    n_finished = tf.reduce_sum(tf.cast(s.fin_flag, tf.int32), axis=1, keepdims=True)
    rank = tf.range(nbest, dtype=tf.int32)[None, :]
    pick = tf.where(rank < n_finished, rank, k + rank - n_finished)
    scores = tf.gather(pool_score, pick, batch_dims=1)
    # Alive fill-ins may outscore finished ones: sort the picked n-best by score.
    order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
    pick = tf.gather(pick, order, batch_dims=1)
    return {
        "ids": tf.gather(pool_seq, pick, batch_dims=1),
        "lengths": tf.gather(pool_len, pick, batch_dims=1),
        "scores": tf.gather(pool_score, pick, batch_dims=1),
        "log_probs": tf.gather(pool_lp, pick, batch_dims=1),
    }
