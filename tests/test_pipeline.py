import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from nmt_kd.config import config_from_dict
from nmt_kd.errors import UserError
from nmt_kd.pipeline import run_pipeline

quiet = lambda _m: None  # noqa: E731


@pytest.fixture(scope="module")
def pipeline_tree(tiny_run):
    _, tree = tiny_run
    tree = copy.deepcopy(tree)
    tree["train"].update(max_steps=150, eval_every=0)
    tree["student_train"].update(max_steps=8, eval_every=0, max_len=40)
    tree["distill"] = {"shard_size": 256, "beam": 2}
    tree["eval"] = {"beams": [1, 2], "batch_sizes": [1, 8], "speed_sentences": 5}
    tree["pipeline"] = {"name": "tiny", "students": [
        {"name": "rnn_seq", "arch": "student_rnn", "kd": "seq"},
        {"name": "cnn_none", "arch": "student_cnn", "kd": "none"}]}
    return tree


def test_pipeline_runs_skips_and_reruns_only_what_changed(pipeline_tree, tmp_path):
    run = tmp_path / "run"
    ran = run_pipeline(config_from_dict(pipeline_tree), run, log=quiet)
    assert ran == ["prepare", "vocab", "teacher", "distill", "student rnn_seq", "student cnn_none",
                   "evaluate teacher", "evaluate rnn_seq", "evaluate cnn_none", "report"]
    evals = json.loads((run / "report/metrics.json").read_text())["evaluations"]
    rows = [r for r in evals if r["split"] == "test"]
    assert len(rows) == 3 * 2 * 2
    # the valid split: both beams at the largest batch size, scored for every model
    assert sorted((r["name"], r["beam"]) for r in evals if r["split"] == "valid") == sorted(
        (n, b) for n in ("teacher", "rnn_seq", "cnn_none") for b in (1, 2))
    assert {r["kd"] for r in rows} == {"none", "seq"}
    # batch 1 times a prefix and scores the batch-8 translations of the same beam
    bs1, bs8 = (json.loads((run / f"eval/rnn_seq/beam2.bs{b}.json").read_text()) for b in (1, 8))
    assert (bs1["scored_batch_size"], bs8["scored_batch_size"]) == (8, 8)
    assert bs1["bleu"] == bs8["bleu"] and bs1["timed_sentences"] == 5 < bs8["timed_sentences"]
    assert "| rnn_seq | student_rnn | seq |" in (run / "report/report.md").read_text()
    # nothing changed: everything is skipped
    logs = []
    assert run_pipeline(config_from_dict(pipeline_tree), run, log=logs.append) == []
    assert sum("skipped" in m for m in logs) == 10
    # a student-only change re-runs that student, its evaluation and the report
    tree = copy.deepcopy(pipeline_tree)
    tree["model"]["student_cnn"]["kernel_size"] = 5
    assert run_pipeline(config_from_dict(tree), run, log=quiet) == [
        "student cnn_none", "evaluate cnn_none", "report"]
    assert "kernel_size: 5" in (run / "cnn_none/config.yaml").read_text()
    # a decode-only change (the evaluation's beam and batch size) re-runs every evaluation
    # and the report, never training or distillation
    decode_tree = copy.deepcopy(tree)
    decode_tree["decode"].update(batch_size=4, beam=3)
    assert run_pipeline(config_from_dict(decode_tree), run, log=quiet) == [
        "evaluate teacher", "evaluate rnn_seq", "evaluate cnn_none", "report"]
    assert run_pipeline(config_from_dict(tree), run, log=quiet) == [
        "evaluate teacher", "evaluate rnn_seq", "evaluate cnn_none", "report"]

    # --adopt: the same outputs as if made by the step-by-step commands (no pipeline records)
    for marker in [*run.rglob("done.json"), *run.rglob("started.json")]:
        marker.unlink()
    (run / "eval/cnn_none/beam2.bs8.json").unlink()  # one evaluation never finished
    model_bytes = (run / "rnn_seq/model.keras").read_bytes()
    logs = []
    assert run_pipeline(config_from_dict(tree), run, log=logs.append, adopt=True) == [
        "evaluate cnn_none", "report"]
    assert sum("adopted the existing output" in m for m in logs) == 8
    assert (run / "rnn_seq/model.keras").read_bytes() == model_bytes
    assert json.loads((run / "teacher/done.json").read_text())["adopted"] is True
    assert run_pipeline(config_from_dict(tree), run, log=quiet) == []  # now recorded as done
    # a run directory moved elsewhere keeps its stage hashes: nothing is redone
    moved = tmp_path / "elsewhere" / "run2"
    shutil.copytree(run, moved)
    assert run_pipeline(config_from_dict(tree), moved, log=quiet) == []


