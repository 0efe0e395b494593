import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clone_run

from nmt_kd.config import DecodeConfig, config_from_dict
from nmt_kd.errors import UserError
from nmt_kd.evaluate import evaluate_model
from nmt_kd.models.persistence import load_model_dir
from nmt_kd.translate import Translator

REQUIRED = {"model", "model_type", "kd", "params", "test_set", "beam", "batch_size", "bleu",
            "chrf", "ter", "bleu_signature", "sentences_per_second", "tokens_per_second"}


@pytest.fixture(scope="module")
def tiny_teacher(tiny_run, tmp_path_factory):
    from nmt_kd.train import train_model

    dst, tree = clone_run(tiny_run, tmp_path_factory.mktemp("tt"))
    tree["train"].update(max_steps=40, eval_every=0)
    train_model(config_from_dict(tree), dst, "teacher", log=lambda _m: None)
    return dst


def test_order_count_and_empty_lines_preserved(tiny_teacher):
    model, tok, _ = load_model_dir(tiny_teacher / "teacher")
    tr = Translator(model, tok, DecodeConfig(max_len_cap=32))
    lines = ["The dog runs.", "", "A small red cat sits on the big green house.", "   ", "Cat."]
    for beam in (1, 3):
        batch = tr.translate(lines, beam=beam, batch_size=2).hypotheses
        assert len(batch) == len(lines)
        assert batch[1] == "" and batch[3] == ""
        single = [tr.translate([x], beam=beam, batch_size=1).hypotheses[0] for x in lines]
        assert batch == single  # length-sorted batching restores the input order


def test_nbest_and_long_line_handling(tiny_teacher):
    model, tok, _ = load_model_dir(tiny_teacher / "teacher")
    tr = Translator(model, tok, DecodeConfig(max_len_cap=32, max_src_len=6))
    res = tr.translate(["the dog runs with the big red ball in the house"], beam=3, nbest=3)
    assert res.truncated == 1
    assert len(res.nbest[0]) == 3
    scores = [s for _, s in res.nbest[0]]
    assert scores == sorted(scores, reverse=True) and res.nbest[0][0][0] == res.hypotheses[0]
    strict = Translator(model, tok, DecodeConfig(max_len_cap=32, max_src_len=6, on_long_line="error"))
    with pytest.raises(UserError, match="input line 1 has .* tokens"):
        strict.translate(["the dog runs with the big red ball in the house"])


