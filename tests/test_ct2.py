"""CTranslate2 export of the teacher: the CT2 model decodes like the TensorFlow search.

A tiny teacher with every weight random (biases, LayerNorm gains and the output bias too, so
a weight written to the wrong place cannot hide behind a zero) is exported; then on the same
source ids: greedy outputs are equal token for token, beam-5 outputs equal on most
sentences, and teacher-forced log-probs (`ctranslate2.Translator.score_batch`) agree.
"""

import numpy as np
import pytest

ctranslate2 = pytest.importorskip("ctranslate2")

from nmt_kd import EOS_ID  # noqa: E402
from nmt_kd.backends import SourceBatch, decode_ids  # noqa: E402
from nmt_kd.config import DecodeConfig  # noqa: E402
from nmt_kd.decode_policy import max_len_bucket, sentence_limits_np  # noqa: E402
from nmt_kd.fileio import read_lines  # noqa: E402

VARIANTS = {
    "prenorm_relu_bias": (dict(pre_norm=True, activation="relu", output_bias=True), {"eos_bias": 14.0}),
    "postnorm_gelu_nobias": (dict(pre_norm=False, activation="gelu", output_bias=False), {"eos_scale": 3.5}),
    # the student_transformer's shape: a deeper encoder than decoder (eos_bias 17.5: 13 of the
    # 60 greedy outputs end with eos, 17.0 none, 18.0 56)
    "student_deep_encoder": (dict(pre_norm=True, activation="relu", output_bias=True,
                                  num_encoder_layers=3, num_decoder_layers=1), {"eos_bias": 17.5}),
}


def _randomize(model, seed: int, boost: dict) -> None:
    rng = np.random.default_rng(seed)
    weights = []
    for v in model.weights:
        name, shape = v.path.split("/")[-1], tuple(v.shape)
        if name == "gamma":
            w = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name == "embeddings":
            w = 0.5 * rng.standard_normal(shape)  # peaked logits: few near-ties
        else:
            w = 0.2 * rng.standard_normal(shape)
        # a random model rarely picks eos: push it up so that some outputs end with eos
        if name == "embeddings" and "eos_scale" in boost:
            w[EOS_ID] *= boost["eos_scale"]
        if name == "output_bias" and "eos_bias" in boost:
            w[EOS_ID] += boost["eos_bias"]
        weights.append(w.astype(np.float32))
    model.set_weights(weights)


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tiny_run, tmp_path_factory):
    """(TF Translator, CT2 Translator, source ids [B, S]) for one random teacher variant."""
    from nmt_kd.ct2 import CT2Backend, export_ctranslate2
    from nmt_kd.models.persistence import save_model_dir
    from nmt_kd.models.teacher_transformer import TransformerTeacher
    from nmt_kd.tokenizer import Tokenizer
    from nmt_kd.translate import Translator

    run, _ = tiny_run
    tok = Tokenizer(run / "vocab/spm.model")
    kwargs = {"num_encoder_layers": 2, "num_decoder_layers": 2, **VARIANTS[request.param][0]}
    model = TransformerTeacher(vocab_size=tok.vocab_size, d_model=32, num_heads=4, ff_dim=64,
                               dropout=0.0, max_positions=128, **kwargs)
    model.build()
    _randomize(model, seed=len(request.param), boost=VARIANTS[request.param][1])
    base = tmp_path_factory.mktemp(f"ct2_{request.param}")
    model_type = "student_transformer" if request.param.startswith("student") else "teacher"
    save_model_dir(model, base / "teacher", tok, {"model_type": model_type, "kd": "none"})
    export_ctranslate2(base / "teacher", base / "ct2", log=lambda _m: None)
    cfg = DecodeConfig(max_len_a=1.2, max_len_b=3)  # limits bind often on a random model
    tf_tr = Translator(model, tok, cfg)
    ct_tr = Translator.from_backend(CT2Backend(base / "ct2", cfg, intra_threads=1))
    lines = read_lines(run / "data/test.src") + read_lines(run / "data/valid.src")
    ids, _ = tf_tr.encode_sources(lines)
    ids = [s for s in ids if s]
    src = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for i, seq in enumerate(ids):
        src[i, :len(seq)] = seq
    return tf_tr, ct_tr, src


def _max_len(tr, src):
    return max_len_bucket(tr.cfg, src.shape[1])