def test_until_and_force(pipeline_tree, tmp_path):
    run = tmp_path / "run"
    assert run_pipeline(config_from_dict(pipeline_tree), run, until="vocab", log=quiet) == ["prepare", "vocab"]
    assert not (run / "teacher").exists()
    assert run_pipeline(config_from_dict(pipeline_tree), run, until="vocab", force=("vocab",),
                        log=quiet) == ["vocab"]
    with pytest.raises(UserError, match="unknown stage 'techer'"):
        run_pipeline(config_from_dict(pipeline_tree), run, until="techer", log=quiet)


def test_changed_teacher_config_restarts_training_instead_of_resuming(pipeline_tree, tmp_path):
    run = tmp_path / "run"
    tree = copy.deepcopy(pipeline_tree)
    tree["train"]["max_steps"] = 6
    run_pipeline(config_from_dict(tree), run, until="teacher", log=quiet)
    tree["model"]["teacher"]["ff_dim"] = 48
    logs = []
    run_pipeline(config_from_dict(tree), run, until="teacher", log=logs.append)
    assert any("starting it over" in m for m in logs)
    assert json.loads((run / "teacher/model.json").read_text())["steps"] == 6
    shutil.rmtree(run)


def test_a_raised_budget_continues_the_run_and_any_other_change_starts_it_over(pipeline_tree, tmp_path):
    run = tmp_path / "run"
    tree = copy.deepcopy(pipeline_tree)
    tree["train"].update(max_steps=6, max_minutes=30)
    run_pipeline(config_from_dict(tree), run, until="teacher", log=quiet)
    steps = lambda: json.loads((run / "teacher/model.json").read_text())["steps"]  # noqa: E731
    # finished, then given more steps: it goes on from its last checkpoint (step 6)
    tree["train"]["max_steps"] = 10
    logs = []
    assert run_pipeline(config_from_dict(tree), run, until="teacher", log=logs.append) == ["teacher"]
    assert any("budget raised (max_steps 6 -> 10)" in m for m in logs)
    assert any("resumed from" in m and "at step 6" in m for m in logs)
    assert steps() == 10 and not any("starting it over" in m for m in logs)
    assert run_pipeline(config_from_dict(tree), run, until="teacher", log=quiet) == []
    # the same config and budget recorded under another hash (an earlier version's): done is
    # done, and a killed run continues, neither logged as a budget change
    done = json.loads((run / "teacher/done.json").read_text())
    (run / "teacher/done.json").write_text(json.dumps({**done, "hash": "0" * 20}))
    logs = []
    assert run_pipeline(config_from_dict(tree), run, until="teacher", log=logs.append) == []
    assert any("unchanged since" in m for m in logs) and not any("budget raised" in m for m in logs)
    assert json.loads((run / "teacher/done.json").read_text())["hash"] == done["hash"]
    (run / "teacher/done.json").unlink()
    started = json.loads((run / "teacher/started.json").read_text())
    (run / "teacher/started.json").write_text(json.dumps({**started, "hash": "0" * 20}))
    logs = []
    assert run_pipeline(config_from_dict(tree), run, until="teacher", log=logs.append) == ["teacher"]
    assert any("config and budget unchanged" in m for m in logs) and steps() == 10
    assert not any("budget raised" in m or "starting it over" in m for m in logs)
    # killed after a checkpoint (no done.json), then given more time and steps: continued too
    (run / "teacher/done.json").unlink()
    tree["train"].update(max_steps=12, max_minutes=60)
    logs = []
    run_pipeline(config_from_dict(tree), run, until="teacher", log=logs.append)
    assert any("budget raised (max_steps 10 -> 12; max_minutes 30 -> 60)" in m for m in logs)
    assert any("resumed from" in m and "at step 10" in m for m in logs) and steps() == 12
    # no time limit (0) is more time than any
    tree["train"].update(max_steps=13, max_minutes=0)
    assert run_pipeline(config_from_dict(tree), run, until="teacher", log=quiet) == ["teacher"] and steps() == 13
    # a run that stopped early (patience) before its budget: more steps change nothing
    meta = json.loads((run / "teacher/model.json").read_text())
    (run / "teacher/model.json").write_text(json.dumps({**meta, "stopped_because": "early_stop"}))
    tree["train"]["max_steps"] = 20
    logs = []
    assert run_pipeline(config_from_dict(tree), run, until="teacher", log=logs.append) == []
    assert any("changes nothing" in m for m in logs) and steps() == 13
    # a lower budget cannot be had by continuing; nor can a budget change beside another one
    for change, want in ((dict(max_steps=4), 4), (dict(max_steps=8, learning_rate=5e-4), 8)):
        tree["train"].update(change)
        logs = []
        run_pipeline(config_from_dict(tree), run, until="teacher", log=logs.append)
        assert any("starting it over" in m for m in logs) and steps() == want, change
        assert not any("resumed from" in m for m in logs)
    # a student's own step budget is a budget too
    tree["pipeline"]["students"] = [{"name": "cnn_none", "arch": "student_cnn", "kd": "none", "max_steps": 3}]
    run_pipeline(config_from_dict(tree), run, until="students", log=quiet)
    tree["pipeline"]["students"][0]["max_steps"] = 5
    logs = []
    assert run_pipeline(config_from_dict(tree), run, until="students", log=logs.append) == ["student cnn_none"]
    assert any("budget raised (max_steps 3 -> 5)" in m for m in logs)
    assert json.loads((run / "cnn_none/model.json").read_text())["steps"] == 5


