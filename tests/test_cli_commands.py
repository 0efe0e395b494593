"""The `nmt-kd` commands that CI did not run (`export`, `bench`, `report`, `average`), the
evaluation and report wiring (scores belong to the hypotheses they claim to score), and a
bf16 training step. Commands run in-process through `nmt_kd.cli.main`, as the shell would."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
import yaml
from conftest import clone_run, toy_pairs

from nmt_kd.cli import main
from nmt_kd.config import config_from_dict
from nmt_kd.fileio import read_lines, write_json, write_lines

quiet = lambda _m: None  # noqa: E731


@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory):
    """A teacher trained enough to score BLEU above zero, its checkpoints kept, and a config
    file for the commands."""
    from nmt_kd.train import train_model

    base = tmp_path_factory.mktemp("cli")
    run, tree = clone_run(tiny_run, base)
    tree["train"].update(max_steps=400, eval_every=0, checkpoint_every=100, keep_checkpoints=3,
                         log_every=1000, learning_rate=0.01, warmup_steps=40, max_tokens=512)
    train_model(config_from_dict(tree), run, "teacher", log=quiet)
    config = base / "tiny.yaml"
    config.write_text(yaml.safe_dump(tree))
    return run, tree, config


def _translator(model_dir, beam_cfg=None):
    from nmt_kd.config import DecodeConfig
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.translate import Translator

    model, tok, _ = load_model_dir(model_dir)
    return Translator(model, tok, beam_cfg or DecodeConfig(max_len_cap=32, batch_size=16))


def test_evaluate_bleu_is_sacrebleu_of_its_own_hypotheses_and_drops_when_shuffled(trained,
                                                                                  tmp_path):
    from nmt_kd.config import DecodeConfig
    from nmt_kd.evaluate import evaluate_model

    run, _, _ = trained
    out = tmp_path / "m.json"
    m = evaluate_model(run / "teacher", run / "data/test.src", run / "data/test.tgt", beam=2,
                       batch_size=8, decode_cfg=DecodeConfig(max_len_cap=32), out_json=out,
                       log=quiet)
    hyps = read_lines(out.with_suffix(".hyp.txt"))
    refs = read_lines(run / "data/test.tgt")
    assert len(hyps) == len(refs) == 30
    own = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert m["bleu"] == pytest.approx(own, abs=0.006) and json.loads(out.read_text())["bleu"] == m["bleu"]
    assert m["bleu"] > 10.0  # a trained teacher, so that shuffling has something to lose
    # the hypotheses are the model's translations of the source lines, in order
    assert hyps == _translator(run / "teacher").translate(read_lines(run / "data/test.src"),
                                                          beam=2).hypotheses
    shuffled = hyps[1:] + hyps[:1]  # every hypothesis against another sentence's reference
    assert sacrebleu.corpus_bleu(shuffled, [refs]).score < m["bleu"] / 2


def _fake_eval_run(tmp_path):
    """Evaluation files as the evaluate stage writes them, with greedy and beam outputs that
    differ: beam drops 40% of the words, greedy 10% (so their BLEU differ widely)."""
    from nmt_kd.evaluate import score

    run = tmp_path / "run"
    pairs = toy_pairs(60, seed=5, max_words=20)
    refs = [t for _, t in pairs]
    write_lines(run / "data/test.src", [s for s, _ in pairs])
    write_lines(run / "data/test.tgt", refs)
    rng = random.Random(1)
    expected = {}
    for name, mtype, kd in (("teacher", "teacher", "none"), ("rnn_seq", "student_rnn", "seq")):
        outputs = {beam: [" ".join(w for w in t.split() if rng.random() > drop) for t in refs]
                   for beam, drop in ((1, 0.1), (4, 0.4))}
        assert outputs[1] != outputs[4]
        for beam, hyps in outputs.items():
            for bs in (1, 8):
                row = {"model": f"{run}/{name}", "model_type": mtype, "kd": kd, "params": 1000,
                       "size_bytes": 2**20, "test_set": "toy/test", "n_sentences": 60,
                       "beam": beam, "batch_size": bs, **score(hyps, refs),
                       "sentences_per_second": 50.0 * bs / beam, "tokens_per_second": 500.0,
                       "machine": {"cpu": "test cpu"}}
                write_json(run / f"eval/{name}/beam{beam}.bs{bs}.json", row)
                write_lines(run / f"eval/{name}/beam{beam}.bs{bs}.hyp.txt", hyps)
        expected[name] = {b: sacrebleu.corpus_bleu(h, [refs]).score for b, h in outputs.items()}
        assert expected[name][1] > expected[name][4] + 5
    return run, expected


def _md_tables(md: str):
    """(header cells, rows of cells) of every Markdown table in `md`."""
    lines = md.splitlines()
    for i in range(len(lines) - 1):
        if lines[i].startswith("|") and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]):
            head = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = []
            for line in lines[i + 2:]:
                if not line.startswith("|"):
                    break
                rows.append([c.strip() for c in line.strip("|").split("|")])
            yield head, rows


def test_report_command_puts_greedy_and_beam_bleu_in_their_own_columns(tmp_path, capsys):
    run, expected = _fake_eval_run(tmp_path)
    assert main(["report", "--run-dir", str(run), "--bootstrap", "0", "--title", "wiring"]) == 0
    metrics = json.loads((run / "report/metrics.json").read_text())
    # one line per model ("summary"; "models" once the report groups seeds into rows)
    summary = {s["name"]: s for s in metrics.get("summary") or metrics["models"]}
    for name, bleu in expected.items():
        assert summary[name]["bleu_greedy"] == pytest.approx(bleu[1], abs=0.006)
        assert summary[name]["bleu_beam"] == pytest.approx(bleu[4], abs=0.006)
    md = (run / "report/report.md").read_text()
    assert "wiring" in md
    checked = {"greedy": 0, "beam": 0}
    for head, rows in _md_tables(md):
        for row in rows:
            if not row or row[0] not in expected:
                continue
            for h, cell in zip(head, row, strict=False):
                if "BLEU" not in h or "valid" in h or "retained" in h:
                    continue
                kind = "greedy" if "greedy" in h else "beam" if "beam" in h else None
                if kind is None or not re.match(r"^-?\d", cell):
                    continue
                want = expected[row[0]][1 if kind == "greedy" else 4]
                assert cell.startswith(f"{want:.2f}"), (h, cell, want)
                checked[kind] += 1
    assert checked["greedy"] >= 2 and checked["beam"] >= 2, checked


def test_average_command_writes_the_mean_of_the_newest_checkpoints(trained):
    from nmt_kd.models.persistence import load_model_dir

    run, _, config = trained
    state = tf.train.get_checkpoint_state(str(run / "teacher/checkpoints"))
    newest = list(state.all_model_checkpoint_paths)[-2:]
    assert [p.rsplit("-", 1)[1] for p in newest] == ["300", "400"]
    assert main(["average", "--config", str(config), "--run-dir", str(run), "--name", "teacher",
                 "--last", "2", "--out-name", "teacher_avg"]) == 0
    model, _, meta = load_model_dir(run / "teacher_avg")
    assert "ckpt-300, ckpt-400" in meta["final_weights"]
    readers = [tf.train.load_checkpoint(p) for p in newest]
    for i, w in enumerate(model.weights):
        key = f"model_weights/{i}/.ATTRIBUTES/VARIABLE_VALUE"
        want = (readers[0].get_tensor(key) + readers[1].get_tensor(key)) / 2
        np.testing.assert_allclose(w.numpy(), want, rtol=1e-6, atol=1e-7)
    first = readers[0].get_tensor("model_weights/0/.ATTRIBUTES/VARIABLE_VALUE")
    assert not np.allclose(first, readers[1].get_tensor("model_weights/0/.ATTRIBUTES/VARIABLE_VALUE"))


def test_average_until_takes_the_newest_checkpoints_at_or_before_the_step(trained, capsys):
    from nmt_kd.models.persistence import load_model_dir

    run, _, config = trained
    state = tf.train.get_checkpoint_state(str(run / "teacher/checkpoints"))
    steps = [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]
    assert steps[-1] == 400 and 200 in steps and 300 in steps
    assert main(["average", "--config", str(config), "--run-dir", str(run), "--name", "teacher",
                 "--last", "2", "--until", "399", "--out-name", "teacher_until"]) == 0
    _, _, meta = load_model_dir(run / "teacher_until")
    assert meta["final_weights"].endswith("ckpt-200, ckpt-300")
    assert main(["average", "--config", str(config), "--run-dir", str(run), "--name", "teacher",
                 "--last", "2", "--until", "100", "--out-name", "never"]) == 2
    assert "at or before step 100" in capsys.readouterr().err
    assert not (run / "never").exists()


def test_export_command_serves_the_beam_it_was_asked_for(trained, tmp_path):
    import tensorflow_text  # noqa: F401  (registers the SentencePiece ops of the export)

    from nmt_kd.config import load_config

    run, _, config = trained
    out = tmp_path / "served"
    assert main(["export", "--config", str(config), "--model", str(run / "teacher"),
                 "--format", "savedmodel", "--beam", "3", "--out", str(out)]) == 0
    assert json.loads((out / "nmt_kd_export.json").read_text())["beam"] == 3  # config: beam 2
    lines = read_lines(run / "data/test.src")[:12]
    served = tf.saved_model.load(str(out)).signatures["serving_default"]
    got = [t.decode("utf-8") for t in served(sentences=tf.constant(lines))["translations"].numpy()]
    tr = _translator(run / "teacher", load_config(str(config)).decode)
    assert got == tr.translate(lines, beam=3).hypotheses


def test_bench_command_rows_tokens_and_ratios(trained, tmp_path):
    import shutil

    run, _, config = trained
    teacher, other = str(run / "teacher"), str(tmp_path / "teacher_copy")
    shutil.copytree(teacher, other, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    src = run / "data/test.src"
    lines = read_lines(src)
    out = tmp_path / "bench.json"
    assert main(["bench", "--config", str(config), "--models", teacher, other, "--src", str(src),
                 "--beams", "1", "2", "--batch-sizes", "1", "8", "--batch1-sentences", "5",
                 "--repeats", "1", "--train-steps", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert sorted((r["model"], r["beam"], r["batch_size"]) for r in rows) == \
        sorted((m, b, bs) for m in (teacher, other) for b in (1, 2) for bs in (1, 8))
    tr = _translator(teacher)
    for r in rows:
        assert r["sentences"] == (5 if r["batch_size"] == 1 else len(lines))
        # one timed pass: tokens/s over sentences/s is the output tokens per sentence of
        # exactly this beam's translations
        tokens = sum(tr.translate(lines[:r["sentences"]], beam=r["beam"]).token_counts)
        assert r["tokens_per_second"] / r["sentences_per_second"] == \
            pytest.approx(tokens / r["sentences"], rel=0.02)
    sps = {(r["model"], r["beam"], r["batch_size"]): r["sentences_per_second"] for r in rows}
    ratios = {(x["model"], x["beam"], x["batch_size"]): x["ratio"]
              for x in result["ratios_to_first_model"]}
    assert set(ratios) == set(sps)
    for (model, beam, bs), ratio in ratios.items():  # over the first model at the largest beam
        assert ratio == pytest.approx(sps[(model, beam, bs)] / sps[(teacher, 2, bs)], abs=0.006)
    assert ratios[(teacher, 2, 1)] == ratios[(teacher, 2, 8)] == 1.0


def test_bf16_training_step_computes_in_bfloat16_with_float32_weights(trained, tmp_path):
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.train import train_model

    run, tree, _ = trained
    tree = dict(tree, train=dict(tree["train"], max_steps=3, eval_every=0, log_every=1))
    losses = {}
    for precision in ("fp32", "bf16"):
        t = dict(tree, train=dict(tree["train"], precision=precision))
        r = train_model(config_from_dict(t), run, "teacher", name=f"t_{precision}", log=quiet)
        assert r.steps == 3 and all(np.isfinite(r.losses))
        losses[precision] = r.losses
        model, _, meta = load_model_dir(run / f"t_{precision}")
        assert meta["precision"] == precision
        want = "bfloat16" if precision == "bf16" else "float32"
        assert model.compute_dtype == want and r.model.compute_dtype == want
        assert all(v.dtype == "float32" for v in model.trainable_variables)
        logits = model((np.array([[5, 6, 3]], np.int32), np.array([[2, 5]], np.int32)))
        assert logits.dtype == tf.float32 and np.isfinite(logits.numpy()).all()
    # the same updates up to bf16 rounding: close, but not bit-identical to fp32
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=5e-2)
    assert losses["bf16"] != losses["fp32"]