def _search(tr, src, beam, max_len):
    """(ids, lengths, scores) of the translator's backend on padded source ids."""
    out = tr.backend.search(SourceBatch(src, [""] * len(src)), beam, max_len, 1)
    return out.ids, out.lengths, out.scores


def test_greedy_tokens_equal_the_tf_greedy_search(pair):
    import tensorflow as tf

    tf_tr, ct_tr, src = pair
    max_len = _max_len(tf_tr, src)
    a_ids, a_len, _ = _search(tf_tr, src, 1, max_len)  # the translator's greedy: no scores
    b_ids, b_len, b_sc = _search(ct_tr, src, 1, max_len)
    np.testing.assert_array_equal(b_len, a_len)
    np.testing.assert_array_equal(b_ids, a_ids)
    scored = decode_ids(tf_tr.backend.model, tf_tr.cfg, tf.constant(src), 1, max_len)
    np.testing.assert_array_equal(scored["ids"].numpy(), a_ids)
    np.testing.assert_allclose(b_sc, scored["scores"].numpy(), rtol=1e-4, atol=2e-3)
    assert (a_len == sentence_limits_np(src, ct_tr.cfg, max_len)).any()  # some hit their limit (no eos)
    assert (a_len < sentence_limits_np(src, ct_tr.cfg, max_len)).any()  # and some ended with eos


def test_beam_outputs_match_the_tf_beam_search_on_most_sentences(pair):
    tf_tr, ct_tr, src = pair
    max_len = _max_len(tf_tr, src)
    a_ids, a_len, a_sc = _search(tf_tr, src, 5, max_len)
    b_ids, b_len, b_sc = _search(ct_tr, src, 5, max_len)
    same = (a_len[:, 0] == b_len[:, 0]) & (a_ids[:, 0] == b_ids[:, 0]).all(axis=1)
    assert same.mean() >= 0.85, f"only {same.sum()}/{len(same)} beam outputs equal"
    # where the outputs agree, so do their GNMT-normalised scores
    np.testing.assert_allclose(b_sc[same, 0], a_sc[same, 0], rtol=1e-4, atol=2e-3)
    # where they differ, CT2's search stopped earlier: ours never scores worse
    assert (a_sc[~same, 0] >= b_sc[~same, 0] - 2e-3).all()


def test_teacher_forced_log_probs_match_score_batch(pair):
    import tensorflow as tf

    tf_tr, ct_tr, src = pair
    rng = np.random.default_rng(0)
    vocab = ct_tr.tokenizer.vocab_size
    tgts = [list(rng.integers(4, vocab, size=int(n))) for n in rng.integers(1, 12, len(src))]
    width = max(map(len, tgts)) + 1
    tgt_in = np.zeros((len(src), width), np.int32)
    for i, t in enumerate(tgts):
        tgt_in[i, :len(t) + 1] = [2, *t]  # BOS_ID then the tokens
    logits = tf_tr.backend.model((tf.constant(src), tf.constant(tgt_in)), training=False)
    log_probs = tf.nn.log_softmax(logits, axis=-1).numpy()
    src_tokens = [[ct_tr.backend.pieces[i] for i in row if i] for row in src.tolist()]
    results = ct_tr.backend.ct2.score_batch(src_tokens, [[ct_tr.backend.pieces[i] for i in t] for t in tgts])
    for i, (t, res) in enumerate(zip(tgts, results, strict=True)):
        gold = [*t, EOS_ID]  # CT2 scores the target followed by eos
        want = log_probs[i, np.arange(len(gold)), gold]
        np.testing.assert_allclose(res.log_probs, want, rtol=1e-4, atol=2e-3)


def test_translate_text_is_the_same_through_both_engines(pair, tiny_run):
    tf_tr, ct_tr, _ = pair
    run, _ = tiny_run
    lines = read_lines(run / "data/test.src")[:12] + [""]
    a = tf_tr.translate(lines, beam=1, batch_size=5)
    b = ct_tr.translate(lines, beam=1, batch_size=5)
    assert b.hypotheses == a.hypotheses and b.token_counts == a.token_counts
    assert b.hypotheses[-1] == ""