def test_evaluate_writes_the_report_keys(tiny_teacher, tmp_path):
    out = tmp_path / "m.json"
    m = evaluate_model(tiny_teacher / "teacher", tiny_teacher / "data/test.src",
                       tiny_teacher / "data/test.tgt", beam=2, batch_size=8,
                       decode_cfg=DecodeConfig(max_len_cap=32), test_set="toy/test",
                       out_json=out, log=lambda _m: None)
    on_disk = json.loads(out.read_text())
    assert REQUIRED <= set(on_disk) and on_disk == json.loads(json.dumps(m))
    assert m["model_type"] == "teacher" and m["kd"] == "none" and m["test_set"] == "toy/test"
    assert 0.0 <= m["bleu"] <= 100.0 and m["sentences_per_second"] > 0
    # how busy the rest of the machine was while the timed pass ran (None: not measurable)
    assert m["cpu_other_share"] is None or 0.0 <= m["cpu_other_share"] <= 1.0
    assert m["bleu_signature"].startswith("nrefs:1|case:mixed")
    hyps = out.with_suffix(".hyp.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(hyps) == 30


def test_model_dir_problems_are_clear_errors(tiny_teacher, tmp_path, tiny_run):
    broken = tmp_path / "nospm"
    shutil.copytree(tiny_teacher / "teacher", broken)
    (broken / "spm.model").unlink()
    with pytest.raises(UserError, match="spm.model is missing"):
        load_model_dir(broken)
    other = tmp_path / "otherspm"
    shutil.copytree(tiny_teacher / "teacher", other)
    from conftest import toy_pairs, write_pair_files

    from nmt_kd.config import VocabConfig
    from nmt_kd.tokenizer import train_tokenizer

    s, t = write_pair_files(tmp_path / "raw", toy_pairs(300))
    new_spm = train_tokenizer(VocabConfig(size=90), s, t, tmp_path / "v")
    shutil.copy(new_spm, other / "spm.model")
    with pytest.raises(UserError, match="do not belong together"):
        load_model_dir(other)
    with pytest.raises(UserError, match="no model.keras"):
        load_model_dir(tmp_path)


def test_cli_translate_stdin_and_evaluate(tiny_teacher, tmp_path):
    model = tiny_teacher / "teacher"
    r = subprocess.run([sys.executable, "-m", "nmt_kd.cli", "translate", "--model", str(model),
                        "--beam", "1", "--set", "decode.max_len_cap=32"],
                       input="The dog runs.\n\nA cat.\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stdout.split("\n")) == 4 and r.stdout.split("\n")[1] == ""
    out = tmp_path / "metrics.json"
    r = subprocess.run([sys.executable, "-m", "nmt_kd.cli", "evaluate", "--model", str(model),
                        "--src", str(tiny_teacher / "data/test.src"), "--ref",
                        str(tiny_teacher / "data/test.tgt"), "--beam", "2", "--batch-size", "4",
                        "--out", str(out), "--set", "decode.max_len_cap=32"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert REQUIRED <= set(json.loads(Path(out).read_text()))
    assert "BLEU" in r.stdout and "nrefs:1" in r.stdout
    # without --beam / --batch-size, evaluate decodes as the config's decode section says
    r = subprocess.run([sys.executable, "-m", "nmt_kd.cli", "evaluate", "--model", str(model),
                        "--src", str(tiny_teacher / "data/test.src"), "--ref",
                        str(tiny_teacher / "data/test.tgt"), "--out", str(out), "--set",
                        "decode.max_len_cap=32", "--set", "decode.beam=3", "--set", "decode.batch_size=5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(Path(out).read_text())
    assert (got["beam"], got["batch_size"]) == (3, 5)


def test_a_model_file_with_a_lambda_layer_is_refused(tiny_run, tmp_path):
    import keras
    import numpy as np

    run, _ = tiny_run
    marker = tmp_path / "executed"
    inp = keras.Input((3,))
    # a Lambda whose code writes a file when it runs (once here, while the model is built)
    path = str(marker)
    out = keras.layers.Lambda(lambda x: (open(path, "w").close(), x * 2)[1])(inp)
    evil = tmp_path / "evil"
    evil.mkdir()
    keras.Model(inp, out).save(evil / "model.keras")
    shutil.copy(run / "vocab/spm.model", evil / "spm.model")
    marker.unlink()
    with pytest.raises(UserError, match=r"model.keras: cannot load the model .*Lambda.*safe_mode") as e:
        load_model_dir(evil)
    assert "\n" not in str(e.value)  # one line on the command line
    assert not marker.exists()
    # the payload is live: an unsafe load runs it, so the refusal above is what protects
    loaded = keras.saving.load_model(evil / "model.keras", safe_mode=False, compile=False)
    loaded(np.zeros((1, 3), "float32"))
    assert marker.exists()


def test_disk_full_is_a_clear_error(monkeypatch, capsys, tmp_path):
    import errno

    from nmt_kd import cli

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.txt"))

    monkeypatch.setattr(cli, "cmd_prepare", full)
    assert cli.main(["prepare", "--src", "a", "--tgt", "b"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device while writing" in err and "intact" in err


def test_bench_interleaves_models_and_reports_ratios(tiny_teacher):
    from nmt_kd.bench import bench_decoding, speed_ratios

    model = str(tiny_teacher / "teacher")
    lines = ["The dog runs.", "A cat sits on the house.", "Big red ball."] * 4
    res = bench_decoding([model, model], lines, beams=(1, 2), batch_sizes=(1, 4), repeats=2,
                         batch1_sentences=3, decode_cfg=DecodeConfig(max_len_cap=32), log=lambda _m: None)
    assert len(res["rows"]) == 2 * 2 * 2
    for r in res["rows"]:
        assert r["sentences_per_second_min"] <= r["sentences_per_second"] <= r["sentences_per_second_max"]
        assert r["sentences"] == (3 if r["batch_size"] == 1 else 12) and r["repeats"] == 2
        assert r["cpu_other_share"] is None or 0.0 <= r["cpu_other_share"] <= 1.0
    ratios = speed_ratios(res, model, 2)
    assert {(r["beam"], r["batch_size"]) for r in ratios} == {(1, 1), (1, 4), (2, 1), (2, 4)}
    assert all(r["ratio"] > 0 for r in ratios)


def test_peak_memory_is_measured_in_a_fresh_process(tiny_teacher, tmp_path):
    from nmt_kd.bench import peak_memory

    src = tmp_path / "src.txt"
    src.write_text("The dog runs.\nA cat sits on the house.\n" * 6)
    m = peak_memory(tiny_teacher / "teacher", src, beam=2, batch_size=4, sentences=12,
                    decode_cfg=DecodeConfig(max_len_cap=32))
    assert m["baseline_mb"] > 100  # Python with TensorFlow imported
    assert m["baseline_mb"] <= m["after_load_mb"] <= m["peak_mb"]
    assert m["model_and_decoding_mb"] == pytest.approx(m["peak_mb"] - m["baseline_mb"], abs=0.2)
    with pytest.raises(RuntimeError, match="memory probe"):
        peak_memory(tmp_path / "missing", src, 1, 4, 12, DecodeConfig(max_len_cap=32))


def test_bench_training_counts_tokens_and_flops(tiny_teacher, tiny_run, tmp_path):
    import numpy as np

    from nmt_kd.bench import bench_training, cpu_peak_flops, param_split, train_flops
    from nmt_kd.dataset import BatchStream, encode_pairs
    from nmt_kd.train import load_pairs

    _, tree = tiny_run
    cfg = config_from_dict(tree)
    model = str(tiny_teacher / "teacher")
    tflite_like = tmp_path / "export"
    tflite_like.mkdir()
    (tflite_like / "tflite.json").write_text("{}")  # an inference-only export: not trained
    res = bench_training([model, str(tflite_like), model], tiny_teacher, cfg, steps=4, warmup=1,
                         repeats=2, log=lambda _m: None)
    assert [r["model"] for r in res["rows"]] == [model, model]
    # the timed batches are the 2nd..5th of the run's deterministic stream
    m, tok, _ = load_model_dir(model)
    src, tgt = load_pairs(tiny_teacher, "train")
    stream = BatchStream(encode_pairs(tok, src, tgt, cfg.train.max_len), cfg.train.max_tokens, seed=1)
    timed = list(stream.iter_numpy(0))[1:5]
    want_tgt = sum(int(np.count_nonzero(t)) for _, t in timed)
    want_src = sum(int(np.count_nonzero(s)) for (s, _), _ in timed)
    split = param_split(m)
    assert split["encoder"] > 0 and split["decoder"] > 0
    assert sum(split.values()) == m.count_params()
    for r in res["rows"]:
        assert (r["tgt_tokens"], r["src_tokens"]) == (want_tgt, want_src)
        assert r["tgt_tokens_per_second_min"] <= r["tgt_tokens_per_second"] <= r["tgt_tokens_per_second_max"]
        assert r["est_gflops_per_step"] == pytest.approx(
            train_flops(split, want_src, want_tgt) / 4 / 1e9, abs=0.006)
        assert 0 < r["peak_fraction"] < 1
    assert train_flops({"encoder": 10, "decoder": 20, "lookup": 5}, 3, 2) == 6 * (10 * 3 + 20 * 2)
    peak = cpu_peak_flops("bf16", cores=2, ghz=2.5)
    assert peak["peak_gflops"] == 2 * 2.5 * 64 and cpu_peak_flops("fp32", 2, 2.5)["peak_gflops"] == 160
