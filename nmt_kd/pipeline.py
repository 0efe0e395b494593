"""One experiment from one YAML file: prepare -> vocab -> teacher -> distill -> students
-> evaluate -> report, each stage reading and writing only files in the run directory.

Each stage records in its `done.json` a hash of the config sections it depends on and of the
files it reads. A stage whose hash is unchanged is skipped with a one-line message, so a
killed or finished pipeline re-run does only what is left. A training stage that was killed
resumes from its last checkpoint when its hash is the one it started with (`started.json`);
when its config or inputs changed, its old output is removed and it starts over. A training
stage whose only change is a larger budget (`BUDGET_KEYS`), finished or not, continues from its
last checkpoint instead: the learning-rate schedule does not depend on the budget, so the run
goes on as if it had been given that budget from the start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nmt_kd.config import ENSEMBLE_NAME as ENSEMBLE  # RUN/teacher_ensemble
from nmt_kd.config import (
    Config,
    config_to_dict,
    expand_path,
    kd_teacher_dir,
    save_config,
)
from nmt_kd.errors import UserError
from nmt_kd.fileio import read_json, read_lines, sha256_file, write_json
from nmt_kd.training.objectives import KD_MODES

STAGES = ("prepare", "vocab", "teacher", "distill", "students", "evaluate", "report")


@dataclass
class Stage:
    name: str  # unique, e.g. "student rnn_seq"
    group: str  # one of STAGES, for --until and --force
    out_dir: Path
    config: dict  # the config values this stage depends on
    inputs: list[Path] = field(default_factory=list)  # files it reads (made by earlier stages)
    run: Callable[[], None] = lambda: None
    resumable: bool = False  # keeps its partial output when killed (training, distillation)
    # files that exist only once the stage has finished (written last, atomically); lets
    # `--adopt` take over output made by the step-by-step commands
    products: list[Path] = field(default_factory=list)
    # the config this stage was hashed with by an earlier version of nmt-kd, where it differs:
    # a run directory made then is still taken as done (or resumed), not started over
    legacy_config: dict | None = None
    # files that must exist before it runs (made by earlier stages) though its output does not
    # depend on their bytes: they order the lanes, they are not hashed
    after: list[Path] = field(default_factory=list)
    # a training stage's effective budget ({key: value} for BUDGET_KEYS); raising it continues
    # the stage's run instead of starting it over (None: not a training stage)
    budget: dict | None = None


# The keys of a training section that only say how long to train: raising any of them, and
# changing nothing else, continues a run (0 is "no limit", the largest value).
BUDGET_KEYS = ("max_steps", "max_epochs", "max_minutes", "patience")


def _hash_inputs(paths: list[Path], run: Path | None = None) -> dict[str, str]:
    """{name: sha256} of a stage's input files; files inside the run directory are named
    relative to it, so a run directory moved or spelt differently keeps its hashes."""
    out = {}
    root = run.resolve() if run is not None else None
    for p in paths:
        inside = root is not None and p.resolve().is_relative_to(root)
        if not p.is_file():
            if root is not None and not inside:
                # a file the config names (a corpus, a teacher bundle), not one a stage makes
                where = "" if p.is_absolute() else f", read relative to the working directory {Path.cwd()}"
                raise UserError(f"stage input {p} is missing: a path from the config{where}")
            raise UserError(f"stage input {p} is missing; an earlier stage did not complete")
        out[str(p.resolve().relative_to(root)) if inside else str(p)] = sha256_file(p)
    return out


def stage_hash(stage: Stage, run: Path | None = None) -> str:
    return stage_hashes(stage, run)[0]


def stage_hashes(stage: Stage, run: Path | None = None, inputs: dict | None = None) -> list[str]:
    """The stage's hash, then its hash as an earlier version computed it (if it differs)."""
    inputs = _hash_inputs(stage.inputs, run) if inputs is None else inputs
    configs = [stage.config] + ([stage.legacy_config] if stage.legacy_config is not None else [])
    return [_digest(c, inputs) for c in configs]


def _digest(config: dict, inputs: dict) -> str:
    return hashlib.sha256(json.dumps({"config": config, "inputs": inputs}, sort_keys=True).encode()
                          ).hexdigest()[:20]


