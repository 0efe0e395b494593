"""Beam search on the real models: the cached decoder step against teacher-forced calls.

`nmt_kd.backends.decode_ids` runs the beam search of `nmt_kd.decoding` over each model's
incremental `decode_step` (tiled, reordered caches). Here a plain-Python beam of the same
rules (top 2K expansions, K alive, K finished, GNMT penalty, the bound rule) gets every
log-probability from a fresh teacher-forced `model((src, [bos] + prefix))` call instead, so a
cache that is not reordered with its beam, a wrong step index or a masked source shows up as
a different n-best list. Tiny briefly trained models, so that hypotheses end on eos.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import clone_run

from nmt_kd import BOS_ID, EOS_ID
from nmt_kd.backends import decode_ids
from nmt_kd.config import DecodeConfig, config_from_dict
from nmt_kd.fileio import read_lines

K = 3
MAX_LEN = 24
ARCHS = {  # name: (architecture, model-config overrides)
    "teacher": ("teacher", {}),
    "student_rnn": ("student_rnn", {}),
    "student_cnn": ("student_cnn", {}),
    "student_transformer": ("student_transformer", {}),
    # the other recurrent variant: LSTM cells with Bahdanau attention
    "student_rnn_lstm_bahdanau": ("student_rnn", {"cell": "lstm", "attention": "bahdanau"}),
}


@pytest.fixture(scope="module")
def models(tiny_run, tmp_path_factory):
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.train import train_model

    run, tree = clone_run(tiny_run, tmp_path_factory.mktemp("beam"))
    tree["train"].update(max_steps=200, eval_every=0, log_every=1000)
    tree["student_train"].update(max_steps=200, eval_every=0, log_every=1000)
    out = {}
    for name, (arch, overrides) in ARCHS.items():
        tree["model"][arch].update(overrides)
        train_model(config_from_dict(tree), run, arch, name=name, log=lambda _m: None)
        out[name] = load_model_dir(run / name)[:2]
    src_lines = read_lines(run / "data/test.src")[:6]
    return out, src_lines


def _source_batch(tok, lines) -> np.ndarray:
    ids = [seq + [EOS_ID] for seq in tok.encode(lines)]
    src = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for i, seq in enumerate(ids):
        src[i, :len(seq)] = seq
    return src


def _pen(length: int, alpha: float) -> float:
    return ((5 + length) / 6) ** alpha


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def brute_force_beam(model, src_row: np.ndarray, limit: int, k: int, alpha: float, nbest: int):
    """[(tokens, log_prob, score)] best first, every log-prob from a teacher-forced call."""
    alive = [((), 0.0)]
    finished: list[tuple[float, tuple, float]] = []  # (score, tokens, log_prob)
    step = 0
    for step in range(limit):
        prefixes = np.array([[BOS_ID, *seq] for seq, _ in alive], np.int32)
        srcs = np.repeat(src_row[None], len(alive), axis=0)
        logp = _log_softmax(model((tf.constant(srcs), tf.constant(prefixes)),
                                  training=False).numpy()[:, -1])
        vocab = logp.shape[-1]
        cands = [(lp + logp[p, t], p * vocab + t, p, t)
                 for p, (_, lp) in enumerate(alive) for t in range(vocab)]
        cands.sort(key=lambda c: (-c[0], c[1]))  # top_k: ties go to the lower flat index
        at_limit = step + 1 >= limit
        new_alive, ended = [], []
        for lp, _, p, t in cands[:2 * k]:
            seq = alive[p][0] + (() if t == EOS_ID else (t,))
            if t == EOS_ID or at_limit:
                ended.append((lp / _pen(step + 1, alpha), seq, lp))
            elif len(new_alive) < k:
                new_alive.append((seq, lp))
        finished = sorted(finished + ended, key=lambda f: -f[0])[:k]  # stable: older first
        alive = new_alive
        if at_limit:
            break
        if len(finished) == k and finished[-1][0] > alive[0][1] / _pen(limit, alpha):
            break  # the best alive hypothesis can no longer beat the worst finished one
    pool = [(seq, lp, score) for score, seq, lp in finished]
    pool += [(seq, lp, lp / _pen(step + 1, alpha)) for seq, lp in alive]
    return sorted(pool[:max(nbest, len(finished))][:nbest], key=lambda h: -h[2])


@pytest.mark.parametrize("name", list(ARCHS))
def test_beam_over_the_decoder_step_equals_a_brute_force_beam_over_teacher_forcing(models, name):
    (model, tok), lines = models[0][name], models[1]
    cfg = DecodeConfig(length_penalty=0.6, max_len_a=1.5, max_len_b=2, max_len_cap=MAX_LEN)
    src = _source_batch(tok, lines)
    out = tf.function(lambda s: decode_ids(model, cfg, s, K, MAX_LEN, nbest=K))(tf.constant(src))
    ids, lengths = out["ids"].numpy(), out["lengths"].numpy()
    scores, log_probs = out["scores"].numpy(), out["log_probs"].numpy()
    ended_on_eos = 0
    for b in range(len(lines)):
        limit = min(MAX_LEN, int((src[b] != 0).sum()) * 3 // 2 + 2)
        want = brute_force_beam(model, src[b], limit, K, 0.6, K)
        got = [tuple(ids[b, j, :lengths[b, j]].tolist()) for j in range(K)]
        assert got == [seq for seq, _, _ in want], (b, got, want)
        assert (ids[b][np.arange(MAX_LEN)[None, :] >= lengths[b][:, None]] == 0).all()
        np.testing.assert_allclose(log_probs[b], [lp for _, lp, _ in want], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(scores[b], [s for _, _, s in want], rtol=1e-4, atol=1e-4)
        ended_on_eos += sum(len(seq) < limit for seq, _, _ in want)
    assert ended_on_eos > 0  # the finished-hypothesis path was exercised, not only the limit


@pytest.mark.parametrize("name", list(ARCHS))
def test_beam_of_one_without_length_penalty_is_greedy_on_the_real_model(models, name):
    """Beam 1 (no length penalty) walks greedy's path; what it returns is greedy's output,
    except where greedy passed over a better ending.

    The search ranks the top 2K = 2 expansions each step and keeps an eos among them as a
    finished hypothesis; greedy ignores eos as a runner-up. So beam 1 returns the most
    probable of: greedy's output, and each greedy prefix that eos (greedy's runner-up there)
    ends. Exactly that is checked, with every log-prob from a teacher-forced call on
    greedy's output (as `decoding.beam_search`'s docstring says).
    """
    from nmt_kd.decode_policy import max_lengths_from_source
    from nmt_kd.decoding import beam_search, greedy_search

    (model, tok), lines = models[0][name], models[1]
    src = _source_batch(tok, lines)

    @tf.function
    def both(s):
        state = model.init_decode_state(model.encode(s, training=False), MAX_LEN)
        limits = max_lengths_from_source(tf.reduce_sum(tf.cast(s != 0, tf.int32), 1), 1.5, 2,
                                         MAX_LEN)
        batch = tf.shape(s)[0]
        return (greedy_search(model.decode_step, state, batch, MAX_LEN, limits),
                beam_search(model.decode_step, state, batch, 1, MAX_LEN, limits,
                            length_penalty=0.0))

    greedy, beam = (tree_to_numpy(x) for x in both(tf.constant(src)))
    plain = 0
    for b in range(len(lines)):
        limit = min(MAX_LEN, int((src[b] != 0).sum()) * 3 // 2 + 2)
        g = greedy["ids"][b, :greedy["lengths"][b]].tolist()
        ended = len(g) < limit  # on eos, not cut at the limit
        tgt_in = np.array([[BOS_ID, *g]], np.int32)
        logp = _log_softmax(model((tf.constant(src[b:b + 1]), tf.constant(tgt_in)),
                                  training=False).numpy()[0])
        path = np.cumsum([0.0] + [logp[t, tok_] for t, tok_ in enumerate(g)])
        g_lp = path[-1] + (logp[len(g), EOS_ID] if ended else 0.0)
        assert greedy["scores"][b] == pytest.approx(g_lp, abs=1e-3)
        options = [(g_lp, g)]
        for t in range(len(g)):  # eos as greedy's runner-up at step t
            if np.argsort(-logp[t], kind="stable")[1] == EOS_ID:
                options.append((path[t] + logp[t, EOS_ID], g[:t]))
        want_lp, want = max(options, key=lambda o: o[0])
        got = beam["ids"][b, 0, :beam["lengths"][b, 0]].tolist()
        assert got == want, (b, got, want, options)
        assert beam["log_probs"][b, 0] == pytest.approx(want_lp, abs=1e-3)
        plain += got == g
    assert plain > 0  # where no ending beats it, beam 1 is exactly greedy


def tree_to_numpy(out: dict) -> dict:
    return {k: v.numpy() for k, v in out.items()}
