import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu
import yaml
from conftest import clone_run, wait_until

from nmt_kd.config import config_from_dict
from nmt_kd.distill import distill_corpus, merge_shards, shard_path, shard_ranges, translate_shards
from nmt_kd.errors import UserError
from nmt_kd.fileio import read_lines

quiet = lambda _m: None  # noqa: E731


@pytest.fixture(scope="module")
def teacher_run(tiny_run, tmp_path_factory):
    from nmt_kd.train import train_model

    base, tree = clone_run(tiny_run, tmp_path_factory.mktemp("dist"))
    tree["train"].update(max_steps=150, eval_every=0)  # enough to emit non-empty translations
    tree["distill"] = {"shard_size": 128, "beam": 2}
    train_model(config_from_dict(tree), base, "teacher", log=quiet)
    return base, tree


def clone(teacher_run, tmp_path, **distill):
    base, tree = teacher_run
    run = tmp_path / "run"
    shutil.copytree(base, run, ignore=shutil.ignore_patterns("distill"))
    tree = copy.deepcopy(tree)
    tree["distill"].update(distill)
    return run, tree


def test_shard_ranges():
    assert shard_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert shard_ranges(0, 3) == []


def test_one_line_per_source_line_and_resume_does_only_missing_shards(teacher_run, tmp_path):
    run, tree = clone(teacher_run, tmp_path)
    cfg = config_from_dict(tree)
    m = distill_corpus(cfg, run, log=quiet)
    src = read_lines(run / "data/train.src")
    n_shards = len(shard_ranges(len(src), 128))
    assert n_shards >= 4
    out_src, out_tgt = read_lines(run / "distill/train.src"), read_lines(run / "distill/train.tgt")
    assert len(out_src) == len(out_tgt) == m["lines"] == len(src) - m["dropped_empty_hypothesis"]
    if m["dropped_empty_hypothesis"] == 0:
        assert out_src == src  # same sources, same order
    first = (run / "distill/train.tgt").read_bytes()
    shard_path(run, 2).unlink()
    assert translate_shards(cfg, run, log=quiet) == [2]  # only the missing shard is redone
    merge_shards(cfg, run, log=quiet)
    assert (run / "distill/train.tgt").read_bytes() == first


def test_merge_refuses_missing_or_corrupt_shards(teacher_run, tmp_path):
    run, tree = clone(teacher_run, tmp_path)
    cfg = config_from_dict(tree)
    translate_shards(cfg, run, log=quiet)
    p = shard_path(run, 1)
    lines = p.read_text(encoding="utf-8").splitlines(keepends=True)
    p.write_text("".join(lines[:-1]), encoding="utf-8")  # a shard that lost its last line
    with pytest.raises(UserError, match=r"shard-00001.jsonl holds 127 records for source lines 128..255"):
        merge_shards(cfg, run, log=quiet)
    p.write_text("".join(lines[:-1]) + '{"i": 255, "hyp": "x', encoding="utf-8")
    with pytest.raises(UserError, match=r"shard-00001.jsonl:128: corrupt shard record"):
        merge_shards(cfg, run, log=quiet)
    p.unlink()
    with pytest.raises(UserError, match="1 of .* shards are missing"):
        merge_shards(cfg, run, log=quiet)
    assert not (run / "distill/train.tgt").exists()


def test_seq_inter_picks_the_hypothesis_closest_to_the_reference(teacher_run, tmp_path):
    run, tree = clone(teacher_run, tmp_path, seq_inter=True, beam=3, shard_size=400)
    cfg = config_from_dict(tree)
    translate_shards(cfg, run, log=quiet)
    ref = read_lines(run / "data/train.tgt")
    checked = 0
    for line in shard_path(run, 0).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        assert len(r["nbest"]) == 3
        bleus = [sacrebleu.sentence_bleu(h, [ref[r["i"]]]).score for h, _ in r["nbest"]]
        assert bleus[r["rank"]] == max(bleus) and r["hyp"] == r["nbest"][r["rank"]][0]
        checked += 1
    assert checked == 400