def _without_budget(value, inside: bool = False):
    """The config with the budget keys of its `train` and `spec` sections left out."""
    if not isinstance(value, dict):
        return value
    return {k: _without_budget(v, inside or k in ("train", "spec")) for k, v in value.items()
            if not (inside and k in BUDGET_KEYS)}


def _raised_budget(stage: Stage, before: dict, now: dict) -> dict[str, tuple] | None:
    """{key: (old, new)} of the budget keys a training stage's config raised since its run
    began (or finished), when that is its only change and the run's checkpoints are there to
    continue from; else None (0 is no limit, the largest value)."""
    old, new = before.get("budget", {}), now.get("budget", {})
    if not (stage.resumable and "core" in now and before.get("core") == now["core"]
            and set(old) == set(new) == set(BUDGET_KEYS) and (stage.out_dir / "checkpoints").is_dir()):
        return None
    raised = {k: (old[k], new[k]) for k in BUDGET_KEYS if old[k] != new[k]}
    if any(not (b == 0 or (a != 0 and b > a)) for a, b in raised.values()):
        return None
    return raised


def _describe_budget(raised: dict[str, tuple]) -> str:
    """The raised keys as the log gives them: max_steps 16000 -> 30000; max_minutes 30 -> no limit."""
    whole = lambda v: int(v) if float(v).is_integer() else v  # noqa: E731 (30.0 -> 30)
    return "; ".join(f"{k} {whole(a)} -> {whole(b) if b else 'no limit'}" for k, (a, b) in raised.items())


def _data_files(run: Path, splits=("train", "valid", "test")) -> list[Path]:
    return [run / "data" / f"{s}.{side}" for s in splits for side in ("src", "tgt")]


def _student_config(cfg: Config, spec, seed: int | None = None) -> Config:
    """`cfg` with this student's own step budget, checkpoint averaging, training recipe
    (`train`) and seed, where it has them."""
    changes = spec.train.changes() if spec.train is not None else {}
    if spec.max_steps is not None:
        changes["max_steps"] = spec.max_steps
    if spec.average_last is not None:
        changes["average_last"] = spec.average_last
    if seed is not None:
        changes["seed"] = seed
    if not changes:
        return cfg
    return dataclasses.replace(cfg, student_train=dataclasses.replace(cfg.student_train, **changes))


def _spec_dict(spec) -> dict:
    """The student spec as its stage hashes it; `average_last` and `train` only where they are
    set, so the run directories made before the keys existed keep their hashes."""
    d = config_to_dict(spec)
    if spec.average_last is None:
        d.pop("average_last", None)
    if spec.train is None:
        d.pop("train", None)
    else:  # the keys set, so a key added later does not change the hash
        d["train"] = spec.train.changes()
    return d


def teacher_names(cfg: Config) -> list[tuple[str, int | None]]:
    """(model directory, seed) of each teacher: RUN/teacher, then RUN/teacher.seed<k> for the
    other `pipeline.teacher_seeds` (none: one teacher with train.seed)."""
    seeds = cfg.pipeline.teacher_seeds
    if not seeds:
        return [("teacher", None)]
    return [("teacher", seeds[0])] + [(f"teacher.seed{k}", k) for k in seeds[1:]]


def model_names(cfg: Config) -> list[str]:
    """Every model directory the pipeline makes: the teachers (and their ensemble), then each
    student (per seed)."""
    teachers = [n for n, _ in teacher_names(cfg)]
    if cfg.pipeline.kd_teacher == "ensemble":
        teachers.append(ENSEMBLE)
    return teachers + [n for spec in cfg.pipeline.students for n, _ in spec.model_names()]


def _model_files(model_dir: Path) -> list[Path]:
    if model_dir.name == ENSEMBLE:  # no weights of its own: its members' (see kd_teacher_files)
        return [model_dir / f for f in ("spm.model", "model.json", "ensemble.json")]
    return [model_dir / f for f in ("model.keras", "spm.model", "model.json")]  # model.json last


def _weights(cfg: Config, run: Path, name: str) -> list[Path]:
    """The files a model's outputs depend on (an ensemble: every member's model.keras)."""
    if name == ENSEMBLE:
        return [run / n / "model.keras" for n, _ in teacher_names(cfg)]
    return [run / name / "model.keras"]