def test_student_seeds_make_one_stage_per_seed_with_its_own_seed(pipeline_tree, tmp_path):
    from nmt_kd.errors import ConfigError
    from nmt_kd.pipeline import build_stages, stage_hash

    tree = copy.deepcopy(pipeline_tree)
    tree["pipeline"]["students"] = [
        {"name": "rnn_none", "arch": "student_rnn", "kd": "none", "seeds": [3, 7]},
        {"name": "cnn_none", "arch": "student_cnn", "kd": "none"}]
    cfg = config_from_dict(tree)
    run = tmp_path / "run"
    stages = {s.name: s for s in build_stages(cfg, run, quiet)}
    students = [n for n in stages if n.startswith("student ")]
    assert students == ["student rnn_none.seed3", "student rnn_none.seed7", "student cnn_none"]
    assert [n for n in stages if n.startswith("evaluate ")] == [
        "evaluate teacher", "evaluate rnn_none.seed3", "evaluate rnn_none.seed7", "evaluate cnn_none"]
    a, b = stages["student rnn_none.seed3"], stages["student rnn_none.seed7"]
    assert (a.out_dir.name, b.out_dir.name) == ("rnn_none.seed3", "rnn_none.seed7")
    assert (a.config["seed"], b.config["seed"]) == (3, 7) and "seed" not in stages["student cnn_none"].config
    for p in a.inputs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x\n")
    assert stage_hash(a, run) != stage_hash(b, run)
    with pytest.raises(ConfigError, match="repeats a seed"):
        tree["pipeline"]["students"][0]["seeds"] = [1, 1]
        config_from_dict(tree)


def test_seeded_student_trains_with_its_seed(pipeline_tree, tmp_path, monkeypatch):
    """The stage's run() hands train_model a config whose student_train.seed is the stage's."""
    import nmt_kd.train
    from nmt_kd.pipeline import build_stages

    seen = {}
    monkeypatch.setattr(nmt_kd.train, "train_model",
                        lambda cfg, run, arch, name, **kw: seen.setdefault(name, cfg.student_train.seed))
    tree = copy.deepcopy(pipeline_tree)
    tree["pipeline"]["students"] = [{"name": "rnn_none", "arch": "student_rnn", "kd": "none",
                                     "seeds": [3, 7], "max_steps": 2}]
    for s in build_stages(config_from_dict(tree), tmp_path / "run", quiet):
        if s.group == "students":
            s.run()
    assert seen == {"rnn_none.seed3": 3, "rnn_none.seed7": 7}


