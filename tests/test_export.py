"""Export for serving: the SavedModel takes strings, returns strings, equals `Translator`."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import clone_run

from nmt_kd.config import config_from_dict
from nmt_kd.data.clean import normalize
from nmt_kd.errors import UserError

quiet = lambda _m: None  # noqa: E731
REPO = Path(__file__).resolve().parents[1]

# Raw lines as a client would send them: the graph must normalise them exactly like
# `read_input_lines` does before translating.
EDGE_LINES = [
    "",
    "   ",
    "\ufeffa dog runs\r",
    "two  \t spaces\u00a0and\u3000wide",
    "cafe\u0301 au lait",  # NFD -> NFC
    "ctrl\x00char\x1fhere\x85",
    "x " * 120,  # longer than decode.max_src_len pieces: truncated
]


@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory):
    from nmt_kd.train import train_model

    base, tree = clone_run(tiny_run, tmp_path_factory.mktemp("export"))
    tree["train"].update(max_steps=120, eval_every=0)
    tree["student_train"].update(max_steps=150, eval_every=0)
    tree["decode"]["max_src_len"] = 40
    # big enough that the int8 converter quantizes its matrices (it skips < 1024 elements)
    tree["model"]["student_rnn"] = {"embed_dim": 48, "hidden": 64}
    cfg = config_from_dict(tree)
    train_model(cfg, base, "teacher", log=quiet)
    train_model(cfg, base, "student_rnn", log=quiet)
    return base, cfg


def _shaped(path, shape):
    from nmt_kd.tflite_translate import new_interpreter

    return [t["name"] for t in new_interpreter(path, 1).get_tensor_details()
            if list(t["shape"]) == shape]


def test_normalize_in_graph_matches_python():
    import tensorflow as tf

    from nmt_kd.export import normalize_in_graph

    lines = EDGE_LINES + ["\u2028line\u2029sep\u200a", "\u202fnarrow\u205f", "\x7f\x9fdel", "e\u0308\u0301"]
    got = [t.decode("utf-8") for t in normalize_in_graph(tf.constant(lines)).numpy()]
    assert got == [normalize(x) for x in lines]


SERVE = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)
    served = tf.saved_model.load(sys.argv[1])
    lines = json.load(open(sys.argv[2], encoding="utf-8"))
    fn = served.signatures["serving_default"]
    out = []
    for i in range(0, len(lines), 7):  # batches unlike the Translator's sorted ones
        out += [t.decode("utf-8") for t in fn(sentences=tf.constant(lines[i:i + 7]))["translations"].numpy()]
    out += [t.decode("utf-8") for t in fn(sentences=tf.constant([], tf.string))["translations"].numpy()]
    print(json.dumps({"translations": out, "nmt_kd_imported": "nmt_kd" in sys.modules}))
""")