def build_stages(cfg: Config, run: Path, log: Callable[[str], None]) -> list[Stage]:
    c = config_to_dict(cfg)
    stages = _data_stages(cfg, c, run, log) + _teacher_stages(cfg, c, run, log)
    if cfg.student_train.init:
        raise UserError("student_train.init: only the teacher stage starts from a bundle (train.init)")
    if cfg.train.init:
        n, named = len(teacher_names(cfg)), len(cfg.train.init_bundles())
        if named != n:
            raise UserError(f"train.init names {named} bundle(s), but the "
                            f"pipeline has {n} teacher(s) (pipeline.teacher_seeds "
                            f"{list(cfg.pipeline.teacher_seeds)}): name one bundle per teacher")
        _start_from_bundles(cfg, run, stages, log)
    if any(KD_MODES[s.kd].distilled for s in cfg.pipeline.students):
        stages.append(_distill_stage(cfg, c, run, log))
    stages += _student_stages(cfg, c, run, log) + _evaluation_stages(cfg, c, run, log)
    return stages


def _decode(c: dict, leave_out: tuple[str, ...] = ()) -> dict:
    """The `decode` keys a stage depends on, less `leave_out`; `split_sentences` only when set
    (so run directories made before it existed keep their hashes)."""
    return {k: v for k, v in c["decode"].items()
            if k not in leave_out and not (k == "split_sentences" and v is None)}


def _train_decode(c: dict) -> dict:
    """What training reads of `decode`: the search settings that only evaluation uses (beam,
    batch size, length penalty, sentence splitting: the training loop's validation translates
    whole lines) are left out, so changing them never retrains anything."""
    return _decode(c, ("beam", "batch_size", "length_penalty", "split_sentences"))


def _data_stages(cfg: Config, c: dict, run: Path, log) -> list[Stage]:
    from nmt_kd.data.prepare import prepare_data
    from nmt_kd.tokenizer import build_vocab

    d = cfg.data
    corpus = [d.train_src, d.train_tgt, d.valid_src, d.valid_tgt, d.test_src, d.test_tgt] \
        if d.source == "files" else [d.path] if d.source in ("tsv", "jsonl") else []
    return [
        Stage("prepare", "prepare", run / "data", {"data": c["data"]},
              [Path(expand_path(p)) for p in corpus if p],
              run=lambda: prepare_data(cfg, run, log=log), products=[run / "data" / "manifest.json"]),
        Stage("vocab", "vocab", run / "vocab", {"vocab": c["vocab"]},
              _data_files(run, ("train",)), run=lambda: build_vocab(cfg.vocab, run, log=log),
              products=[run / "vocab" / "spm.model"]),
    ]


def _teacher_stages(cfg: Config, c: dict, run: Path, log) -> list[Stage]:
    """One training stage per teacher seed (the first is RUN/teacher), then the ensemble."""
    from nmt_kd.models.ensemble import create_ensemble_dir
    from nmt_kd.train import train_model

    stages = []
    for name, seed in teacher_names(cfg):
        tcfg = cfg if seed is None else dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        depends = {"model": {"teacher": c["model"]["teacher"], "max_positions": c["model"]["max_positions"]},
                   "train": config_to_dict(tcfg.train), "decode": _train_decode(c)}
        stages.append(Stage(
            name, "teacher", run / name, depends,
            _data_files(run, ("train", "valid")) + [run / "vocab" / "spm.model"],
            run=lambda tcfg=tcfg, name=name: train_model(tcfg, run, "teacher", name=name, resume=True, log=log),
            resumable=True, products=_model_files(run / name),
            budget={k: getattr(tcfg.train, k) for k in BUDGET_KEYS}))
    if cfg.pipeline.kd_teacher == "ensemble":
        members = [run / n for n, _ in teacher_names(cfg)]
        stages.append(Stage(
            ENSEMBLE, "teacher", run / ENSEMBLE, {"members": [m.name for m in members]},
            _weights(cfg, run, ENSEMBLE), run=lambda: create_ensemble_dir(members, run / ENSEMBLE),
            products=_model_files(run / ENSEMBLE)))
    return stages