def test_blind_sources_are_translated_line_for_line_and_collected(tmp_path):
    """translate_blind writes one line per source line for each beam; collect_blind names the
    copies <set>/<row>.seed<k>.beam<B>.txt and refuses a file with a line missing."""
    import subprocess
    import sys

    from nmt_kd.pipeline import translate_blind

    class Echo:  # a translator that upper-cases, so each line's origin is visible
        def translate(self, lines, beam, batch_size):
            from types import SimpleNamespace
            return SimpleNamespace(hypotheses=[s and f"{s.upper()} b{beam}" for s in lines])

    src = tmp_path / "blind" / "test_2017_flickr.en"
    src.parent.mkdir()
    src.write_text("a dog\n\nthe cat sits\n", encoding="utf-8")
    cfg = config_from_dict({"eval": {"blind_sources": [str(src)], "batch_sizes": [1, 8]}})
    run = tmp_path / "run"
    for name in ("teacher", "rnn_seq.seed2"):
        for beam in (1, 5):
            (path,) = translate_blind(cfg, run / "eval" / name / "blind", Echo(), beam, quiet)
            assert path.read_text(encoding="utf-8") == f"A DOG b{beam}\n\nTHE CAT SITS b{beam}\n"
    (run / "teacher").mkdir()
    (run / "teacher" / "model.json").write_text('{"seed": 4}')
    out = tmp_path / "docs"
    cmd = [sys.executable, "scripts/collect_blind.py", "--run-dir", str(run), "--out", str(out),
           "--sources", str(src)]
    subprocess.run(cmd, check=True, capture_output=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt")) == [
        f"test_2017_flickr/{row}.beam{b}.txt" for row in ("rnn_seq.seed2", "teacher.seed4")
        for b in (1, 5)]
    (run / "eval/teacher/blind/test_2017_flickr.beam5.txt").write_text("A DOG\n", encoding="utf-8")
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode != 0 and "1 lines for 3 source lines" in bad.stderr


def test_teacher_seeds_and_an_ensemble_kd_teacher(pipeline_tree, tmp_path):
    """Two teacher seeds, their ensemble as the KD teacher of distill and word-KD, every one
    of them evaluated, and the report's rows: teacher over both seeds, teacher_ensemble."""
    tree = copy.deepcopy(pipeline_tree)
    tree["pipeline"].update(teacher_seeds=[4, 5], kd_teacher="ensemble", students=[
        {"name": "rnn_seq", "arch": "student_rnn", "kd": "seq"},
        {"name": "rnn_word", "arch": "student_rnn", "kd": "word"}])
    run = tmp_path / "run"
    ran = run_pipeline(config_from_dict(tree), run, log=quiet)
    assert ran == ["prepare", "vocab", "teacher", "teacher.seed5", "teacher_ensemble", "distill",
                   "student rnn_seq", "student rnn_word", "evaluate teacher", "evaluate teacher.seed5",
                   "evaluate teacher_ensemble", "evaluate rnn_seq", "evaluate rnn_word", "report"]
    assert [json.loads((run / n / "model.json").read_text())["seed"] for n in ("teacher", "teacher.seed5")] == [4, 5]
    members = json.loads((run / "teacher_ensemble/ensemble.json").read_text())["members"]
    assert [p.rsplit("/", 1)[-1] for p in members] == ["teacher", "teacher.seed5"]
    rows = {r["name"]: r for r in json.loads((run / "report/metrics.json").read_text())["rows"]}
    assert rows["teacher"]["seeds"] == [4, 5] and rows["teacher_ensemble"]["arch"] == "ensemble"
    assert [p.rsplit("/", 1)[-1] for p in rows["teacher_ensemble"]["members"]] == ["teacher", "teacher.seed5"]
    # the single teachers' models are the ensemble's inputs: retraining one redoes the ensemble
    tree["train"]["learning_rate"] = 0.002
    again = run_pipeline(config_from_dict(tree), run, log=quiet, until="distill")
    assert again == ["teacher", "teacher.seed5", "teacher_ensemble", "distill"]


