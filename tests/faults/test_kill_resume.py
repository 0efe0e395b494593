"""Fault injection: SIGKILL `nmt-kd pipeline` at seeded points in every stage, re-run it, and
check that every re-run completes from where the killed one stopped, with no half-written,
misaligned or duplicated output.

Run with `python -m pytest -m faults tests/faults` (about 10 minutes on two cores). The
summary (every kill point: its target, delay, the stage the kill landed in, the outcome) goes
to $NMT_KD_FAULTS_REPORT, or to faults_report.json under pytest's tmp_path.

How the points are chosen: kill point 0 lands right after the `== prepare` header; its re-run
is the reference run, whose output lines (with arrival times) give each stage's duration and
whose finished stages are copied as it goes, so a point aimed at a later stage starts from a
copy that has the earlier stages done. Every other point waits for an anchor line of its
target stage (the stage header, the first training progress line, or the first finished
distillation shard) and kills the command after a delay: a seeded random fraction of the time
the reference run spent from that anchor to the end of the stage.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import statistics
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_OVERRIDES, toy_pairs, write_pair_files
from faultlib import (
    DISTILL_START,
    HEADER,
    MODELS,
    ORDER,
    RESUMED,
    SKIPPED,
    STAGE_DIRS,
    STEP_LINE,
    TRAINING,
    PipelineProcess,
    RunChecker,
    checkpoint_step,
    copy_finished_stages,
    group_of,
    headers,
    pipeline_command,
    shard_count,
    temp_leftovers,
)

from nmt_kd.fileio import read_lines, sha256_file, write_json
from nmt_kd.pipeline import STAGES

SEED = 8
# (target stage, anchor, number of points); point 0 (prepare, no delay) comes first
PLAN = [
    ("prepare", "header", 1),
    ("vocab", "header", 2),
    ("teacher", "header", 1),
    ("teacher", "step", 2),
    ("distill", "header", 2),
    ("distill", "shard", 1),
    ("student rnn_seq", "header", 1),
    ("student rnn_seq", "step", 2),
    ("student cnn_none", "header", 1),
    ("student cnn_none", "step", 1),
    ("evaluate teacher", "header", 2),
    ("evaluate rnn_seq", "header", 2),
    ("evaluate cnn_none", "header", 2),
    ("report", "header", 3),
]
STEP_ANCHOR = 20
ANCHORS = {
    "header": lambda stage: lambda line: line == f"== {stage}",
    "shard": lambda stage: lambda line: line.startswith("distill: shard 0 ("),
}
# A kill lands at a fraction of the time the reference run spent between the anchor and the
# end of the stage. A step point is placed by progress instead: it waits for a step line drawn
# from the reference's (from STEP_ANCHOR to two log intervals before the last one) and lands a
# fraction (<= 0.5) of one log interval after it. Timed from the step anchor alone, a re-run
# that outpaced the reference finished a tiny student's stage first and the kill landed in
# the next stage (seen in CI at fraction 0.86, and at 0.4 beside a training job); now a re-run
# would have to run a log interval 4x faster than the reference to miss.
FRACTIONS = {"header": (0.02, 0.85), "step": (0.05, 0.5), "shard": (0.1, 0.85)}
TIMEOUT = 900  # seconds for one command; a tiny pipeline takes about a minute


def suite_config(base: Path) -> tuple[Path, dict]:
    """The shared tiny corpus and config. The raw corpus is large and sampled down so that
    the prepare stage lasts long enough to be killed inside."""
    src, tgt = write_pair_files(base / "raw", toy_pairs(40000, seed=3))
    tree = copy.deepcopy(TINY_OVERRIDES)
    tree["data"] = {"source": "files", "train_src": str(src), "train_tgt": str(tgt),
                    "valid_size": 30, "test_size": 30, "max_train_pairs": 400}
    tree["train"].update(max_steps=150, eval_every=0, checkpoint_every=10, log_every=10)
    tree["student_train"].update(max_steps=40, eval_every=0, max_len=40, checkpoint_every=5,
                                 log_every=5)
    tree["distill"] = {"shard_size": 50, "beam": 2}
    tree["eval"] = {"beams": [1], "batch_sizes": [8], "speed_sentences": 5,
                    "bootstrap_resamples": 100}
    tree["pipeline"] = {"name": "faults", "run_dir": "run", "students": [
        {"name": "rnn_seq", "arch": "student_rnn", "kd": "seq"},
        {"name": "cnn_none", "arch": "student_cnn", "kd": "none"}]}
    path = base / "faults.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path, tree


def run_to_completion(cmd: list[str], cwd: Path, on_header=None) -> tuple[int, PipelineProcess]:
    """Run the command (no kill); `on_header(stage)` is called as each stage header arrives."""
    proc = PipelineProcess(cmd, cwd)
    i = 0
    while on_header is not None:
        i = proc.wait_for(lambda line: bool(HEADER.match(line)), TIMEOUT, after=i)
        if i is None:
            break
        on_header(HEADER.match(proc.lines[i][1]).group(1))
        i += 1
    return proc.finish(TIMEOUT), proc


def kill_and_rerun(point: dict, cmd: list[str], pdir: Path, anchor) -> tuple[dict, list[str]]:
    """Start the command, SIGKILL it `point['delay_s']` after the anchor line, record the
    state at the kill, re-run it to completion. Returns (state at the kill, the re-run's
    output); a command that never prints the anchor line is an AssertionError."""
    run = pdir / "run"
    proc = PipelineProcess(cmd, pdir)
    i = proc.wait_for(lambda line: line == f"== {point['target']}", TIMEOUT)
    if i is not None and point["anchor"] != "header":
        i = proc.wait_for(anchor, TIMEOUT, after=i + 1)
    if i is None:
        rc = proc.finish(60)
        raise AssertionError(f"no {point['anchor']} anchor for {point['target']} (exit {rc}): "
                             + "\n".join(proc.text[-15:]))
    time.sleep(max(0.0, proc.lines[i][0] + point["delay_s"] - time.monotonic()))
    killed = proc.kill()
    rc = proc.finish(60)
    started = headers(proc.text)
    state = {
        "killed": killed and rc == -9,
        "exit_status": rc,
        "stage": started[-1] if started else None,
        "done_at_kill": [s for s in ORDER if (run / STAGE_DIRS[s] / "done.json").is_file()],
        "checkpoint_at_kill": {TRAINING[s]: checkpoint_step(run / TRAINING[s]) for s in TRAINING},
        "shards_at_kill": shard_count(run),
    }
    state["inside_stage"] = state["stage"] not in state["done_at_kill"]
    if not state["killed"]:
        return state, []
    rc2, rerun = run_to_completion(cmd, pdir)
    state["rerun_exit_status"] = rc2
    state["rerun_seconds"] = round(rerun.lines[-1][0] - rerun.t0, 1) if rerun.lines else None
    return state, rerun.text


def resume_problems(state: dict, rerun: list[str]) -> list[str]:
    """What the re-run did against what the killed run left: finished stages skipped, the
    rest run, training resumed from the newest checkpoint, finished distillation shards kept."""
    problems = []
    if state["rerun_exit_status"] != 0:
        problems.append(f"re-run exited with {state['rerun_exit_status']}: " + " | ".join(rerun[-8:]))
    if any("Traceback" in line for line in rerun):
        problems.append("re-run printed a traceback")
    skipped = {m.group(1) for line in rerun if (m := SKIPPED.match(line))}
    ran = set(headers(rerun))
    for stage in ORDER:
        if stage in state["done_at_kill"] and stage not in skipped:
            problems.append(f"{stage} was finished before the kill but the re-run did not skip it")
        if stage not in state["done_at_kill"] and stage not in ran:
            problems.append(f"{stage} was not finished before the kill but the re-run did not run it")
    resumed = {m.group(1): int(m.group(3)) for line in rerun if (m := RESUMED.match(line))}
    for stage, name in TRAINING.items():
        if stage in state["done_at_kill"]:
            continue
        at_kill = state["checkpoint_at_kill"][name]
        if at_kill and resumed.get(name) != at_kill:
            problems.append(f"{name}: a checkpoint of step {at_kill} existed at the kill, but the "
                            f"re-run resumed at {resumed.get(name, 'step 0 (not at all)')}")
        if not at_kill and name in resumed:
            problems.append(f"{name}: no checkpoint at the kill, yet resumed at step {resumed[name]}")
    if "distill" not in state["done_at_kill"]:
        starts = [m for line in rerun if (m := DISTILL_START.match(line))]
        if not starts or int(starts[0].group(2)) != state["shards_at_kill"]:
            problems.append(f"distill: {state['shards_at_kill']} shards were written before the "
                            f"kill; the re-run reported {starts[0].group(0) if starts else 'nothing'}")
    return problems


def same_as_reference(target: str, run: Path, ref: Path, beams, batch_sizes) -> list[str]:
    """Outputs that do not depend on a (resumed) training run must equal the reference's."""
    problems = []
    idx = ORDER.index(target)
    if idx <= ORDER.index("prepare"):
        for split in ("train", "valid", "test"):
            for side in ("src", "tgt"):
                f = f"data/{split}.{side}"
                if sha256_file(run / f) != sha256_file(ref / f):
                    problems.append(f"{f} differs from the reference run's")
    # (not spm.model's bytes: SentencePiece records the temporary path it was trained in)
    if idx <= ORDER.index("vocab") and read_lines(run / "vocab/spm.vocab") != read_lines(ref / "vocab/spm.vocab"):
        problems.append("vocab/spm.vocab differs from the reference run's")
    if idx == ORDER.index("distill"):  # the teacher is the reference's: same translations
        for f in ("distill/train.src", "distill/train.tgt"):
            if read_lines(run / f) != read_lines(ref / f):
                problems.append(f"{f} differs from the uninterrupted reference run's")
    if idx >= ORDER.index("evaluate teacher"):  # all models are the reference's
        for name in MODELS:
            for beam in beams:
                for bs in batch_sizes:
                    f = f"eval/{name}/beam{beam}.bs{bs}"
                    if read_lines(run / f"{f}.hyp.txt") != read_lines(ref / f"{f}.hyp.txt"):
                        problems.append(f"{f}.hyp.txt differs from the reference run's")
                    got, want = (json.loads((r / f"{f}.json").read_text())["bleu"] for r in (run, ref))
                    if got != want:
                        problems.append(f"{f}.json: BLEU {got}, the reference run's {want}")
    return problems