# The distill keys by what they change: the distilled corpus (so the distill stage and the
# students trained on that corpus) or word-level KD's loss (the students learning from the
# teacher's distributions). Choosing alpha or T on valid then leaves the corpus and the
# seq-KD students done. `engine` is neither: the distill stage adds it when not the default.
CORPUS_KEYS = ("beam", "nbest", "seq_inter", "seq_inter_metric", "keep_original", "drop_worst",
               "shard_size", "batch_size")
WORD_KEYS = ("alpha", "temperature", "top_k", "teacher_mode")


def _distill_section(c: dict, corpus: bool = True, word: bool = True) -> dict:
    """The distill keys a stage depends on: those of the corpus and/or of word-level KD."""
    keys = (CORPUS_KEYS if corpus else ()) + (WORD_KEYS if word else ())
    return {k: c["distill"][k] for k in keys}


def _legacy_distill_section(c: dict) -> dict:
    """How the distill section was hashed up to commit ff18ed1: every key but `engine`."""
    return {k: v for k, v in c["distill"].items() if k != "engine"}


def _distill_stage(cfg: Config, c: dict, run: Path, log) -> Stage:
    from nmt_kd.distill import distill_corpus

    decode = _decode(c, ("beam", "batch_size"))
    teacher = kd_teacher_dir(cfg, run)
    engine = cfg.distill.engine  # in the hash only when not the default (older runs keep theirs)
    rest = {"decode": decode, **({"teacher": teacher.name} if teacher.name != "teacher" else {}),
            **({"engine": engine} if engine != "tensorflow" else {})}
    return Stage(
        "distill", "distill", run / "distill", {"distill": _distill_section(c, word=False), **rest},
        _data_files(run, ("train",)) + _weights(cfg, run, teacher.name),
        run=lambda: distill_corpus(cfg, run, teacher_dir=teacher, log=log), resumable=True,
        products=[run / "distill" / "manifest.json"],
        legacy_config={"distill": _legacy_distill_section(c), **rest})


def _student_stages(cfg: Config, c: dict, run: Path, log) -> list[Stage]:
    from nmt_kd.train import train_model

    teacher = kd_teacher_dir(cfg, run)
    stages = []
    for spec in cfg.pipeline.students:
        inputs = _data_files(run, ("train", "valid")) + [run / "vocab" / "spm.model"]
        if KD_MODES[spec.kd].distilled:
            inputs += [run / "distill" / "train.src", run / "distill" / "train.tgt"]
        word = KD_MODES[spec.kd].word_kd
        if word:
            inputs += _weights(cfg, run, teacher.name)
        for name, seed in spec.model_names():
            scfg = _student_config(cfg, spec, seed)
            depends = {"spec": _spec_dict(spec), "model": config_to_dict(cfg.model.section(spec.arch)),
                       "max_positions": c["model"]["max_positions"], "train": c["student_train"],
                       "distill": _distill_section(c, corpus=KD_MODES[spec.kd].distilled, word=word)
                       if spec.kd != "none" else None,
                       "decode": _train_decode(c)}
            if seed is not None:  # (absent without seeds: older run directories keep their hash)
                depends["seed"] = seed
            if word and teacher.name != "teacher":
                depends["teacher"] = teacher.name
            legacy = None if spec.kd == "none" else {**depends, "distill": _legacy_distill_section(c)}
            stages.append(Stage(
                f"student {name}", "students", run / name, depends, inputs,
                run=lambda scfg=scfg, spec=spec, name=name, word=word: train_model(
                    scfg, run, spec.arch, name=name, kd=spec.kd, resume=True, log=log,
                    teacher_dir=teacher if word else None),
                resumable=True, products=_model_files(run / name), legacy_config=legacy,
                budget={k: getattr(scfg.student_train, k) for k in BUDGET_KEYS}))
    return stages