def test_two_lanes_run_every_stage_once_and_side_by_side(pipeline_tree, tmp_path):
    """`pipeline.lanes: 2` (what `--lanes 2` sets too): two processes share the stages through
    lock files; every stage runs exactly once over both, both lanes train something, and the
    run is complete."""
    import subprocess
    import sys

    import yaml

    tree = copy.deepcopy(pipeline_tree)
    tree["pipeline"]["students"] = [
        {"name": "rnn_none", "arch": "student_rnn", "kd": "none", "seeds": [1, 2]},
        {"name": "rnn_seq", "arch": "student_rnn", "kd": "seq", "seeds": [1, 2]}]
    tree["student_train"]["max_steps"] = 30
    tree["pipeline"]["lanes"] = 2
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(tree))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "nmt_kd.cli", "pipeline", "-c", str(cfg_file),
                           "--run-dir", str(run)], capture_output=True, text=True,
                          timeout=1800, stdin=subprocess.DEVNULL)
    lane2 = (run / "lanes/lane2.log").read_text()
    assert proc.returncode == 0, proc.stderr[-3000:] + lane2[-3000:]

    def started(text):  # stages a lane ran: "== NAME" alone on its line
        return [line[3:] for line in text.splitlines() if line.startswith("== ") and ":" not in line]

    one, two = started(proc.stdout + proc.stderr), started(lane2)
    expected = (["prepare", "vocab", "teacher", "distill"]
                + [f"student {r}.seed{k}" for r in ("rnn_none", "rnn_seq") for k in (1, 2)]
                + [f"evaluate {n}" for n in ("teacher", "rnn_none.seed1", "rnn_none.seed2",
                                             "rnn_seq.seed1", "rnn_seq.seed2")] + ["report"])
    assert sorted(one + two) == sorted(expected)  # each exactly once
    assert any(s.startswith("student") for s in one) and any(s.startswith("student") for s in two)
    rows = {r["name"]: r for r in json.loads((run / "report/metrics.json").read_text())["rows"]}
    assert rows["rnn_seq"]["seeds"] == [1, 2] and rows["rnn_none"]["seeds"] == [1, 2]
    assert "report:" in proc.stdout  # lane 1 ends with the summary


def test_only_runs_the_named_models_and_what_they_need(pipeline_tree, tmp_path, monkeypatch):
    """--only: the other models' student and evaluation stages and the report are left out;
    the data, the teacher and (for a seq-KD student only) the distilled corpus still run."""
    import nmt_kd.pipeline as pipeline

    order = []
    monkeypatch.setattr(pipeline, "_run_stage", lambda stage, *a, **k: order.append(stage.name) or True)
    cfg = config_from_dict(pipeline_tree)
    assert run_pipeline(cfg, tmp_path / "a", only=("cnn_none",), log=quiet) == [
        "prepare", "vocab", "teacher", "student cnn_none", "evaluate cnn_none"]
    logs = []
    ran = run_pipeline(cfg, tmp_path / "b", only=("rnn_seq", "teacher"), log=logs.append)
    assert ran == ["prepare", "vocab", "teacher", "distill", "student rnn_seq", "evaluate teacher",
                   "evaluate rnn_seq"]
    assert any("3 stages left out" in m for m in logs)
    with pytest.raises(UserError, match="--only rnn_none: not a model of this pipeline; its models are "
                                        "teacher, rnn_seq, cnn_none"):
        run_pipeline(cfg, tmp_path / "c", only=("rnn_none",), log=quiet)


def _distill_and_student_hashes(tree, run, **distill):
    """{stage name: hash} of the distill and student stages, with `distill` keys changed (every
    input a stand-in file: only the config part of the hashes varies)."""
    from nmt_kd.pipeline import build_stages, stage_hash

    tree = copy.deepcopy(tree)
    tree["distill"].update(distill)
    stages = [s for s in build_stages(config_from_dict(tree), run, quiet) if s.group in ("distill", "students")]
    for p in {p for s in stages for p in s.inputs}:
        if not p.is_file():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("x\n")
    return {s.name: stage_hash(s, run) for s in stages}