@pytest.mark.parametrize("name,beam", [("teacher", 3), ("student_rnn", 1)])
def test_savedmodel_equals_translator_in_a_process_without_nmt_kd(trained, tmp_path, name, beam):
    from nmt_kd.export import export_savedmodel
    from nmt_kd.fileio import read_lines
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.translate import Translator

    run, cfg = trained
    lines = read_lines(run / "data/test.src") + EDGE_LINES
    out = export_savedmodel(run / name, tmp_path / "served", cfg.decode, beam=beam, log=quiet)
    meta = json.loads((out / "nmt_kd_export.json").read_text())
    assert meta["beam"] == beam

    model, tok, _ = load_model_dir(run / name, cfg.decode.precision)
    expected = Translator(model, tok, cfg.decode).translate([normalize(x) for x in lines], beam=beam)
    assert expected.truncated >= 1  # at least the long edge line

    (tmp_path / "lines.json").write_text(json.dumps(lines), encoding="utf-8")
    script = tmp_path / "serve.py"
    script.write_text(SERVE)
    proc = subprocess.run([sys.executable, "-P", str(script), str(out), str(tmp_path / "lines.json")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["nmt_kd_imported"] is False
    assert len(result["translations"]) == len(lines)
    diffs = [(i, a, b) for i, (a, b) in
             enumerate(zip(result["translations"], expected.hypotheses, strict=True)) if a != b]
    assert not diffs, diffs[:5]
    edge = result["translations"][-len(EDGE_LINES):]
    assert edge[0] == edge[1] == ""  # empty (or blank) in, empty out
    assert sum(bool(t) for t in result["translations"]) >= len(lines) // 2

    # scripts/translate_file.py serves a file through the same signature, chunk by chunk
    keep = [i for i, x in enumerate(lines) if "\x00" not in x]  # a NUL byte is an input error
    src = tmp_path / "in.txt"
    src.write_text("".join(lines[i] + "\n" for i in keep), encoding="utf-8")
    proc = subprocess.run([sys.executable, "scripts/translate_file.py", str(out), str(src),
                           str(tmp_path / "out.txt"), "--chunk-lines", "5", "--batch-size", "3"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")
    assert got[:-1] == [expected.hypotheses[i] for i in keep] and got[-1] == ""

    # in this process too, the export is one more backend of `Translator` (its beam fixed)
    from nmt_kd.translate import open_translator

    tr, meta, size = open_translator(out, cfg.decode)
    assert (meta["format"], meta["beam"], tr.cfg.beam) == ("savedmodel", beam, beam) and size > 0
    assert tr.params() == model.count_params()
    got = tr.translate([normalize(x) for x in lines], batch_size=5)
    assert got.hypotheses == expected.hypotheses and got.truncated == expected.truncated
    with pytest.raises(UserError, match=f"exported with beam {beam}"):
        tr.translate(lines[:2], beam=beam + 1)


def test_export_refuses_a_non_empty_output_directory(trained, tmp_path):
    from nmt_kd.export import export_savedmodel

    run, cfg = trained
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        export_savedmodel(run / "student_rnn", tmp_path / "out", cfg.decode, log=quiet)
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


def test_tflite_student_fp32_equals_translator_and_int8_is_smaller(trained, tmp_path):
    import numpy as np

    from nmt_kd.export import export_tflite
    from nmt_kd.fileio import read_lines
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.tflite_translate import TFLiteBackend
    from nmt_kd.translate import Translator, open_translator

    run, cfg = trained
    lines = [normalize(x) for x in read_lines(run / "data/test.src") + EDGE_LINES]
    model, tok, _ = load_model_dir(run / "student_rnn", "fp32")
    expected = Translator(model, tok, cfg.decode)
    fp32 = export_tflite(run / "student_rnn", tmp_path / "fp32", cfg.decode, quantize="none", log=quiet)
    int8 = export_tflite(run / "student_rnn", tmp_path / "int8", cfg.decode, quantize="int8", log=quiet)
    for bs in (1, 4, 16):  # several batch shapes: the interpreters are resized between batches
        want = expected.translate(lines, beam=1, batch_size=bs)
        got = Translator.from_backend(TFLiteBackend(fp32, cfg.decode)).translate(
            lines, beam=1, batch_size=bs)
        assert got.hypotheses == want.hypotheses
        assert got.token_counts == want.token_counts
    assert sum(bool(h) for h in want.hypotheses) >= len(lines) // 2
    q = Translator.from_backend(TFLiteBackend(int8, cfg.decode)).translate(lines, beam=1, batch_size=16)
    assert len(q.hypotheses) == len(lines) and q.hypotheses[-len(EDGE_LINES)] == ""
    agree = np.mean([a == b for a, b in zip(q.hypotheses, want.hypotheses, strict=True)])
    assert agree >= 0.5  # int8 weights change a few argmaxes, not most of them
    tr, meta, size8 = open_translator(int8, cfg.decode)
    _, _, size32 = open_translator(fp32, cfg.decode)
    assert meta["format"] == "tflite-int8" and size8 < 0.5 * size32
    # the tied embedding is stored once: the step's output-layer weight, not the lookups
    vocab_emb = [tok.vocab_size, model.embedding.d_model]
    for d in (fp32, int8):
        assert _shaped(d / "encoder.tflite", vocab_emb) == []
        assert len(_shaped(d / "step.tflite", vocab_emb)) == 1
    with pytest.raises(UserError, match="greedily"):
        tr.translate(lines[:2], beam=2)


def test_tflite_cnn_student_equals_translator(trained, tmp_path):
    from nmt_kd.config import config_from_dict, config_to_dict
    from nmt_kd.export import export_tflite
    from nmt_kd.fileio import read_lines
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.tflite_translate import TFLiteBackend
    from nmt_kd.train import train_model
    from nmt_kd.translate import Translator

    run, cfg = trained
    tree = config_to_dict(cfg)
    tree["student_train"].update(max_steps=60)
    tree["model"]["student_cnn"] = {"embed_dim": 48, "hidden": 48, "encoder_layers": 2,
                                    "decoder_layers": 2}
    train_model(config_from_dict(tree), run, "student_cnn", log=quiet)
    lines = [normalize(x) for x in read_lines(run / "data/test.src") + EDGE_LINES]
    model, tok, _ = load_model_dir(run / "student_cnn", "fp32")
    want = Translator(model, tok, cfg.decode).translate(lines, beam=1, batch_size=8)
    out = export_tflite(run / "student_cnn", tmp_path / "cnn", cfg.decode, quantize="none", log=quiet)
    got = Translator.from_backend(TFLiteBackend(out, cfg.decode)).translate(lines, beam=1, batch_size=8)
    assert got.hypotheses == want.hypotheses
    assert sum(bool(h) for h in want.hypotheses) >= len(lines) // 2
    assert len(_shaped(out / "step.tflite", [tok.vocab_size, 48])) == 1


def test_tflite_refuses_the_teacher(trained, tmp_path):
    from nmt_kd.export import export_tflite

    run, cfg = trained
    with pytest.raises(UserError, match="students"):
        export_tflite(run / "teacher", tmp_path / "t", cfg.decode, log=quiet)
    assert not (tmp_path / "t").exists()