def _evaluation_stages(cfg: Config, c: dict, run: Path, log) -> list[Stage]:
    from nmt_kd.report import build_report

    names = model_names(cfg)
    blind = [Path(expand_path(p)) for p in cfg.eval.blind_sources]
    stages = [Stage(
        f"evaluate {name}", "evaluate", run / "eval" / name,
        {"eval": c["eval"], "decode": _decode(c), "test_set": c["data"]["test_set_name"]},
        _weights(cfg, run, name) + [run / name / "spm.model"] + _data_files(run, ("valid", "test")) + blind,
        run=lambda name=name: evaluate_all(cfg, run, name, log),
        products=[run / "eval" / name / f"{pre}beam{b}.bs{n}.json"
                  for pre, sizes in (("", cfg.eval.batch_sizes), ("valid.", (max(cfg.eval.batch_sizes),)))
                  for b in cfg.eval.beams for n in sizes]) for name in names]
    stages.append(Stage(
        "report", "report", run / "report", {"eval": c["eval"]},
        [run / "eval" / name / "done.json" for name in names],
        run=lambda: build_report(run, title=f"{cfg.pipeline.name}: teacher and students",
                                 bootstrap=cfg.eval.bootstrap_resamples, log=log)))
    return stages


def _start_from_bundles(cfg: Config, run: Path, stages: list[Stage], log: Callable[[str], None]) -> None:
    """`train.init`: the vocab stage takes the bundles' SentencePiece model (all must share
    one) and each teacher stage unpacks its bundle (its hash checked) instead of training."""
    from nmt_kd import bundle as bundles
    from nmt_kd.train import data_sha256

    named = cfg.train.init_bundles()
    inits = [(Path(expand_path(p)), sha) for p, sha in named]
    depends = {"init": cfg.train.init, "init_sha256": cfg.train.init_sha256}

    def vocab() -> None:
        for path, sha in inits:
            bundles.check_hash(path, sha)
        first = inits[0][0]
        for path, _sha in inits[1:]:
            if bundles.tokenizer_bytes(path) != bundles.tokenizer_bytes(first):
                raise UserError(f"{path}: its SentencePiece model differs from that of {first}; the "
                                "teachers of one run (train.init) must share one tokenizer")
        bundles.extract_tokenizer(first, run / "vocab" / "spm.model")
        log(f"vocab: the SentencePiece model of the teacher bundle {first}")

    def teacher(path: Path, sha: str | None, name: str) -> None:
        bundles.unpack(path, run / name, sha)
        meta = bundles.bundle_meta(path)
        if meta.get("heldout_sha256") and meta["heldout_sha256"] == data_sha256(run, ("valid", "test")):
            log(f"{name}: {path} was trained with this run's valid and test splits held out")
        elif meta.get("train_data_sha256") != data_sha256(run, ("train",)):
            log(f"{name}: WARNING {path} was trained on other data than this run's data/train.* "
                "and not with this run's valid and test splits held out; if its training data "
                "overlaps them, its scores there are not held-out scores")
        log(f"{name}: taken from {path} (sha256 checked); not trained in this run")

    stages[1] = dataclasses.replace(stages[1], config={**stages[1].config, **depends},
                                    inputs=[p for p, _ in inits], run=vocab)
    for i, ((path, sha), (name, _seed)) in enumerate(zip(inits, teacher_names(cfg), strict=True)):
        one = {"init": named[i][0], "init_sha256": sha}
        stages[2 + i] = dataclasses.replace(
            stages[2 + i], config={"init": one if len(inits) > 1 else depends,
                                   "decode": stages[2 + i].config["decode"]},
            inputs=[path], run=lambda path=path, sha=sha, name=name: teacher(path, sha, name),
            resumable=False, after=_data_files(run))  # its held-out check reads the splits