def test_cli_export_then_translate_and_evaluate_with_the_ct2_directory(pair, tiny_run, tmp_path):
    from nmt_kd.cli import main
    from nmt_kd.ct2 import CT2Backend
    from nmt_kd.fileio import read_json
    from nmt_kd.translate import open_translator

    tf_tr, ct_tr, _ = pair
    run, _ = tiny_run
    model_dir = ct_tr.backend.meta["model_dir"]
    out = tmp_path / "ct2"
    sets = ["--set", "decode.max_len_a=1.2", "--set", "decode.max_len_b=3"]
    assert main(["export", "--format", "ctranslate2", "--model", model_dir, "--out", str(out)]) == 0
    assert read_json(out / "ct2.json")["compute_type"] == "default"
    tr, meta, size = open_translator(out, DecodeConfig())
    assert isinstance(tr.backend, CT2Backend) and meta["format"] == "ctranslate2-default" and size > 0
    src = run / "data/test.src"
    for engine_dir, name in ((model_dir, "tf.txt"), (str(out), "ct2.txt")):
        assert main(["translate", *sets, "--model", engine_dir, "--beam", "1", "-i", str(src),
                     "-o", str(tmp_path / name)]) == 0
    assert read_lines(tmp_path / "ct2.txt") == read_lines(tmp_path / "tf.txt")
    metrics = tmp_path / "m.json"
    assert main(["evaluate", *sets, "--model", str(out), "--src", str(src), "--ref",
                 str(run / "data/test.tgt"), "--beam", "5", "--out", str(metrics)]) == 0
    assert read_json(metrics)["format"] == "ctranslate2-default"
    # int8 weights: a smaller directory that loads with compute type int8
    assert main(["export", "--format", "ctranslate2", "--quantize", "int8", "--model", model_dir,
                 "--out", str(tmp_path / "ct2_int8")]) == 0
    tr8, meta8, size8 = open_translator(tmp_path / "ct2_int8", DecodeConfig())
    assert meta8["format"] == "ctranslate2-int8" and size8 < size
    assert len(tr8.translate(read_lines(src)[:4], beam=2).hypotheses) == 4


def test_distill_translates_shards_with_a_ct2_teacher(pair, tiny_run, tmp_path):
    import json

    from conftest import clone_run

    from nmt_kd.config import config_from_dict
    from nmt_kd.ct2 import CT2Backend
    from nmt_kd.distill import shard_path, translate_shards
    from nmt_kd.translate import Translator

    _, ct_tr, _ = pair
    run, tree = clone_run(tiny_run, tmp_path)
    tree["distill"] = dict(tree.get("distill", {}), beam=2, nbest=2, shard_size=100)
    cfg = config_from_dict(tree)
    done = translate_shards(cfg, run, teacher_dir=ct_tr.backend.meta_dir, log=lambda _m: None)
    assert done
    records = [json.loads(line) for line in shard_path(run, 0).read_text().splitlines()]
    assert len(records) == 100 and all(len(r["nbest"]) == 2 for r in records if r.get("nbest"))
    src = read_lines(run / "data/train.src")[:100]
    same_cfg = Translator.from_backend(CT2Backend(ct_tr.backend.meta_dir, cfg.decode))
    assert [r["hyp"] for r in records] == same_cfg.translate(src, beam=2).hypotheses


def test_distill_engine_ctranslate2_converts_the_keras_teacher_for_the_run(pair, tiny_run, tmp_path):
    """`distill.engine: ctranslate2` with a Keras teacher: the shards are what the CTranslate2
    export decodes (not the TensorFlow search), and the scratch export is gone afterwards."""
    import json

    from conftest import clone_run

    from nmt_kd.config import ConfigError, config_from_dict
    from nmt_kd.ct2 import CT2Backend
    from nmt_kd.distill import shard_path, translate_shards
    from nmt_kd.translate import Translator

    _, ct_tr, _ = pair
    run, tree = clone_run(tiny_run, tmp_path)
    tree["distill"] = dict(tree.get("distill", {}), beam=2, shard_size=100, engine="ctranslate2")
    cfg = config_from_dict(tree)
    keras_teacher = ct_tr.backend.meta["model_dir"]
    logs = []
    assert translate_shards(cfg, run, teacher_dir=keras_teacher, log=logs.append)
    assert any("CTranslate2" in m for m in logs)  # the export ran
    hyps = [json.loads(line)["hyp"] for line in shard_path(run, 0).read_text().splitlines()]
    src = read_lines(run / "data/train.src")[:100]
    export = Translator.from_backend(CT2Backend(ct_tr.backend.meta_dir, cfg.decode))
    assert hyps == export.translate(src, beam=2).hypotheses
    assert not list(run.glob(".teacher_ct2.*"))
    with pytest.raises(ConfigError, match="distill.engine"):
        config_from_dict(dict(tree, distill=dict(tree["distill"], engine="onnx")))