def test_all_empty_translations_are_refused(teacher_run, tmp_path):
    run, tree = clone(teacher_run, tmp_path)
    cfg = config_from_dict(tree)
    translate_shards(cfg, run, log=quiet)
    for p in (run / "distill/shards").glob("shard-*.jsonl"):
        rows = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]
        p.write_text("".join(json.dumps(dict(r, hyp="")) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(UserError, match="every teacher translation is empty"):
        merge_shards(cfg, run, log=quiet)


def test_drop_worst_and_keep_original(teacher_run, tmp_path):
    run, tree = clone(teacher_run, tmp_path, nbest=2, drop_worst=0.25, keep_original=True)
    m = distill_corpus(config_from_dict(tree), run, log=quiet)
    n = len(read_lines(run / "data/train.src"))
    kept = n - m["dropped_empty_hypothesis"]
    assert m["dropped_worst"] == int(0.25 * kept)
    assert m["lines"] == kept - m["dropped_worst"] + n
    assert read_lines(run / "distill/train.tgt")[-n:] == read_lines(run / "data/train.tgt")


def test_killed_distillation_resumes_with_exactly_one_line_per_input(teacher_run, tmp_path):
    run, tree = clone(teacher_run, tmp_path, shard_size=32)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(tree))
    cmd = [sys.executable, "-m", "nmt_kd.cli", "distill", "--config", str(cfg_path), "--run-dir", str(run)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1")
    n_shards = len(shard_ranges(len(read_lines(run / "data/train.src")), 32))
    log_path = tmp_path / "killed.log"  # kept for the failure messages
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:  # no deadline: wait for the fourth shard (or the process's end, which fails)
            wait_until(lambda: shard_path(run, 3).exists(), proc, log_path, "shard 3")
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    killed_log = log_path.read_text(errors="replace")[-3000:]
    done_before = sorted((run / "distill/shards").glob("shard-*.jsonl"))
    assert proc.returncode == -signal.SIGKILL, killed_log
    assert 4 <= len(done_before) < n_shards, killed_log
    assert not (run / "distill/train.tgt").exists(), killed_log
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"killed run:\n{killed_log}\nre-run:\n{r.stderr[-3000:]}"
    assert f"{len(done_before)} already done" in r.stdout, r.stdout[-3000:]
    src = read_lines(run / "data/train.src")
    out_src, out_tgt = read_lines(run / "distill/train.src"), read_lines(run / "distill/train.tgt")
    assert len(out_src) == len(out_tgt)
    m = json.loads((run / "distill/manifest.json").read_text())
    assert m["source_lines"] == len(src) and len(out_src) == len(src) - m["dropped_empty_hypothesis"]
    # identical to an uninterrupted run
    ref_run, _ = clone(teacher_run, tmp_path / "ref", shard_size=32)
    distill_corpus(config_from_dict(dict(tree)), ref_run, log=quiet)
    assert read_lines(ref_run / "distill/train.tgt") == out_tgt
    assert read_lines(ref_run / "distill/train.src") == out_src


def test_word_kd_needs_a_teacher_and_the_same_vocabulary(teacher_run, tmp_path):
    from nmt_kd.train import online_word_kd_loss

    run, tree = clone(teacher_run, tmp_path)
    cfg = config_from_dict(tree)
    with pytest.raises(UserError, match="word-level KD needs a trained teacher"):
        online_word_kd_loss(cfg, run, tmp_path / "nothing")
    other = tmp_path / "other_teacher"
    shutil.copytree(run / "teacher", other)
    (other / "spm.model").write_bytes((run / "vocab/spm.model").read_bytes())
    online_word_kd_loss(cfg, run, other)  # same vocabulary: fine
    from conftest import toy_pairs, write_pair_files

    from nmt_kd.config import VocabConfig
    from nmt_kd.tokenizer import train_tokenizer

    s, t = write_pair_files(tmp_path / "raw", toy_pairs(200, seed=7))
    train_tokenizer(VocabConfig(size=60), s, t, run / "vocab")  # the run's vocabulary changes
    with pytest.raises(UserError, match="different SentencePiece model"):
        online_word_kd_loss(cfg, run, run / "teacher")


def test_topk_store_with_full_k_reproduces_online_kd_and_resumes(teacher_run, tmp_path):
    import numpy as np
    import tensorflow as tf

    from nmt_kd.dataset import encode_pairs, make_batch
    from nmt_kd.losses import word_kd_loss
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.topk import TopKStore, compute_topk_store

    run, _ = clone(teacher_run, tmp_path)
    teacher, tok, _ = load_model_dir(run / "teacher")
    src, tgt = read_lines(run / "data/train.src")[:300], read_lines(run / "data/train.tgt")[:300]
    pairs = encode_pairs(tok, src, tgt, 32)
    V = tok.vocab_size
    store = compute_topk_store(teacher, pairs, tmp_path / "topk", V, 2.0, shard_size=128, log=quiet)
    assert store.count == len(pairs) and store.k == V
    idx = np.array([3, 150, len(pairs) - 1])
    (s, ti), to = make_batch(pairs, idx)
    ids, logp = store.batch(idx, to.shape[1])
    student_logits = tf.random.stateless_normal(to.shape + (V,), seed=[1, 2])
    online, _ = word_kd_loss(student_logits, to, 0.5, 2.0, 0.1, teacher_logits=teacher((s, ti)))
    offline, _ = word_kd_loss(student_logits, to, 0.5, 2.0, 0.1, topk=(ids, logp))
    assert float(offline) == pytest.approx(float(online), rel=2e-3)  # float16 storage
    # a killed build: the index and one shard are gone; only that shard is recomputed
    import shutil as _sh

    (tmp_path / "topk/index.json").unlink()
    _sh.rmtree(tmp_path / "topk/shard-00001")
    kept = (tmp_path / "topk/shard-00000/ids.npy").stat().st_mtime_ns
    logs = []
    compute_topk_store(teacher, pairs, tmp_path / "topk", V, 2.0, shard_size=128, log=logs.append)
    n_shards, second = -(-len(pairs) // 128), min(128, len(pairs) - 128)
    assert [m for m in logs if "stored" in m] == [f"top-k: shard 2/{n_shards} ({second} examples) stored"]
    assert (tmp_path / "topk/shard-00000/ids.npy").stat().st_mtime_ns == kept
    np.testing.assert_array_equal(TopKStore(tmp_path / "topk").batch(idx, to.shape[1])[0], ids)


@pytest.mark.parametrize("arch, kd, mode", [
    ("student_rnn", "word", "online"), ("student_cnn", "seq+word", "offline"),
    ("student_rnn", "seq", "online"), ("student_transformer", "seq+word", "offline"),
])
def test_students_train_with_each_kd_mode(teacher_run, tmp_path, arch, kd, mode):
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.train import train_model

    run, tree = clone(teacher_run, tmp_path)
    # an undertrained teacher may emit up to decode.max_len_cap (32) pieces: make room for them
    tree["student_train"].update(max_steps=6, eval_every=0, max_len=40)
    tree["distill"].update(teacher_mode=mode, top_k=5)
    cfg = config_from_dict(tree)
    if kd.startswith("seq"):
        with pytest.raises(UserError, match="run `nmt-kd distill` first"):
            train_model(cfg, run, arch, kd=kd, log=quiet)
        distill_corpus(cfg, run, log=quiet)
    r = train_model(cfg, run, arch, name=f"{arch}_{kd}", kd=kd, log=quiet)
    assert r.steps == 6
    model, tok, meta = load_model_dir(run / f"{arch}_{kd}")
    assert meta["kd"] == kd and meta["model_type"] == arch
    assert type(model).__name__ == {"student_rnn": "RNNStudent", "student_cnn": "CNNStudent",
                                     "student_transformer": "TransformerTeacher"}[arch]
    if mode == "offline":
        assert list((run / "distill").glob("topk_distill_k5_T1/index.json"))


def _spy_on_training(monkeypatch):
    """Record the freshly built model's weights and every batch the train step receives."""
    import nmt_kd.training.trainer as train_mod

    seen = {"initial": None, "batches": []}
    real_build, real_step = train_mod.build_model, train_mod.make_train_step

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        seen["initial"] = [v.numpy().copy() for v in model.trainable_variables]
        return model

    def make_step(*args, **kwargs):
        step = real_step(*args, **kwargs)

        def recorded(*batch):
            seen["batches"].append([np.asarray(x) for x in batch])
            return step(*batch)

        return recorded

    monkeypatch.setattr(train_mod, "build_model", build)
    monkeypatch.setattr(train_mod, "make_train_step", make_step)
    return seen


def _hand_first_update(model, teacher, batch, tc, alpha, temperature, kd: bool):
    """The first Adam update by hand: the loss written out here (label-smoothed CE, plus for
    word-KD alpha * T^2 * KL against the teacher's logits on the same batch), its gradient,
    global-norm clipping and Keras's Adam formula at step 1."""
    import tensorflow as tf

    src, tgt_in, tgt_out = (tf.constant(x) for x in batch)
    mask = tf.cast(tgt_out != 0, tf.float32)
    eps = tc.label_smoothing
    t_logits = tf.cast(teacher((src, tgt_in), training=False), tf.float32)
    with tf.GradientTape() as tape:
        s_logits = tf.cast(model((src, tgt_in), training=True), tf.float32)
        logp = tf.nn.log_softmax(s_logits)
        gold = -tf.reduce_sum(tf.one_hot(tgt_out, logp.shape[-1]) * logp, -1)
        per_token = (1 - eps) * gold - eps * tf.reduce_mean(logp, -1)
        if kd:
            p_t = tf.nn.softmax(t_logits / temperature)
            kl = tf.reduce_sum(p_t * (tf.math.log(p_t + 1e-30)
                                      - tf.nn.log_softmax(s_logits / temperature)), -1)
            per_token = (1 - alpha) * per_token + alpha * temperature**2 * kl
        loss = tf.reduce_sum(per_token * mask) / tf.reduce_sum(mask)
    grads = tape.gradient(loss, model.trainable_variables)
    grads, _ = tf.clip_by_global_norm(grads, tc.clip_norm)
    lr = tc.learning_rate * min(1 / max(tc.warmup_steps, 1), math.sqrt(max(tc.warmup_steps, 1)))
    b1, b2, e = tc.adam_beta1, tc.adam_beta2, tc.adam_epsilon
    step_size = lr * math.sqrt(1 - b2) / (1 - b1)
    deltas = [-step_size * ((1 - b1) * g.numpy()) / (np.sqrt((1 - b2) * g.numpy() ** 2) + e)
              for g in grads]
    return float(loss), deltas


def test_first_word_kd_update_is_the_hand_computed_one_and_not_plain_ce(teacher_run, tmp_path,
                                                                       monkeypatch):
    """One step of `train --kd word`: its loss and its weight update are the ones computed here
    by hand from the teacher's logits on that very batch; a `--kd none` step is not."""
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.models.registry import build_model
    from nmt_kd.train import train_model

    run, tree = clone(teacher_run, tmp_path, teacher_mode="online", alpha=0.5, temperature=2.0)
    tree["model"]["student_rnn"]["dropout"] = 0.0
    # epsilon 1 and learning rate 1: an update proportional to the gradient (not ~sign(g))
    tree["student_train"].update(max_steps=1, eval_every=0, learning_rate=1.0, warmup_steps=1,
                                 adam_epsilon=1.0, clip_norm=1.0)
    cfg = config_from_dict(tree)
    tc = cfg.student_train
    teacher, tok, _ = load_model_dir(run / "teacher")
    results = {}
    for kd in ("word", "none"):
        seen = _spy_on_training(monkeypatch)
        r = train_model(cfg, run, "student_rnn", name=f"s_{kd}", kd=kd, log=quiet)
        assert r.steps == 1 and len(seen["batches"]) == 1
        batch = seen["batches"][0]
        assert len(batch) == 3  # online KD: (src, tgt_in, tgt_out), the teacher runs inside
        model = build_model("student_rnn", cfg.model, tok.vocab_size)
        for v, w in zip(model.trainable_variables, seen["initial"], strict=True):
            v.assign(w)
        loss, deltas = _hand_first_update(model, teacher, batch, tc, 0.5, 2.0, kd == "word")
        other_loss, _ = _hand_first_update(model, teacher, batch, tc, 0.5, 2.0, kd != "word")
        assert r.losses[0] == pytest.approx(loss, rel=1e-4)
        assert r.losses[0] != pytest.approx(other_loss, rel=1e-2)
        got = [a.numpy() - b for a, b in zip(r.model.trainable_variables, seen["initial"],
                                              strict=True)]
        assert sum(float(np.abs(d).sum()) for d in deltas) > 0
        for g, want in zip(got, deltas, strict=True):
            np.testing.assert_allclose(g, want, rtol=2e-3, atol=2e-6)
        results[kd] = got
    assert max(float(np.abs(a - b).max()) for a, b in zip(results["word"], results["none"],
                                                           strict=True)) > 1e-3


def test_offline_top_k_with_k_equal_v_gives_the_online_losses_step_by_step(teacher_run, tmp_path):
    """Word-KD from the stored top-k store with k = V trains exactly like the online teacher:
    the same loss at every step (float16 storage aside)."""
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.train import train_model

    run, tree = clone(teacher_run, tmp_path, alpha=0.5, temperature=2.0)
    V = load_model_dir(run / "teacher")[1].vocab_size
    tree["model"]["student_rnn"]["dropout"] = 0.0
    tree["student_train"].update(max_steps=6, eval_every=0, log_every=1)
    losses = {}
    for mode in ("online", "offline"):
        t = copy.deepcopy(tree)
        t["distill"].update(teacher_mode=mode, top_k=V)
        r = train_model(config_from_dict(t), run, "student_rnn", name=f"s_{mode}", kd="word",
                        log=quiet)
        losses[mode] = r.losses
    assert list((run / "distill").glob(f"topk_data_k{V}_T2/index.json"))
    assert len(losses["online"]) == 6
    np.testing.assert_allclose(losses["offline"], losses["online"], rtol=2e-3)
    # and word-KD is not plain CE: a kd=none run on the same batches has other losses
    r = train_model(config_from_dict(tree), run, "student_rnn", name="s_none", kd="none", log=quiet)
    assert not np.allclose(r.losses, losses["online"], rtol=1e-2)


def test_a_killed_topk_build_resumes_only_for_the_same_teacher(teacher_run, tmp_path):
    """Shards left by a killed build are kept for the teacher that made them and thrown away
    for another (a store of one teacher never feeds word-KD from another)."""
    import numpy as np

    from nmt_kd.dataset import encode_pairs
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.topk import TopKStore, compute_topk_store

    run, _ = clone(teacher_run, tmp_path)
    teacher, tok, _ = load_model_dir(run / "teacher")
    src, tgt = read_lines(run / "data/train.src")[:200], read_lines(run / "data/train.tgt")[:200]
    pairs = encode_pairs(tok, src, tgt, 32)
    out = tmp_path / "topk"
    compute_topk_store(teacher, pairs, out, 4, 1.0, shard_size=128, log=quiet)
    reference = TopKStore(out).example(3)[1].copy()
    (out / "index.json").unlink()  # killed before the index: shard 0 done
    import shutil as _sh

    _sh.rmtree(out / "shard-00001")
    for w in teacher.trainable_weights[:3]:  # another teacher (other weights)
        w.assign(w + 0.5)
    logs = []
    compute_topk_store(teacher, pairs, out, 4, 1.0, shard_size=128, log=logs.append)
    assert any("rebuilding" in m for m in logs)
    assert sum("stored" in m for m in logs) == 2  # both shards made by the new teacher
    assert not np.allclose(TopKStore(out).example(3)[1], reference)  # shard 0: the new teacher's