def evaluate_all(cfg: Config, run: Path, name: str, log: Callable[[str], None]) -> list[dict]:
    """Every (beam, batch size) of `eval` for one model; one metrics JSON each."""
    from nmt_kd.evaluate import evaluate_model
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.translate import Translator

    model, tokenizer, _ = load_model_dir(run / name, cfg.decode.precision)
    translator = Translator(model, tokenizer, cfg.decode)
    rows = []
    for beam in cfg.eval.beams:
        scored = None
        for bs in sorted(cfg.eval.batch_sizes, reverse=True):
            # batch 1 is slow on a whole test set: it times a prefix and scores the
            # translations of the largest batch size (same model, same beam)
            speed_n = cfg.eval.speed_sentences if bs == 1 else 0
            rows.append(evaluate_model(
                run / name, run / "data" / "test.src", run / "data" / "test.tgt", beam=beam,
                batch_size=bs, test_set=cfg.data.test_set_name,
                out_json=run / "eval" / name / f"beam{beam}.bs{bs}.json",
                speed_sentences=speed_n, translator=translator, log=log,
                scored=scored if speed_n else None))
            if scored is None:
                scored = (bs, read_lines(run / "eval" / name / f"beam{beam}.bs{bs}.hyp.txt"))
        # the valid split, for choosing and for the report's valid columns: scored, not timed
        bs = max(cfg.eval.batch_sizes)
        rows.append(evaluate_model(
            run / name, run / "data" / "valid.src", run / "data" / "valid.tgt", beam=beam,
            batch_size=bs, test_set=f"{cfg.data.test_set_name or 'test'} (valid split)",
            out_json=run / "eval" / name / f"valid.beam{beam}.bs{bs}.json",
            translator=translator, log=log, timed=False, split="valid"))
        translate_blind(cfg, run / "eval" / name / "blind", translator, beam, log)
    return rows


def translate_blind(cfg: Config, out: Path, translator, beam: int,
                    log: Callable[[str], None]) -> list[Path]:
    """Translate each of `eval.blind_sources` (no references: nothing is scored) with `beam`
    into OUT/<file stem>.beam<B>.txt, one line per source line, each file written atomically."""
    from nmt_kd.fileio import write_lines
    from nmt_kd.translate import read_input_lines

    written = []
    for src in cfg.eval.blind_sources:
        lines = read_input_lines(str(expand_path(src)))
        hyps = translator.translate(lines, beam=beam, batch_size=max(cfg.eval.batch_sizes)).hypotheses
        path = out / f"{Path(src).stem}.beam{beam}.txt"
        write_lines(path, hyps)
        log(f"blind: {len(hyps)} lines of {src} -> {path}")
        written.append(path)
    return written


def run_pipeline(cfg: Config, run_dir: str | Path, until: str | None = None,
                 force: tuple[str, ...] = (), log: Callable[[str], None] = print,
                 adopt: bool = False, poll_s: float = 2.0, only: tuple[str, ...] = ()) -> list[str]:
    """Run every stage that is not done; returns the names of the stages that ran.

    With `adopt`, a stage that never ran in the pipeline (no done.json, no started.json)
    but whose final files exist (made by `nmt-kd prepare/train/distill/evaluate` by hand)
    is recorded as done with the current hash instead of being run again. Its output is
    taken as it is: nothing checks that it was made with this config (the log says so).

    Several processes may run the same pipeline at once (`nmt-kd pipeline --lanes N`): each
    stage is claimed with a lock file (RUN/.locks/), a lane skips a stage another lane
    holds and goes on with any later stage whose producing stages it has passed, and it
    waits (`poll_s`) only when every stage left is held or waits on a held one.

    With `only` (model names, as `model_names` gives them), the student and evaluation stages
    of the other models and the report are left out; what those models need (data, teachers,
    the distilled corpus) still runs. Several machines can so train one experiment's models
    side by side; `nmt-kd report` then builds the report once every model is evaluated.
    """
    run = Path(run_dir)
    for name in (until, *force):
        if name is not None and name not in STAGES:
            raise UserError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    save_config(cfg, run / "config.yaml")
    stages = [s for s in build_stages(cfg, run, log)
              if not until or STAGES.index(s.group) <= STAGES.index(until)]
    if only:
        stages = _only(cfg, stages, only, log)
    ran, pending = [], list(stages)
    while pending:
        for stage in [s for s in pending if not _producers(s, pending)]:
            with _claim(run, stage) as mine:
                if not mine:
                    continue
                if _run_stage(stage, run, force, adopt, log):
                    ran.append(stage.name)
            pending.remove(stage)
            break
        else:
            time.sleep(poll_s)  # every ready stage is held by another lane
    return ran


