"""`nmt-kd score` (it replaced scripts/score.py) and the user scripts in scripts/."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_score_matches_sacrebleu_and_runs_the_paired_test(tmp_path):
    import sacrebleu

    refs = ["the cat sits on the mat", "a dog runs in the park", "two men play football",
            "the sun is shining today"] * 5
    good = ["the cat sits on a mat", "a dog runs in the park", "two men play soccer",
            "the sun shines today"] * 5
    bad = ["cat", "the dog", "men football", "sun"] * 5
    for name, lines in (("ref", refs), ("good", good), ("bad", bad)):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = _run("-m", "nmt_kd.cli", "score", tmp_path / "good.txt", tmp_path / "ref.txt",
                "--baseline", tmp_path / "bad.txt", "--bootstrap", "200",
                "--json", tmp_path / "s.json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "s.json").read_text())
    assert res["bleu"] == pytest.approx(sacrebleu.corpus_bleu(good, [refs]).score, abs=0.01)
    assert res["chrf"] == pytest.approx(sacrebleu.corpus_chrf(good, [refs]).score, abs=0.01)
    assert res["bleu_signature"].startswith("nrefs:1|") and res["sentences"] == 20
    (test,) = res["paired_bootstrap"]
    assert test["bleu"] > test["baseline_bleu"] and test["p_value"] < 0.05


def test_score_refuses_misaligned_files(tmp_path):
    (tmp_path / "h.txt").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "r.txt").write_text("a\nb\nc\n", encoding="utf-8")
    proc = _run("-m", "nmt_kd.cli", "score", tmp_path / "h.txt", tmp_path / "r.txt")
    assert proc.returncode == 2
    assert "has 2 lines but" in proc.stderr and "Traceback" not in proc.stderr


def test_prepare_corpus_writes_data_vocab_and_a_config_that_loads(tmp_path):
    from conftest import toy_pairs, write_pair_files

    from nmt_kd.config import load_config
    from nmt_kd.fileio import read_lines

    pairs = toy_pairs(300)
    src, tgt = write_pair_files(tmp_path / "raw", pairs)
    vsrc, vtgt = write_pair_files(tmp_path / "rawv", toy_pairs(20, seed=7))
    run = tmp_path / "run"
    proc = _run(REPO / "scripts/prepare_corpus.py", src, tgt, "--run-dir", run,
                "--valid-src", vsrc, "--valid-tgt", vtgt, "--test-size", "30", "--vocab-size", "60",
                "--src-lang", "en", "--tgt-lang", "de")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = load_config(run / "config.yaml")
    assert cfg.data.train_src == str(src.resolve()) and cfg.vocab.size == 60
    assert (run / "vocab/spm.model").is_file()
    valid_src = read_lines(run / "data/valid.src")
    assert len(valid_src) == len(read_lines(run / "data/valid.tgt")) == 20
    by_src = dict(pairs)
    train_src, train_tgt = read_lines(run / "data/train.src"), read_lines(run / "data/train.tgt")
    assert len(train_src) == len(train_tgt) > 200
    assert all(by_src.get(s, t) == t for s, t in zip(train_src, train_tgt, strict=True))
    bad = _run(REPO / "scripts/prepare_corpus.py", src, tgt, "--run-dir", tmp_path / "r2",
               "--valid-src", vsrc)
    assert bad.returncode == 2 and "go together" in bad.stderr


FAKE_TRAINER = """#!/bin/bash
# stands in for `python -P -m nmt_kd.cli train ...`: logs its arguments, "trains" the named row
# (writes RUN/NAME/model.keras) unless the name is in $FAIL_ROWS
# (writes RUN/eval/ROW/done.json for `pipeline --only ROW`; logs `scripts/run_archive.py save`)
args="$*"; name=${args##*--name }; name=${name%% *}; run=${args##*--run-dir }; run=${run%% *}
echo "$args" >> "$CALLS"
case "$args" in *run_archive.py*) exit 0;; esac
case "$args" in *" pipeline "*) only=${args##*--only }; mkdir -p "$run/eval/$only"
  touch "$run/eval/$only/done.json"; exit 0;; esac
case " $FAIL_ROWS " in *" $name "*) exit 1;; esac
mkdir -p "$run/$name" && touch "$run/$name/model.keras"
"""


def test_kd_table_script_trains_each_row_once_with_its_settings(tmp_path):
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_TRAINER)
    fake.chmod(0o755)
    run, calls = tmp_path / "run", tmp_path / "calls.txt"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "RUN": str(run), "CALLS": str(calls),
           "SRC_COPY": str(tmp_path / "src"), "FAIL_ROWS": "cnn_none.seed2"}

    def kd_table(*what):
        return subprocess.run(["bash", str(REPO / "scripts" / "kd_table.sh"), *what],
                              capture_output=True, text=True, env=env, timeout=120)

    first = kd_table("first")
    assert first.returncode == 0, first.stderr
    lines = calls.read_text().splitlines()
    names = [line.split("--name ")[1].split()[0] for line in lines]
    # no word-KD row before its settings are chosen; the sweep right after seed 1's rows
    assert names[:4] == ["rnn_seq.seed1", "cnn_seq.seed1", "rnn_none.seed1", "cnn_none.seed1"]
    assert names[4:8] == [f"sweep_rnn_word_a{a}_T{t}" for a in ("0.5", "0.9") for t in (1, 2)]
    assert len(names) == 16 and not any(n.startswith(("rnn_word", "cnn_word", "rnn_seqword")) for n in names)
    sweep = lines[names.index("sweep_rnn_word_a0.9_T2")]
    assert "--kd word" in sweep and "distill.alpha=0.9" in sweep and "distill.temperature=2" in sweep
    assert "student_train.max_steps=2000" in sweep and "student_train.seed=1" in sweep
    cnn = lines[names.index("cnn_seq.seed3")]
    assert "--model student_cnn" in cnn and "max_steps=3000" in cnn and "student_train.seed=3" in cnn
    assert "cnn_none.seed2: failed" in first.stdout  # a failed row is said, and the queue goes on
    # every row: the finished ones are skipped, the failed one is tried again, word-KD rows now run
    calls.unlink()
    # a row restored from the archive on a new machine: evaluated, no weights; never trained again
    (run / "eval/rnn_word.seed1").mkdir(parents=True)
    (run / "eval/rnn_word.seed1/done.json").write_text("{}")
    again = kd_table("rows")
    assert again.returncode == 0, again.stderr
    names = [line.split("--name ")[1].split()[0] for line in calls.read_text().splitlines()]
    assert "rnn_seq.seed1" not in names and "cnn_none.seed2" in names
    assert set(names) >= {"rnn_word.seed3", "rnn_seqword.seed1", "cnn_word.seed1", "cnn_seqword.seed1"}
    assert "cnn_word.seed2" not in names and "rnn_seq.seed1: done" in again.stdout
    assert "rnn_word.seed1" not in names and "rnn_word.seed1: done (evaluated)" in again.stdout


def test_kd_table_script_keeps_to_the_deadline_and_evaluates_each_row(tmp_path):
    """DEADLINE: a row is not begun when its estimate would end after it (a begun one resumes);
    EVAL=1 ARCHIVE=DIR: each trained row is evaluated by the pipeline and archived at once, and a
    row trained but not yet evaluated is evaluated, not trained again."""
    import time

    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_TRAINER)
    fake.chmod(0o755)
    run, calls = tmp_path / "run", tmp_path / "calls.txt"
    (run / "tf_none.seed1/checkpoints").mkdir(parents=True)  # begun in this session: resumes
    (run / "cnn_seq.seed1").mkdir(parents=True)
    (run / "cnn_seq.seed1/model.keras").write_text("trained, not evaluated")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "RUN": str(run), "CALLS": str(calls),
           "SRC_COPY": str(tmp_path / "src"), "FAIL_ROWS": "", "EVAL": "1", "ARCHIVE": str(tmp_path / "arch"),
           "DEADLINE": str(int(time.time()) + 60 * 60), "MIN_RNN": "20", "MIN_CNN": "20", "MIN_TF": "90",
           "MIN_WORD": "50"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "kd_table.sh"), "rows"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text().splitlines()
    trained = [x.split("--name ")[1].split()[0] for x in lines if " train " in f" {x} "]
    evaluated = [x.split("--only ")[1].split()[0] for x in lines if " pipeline " in f" {x} "]
    archived = [x.split()[-1] for x in lines if "run_archive.py save" in x]
    assert "tf_none.seed1" in trained and "tf_seq.seed1" not in trained  # 90 min > the hour left
    assert "tf_seq.seed1: not started" in proc.stdout
    assert "rnn_seq.seed1" in trained and "rnn_word.seed1" not in trained  # word: 20 + 50 min
    assert "cnn_seq.seed1" not in trained and "cnn_seq.seed1" in evaluated  # evaluated only
    assert set(evaluated) == set(trained) | {"cnn_seq.seed1"} and evaluated == archived
    for name in evaluated:  # each row evaluated right after its training, before the next trains
        i = next(k for k, x in enumerate(lines) if f"--only {name}" in x)
        assert f"--name {name} " in lines[i - 1] + " " or name == "cnn_seq.seed1"
    calls.unlink()  # again: everything evaluated is done, nothing trains twice
    proc = subprocess.run(["bash", str(REPO / "scripts" / "kd_table.sh"), "rows"],
                          capture_output=True, text=True, env=env, timeout=120)
    again = calls.read_text().splitlines() if calls.exists() else []
    trained_again = [x.split("--name ")[1].split()[0] for x in again if " train " in f" {x} "]
    assert not set(trained_again) & set(trained) and "rnn_seq.seed1: done (evaluated)" in proc.stdout


def test_kd_table_spec_row_is_the_pipeline_for_that_model(tmp_path):
    """tf_tr_row: a row whose recipe is its pipeline.students entry is trained and evaluated by
    `nmt-kd pipeline --only ROW` (no `train` call with settings of its own), archived, then done;
    DEADLINE keeps an unbegun one from starting."""
    import time

    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_TRAINER)
    fake.chmod(0o755)
    run, calls = tmp_path / "run", tmp_path / "calls.txt"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "RUN": str(run), "CALLS": str(calls),
           "SRC_COPY": str(tmp_path / "src"), "FAIL_ROWS": "", "ARCHIVE": str(tmp_path / "arch"),
           "DEADLINE": str(int(time.time()) + 60 * 60), "MIN_TF_TR": "200"}

    def kd_table(*what):
        proc = subprocess.run(["bash", str(REPO / "scripts" / "kd_table.sh"), *what],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, (calls.read_text().splitlines() if calls.exists() else [])

    out, lines = kd_table("tf_tr_row", "seq", "1")
    assert "tf_seq_tr.seed1: not started" in out and lines == []  # 200 min > the hour left
    (run / "tf_seq_tr.seed1/checkpoints").mkdir(parents=True)  # begun earlier: resumes anyway
    out, lines = kd_table("tf_tr_row", "seq", "1")
    assert [x.split()[-1] for x in lines if " pipeline " in f" {x} "] == ["tf_seq_tr.seed1"]
    assert "--adopt --only tf_seq_tr.seed1" in lines[0] and not any(" train " in f" {x} " for x in lines)
    assert "run_archive.py save" in lines[1] and lines[1].endswith(" tf_seq_tr.seed1")
    assert "tf_seq_tr.seed1: evaluated, archived" in out
    calls.unlink()
    out, lines = kd_table("tf_tr_row", "seq", "1")
    assert lines == [] and "tf_seq_tr.seed1: done (evaluated)" in out


def test_run_archive_keeps_evaluations_without_weights_and_restores_them(tmp_path):
    """scripts/run_archive.py: `save` copies each evaluated model's evaluation files and
    metadata (not its weights, not an unevaluated model); `restore` puts back exactly those
    bytes, refuses an archive file changed since, and never overwrites a different run file."""
    run, archive, fresh = tmp_path / "run", tmp_path / "archive", tmp_path / "fresh"
    files = {"eval/rnn_seq.seed1/done.json": "{}", "eval/rnn_seq.seed1/beam1.bs64.json": '{"bleu": 30.1}',
             "eval/rnn_seq.seed1/beam1.bs64.hyp.txt": "ein Hund\nzwei Katzen\n",
             "eval/rnn_seq.seed1/qe.beam1.bs64.json": '{"scores": [-1.0, -2.0]}',
             "eval/rnn_seq.seed1/blind/test_2017_flickr.beam5.txt": "ein Mann\n",
             "rnn_seq.seed1/model.json": '{"seed": 1}', "rnn_seq.seed1/train_history.json": '{"train": []}',
             "rnn_seq.seed1/model.keras": "weights", "eval/rnn_none.seed1/beam1.bs64.json": "{}",
             "rnn_none.seed1/model.json": "{}"}
    for rel, text in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text, encoding="utf-8")
    script = REPO / "scripts/run_archive.py"
    proc = _run(script, "save", "--run-dir", run, "--archive", archive)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in archive.iterdir()) == ["rnn_seq.seed1"]  # rnn_none: not evaluated
    named = tmp_path / "named"  # names after the options, as the runbook writes them
    proc = _run(script, "save", "--run-dir", run, "--archive", named, "rnn_seq.seed1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in named.iterdir()) == ["rnn_seq.seed1"]
    assert not list(archive.rglob("model.keras"))
    proc = _run(script, "restore", "--run-dir", fresh, "--archive", archive)
    assert proc.returncode == 0, proc.stderr
    restored = {str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file()}
    expected = {r for r in files if r.startswith(("eval/rnn_seq", "rnn_seq")) and not r.endswith(".keras")}
    assert restored == expected
    assert all((fresh / r).read_text() == files[r] for r in expected)
    # restoring again is a no-op; a different file already in the run is not overwritten
    assert _run(script, "restore", "--run-dir", fresh, "--archive", archive).returncode == 0
    (fresh / "eval/rnn_seq.seed1/beam1.bs64.hyp.txt").write_text("anders\n", encoding="utf-8")
    proc = _run(script, "restore", "--run-dir", fresh, "--archive", archive)
    assert proc.returncode != 0 and "beam1.bs64.hyp.txt: already in the run and different" in proc.stderr
    # an archived file changed after saving is refused
    (archive / "rnn_seq.seed1/eval/beam1.bs64.json").write_text('{"bleu": 99.0}', encoding="utf-8")
    proc = _run(script, "restore", "--run-dir", tmp_path / "other", "--archive", archive)
    assert proc.returncode != 0 and "missing or changed since it was archived" in proc.stderr
    assert not (tmp_path / "other").exists()


def test_run_archive_keeps_the_distilled_corpus_and_puts_it_back_for_adopt(tmp_path):
    """`save-corpus` keeps RUN/distill's corpus gzipped with the hashes of the plain files;
    `restore` writes back exactly those bytes without done.json (so `pipeline --adopt` takes
    it), is not read as a model, and refuses a changed archive or a different file in the run."""
    import gzip

    run, archive, fresh = tmp_path / "run", tmp_path / "archive", tmp_path / "fresh"
    files = {"train.src": "a dog\ntwo cats\n", "train.tgt": "ein Hund\nzwei Katzen\n",
             "manifest.json": '{"pairs": 2}'}
    for name, text in files.items():
        (run / "distill").mkdir(parents=True, exist_ok=True)
        (run / "distill" / name).write_text(text, encoding="utf-8")
    script = REPO / "scripts/run_archive.py"
    proc = _run(script, "save-corpus", "--run-dir", run, "--archive", archive)
    assert proc.returncode != 0 and "has not finished" in proc.stderr  # no done.json yet
    (run / "distill/done.json").write_text("{}", encoding="utf-8")
    assert _run(script, "save-corpus", "--run-dir", run, "--archive", archive).returncode == 0
    stored = archive / "_distilled_corpus"
    assert sorted(p.name for p in stored.iterdir()) == [
        "corpus.json", "manifest.json.gz", "train.src.gz", "train.tgt.gz"]
    proc = _run(script, "restore", "--run-dir", fresh, "--archive", archive)
    assert proc.returncode == 0, proc.stderr
    assert "0 models" in proc.stdout
    assert {p.name: p.read_text(encoding="utf-8") for p in (fresh / "distill").iterdir()} == files
    assert not (fresh / "eval").exists()
    # a different corpus already in the run is not overwritten; a changed archive is refused
    (fresh / "distill/train.tgt").write_text("ein Hund\nzwei Hunde\n", encoding="utf-8")
    proc = _run(script, "restore", "--run-dir", fresh, "--archive", archive)
    assert proc.returncode != 0 and "train.tgt: already in the run and different" in proc.stderr
    (stored / "train.src.gz").write_bytes(gzip.compress(b"a cat\ntwo cats\n"))
    proc = _run(script, "restore", "--run-dir", tmp_path / "other", "--archive", archive)
    assert proc.returncode != 0 and "changed since it was archived" in proc.stderr
    assert not (tmp_path / "other").exists()


def test_multi_target_corpus_counts_duplicates_and_empty_targets_apart(tmp_path):
    inter, out = tmp_path / "KI", tmp_path / "KM"
    (inter / "data").mkdir(parents=True)
    (inter / "distill/shards").mkdir(parents=True)
    (inter / "data/train.src").write_text("s0\ns1\ns2\n", encoding="utf-8")
    (inter / "data/train.tgt").write_text("r0\nr1\nr2\n", encoding="utf-8")
    records = [  # line 0: three distinct; line 1: top-1 == pick; line 2: an empty top-1
        {"i": 0, "nbest": [["a0", -1.0]], "hyp": "b0"},
        {"i": 1, "nbest": [["a1", -1.0]], "hyp": "a1"},
        {"i": 2, "nbest": [["", -1.0]], "hyp": "b2"},
    ]
    (inter / "distill/shards/shard-00000.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    proc = _run(REPO / "benchmarks/multi_target_corpus.py", "--inter-run", inter, "--out-run", out)
    assert proc.returncode == 0, proc.stderr
    src = (out / "distill/train.src").read_text(encoding="utf-8").splitlines()
    tgt = (out / "distill/train.tgt").read_text(encoding="utf-8").splitlines()
    assert list(zip(src, tgt, strict=True)) == [("s0", "a0"), ("s0", "b0"), ("s0", "r0"), ("s1", "a1"),
                                   ("s1", "r1"), ("s2", "b2"), ("s2", "r2")]
    manifest = json.loads((out / "distill/manifest.json").read_text())
    assert manifest["duplicates_removed"] == 1 and manifest["empty_targets_skipped"] == 1
    assert manifest["lines"] == 7 and manifest["source_lines"] == 3
