"""Ensemble teachers: decoding, the contract, the CLI, distillation and word-KD."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import clone_run
from seq2seq_harness import greedy_eager, teacher_forced

from nmt_kd.backends import SourceBatch
from nmt_kd.config import DecodeConfig, config_from_dict
from nmt_kd.errors import UserError
from nmt_kd.models.ensemble import Ensemble, create_ensemble_dir
from nmt_kd.models.persistence import load_model_dir
from nmt_kd.translate import Translator

quiet = lambda _m: None  # noqa: E731
LINES = ["The dog runs.", "", "A small red cat sits on the big green house.", "Cat."]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def members(tiny_run, tmp_path_factory):
    """Two different tiny models on the run's vocabulary: a Transformer trained a little (its
    translations vary) and an untrained GRU."""
    import keras

    from nmt_kd.models.persistence import save_model_dir
    from nmt_kd.models.registry import build_model
    from nmt_kd.tokenizer import Tokenizer
    from nmt_kd.train import train_model

    run, tree = clone_run(tiny_run, tmp_path_factory.mktemp("ens"))
    cfg = config_from_dict(dict(tree, train=dict(tree["train"], max_steps=150, eval_every=0)))
    train_model(cfg, run, "teacher", name="member_a", log=quiet)
    shutil.rmtree(run / "member_a" / "checkpoints")
    tok = Tokenizer(run / "vocab" / "spm.model")
    keras.utils.set_random_seed(2)
    model = build_model("student_rnn", cfg.model, tok.vocab_size)
    save_model_dir(model, run / "member_b", tok, {"model_type": "student_rnn", "kd": "none"})
    create_ensemble_dir([run / "member_a", run / "member_b"], run / "ensemble")
    create_ensemble_dir([run / "member_a", run / "member_a"], run / "twice")
    return run, tree


def test_an_ensemble_of_one_model_twice_translates_exactly_like_it(members):
    run, _ = members
    single, tok, _ = load_model_dir(run / "member_a")
    twice, _, meta = load_model_dir(run / "twice")
    assert isinstance(twice, Ensemble) and meta["model_type"] == "ensemble"
    assert meta["params"] == 2 * single.count_params() == twice.count_params()
    cfg = DecodeConfig(max_len_cap=32)
    a, b = Translator(single, tok, cfg), Translator(twice, tok, cfg)
    for beam in (1, 3):
        ra = a.translate(LINES, beam=beam, batch_size=2, nbest=min(beam, 2))
        rb = b.translate(LINES, beam=beam, batch_size=2, nbest=min(beam, 2))
        assert rb.hypotheses == ra.hypotheses and rb.token_counts == ra.token_counts
        assert all(n > 0 for n, line in zip(ra.token_counts, LINES, strict=True) if line)
        if beam > 1:  # same n-best, same scores: the mean of two equal log-probs is that log-prob
            for x, y in zip(ra.nbest, rb.nbest, strict=True):
                assert [h for h, _ in y] == [h for h, _ in x]
                np.testing.assert_allclose([s for _, s in y], [s for _, s in x], atol=1e-4)


def test_a_step_scores_the_mean_of_the_members_log_softmax(members):
    run, _ = members
    ens, _, _ = load_model_dir(run / "ensemble")
    a, b = ens.members
    assert type(a).__name__ != type(b).__name__
    src = tf.constant([[5, 9, 12, 3], [7, 3, 0, 0]], tf.int32)
    state = ens.init_decode_state(ens.encode(src), 8)
    sa = a.init_decode_state(a.encode(src), 8)
    sb = b.init_decode_state(b.encode(src), 8)
    tokens = tf.constant([2, 2], tf.int32)
    for step, nxt in enumerate(([11, 6], [4, 20])):
        out, state = ens.decode_step(tokens, tf.constant(step), state)
        la, sa = a.decode_step(tokens, tf.constant(step), sa)
        lb, sb = b.decode_step(tokens, tf.constant(step), sb)
        hand = (log_softmax(la.numpy()) + log_softmax(lb.numpy())) / 2
        np.testing.assert_allclose(out.numpy(), hand, atol=1e-5)
        assert not np.allclose(hand, log_softmax(la.numpy()), atol=1e-3)  # the members differ
        tokens = tf.constant(nxt, tf.int32)


def test_ensemble_greedy_is_the_argmax_of_its_teacher_forced_call(members):
    run, _ = members
    ens, _, _ = load_model_dir(run / "ensemble")
    src = np.array([[5, 9, 12, 8, 3], [7, 14, 3, 0, 0], [6, 3, 0, 0, 0]], np.int32)
    generated, step_scores = greedy_eager(ens, src, steps=7)
    forced = teacher_forced(ens, src, generated)
    np.testing.assert_array_equal(forced.argmax(-1), generated)
    np.testing.assert_allclose(forced, step_scores, atol=1e-4)
    # the graph search (nested state, tf.while_loop) agrees with the eager loop
    tr = Translator(ens, None, DecodeConfig(max_len_cap=32, max_len_a=0.0, max_len_b=7))
    ids, lengths, _, _ = tr.backend.search(SourceBatch(src, []), 1, 16, 1)
    for row in range(len(src)):
        want = list(generated[row])
        want = want[: want.index(3)] if 3 in want else want
        assert list(ids[row, : lengths[row]]) == want


def test_cli_builds_translates_and_evaluates_an_ensemble(members, tmp_path):
    run, _ = members
    env_cli = [sys.executable, "-m", "nmt_kd.cli"]
    out = tmp_path / "ens"
    r = subprocess.run(env_cli + ["ensemble", "--members", str(run / "member_a"),
                                  str(run / "member_b"), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    spec = json.loads((out / "ensemble.json").read_text())
    assert len(spec["members"]) == 2 and not spec["members"][0].startswith("/")
    assert "2 members (teacher, student_rnn)" in r.stdout
    r = subprocess.run(env_cli + ["translate", "--model", str(out), "--beam", "2",
                                  "--set", "decode.max_len_cap=32"],
                       input="The dog runs.\n\nA cat.\n", capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ens, tok, _ = load_model_dir(run / "ensemble")
    want = Translator(ens, tok, DecodeConfig(max_len_cap=32)).translate(
        ["The dog runs.", "", "A cat."], beam=2).hypotheses
    assert r.stdout.split("\n")[:3] == want
    metrics = tmp_path / "m.json"
    r = subprocess.run(env_cli + ["evaluate", "--model", str(out), "--src", str(run / "data/test.src"),
                                  "--ref", str(run / "data/test.tgt"), "--beam", "1",
                                  "--out", str(metrics), "--set", "decode.max_len_cap=32"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(metrics.read_text())
    assert m["model_type"] == "ensemble" and m["params"] == ens.count_params()
    assert m["size_bytes"] == sum((run / n / "model.keras").stat().st_size
                                  for n in ("member_a", "member_b"))


def test_evaluate_with_a_given_translator_reads_the_ensemble_metadata(members):
    from nmt_kd.evaluate import evaluate_model

    run, _ = members
    ens, tok, _ = load_model_dir(run / "ensemble")
    tr = Translator(ens, tok, DecodeConfig(max_len_cap=32))
    m = evaluate_model(run / "ensemble", run / "data/test.src", run / "data/test.tgt", beam=1,
                       batch_size=16, translator=tr, speed_sentences=4, log=quiet)
    assert m["model_type"] == "ensemble" and m["params"] == ens.count_params()
    assert m["size_bytes"] == sum((run / n / "model.keras").stat().st_size
                                  for n in ("member_a", "member_b"))


def test_members_with_different_sentencepiece_models_are_refused(members, tmp_path, capsys):
    from conftest import toy_pairs, write_pair_files

    from nmt_kd.cli import main
    from nmt_kd.config import VocabConfig
    from nmt_kd.tokenizer import train_tokenizer

    run, _ = members
    other = tmp_path / "other"
    shutil.copytree(run / "member_b", other)
    s, t = write_pair_files(tmp_path / "raw", toy_pairs(300, seed=5))
    shutil.copy(train_tokenizer(VocabConfig(size=60), s, t, tmp_path / "v"), other / "spm.model")
    with pytest.raises(UserError, match="do not share one SentencePiece model") as e:
        create_ensemble_dir([run / "member_a", other], tmp_path / "bad")
    assert str(run / "member_a" / "spm.model") in str(e.value) and str(other / "spm.model") in str(e.value)
    assert not (tmp_path / "bad" / "ensemble.json").exists()
    assert main(["ensemble", "--members", str(run / "member_a"), str(other), "--out",
                 str(tmp_path / "bad")]) == 2
    assert "do not share one SentencePiece model" in capsys.readouterr().err
    # a member whose tokenizer changed after the ensemble was made is refused on load
    shutil.copytree(run / "member_b", tmp_path / "b")
    ens = create_ensemble_dir([run / "member_a", tmp_path / "b"], tmp_path / "later")
    shutil.copy(other / "spm.model", tmp_path / "b" / "spm.model")
    with pytest.raises(UserError, match="do not share one SentencePiece model"):
        load_model_dir(ens)
    with pytest.raises(UserError, match="at least 2"):
        create_ensemble_dir([run / "member_a"], tmp_path / "one")
    from nmt_kd.export import export_savedmodel

    with pytest.raises(UserError, match="is an ensemble; export serves one model"):
        export_savedmodel(run / "ensemble", tmp_path / "exp", DecodeConfig())


def test_bench_decodes_an_ensemble_beside_its_member(members):
    from nmt_kd.bench import bench_decoding

    run, _ = members
    out = bench_decoding([run / "member_a", run / "ensemble"], LINES, beams=(1,), batch_sizes=(2,),
                         repeats=1, decode_cfg=DecodeConfig(max_len_cap=32), log=quiet)
    rows = {r["model"]: r for r in out["rows"]}
    ens = rows[str(run / "ensemble")]
    assert ens["model_type"] == "ensemble" and ens["sentences_per_second"] > 0
    assert ens["params"] > rows[str(run / "member_a")]["params"]


def test_distill_translates_with_an_ensemble_teacher(members, tmp_path):
    from nmt_kd.distill import distill_corpus
    from nmt_kd.fileio import read_lines

    base, tree = members
    run = tmp_path / "run"
    shutil.copytree(base, run, ignore=shutil.ignore_patterns("distill", "ensemble", "twice"))
    for side in ("src", "tgt"):  # a few lines are enough
        lines = read_lines(run / f"data/train.{side}")[:12]
        (run / f"data/train.{side}").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    ens_dir = create_ensemble_dir([run / "member_a", run / "member_b"], run / "teacher_ens")
    tree = dict(tree, distill={"shard_size": 5, "beam": 2})
    distill_corpus(config_from_dict(tree), run, teacher_dir=ens_dir, log=quiet)
    ens, tok, _ = load_model_dir(ens_dir)
    src = read_lines(run / "data/train.src")
    want = Translator(ens, tok, config_from_dict(tree).decode).translate(src, beam=2).hypotheses
    assert read_lines(run / "distill/train.tgt") == [h for h in want if h.strip()]


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_word_kd_with_an_ensemble_teacher_learns_from_the_averaged_distribution(members, tmp_path,
                                                                                 mode):
    """One step (learning rate 0: the weights stay as built) of word-KD; its loss by hand."""
    from nmt_kd.dataset import BatchStream, encode_pairs
    from nmt_kd.fileio import read_lines
    from nmt_kd.tokenizer import Tokenizer
    from nmt_kd.train import train_model

    base, tree = members
    run = tmp_path / "run"
    shutil.copytree(base, run, ignore=shutil.ignore_patterns("distill", "twice"))
    ens_dir = create_ensemble_dir([run / "member_a", run / "member_b"], run / "ensemble")
    tree = json.loads(json.dumps(tree))
    tree["student_train"].update(max_steps=1, eval_every=0, learning_rate=0.0)
    tree["model"]["student_rnn"]["dropout"] = 0.0
    tree["distill"] = {"alpha": 0.4, "temperature": 2.0, "teacher_mode": mode, "top_k": 60}
    cfg = config_from_dict(tree)
    tc, dc = cfg.student_train, cfg.distill
    tok = Tokenizer(run / "vocab/spm.model")
    pairs = encode_pairs(tok, read_lines(run / "data/train.src"), read_lines(run / "data/train.tgt"),
                         tc.max_len)
    if mode == "offline":  # a store left by a single teacher: it must not be reused
        from nmt_kd.topk import compute_topk_store

        compute_topk_store(load_model_dir(run / "member_a")[0], pairs,
                           run / "distill/topk_data_k60_T2", 60, 2.0, log=quiet)
    r = train_model(cfg, run, "student_rnn", name="kd", kd="word", teacher_dir=ens_dir, log=quiet)
    assert r.steps == 1 and len(r.losses) == 1

    _, ((src, tgt_in), tgt_out) = next(BatchStream(pairs, tc.max_tokens, seed=tc.seed).iter_indexed(0))
    a, _, _ = load_model_dir(run / "member_a")
    b, _, _ = load_model_dir(run / "member_b")
    mean = (log_softmax(a((src, tgt_in)).numpy()) + log_softmax(b((src, tgt_in)).numpy())) / 2
    T, alpha, eps = dc.temperature, dc.alpha, tc.label_smoothing
    p_log = log_softmax(mean / T)  # the members' averaged distribution, softened by T
    s = r.model((src, tgt_in)).numpy()
    q_log, s_log = log_softmax(s / T), log_softmax(s)
    mask = tgt_out != 0
    kl = (np.exp(p_log) * (p_log - q_log)).sum(-1)
    nll = -np.take_along_axis(s_log, tgt_out[..., None], -1)[..., 0]
    ce = (1 - eps) * nll - eps * s_log.mean(-1)
    hand = ((1 - alpha) * ce[mask].sum() + alpha * T**2 * kl[mask].sum()) / mask.sum()
    # offline: the full top-k (k = V) is stored in float16
    assert r.losses[0] == pytest.approx(hand, rel=1e-5 if mode == "online" else 2e-3)
    if mode == "offline":
        index = json.loads(next((run / "distill").glob("topk_data_k60_T2/index.json")).read_text())
        assert index["teacher"]  # the store is tied to this teacher's weights


def test_without_a_named_teacher_distill_and_word_kd_learn_from_the_configs_kd_teacher(members,
                                                                                        tmp_path):
    """`pipeline.kd_teacher: ensemble`: the step-by-step commands (no --teacher) use
    RUN/teacher_ensemble, as the pipeline does, and not RUN/teacher (here a different model)."""
    from nmt_kd.distill import distill_corpus
    from nmt_kd.fileio import read_lines
    from nmt_kd.topk import teacher_fingerprint
    from nmt_kd.train import train_model

    base, tree = members
    run = tmp_path / "run"
    shutil.copytree(base, run, ignore=shutil.ignore_patterns("distill", "ensemble", "twice"))
    shutil.copytree(run / "member_b", run / "teacher")  # what the old default would have used
    for side in ("src", "tgt"):  # a few lines are enough
        lines = read_lines(run / f"data/train.{side}")[:12]
        (run / f"data/train.{side}").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    ens_dir = create_ensemble_dir([run / "member_a", run / "member_b"], run / "teacher_ensemble")
    tree = json.loads(json.dumps(tree))
    tree["pipeline"] = dict(tree.get("pipeline", {}), teacher_seeds=[1, 2], kd_teacher="ensemble")
    tree["distill"] = {"shard_size": 5, "beam": 2, "teacher_mode": "offline", "top_k": 4}
    tree["student_train"].update(max_steps=1, eval_every=0)
    cfg = config_from_dict(tree)
    distill_corpus(cfg, run, log=quiet)
    ens, tok, _ = load_model_dir(ens_dir)
    want = Translator(ens, tok, cfg.decode).translate(read_lines(run / "data/train.src"), beam=2)
    assert read_lines(run / "distill/train.tgt") == [h for h in want.hypotheses if h.strip()]
    train_model(cfg, run, "student_rnn", name="kd", kd="word", log=quiet)
    index = json.loads((run / "distill/topk_data_k4_T1/index.json").read_text())
    assert index["teacher"] == teacher_fingerprint(ens)
    assert index["teacher"] != teacher_fingerprint(load_model_dir(run / "teacher")[0])