def test_word_kd_settings_leave_the_distilled_corpus_and_seq_kd_students_done(pipeline_tree, tmp_path):
    """Choosing alpha, T or top-k on valid re-trains only the students that use them; the
    beam changes the corpus and every student trained on it, not the word-KD-only student."""
    tree = copy.deepcopy(pipeline_tree)
    tree["pipeline"]["students"] = [{"name": f"rnn_{k.replace('+', '')}", "arch": "student_rnn", "kd": k}
                                    for k in ("none", "word", "seq", "seq+word")]
    run = tmp_path / "run"
    base = _distill_and_student_hashes(tree, run)
    assert set(base) == {"distill", "student rnn_none", "student rnn_word", "student rnn_seq",
                         "student rnn_seqword"}
    word = _distill_and_student_hashes(tree, run, alpha=0.9, temperature=2.0, top_k=4)
    assert {n for n in base if word[n] != base[n]} == {"student rnn_word", "student rnn_seqword"}
    beam = _distill_and_student_hashes(tree, run, beam=3)
    assert {n for n in base if beam[n] != base[n]} == {"distill", "student rnn_seq", "student rnn_seqword"}


def test_every_distill_key_is_hashed_by_what_it_changes():
    import dataclasses

    from nmt_kd.config import DistillConfig
    from nmt_kd.pipeline import CORPUS_KEYS, WORD_KEYS

    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    assert not set(CORPUS_KEYS) & set(WORD_KEYS)
    assert fields == set(CORPUS_KEYS) | set(WORD_KEYS) | {"engine"}


def test_a_stage_done_under_the_earlier_distill_hash_stays_done(pipeline_tree, tmp_path):
    """A run directory whose distill stage (and seq-KD student) were hashed with the whole
    distill section, as before the split, is not distilled or trained again."""
    import dataclasses

    from nmt_kd.fileio import read_json, write_json
    from nmt_kd.pipeline import _run_stage, build_stages, stage_hashes

    run = tmp_path / "run"
    _distill_and_student_hashes(pipeline_tree, run)  # the stand-in inputs
    stages = {s.name: s for s in build_stages(config_from_dict(pipeline_tree), run, quiet)}

    def must_not_run():
        raise AssertionError("a stage done under the earlier hash ran again")

    for name in ("distill", "student rnn_seq"):
        stage = dataclasses.replace(stages[name], run=must_not_run)
        new, old = stage_hashes(stage, run)
        assert new != old
        write_json(stage.out_dir / "done.json", {"stage": name, "hash": old, "finished": "earlier"})
        assert _run_stage(stage, run, (), False, quiet) is False
        assert read_json(stage.out_dir / "done.json")["hash"] == new  # recorded under the new hash


def test_student_average_last_reaches_training_and_old_hashes_stay(pipeline_tree, tmp_path, monkeypatch):
    """A student's `average_last` becomes its student_train.average_last; a student without it
    hashes its spec exactly as before the key existed (its run directory is not started over)."""
    import nmt_kd.train
    from nmt_kd.errors import ConfigError
    from nmt_kd.pipeline import build_stages

    seen = {}
    monkeypatch.setattr(nmt_kd.train, "train_model",
                        lambda cfg, run, arch, name, **kw: seen.setdefault(name, cfg.student_train.average_last))
    tree = copy.deepcopy(pipeline_tree)
    tree["student_train"]["average_last"] = 0
    tree["pipeline"]["students"] = [
        {"name": "tf_none", "arch": "student_rnn", "kd": "none", "average_last": 5},
        {"name": "rnn_none", "arch": "student_rnn", "kd": "none", "max_steps": 2}]
    stages = {s.name: s for s in build_stages(config_from_dict(tree), tmp_path / "run", quiet)}
    for name in ("student tf_none", "student rnn_none"):
        stages[name].run()
    assert seen == {"tf_none": 5, "rnn_none": 0}
    assert stages["student tf_none"].config["spec"]["average_last"] == 5
    assert stages["student rnn_none"].config["spec"] == {
        "name": "rnn_none", "arch": "student_rnn", "kd": "none", "max_steps": 2, "seeds": []}
    with pytest.raises(ConfigError, match="average_last must be >= 0"):
        tree["pipeline"]["students"][0]["average_last"] = -1
        config_from_dict(tree)


