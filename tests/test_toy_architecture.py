"""A new architecture is one file (tests/toy_arch.py) plus one registry line: the toy
one-layer LSTM then trains, translates, evaluates and exports through the real commands,
and the export it does not support is refused with a clear error."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import yaml
from conftest import clone_run
from toy_arch import ToyConfig, ToyLSTM, toy_param_split

from nmt_kd.cli import main
from nmt_kd.fileio import read_lines
from nmt_kd.models.registry import Architecture, register_architecture, unregister_architecture


@pytest.fixture(scope="module")
def toy(tiny_run, tmp_path_factory):
    """The toy registered, a run directory, and a config file with its model section."""
    arch = register_architecture(Architecture("student_toy", "student", ToyConfig, ToyLSTM,
                                              param_split=toy_param_split))
    base = tmp_path_factory.mktemp("toy")
    run, tree = clone_run(tiny_run, base)
    tree = copy.deepcopy(tree)
    tree["model"]["student_toy"] = {"embed_dim": 16, "hidden": 24}
    tree["student_train"].update(max_steps=40, eval_every=0, learning_rate=0.01)
    config = base / "toy.yaml"
    config.write_text(yaml.safe_dump(tree), encoding="utf-8")
    assert main(["train", "--config", str(config), "--model", "student_toy",
                 "--run-dir", str(run)]) == 0
    yield arch, run, config
    unregister_architecture("student_toy")


def test_the_toy_trains_from_its_own_config_section_and_keeps_the_contract(toy):
    from seq2seq_harness import greedy_eager, teacher_forced

    from nmt_kd.config import load_config
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.models.protocol import Seq2Seq
    from nmt_kd.models.registry import architecture_of

    arch, run, config = toy
    assert load_config(config).model.section("student_toy") == ToyConfig(embed_dim=16, hidden=24)
    model, tok, meta = load_model_dir(run / "student_toy")
    assert type(model) is ToyLSTM and isinstance(model, Seq2Seq)
    assert meta["model_type"] == "student_toy" and meta["steps"] == 40
    assert (model.embed_dim, model.hidden, model.vocab_size) == (16, 24, tok.vocab_size)
    assert architecture_of(meta) is arch and architecture_of({}, model) is arch
    # the student's training section, as for every student
    history = json.loads((run / "student_toy" / "train_history.json").read_text())
    assert history["evals"][-1]["step"] == 40
    src = np.array([[5, 9, 14, 7, 3], [6, 11, 3, 0, 0]], np.int32)
    tokens, logits = greedy_eager(model, src, steps=6)
    forced = teacher_forced(model, src, tokens)
    np.testing.assert_allclose(forced, logits, atol=1e-4)
    assert (forced.argmax(-1) == tokens).all()
    split = arch.split_params(model)  # what bench's flop estimate uses: the toy's own split
    assert sum(split.values()) == model.count_params()
    assert split["encoder"] > 0 and split["decoder"] > 0 and split["lookup"] > 0


def test_bench_times_the_toy_with_its_registered_param_split(toy):
    from nmt_kd.bench import bench_training
    from nmt_kd.config import load_config

    _, run, config = toy
    res = bench_training([str(run / "student_toy")], run, load_config(config), steps=2, warmup=1,
                         repeats=1, log=lambda _m: None)
    (row,) = res["rows"]
    assert row["model_type"] == "student_toy" and row["param_split"]["lookup"] > 0


def test_the_toy_translates_and_evaluates_through_the_commands(toy, tmp_path):
    _, run, config = toy
    out = tmp_path / "hyp.txt"
    assert main(["translate", "--config", str(config), "--model", str(run / "student_toy"),
                 "--input", str(run / "data/test.src"), "--output", str(out), "--beam", "2"]) == 0
    assert len(read_lines(out)) == len(read_lines(run / "data/test.src"))
    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", "--config", str(config), "--model", str(run / "student_toy"),
                 "--src", str(run / "data/test.src"), "--ref", str(run / "data/test.tgt"),
                 "--beam", "1", "--out", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert m["model_type"] == "student_toy" and m["bleu"] >= 0.0


def test_the_toy_exports_what_its_entry_lists_and_refuses_the_rest(toy, tmp_path, capsys):
    import tensorflow as tf

    from nmt_kd.bundle import unpack
    from nmt_kd.config import load_config
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.translate import Translator

    arch, run, config = toy
    assert arch.exports == ("savedmodel", "bundle")
    lines = read_lines(run / "data/test.src")[:8]
    model, tok, _ = load_model_dir(run / "student_toy")
    want = Translator(model, tok, load_config(config).decode).translate(lines, beam=1).hypotheses

    served = tmp_path / "served"
    assert main(["export", "--config", str(config), "--model", str(run / "student_toy"),
                 "--format", "savedmodel", "--beam", "1", "--out", str(served)]) == 0
    fn = tf.saved_model.load(str(served)).signatures["serving_default"]
    got = [t.decode("utf-8") for t in fn(sentences=tf.constant(lines))["translations"].numpy()]
    assert got == want

    bundle = tmp_path / "toy.nmtkd"
    assert main(["export", "--model", str(run / "student_toy"), "--format", "bundle",
                 "--out", str(bundle)]) == 0
    digest = capsys.readouterr().out.split("sha256: ")[1].split()[0]
    unpacked = unpack(bundle, tmp_path / "unpacked", digest)
    assert type(unpacked) is ToyLSTM and unpacked.count_params() == model.count_params()
    assert load_model_dir(tmp_path / "unpacked")[2]["model_type"] == "student_toy"

    assert main(["export", "--model", str(run / "student_toy"), "--format", "tflite",
                 "--out", str(tmp_path / "lite")]) == 2
    err = capsys.readouterr().err
    assert "architecture 'student_toy' cannot be exported as tflite" in err
    assert "it exports as savedmodel, bundle" in err
    assert not (tmp_path / "lite").exists()