def make_checker(tree: dict) -> RunChecker:
    return RunChecker(tuple(tree["eval"]["beams"]), tuple(tree["eval"]["batch_sizes"]),
                      tree["distill"]["shard_size"], {
        "teacher": tree["train"]["max_steps"], "rnn_seq": tree["student_train"]["max_steps"],
        "cnn_none": tree["student_train"]["max_steps"]})


def evaluate_point(point: dict, pdir: Path, state: dict, rerun: list[str], checker: RunChecker,
                   ref: Path | None) -> None:
    """Fill in the point's outcome from the state at the kill and the re-run's output and
    run directory; a survived point's directory is removed."""
    point.update(state)
    point["stage_group"] = group_of(state["stage"]) if state["stage"] else None
    if not state["killed"]:
        point.update(outcome="missed", problems=["the command finished before the kill"])
        return
    problems = resume_problems(state, rerun)
    run = pdir / "run"
    if state["rerun_exit_status"] == 0:
        problems += checker.check(run)
        if ref is not None:
            problems += same_as_reference(point["target"], run, ref, checker.beams, checker.batch_sizes)
    point["leftover_temp_files"] = temp_leftovers(run)
    point["resumed_at_step"] = {m.group(1): int(m.group(3)) for line in rerun if (m := RESUMED.match(line))}
    point.update(outcome="survived" if not problems else "failed", problems=problems)
    if not problems:
        shutil.rmtree(pdir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Kill point 0 (SIGKILL as soon as `== prepare` appears) and its re-run, which is the
    reference run: its line times and its finished stages (copied as each stage starts)
    place the other points."""
    base = tmp_path_factory.mktemp("faults")
    config, tree = suite_config(base)
    cmd = pipeline_command(config)
    pdir, snapshots = base / "p00", base / "snapshots"
    pdir.mkdir()
    t0 = time.monotonic()
    proc = PipelineProcess(cmd, pdir)
    assert proc.wait_for(lambda line: line == "== prepare", TIMEOUT) is not None, proc.text[-15:]
    killed = proc.kill()
    rc = proc.finish(60)
    run = pdir / "run"
    state = {"killed": killed and rc == -9, "exit_status": rc, "stage": headers(proc.text)[-1],
             "done_at_kill": [s for s in ORDER if (run / STAGE_DIRS[s] / "done.json").is_file()],
             "checkpoint_at_kill": {n: checkpoint_step(run / n) for n in TRAINING.values()},
             "shards_at_kill": shard_count(run)}
    state["inside_stage"] = state["stage"] not in state["done_at_kill"]
    assert state["killed"], f"exit {rc}: {proc.text[-10:]}"
    rc, ref = run_to_completion(cmd, pdir, on_header=lambda stage: copy_finished_stages(
        run, snapshots / stage / "run", stage))
    assert rc == 0, "\n".join(ref.text[-30:])
    state.update(rerun_exit_status=rc, rerun_seconds=round(ref.lines[-1][0] - ref.t0, 1))
    kept = base / "reference_run"
    shutil.copytree(run, kept)
    point = {"index": 0, "target": "prepare", "anchor": "header", "fraction": 0.0, "delay_s": 0.0}
    evaluate_point(point, pdir, state, ref.text, make_checker(tree), None)
    return {"base": base, "tree": tree, "cmd": cmd, "run": kept, "snapshots": snapshots,
            "lines": ref.lines, "point0": point, "t0": t0}


def _summary_path(tmp_path: Path) -> Path:
    return Path(os.environ.get("NMT_KD_FAULTS_REPORT") or tmp_path / "faults_report.json")


def plan_points(lines: list[tuple[float, str]]) -> list[dict]:
    """The seeded kill points after point 0, with delays scaled to the reference run."""
    start = {m.group(1): k for k, (_, line) in enumerate(lines) if (m := HEADER.match(line))}
    assert list(start) == ORDER, f"reference run stages: {list(start)}"
    ends = {s: lines[start[n]][0] for s, n in zip(ORDER, ORDER[1:], strict=False)}
    ends[ORDER[-1]] = lines[-1][0]
    rng = random.Random(SEED)
    points = []
    for target, anchor, count in PLAN:
        k = start[target]
        if anchor == "step":
            for _ in range(count):
                points.append({"index": len(points) + 1, "target": target, "anchor": anchor,
                               **_step_point(lines, k, ends[target], rng)})
            continue
        if anchor != "header":
            k = next(j for j in range(k + 1, len(lines)) if ANCHORS[anchor](target)(lines[j][1]))
        window = ends[target] - lines[k][0]
        for _ in range(count):
            fraction = round(rng.uniform(*FRACTIONS[anchor]), 3)
            points.append({"index": len(points) + 1, "target": target, "anchor": anchor,
                           "fraction": fraction, "delay_s": round(fraction * window, 3)})
    return points


def _step_point(lines: list[tuple[float, str]], k: int, end: float, rng: random.Random) -> dict:
    """A step point's step line (`at_step`) and its delay after it, from the reference's step
    lines of the stage whose header is line k (see FRACTIONS)."""
    steps = [(t, int(m.group(1))) for t, line in lines[k + 1:] if t <= end and (m := STEP_LINE.match(line))]
    every = steps[1][1] - steps[0][1]
    gap = statistics.median(b[0] - a[0] for a, b in zip(steps, steps[1:], strict=False))
    eligible = [step for _, step in steps if STEP_ANCHOR <= step <= steps[-1][1] - 2 * every]
    assert eligible, f"the reference logged no step line from {STEP_ANCHOR} on: {steps}"
    fraction = round(rng.uniform(*FRACTIONS["step"]), 3)
    return {"at_step": rng.choice(eligible), "fraction": fraction, "delay_s": round(fraction * gap, 3)}


def anchor_of(point: dict):
    """The line a point's delay counts from. A step point's is a step line at or after
    STEP_ANCHOR: both runs checkpoint at least every 10 steps (and save before they log
    further), so a kill after it always finds a checkpoint to resume from."""
    if point["anchor"] == "step":
        return lambda line: bool((m := STEP_LINE.match(line)) and int(m.group(1)) >= point["at_step"])
    return ANCHORS[point["anchor"]](point["target"])


@pytest.mark.faults
def test_sigkill_anywhere_then_rerun_completes_and_resumes(reference, tmp_path):
    """Every planned kill lands, and every re-run completes, resumes and leaves whole files."""
    tree, cmd, base = reference["tree"], reference["cmd"], reference["base"]
    checker = make_checker(tree)
    points = [reference["point0"]]
    for point in plan_points(reference["lines"]):
        pdir = base / f"p{point['index']:02d}"
        shutil.copytree(reference["snapshots"] / point["target"], pdir)
        try:
            state, rerun = kill_and_rerun(point, cmd, pdir, anchor_of(point))
            evaluate_point(point, pdir, state, rerun, checker, reference["run"])
        except Exception as e:  # recorded with the point; the summary is still written
            point.update(outcome="failed", problems=[f"{type(e).__name__}: {e}"])
        points.append(point)

    tried = [p for p in points if p["outcome"] != "missed"]
    survived = [p for p in tried if p["outcome"] == "survived"]
    per_stage = {g: {"tried": 0, "survived": 0, "inside_stage": 0} for g in STAGES}
    for p in tried:
        g = per_stage[p.get("stage_group") or p["target"]]
        g["tried"] += 1
        g["survived"] += p["outcome"] == "survived"
        g["inside_stage"] += bool(p.get("inside_stage"))
    summary = {"seed": SEED, "tried": len(tried), "survived": len(survived),
               "missed": len(points) - len(tried), "per_stage": per_stage,
               "wall_seconds": round(time.monotonic() - reference["t0"], 1), "points": points}
    out = _summary_path(tmp_path)
    write_json(out, summary)
    print(f"\nfault-injection summary in {out}:\n" + json.dumps(
        {k: summary[k] for k in ("tried", "survived", "missed", "per_stage", "wall_seconds")}))

    failed = [f"point {p['index']} ({p['target']}, {p['anchor']} +{p['delay_s']}s, landed in "
              f"{p.get('stage')}): " + "; ".join(p["problems"]) for p in tried if p["outcome"] != "survived"]
    assert len(tried) >= 20, f"only {len(tried)} kills landed: {summary}"
    assert len(survived) == len(tried), "\n".join(failed)
    # every stage group had a kill land while it was running, not only between two stages
    assert all(g["inside_stage"] >= 1 for g in per_stage.values()), per_stage
    # each training stage was killed after a checkpoint existed, and resumed from it
    at_ckpt = [p for p in tried if p["inside_stage"] and p["stage"] in TRAINING
               and p["checkpoint_at_kill"][TRAINING[p["stage"]]] > 0]
    assert {p["stage"] for p in at_ckpt} == set(TRAINING), [(p["index"], p["stage"]) for p in tried]
    assert all(p["resumed_at_step"][TRAINING[p["stage"]]] == p["checkpoint_at_kill"][TRAINING[p["stage"]]]
               for p in at_ckpt)
    # distillation was killed with finished shards, which the re-run kept
    assert any(p["inside_stage"] and p["stage"] == "distill" and p["shards_at_kill"] > 0 for p in tried)


@pytest.mark.faults
def test_run_checker_catches_damaged_outputs(reference, tmp_path):
    """The checks of every re-run can fail: damage a complete run the ways a kill could."""
    run = tmp_path / "run"
    shutil.copytree(reference["run"], run)
    checker = make_checker(reference["tree"])
    assert checker.check(run) == []
    tgt = run / "distill/train.tgt"
    tgt.write_text("".join(line + "\n" for line in read_lines(tgt)[:-1]), encoding="utf-8")
    m = run / "eval/teacher/beam1.bs8.json"
    m.write_bytes(m.read_bytes()[: len(m.read_bytes()) // 2])
    k = run / "cnn_none/model.keras"
    k.write_bytes(k.read_bytes()[:-100])
    (run / "report/done.json").unlink()
    shard = sorted((run / "distill/shards").glob("shard-*.jsonl"))[1]
    shard.write_text("".join(shard.read_text().splitlines(keepends=True)[1:]), encoding="utf-8")
    problems = "\n".join(checker.check(run))
    for needle in ("distill: train.src has", "eval/teacher/beam1.bs8.json: not valid JSON",
                   "cnn_none/model.keras does not load", "stage report: no report/done.json",
                   "shard-00001.jsonl holds"):
        assert re.search(re.escape(needle), problems), (needle, problems)


@pytest.mark.faults
def test_resume_checks_catch_a_rerun_that_starts_over(tmp_path):
    """The re-run checks can fail: a re-run that redoes finished work is reported."""
    state = {"rerun_exit_status": 0, "done_at_kill": ["prepare", "vocab"], "shards_at_kill": 0,
             "checkpoint_at_kill": {"teacher": 20, "rnn_seq": 0, "cnn_none": 0}}
    good = ["== prepare: unchanged since 2026-01-01T00:00:00, skipped",
            "== vocab: unchanged since 2026-01-01T00:00:00, skipped", "== teacher",
            "train teacher: resumed from run/teacher/checkpoints/ckpt-20 at step 20, epoch 2, batch 3",
            "== distill", "distill: 8 shards of <= 50 lines; worker 0/1 has 8, 0 already done",
            *(f"== {s}" for s in ORDER[4:])]
    assert resume_problems(state, good) == []
    variants = {
        "teacher: a checkpoint of step 20": [x for x in good if "resumed" not in x],
        "vocab was finished before the kill": [x.replace(": unchanged since 2026-01-01T00:00:00, skipped", "")
                                               if x.startswith("== vocab") else x for x in good],
        "report was not finished": good[:-1],
        "the re-run reported distill: 8 shards": [x.replace("0 already", "2 already") for x in good],
    }
    for needle, lines in variants.items():
        assert any(needle in p for p in resume_problems(state, lines)), needle
    assert resume_problems(dict(state, rerun_exit_status=1), good)[0].startswith("re-run exited with 1")
    # a checkpoint counts once the CheckpointManager's state file names it
    ckpt = tmp_path / "teacher" / "checkpoints"
    ckpt.mkdir(parents=True)
    assert checkpoint_step(tmp_path / "teacher") == 0
    (ckpt / "checkpoint").write_text('model_checkpoint_path: "ckpt-30"\nall_model_checkpoint_paths: "ckpt-20"\n'
                                     'all_model_checkpoint_paths: "ckpt-30"\n')
    assert checkpoint_step(tmp_path / "teacher") == 30