def test_student_train_keys_reach_only_that_student(pipeline_tree, tmp_path, monkeypatch):
    """A student's `train` keys (its own batch size, learning rate...) replace student_train's
    for that row only; its stage hash includes them; a bad combination is refused at load."""
    import nmt_kd.train
    from nmt_kd.errors import ConfigError
    from nmt_kd.pipeline import build_stages

    seen = {}
    monkeypatch.setattr(nmt_kd.train, "train_model",
                        lambda cfg, run, arch, name, **kw: seen.setdefault(name, cfg.student_train))
    tree = copy.deepcopy(pipeline_tree)
    base = dict(tree["student_train"])
    tree["pipeline"]["students"] = [
        {"name": "tf_tr", "arch": "student_rnn", "kd": "none", "seeds": [1],
         "train": {"max_tokens": 8192, "learning_rate": 0.005, "warmup_steps": 7}},
        {"name": "rnn_none", "arch": "student_rnn", "kd": "none"}]
    cfg = config_from_dict(tree)
    stages = {s.name: s for s in build_stages(cfg, tmp_path / "run", quiet)}
    for name in ("student tf_tr.seed1", "student rnn_none"):
        stages[name].run()
    tr, plain = seen["tf_tr.seed1"], seen["rnn_none"]
    assert (tr.max_tokens, tr.learning_rate, tr.warmup_steps, tr.seed) == (8192, 0.005, 7, 1)
    assert plain == cfg.student_train and tr.max_len == plain.max_len  # unset keys: the section's
    assert plain.max_tokens == base.get("max_tokens", plain.max_tokens) != 8192
    assert stages["student tf_tr.seed1"].config["spec"]["train"] == {
        "max_tokens": 8192, "learning_rate": 0.005, "warmup_steps": 7}
    assert "train" not in stages["student rnn_none"].config["spec"]  # old run directories keep their hash
    bad = copy.deepcopy(tree)
    bad["pipeline"]["students"][0]["train"] = {"max_tokens": 16}  # below student_train.max_len
    with pytest.raises(ConfigError, match="'tf_tr', its train keys: train.max_tokens"):
        config_from_dict(bad)
    bad["pipeline"]["students"][0]["train"] = {"learning_rate": -0.001}
    with pytest.raises(ConfigError, match="train.learning_rate must be >= 0"):
        config_from_dict(bad)
    bad["pipeline"]["students"][0]["train"] = {"max_token": 8192}
    with pytest.raises(ConfigError, match="unknown key 'max_token'"):
        config_from_dict(bad)


def test_a_missing_input_says_whether_the_config_or_an_earlier_stage_is_at_fault(tmp_path, monkeypatch):
    """A corpus path from the config that does not resolve (a relative path read from another
    working directory) is named as such, not blamed on an earlier stage."""
    from nmt_kd.pipeline import Stage, stage_hash

    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(tmp_path)
    corpus = Stage(name="prepare", group="prepare", out_dir=run / "data", config={},
                   inputs=[Path("../elsewhere/train.en")])
    with pytest.raises(UserError, match="a path from the config, read relative to the working "
                                        f"directory {re.escape(str(tmp_path))}"):
        stage_hash(corpus, run)
    # an absolute path is not read relative to anything, and the message does not say it is
    corpus.inputs = [tmp_path.parent / "elsewhere" / "train.en"]
    with pytest.raises(UserError, match=r"is missing: a path from the config$"):
        stage_hash(corpus, run)
    made = Stage(name="vocab", group="vocab", out_dir=run / "vocab", config={},
                 inputs=[run / "data" / "train.src"])
    with pytest.raises(UserError, match="an earlier stage did not complete"):
        stage_hash(made, run)
