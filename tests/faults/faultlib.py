"""Helpers of the fault-injection suite: run `nmt-kd pipeline` in a subprocess, watch its
output, SIGKILL it at a chosen moment, and check what a run directory holds afterwards."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# the stages of the suite's config, in pipeline order, and the directory each one writes
STAGE_DIRS = {
    "prepare": "data",
    "vocab": "vocab",
    "teacher": "teacher",
    "distill": "distill",
    "student rnn_seq": "rnn_seq",
    "student cnn_none": "cnn_none",
    "evaluate teacher": "eval/teacher",
    "evaluate rnn_seq": "eval/rnn_seq",
    "evaluate cnn_none": "eval/cnn_none",
    "report": "report",
}
ORDER = list(STAGE_DIRS)
MODELS = ("teacher", "rnn_seq", "cnn_none")
TRAINING = {"teacher": "teacher", "student rnn_seq": "rnn_seq", "student cnn_none": "cnn_none"}

HEADER = re.compile(r"^== ([^:]+)$")
SKIPPED = re.compile(r"^== ([^:]+): unchanged since .*, skipped$")
STEP_LINE = re.compile(r"^step (\d+) \|")
RESUMED = re.compile(r"^train (\S+): resumed from (\S+) at step (\d+)")
DISTILL_START = re.compile(r"^distill: (\d+) shards of <= \d+ lines; worker 0/1 has \d+, (\d+) already done")
CKPT_STATE = re.compile(r'^model_checkpoint_path: "(?:.*/)?ckpt-(\d+)"$', re.M)
# names that the package gives to files while they are being written (fileio.atomic_open,
# persistence.save_model_dir, tokenizer.train_tokenizer, tf.train.Checkpoint): never read by it
TEMP_NAME = re.compile(r"^\..+\.tmp$|^\.model\..+\.keras$|^\.spm\.|_temp(/|$)|\.tmp[0-9a-f]{32}$")


def group_of(stage: str) -> str:
    """The pipeline stage group (`pipeline.STAGES`) of a stage name such as 'student cnn_none'."""
    head = stage.split()[0]
    return {"student": "students"}.get(head, head)


def subprocess_env() -> dict[str, str]:
    return dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
                TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="-1")


def pipeline_command(config: Path) -> list[str]:
    """`nmt-kd pipeline` of the installed console script, on the relative run directory `run`
    (stage hashes name their input files by path: a relative one lets a run directory be
    copied and continued elsewhere)."""
    exe = Path(sys.executable).with_name("nmt-kd")
    prog = [str(exe)] if exe.is_file() else [sys.executable, "-m", "nmt_kd.cli"]
    return prog + ["pipeline", "--config", str(config), "--run-dir", "run"]


class PipelineProcess:
    """A subprocess whose merged stdout/stderr is read line by line, each with its arrival time."""

    def __init__(self, cmd: list[str], cwd: Path):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, after: int = 0) -> int | None:
        """Index of the first line (from `after` on) that satisfies `predicate`; None at EOF/timeout."""
        deadline = time.monotonic() + timeout
        i = after
        with self._cond:
            while True:
                while i < len(self.lines):
                    if predicate(self.lines[i][1]):
                        return i
                    i += 1
                if self._eof or time.monotonic() >= deadline:
                    return None
                self._cond.wait(timeout=min(1.0, max(deadline - time.monotonic(), 0.01)))

    def kill(self) -> bool:
        """SIGKILL the process group; False if the command had already exited."""
        if self.proc.poll() is not None:
            return False
        os.killpg(self.proc.pid, signal.SIGKILL)
        return True

    def finish(self, timeout: float) -> int:
        """Wait for the exit and the last output line; returns the exit status."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = None
        self._reader.join(timeout=30)
        return -999 if rc is None else rc

    @property
    def text(self) -> list[str]:
        return [line for _, line in self.lines]


def headers(lines: list[str]) -> list[str]:
    """The stages a run started (in order), without the skipped ones."""
    return [m.group(1) for line in lines if (m := HEADER.match(line))]


def checkpoint_step(model_dir: Path) -> int:
    """The step of the newest complete checkpoint (0: none), read from the CheckpointManager's
    state file, which is only rewritten (atomically) once a checkpoint is complete."""
    state = model_dir / "checkpoints" / "checkpoint"
    if not state.is_file():
        return 0
    m = CKPT_STATE.search(state.read_text(encoding="utf-8"))
    return int(m.group(1)) if m else 0