def _only(cfg: Config, stages: list[Stage], only: tuple[str, ...], log: Callable[[str], None]) -> list[Stage]:
    known = model_names(cfg)
    unknown = [n for n in only if n not in known]
    if unknown:
        raise UserError(f"--only {', '.join(unknown)}: not a model of this pipeline; its models are "
                        f"{', '.join(known)}")

    def wanted(stage: Stage) -> bool:
        if stage.group == "students":
            return stage.name.removeprefix("student ") in only
        if stage.group == "evaluate":
            return stage.name.removeprefix("evaluate ") in only
        return stage.group != "report"

    kept = [s for s in stages if wanted(s)]
    # the distilled corpus only when a kept stage reads it
    kept = [s for s in kept if s.group != "distill" or any(s in _producers(k, kept) for k in kept)]
    left_out = [s.name for s in stages if s not in kept]
    if left_out:
        log(f"pipeline: --only {', '.join(only)}: {len(left_out)} stages left out (the report "
            "among them: `nmt-kd report` builds it once every model is evaluated)")
    return kept


def _producers(stage: Stage, pending: list[Stage]) -> list[Stage]:
    """The stages still pending in this lane that write a file `stage` reads."""
    return [s for s in pending if s is not stage
            and any(p.is_relative_to(s.out_dir) for p in stage.inputs + stage.after)]


@contextlib.contextmanager
def _claim(run: Path, stage: Stage):
    """Yields True while this process holds the stage's lock (never blocks), else False."""
    import fcntl

    path = run / ".locks" / (stage.name.replace(" ", "_").replace("/", "_") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_stage(stage: Stage, run: Path, force: tuple[str, ...], adopt: bool,
               log: Callable[[str], None]) -> bool:
    """Skip, adopt or run one stage (its lock held); True when it ran."""
    inputs = _hash_inputs(stage.inputs, run)
    fingerprint, *legacy = stage_hashes(stage, run, inputs)
    # a training stage records its hash without the budget, and the budget, to tell a run
    # given more steps (continued) from one whose config changed (started over)
    record = {"hash": fingerprint}
    if stage.budget is not None:
        record.update(core=_digest(_without_budget(stage.config), inputs), budget=stage.budget)
    done_file, started_file = stage.out_dir / "done.json", stage.out_dir / "started.json"
    done = read_json(done_file) if done_file.is_file() else {}
    # unchanged: the same hash (or an earlier version's), or the same config and budget
    # recorded under another hash
    same = done.get("hash") in (fingerprint, *legacy) or (
        "core" in record and (done.get("core"), done.get("budget")) == (record["core"], record["budget"]))
    if stage.group not in force and same:
        if done["hash"] != fingerprint:
            write_json(done_file, {**done, **record})
        log(f"== {stage.name}: unchanged since {done.get('finished')}, skipped")
        return False
    if (adopt and stage.products and not done_file.is_file() and not started_file.is_file()
            and stage.group not in force and all(p.is_file() for p in stage.products)):
        write_json(done_file, {"stage": stage.name, "hash": fingerprint, "adopted": True,
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        log(f"== {stage.name}: adopted the existing output (made outside the pipeline; "
            "taken as made with this config)")
        return False
    started = read_json(started_file) if started_file.is_file() else {}
    stale = done_file.is_file() or (started_file.is_file() and started.get("hash") not in (fingerprint, *legacy))
    raised = _raised_budget(stage, done or started, record) if stale and stage.group not in force else None
    if raised is not None and done and _stopped_early(stage) and "patience" not in raised:
        write_json(done_file, {**done, **record})
        log(f"== {stage.name}: stopped early (patience) within its earlier budget, so a larger "
            f"one ({_describe_budget(raised)}) changes nothing; skipped")
        return False
    if raised:
        log(f"== {stage.name}: budget raised ({_describe_budget(raised)}); continuing from its last checkpoint")
    elif raised is not None:
        log(f"== {stage.name}: config and budget unchanged (recorded under an earlier hash); "
            "continuing from its last checkpoint")
    elif (stale or stage.group in force) and stage.resumable and stage.out_dir.exists():
        log(f"== {stage.name}: config or inputs changed; starting it over")
        shutil.rmtree(stage.out_dir)
    done_file.unlink(missing_ok=True)
    write_json(started_file, record)
    log(f"== {stage.name}")
    t0 = time.time()
    stage.run()
    write_json(done_file, {"stage": stage.name, **record, "seconds": round(time.time() - t0, 1),
                           "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return True


def _stopped_early(stage: Stage) -> bool:
    meta = stage.out_dir / "model.json"
    return meta.is_file() and read_json(meta).get("stopped_because") == "early_stop"