def shard_count(run: Path) -> int:
    return len(list((run / "distill" / "shards").glob("shard-*.jsonl")))


def copy_finished_stages(run: Path, dst: Path, before: str) -> None:
    """Copy into `dst` the output directories of every stage that precedes `before`."""
    dst.mkdir(parents=True, exist_ok=True)
    for stage in ORDER[: ORDER.index(before)]:
        src = run / STAGE_DIRS[stage]
        if src.is_dir():
            shutil.copytree(src, dst / STAGE_DIRS[stage])


def temp_leftovers(run: Path) -> list[str]:
    """Files and directories under `run` that carry a name for something being written."""
    out = []
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run).as_posix()
        if TEMP_NAME.search(p.name) or TEMP_NAME.search(rel + ("/" if p.is_dir() else "")):
            if not any(rel.startswith(o + "/") for o in out):
                out.append(rel)
    return out


def _read_lines(path: Path) -> list[str]:
    from nmt_kd.fileio import read_lines

    return read_lines(path)


def _png_complete(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and data[-12:-4] == b"\x00\x00\x00\x00IEND"


@dataclass
class RunChecker:
    """Checks a run directory that a pipeline command reported complete.

    `beams`/`batch_sizes` are the eval config, `shard_size` the distill config's; `max_steps`
    maps model name -> steps the training config asks for. Loaded model files are remembered
    by content hash.
    """

    beams: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    shard_size: int
    max_steps: dict[str, int]
    loaded: set[str] = field(default_factory=set)

    def check(self, run: Path) -> list[str]:
        """Everything wrong with `run` (an empty list when it is complete and consistent)."""
        problems: list[str] = []
        for check in (self._stages, self._json_files, self._data, self._vocab, self._distill,
                      self._models, self._eval, self._report):
            try:
                check(run, problems)
            except Exception as e:  # a check that cannot even read a file is a finding too
                problems.append(f"{check.__name__}: {type(e).__name__}: {e}")
        return problems

    def _stages(self, run: Path, problems: list[str]) -> None:
        for stage, d in STAGE_DIRS.items():
            done = run / d / "done.json"
            if not done.is_file():
                problems.append(f"stage {stage}: no {done.relative_to(run)}")
            elif json.loads(done.read_text(encoding="utf-8")).get("stage") != stage:
                problems.append(f"stage {stage}: {done.relative_to(run)} names another stage")

    def _json_files(self, run: Path, problems: list[str]) -> None:
        for p in run.rglob("*.json*"):
            rel = p.relative_to(run).as_posix()
            if TEMP_NAME.search(p.name) or not p.is_file():
                continue
            text = p.read_text(encoding="utf-8")
            try:
                if p.suffix == ".jsonl":
                    for line in text.splitlines():
                        json.loads(line)
                    if text and not text.endswith("\n"):
                        problems.append(f"{rel}: last record has no newline")
                else:
                    json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(f"{rel}: not valid JSON ({e.msg})")

    def _data(self, run: Path, problems: list[str]) -> None:
        from nmt_kd.fileio import sha256_file

        manifest = json.loads((run / "data" / "manifest.json").read_text(encoding="utf-8"))
        for split, n in manifest["counts"].items():
            for side in ("src", "tgt"):
                p = run / "data" / f"{split}.{side}"
                if len(_read_lines(p)) != n:
                    problems.append(f"data/{split}.{side}: {len(_read_lines(p))} lines, manifest says {n}")
                if sha256_file(p) != manifest["hashes"][f"{split}.{side}"]:
                    problems.append(f"data/{split}.{side}: content differs from the manifest's hash")

    def _vocab(self, run: Path, problems: list[str]) -> None:
        import sentencepiece as spm

        for d in ("vocab", *MODELS):
            sp = spm.SentencePieceProcessor(model_file=str(run / d / "spm.model"))
            if sp.get_piece_size() < 8:
                problems.append(f"{d}/spm.model: only {sp.get_piece_size()} pieces")

    def _distill(self, run: Path, problems: list[str]) -> None:
        """One distilled pair per source line with a non-empty teacher translation, in order."""
        from nmt_kd.distill import read_shard, shard_path, shard_ranges

        src = _read_lines(run / "data" / "train.src")
        out_src = _read_lines(run / "distill" / "train.src")
        out_tgt = _read_lines(run / "distill" / "train.tgt")
        if len(out_src) != len(out_tgt):
            problems.append(f"distill: train.src has {len(out_src)} lines, train.tgt {len(out_tgt)}")
        manifest = json.loads((run / "distill" / "manifest.json").read_text(encoding="utf-8"))
        records = []
        for i, (a, b) in enumerate(shard_ranges(len(src), self.shard_size)):
            records += read_shard(shard_path(run, i), a, b)  # checks: one record per line, in order
        kept = [r for r in records if r["hyp"].strip()]
        if out_src != [src[r["i"]] for r in kept]:
            problems.append("distill/train.src is not data/train.src less the empty translations, in order")
        if out_tgt != [r["hyp"] for r in kept]:
            problems.append("distill/train.tgt is not the shards' translations, in order")
        if manifest["lines"] != len(out_src) or manifest["source_lines"] != len(src) \
                or len(kept) + manifest["dropped_empty_hypothesis"] != len(src):
            problems.append(f"distill/manifest.json does not match the files: {manifest}")

    def _models(self, run: Path, problems: list[str]) -> None:
        from nmt_kd.fileio import sha256_file
        from nmt_kd.models.persistence import load_model_dir

        for name in MODELS:
            d = run / name
            digest = sha256_file(d / "model.keras")
            if digest not in self.loaded:
                try:
                    with zipfile.ZipFile(d / "model.keras") as z:
                        bad = z.testzip()
                    if bad is not None:
                        raise ValueError(f"corrupt member {bad}")
                    load_model_dir(d)  # raises UserError on a file Keras cannot load
                except Exception as e:
                    problems.append(f"{name}/model.keras does not load: {type(e).__name__}: {e}")
                    continue
                self.loaded.add(digest)
            meta = json.loads((d / "model.json").read_text(encoding="utf-8"))
            if meta.get("steps") != self.max_steps[name]:
                problems.append(f"{name}/model.json: trained {meta.get('steps')} steps, "
                                f"config asks {self.max_steps[name]}")
            if meta.get("tokenizer_sha256") != sha256_file(d / "spm.model"):
                problems.append(f"{name}: model.json's tokenizer hash does not match spm.model")
            step = checkpoint_step(d)
            for suffix in (".index", ".data-00000-of-00001"):
                if not (d / "checkpoints" / f"ckpt-{step}{suffix}").is_file():
                    problems.append(f"{name}: newest checkpoint ckpt-{step} has no {suffix} file")

    def _eval(self, run: Path, problems: list[str]) -> None:
        n_test = len(_read_lines(run / "data" / "test.src"))
        for name in MODELS:
            for beam in self.beams:
                for bs in self.batch_sizes:
                    p = run / "eval" / name / f"beam{beam}.bs{bs}.json"
                    m = json.loads(p.read_text(encoding="utf-8"))
                    if (m["n_sentences"], m["beam"], m["batch_size"]) != (n_test, beam, bs):
                        problems.append(f"{p.relative_to(run)}: wrong header {m['n_sentences'], m['beam'], m['batch_size']}")
                    hyps = _read_lines(p.with_suffix(".hyp.txt"))
                    if len(hyps) != n_test:
                        problems.append(f"{p.relative_to(run)}: {len(hyps)} hypotheses for {n_test} lines")

    def _report(self, run: Path, problems: list[str]) -> None:
        out = run / "report"
        rows = [r for r in json.loads((out / "metrics.json").read_text(encoding="utf-8"))["evaluations"]
                if r["split"] == "test"]
        want = {(n, b, s) for n in MODELS for b in self.beams for s in self.batch_sizes}
        got = {(r["name"], r["beam"], r["batch_size"]) for r in rows}
        if got != want or len(rows) != len(want):
            problems.append(f"report/metrics.json: rows {sorted(got)}, expected {sorted(want)}")
        md = (out / "report.md").read_text(encoding="utf-8")
        if not md.endswith("\n") or any(f"| {n} |" not in md for n in MODELS):
            problems.append("report/report.md is incomplete")
        if not (out / "report.html").read_text(encoding="utf-8").rstrip().endswith("</html>"):
            problems.append("report/report.html is incomplete")
        pngs = sorted(out.glob("*.png"))
        if not pngs:
            problems.append("report: no plots")
        problems.extend(f"report/{p.name}: truncated PNG" for p in pngs if not _png_complete(p))
