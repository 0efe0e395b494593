"""Sequence-level knowledge distillation data (Kim & Rush, 2016).

Reads:  RUN/data/train.{src,tgt}, the teacher's model directory (RUN/teacher by default).
Writes: RUN/distill/shards/shard-NNNNN.jsonl (one JSON object per source line: the chosen
        hypothesis, its teacher score, and the n-best list when asked), then the merged
        RUN/distill/train.{src,tgt} and RUN/distill/manifest.json.

The teacher beam-translates the training source shard by shard. Each shard file is written
atomically, so a killed run leaves only complete shards; a re-run translates only the shards
that are missing. Shards can be split across workers (`worker_index` of `num_workers`). The
merge reads every shard in order and checks that each source line has exactly one entry, in
order, before anything is written. Options: seq-inter (keep the n-best hypothesis closest to
the reference by sentence BLEU or chrF), keeping the original pairs too, and dropping the
lowest-scoring fraction of teacher translations.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from nmt_kd.config import Config, kd_teacher_dir, section_hash
from nmt_kd.errors import UserError
from nmt_kd.fileio import (
    atomic_open,
    count_lines,
    iter_lines,
    sha256_file,
    staged_files,
    write_json,
)


def shard_ranges(n_lines: int, shard_size: int) -> list[tuple[int, int]]:
    return [(a, min(a + shard_size, n_lines)) for a in range(0, n_lines, shard_size)]


def shard_path(run_dir: Path, index: int) -> Path:
    return run_dir / "distill" / "shards" / f"shard-{index:05d}.jsonl"


def _sentence_metric(name: str) -> Callable[[str, str], float]:
    import sacrebleu

    if name == "chrf":
        return lambda hyp, ref: sacrebleu.sentence_chrf(hyp, [ref]).score
    return lambda hyp, ref: sacrebleu.sentence_bleu(hyp, [ref]).score


def read_shard(path: Path, start: int, end: int) -> list[dict]:
    """A shard's records, checked: exactly one per line start..end-1, in order."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: corrupt shard record ({e.msg}); delete the "
                                "shard file and re-run distillation") from None
    ids = [r.get("i") for r in records]
    if ids != list(range(start, end)):
        raise UserError(f"{path} holds {len(records)} records for source lines {start}..{end - 1} "
                        "(expected exactly one per line, in order); delete it and re-run")
    return records


def _train_files(run_dir: Path) -> tuple[Path, Path, int]:
    """RUN/data/train.src, train.tgt and their line count, checked to be line-aligned."""
    data = run_dir / "data"
    n_src, n_ref = count_lines(data / "train.src"), count_lines(data / "train.tgt")
    if n_src != n_ref:
        raise UserError(f"{data}: train.src has {n_src} lines but train.tgt has {n_ref}")
    return data / "train.src", data / "train.tgt", n_src


def _shard_lines(src_path: Path, ref_path: Path, ranges: list[tuple[int, int]],
                 wanted: list[int]) -> Iterator[tuple[int, list[str], list[str]]]:
    """(index, source lines, reference lines) of each wanted shard, reading both files once."""
    left = set(wanted)
    src_it, ref_it = iter_lines(src_path), iter_lines(ref_path)
    try:
        for i, (start, end) in enumerate(ranges):
            if not left:
                return
            if i not in left:  # skip a shard without keeping its lines
                deque(itertools.islice(src_it, end - start), maxlen=0)
                deque(itertools.islice(ref_it, end - start), maxlen=0)
                continue
            left.discard(i)
            yield i, list(itertools.islice(src_it, end - start)), list(itertools.islice(ref_it, end - start))
    finally:
        src_it.close()
        ref_it.close()


def translate_shards(
    cfg: Config, run_dir: str | Path, teacher_dir: str | Path | None = None,
    worker_index: int = 0, num_workers: int = 1, log: Callable[[str], None] = print,
    translator=None,
) -> list[int]:
    """Translate the missing shards assigned to this worker; returns the shard indices done now.

    The training source is read shard by shard, so memory does not grow with the corpus.
    `translator`: a `nmt_kd.translate.Translator` over any backend (by default, one over the
    Keras model in `teacher_dir`); it must support `distill.beam` and the n-best asked for.
    """
    run_dir = Path(run_dir)
    dc = cfg.distill
    src_path, ref_path, n_lines = _train_files(run_dir)
    ranges = shard_ranges(n_lines, dc.shard_size)
    mine = [i for i in range(len(ranges)) if i % num_workers == worker_index]
    todo = [i for i in mine if not shard_path(run_dir, i).is_file()]
    log(f"distill: {len(ranges)} shards of <= {dc.shard_size} lines; worker {worker_index}/{num_workers} "
        f"has {len(mine)}, {len(mine) - len(todo)} already done")
    if not todo:
        return []
    with contextlib.ExitStack() as scope:
        if translator is None:
            translator = scope.enter_context(_teacher_translator(cfg, run_dir, teacher_dir, log))
        return _translate_todo(cfg, run_dir, translator, src_path, ref_path, ranges, todo, log)


@contextlib.contextmanager
def _teacher_translator(cfg: Config, run_dir: Path, teacher_dir, log):
    """The teacher's translator: a CTranslate2 export given as the teacher, the Keras model
    converted to CTranslate2 in a scratch directory (`distill.engine: ctranslate2`), or the
    Keras model under the TensorFlow search."""
    from nmt_kd.ct2 import export_ctranslate2, is_ct2_dir
    from nmt_kd.models.ensemble import is_ensemble_dir
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.translate import Translator, open_translator

    teacher_dir = Path(teacher_dir) if teacher_dir else kd_teacher_dir(cfg, run_dir)
    if is_ct2_dir(teacher_dir):  # nmt-kd export --format ctranslate2, given as the teacher
        yield open_translator(teacher_dir, cfg.decode)[0]
    elif cfg.distill.engine == "ctranslate2":
        if is_ensemble_dir(teacher_dir):
            raise UserError(f"distill.engine: ctranslate2 decodes one Transformer teacher; "
                            f"{teacher_dir} is an ensemble (use distill.engine: tensorflow)")
        with tempfile.TemporaryDirectory(prefix=".teacher_ct2.", dir=run_dir) as scratch:
            out = export_ctranslate2(teacher_dir, Path(scratch) / "ct2", log=log)
            yield open_translator(out, cfg.decode)[0]
    else:
        model, tokenizer, _ = load_model_dir(teacher_dir, cfg.decode.precision)
        yield Translator(model, tokenizer, cfg.decode)


def _translate_todo(cfg: Config, run_dir: Path, translator, src_path, ref_path, ranges, todo,
                    log) -> list[int]:
    dc = cfg.distill
    nbest = max(dc.nbest, dc.beam if dc.seq_inter else 1)
    metric = _sentence_metric(dc.seq_inter_metric) if dc.seq_inter else None
    t0, lines_done = time.perf_counter(), 0
    total_lines = sum(ranges[i][1] - ranges[i][0] for i in todo)
    for i, src, ref in _shard_lines(src_path, ref_path, ranges, todo):
        start, end = ranges[i]
        translator.line_offset = start
        res = translator.translate(src, beam=dc.beam, nbest=nbest, batch_size=dc.batch_size)
        with atomic_open(shard_path(run_dir, i)) as f:
            for k in range(end - start):
                record: dict = {"i": start + k}
                if res.nbest is not None and res.nbest[k]:
                    cands = res.nbest[k]
                    if metric is not None:
                        best = max(range(len(cands)), key=lambda j: (metric(cands[j][0], ref[k]), -j))
                    else:
                        best = 0
                    record.update(hyp=cands[best][0], score=cands[best][1], rank=best,
                                  nbest=[[h, round(s, 4)] for h, s in cands])
                else:
                    record.update(hyp=res.hypotheses[k], score=None, rank=0)
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        lines_done += end - start
        rate = lines_done / (time.perf_counter() - t0)
        log(f"distill: shard {i} ({start}..{end - 1}) done; {lines_done}/{total_lines} lines, "
            f"{rate:.1f} sent/s, ETA {(total_lines - lines_done) / rate:.0f}s")
    return todo


def missing_shards(run_dir: str | Path, n_lines: int, shard_size: int) -> tuple[list[int], int]:
    """(indices of the shards not written yet, number of shards) for `n_lines` source lines."""
    n_shards = len(shard_ranges(n_lines, shard_size))
    return [i for i in range(n_shards) if not shard_path(run_dir, i).is_file()], n_shards


def merge_shards(cfg: Config, run_dir: str | Path, log: Callable[[str], None] = print) -> dict:
    """Check and merge all shards into RUN/distill/train.{src,tgt}; returns the manifest.

    Two passes over the shards, one shard in memory at a time: the first checks every shard
    and decides which lines to keep (a few bytes per line), the second writes them.
    """
    import numpy as np

    run_dir = Path(run_dir)
    dc = cfg.distill
    src_path, ref_path, n_lines = _train_files(run_dir)
    ranges = shard_ranges(n_lines, dc.shard_size)
    missing, _ = missing_shards(run_dir, n_lines, dc.shard_size)
    if missing:
        raise UserError(f"distillation is incomplete: {len(missing)} of {len(ranges)} shards are "
                        f"missing (first: {shard_path(run_dir, missing[0])}); run `nmt-kd distill` again")
    keep = np.zeros(n_lines, bool)
    scored = np.zeros(n_lines, bool)
    reranked = np.zeros(n_lines, bool)
    scores = np.zeros(n_lines, np.float64)
    for i, (start, end) in enumerate(ranges):
        for r in read_shard(shard_path(run_dir, i), start, end):  # checks one record per line
            k = r["i"]
            keep[k] = bool(r["hyp"].strip())
            reranked[k] = r.get("rank", 0) > 0
            if r["score"] is not None:
                scored[k], scores[k] = True, r["score"]
    dropped_empty = int(n_lines - keep.sum())
    if not keep.any():
        raise UserError(f"every teacher translation is empty ({n_lines} lines); the teacher "
                        "is not trained enough to distil from")
    dropped_worst = 0
    if dc.drop_worst > 0:
        cand = np.flatnonzero(keep & scored)
        n_drop = int(math.floor(dc.drop_worst * len(cand)))
        if n_drop:
            worst = cand[np.lexsort((cand, scores[cand]))[:n_drop]]  # by score, then line
            keep[worst] = False
            dropped_worst = n_drop
    n_keep = int(keep.sum())
    out = run_dir / "distill"
    with staged_files(out) as staging:  # train.src, train.tgt and the manifest move in together
        with atomic_open(staging / "train.src") as fs, atomic_open(staging / "train.tgt") as ft:
            src_it = iter_lines(src_path)
            for i, (start, end) in enumerate(ranges):
                for r, s in zip(read_shard(shard_path(run_dir, i), start, end),
                                itertools.islice(src_it, end - start), strict=True):
                    if keep[r["i"]]:
                        fs.write(s + "\n")
                        ft.write(r["hyp"] + "\n")
            src_it.close()
            if dc.keep_original:
                for s, t in zip(iter_lines(src_path), iter_lines(ref_path), strict=True):
                    fs.write(s + "\n")
                    ft.write(t + "\n")
        manifest = {
            "source_lines": n_lines,
            "distilled_pairs": n_keep,
            "original_pairs_added": n_lines if dc.keep_original else 0,
            "lines": n_keep + (n_lines if dc.keep_original else 0),
            "dropped_empty_hypothesis": dropped_empty,
            "dropped_worst": dropped_worst,
            "seq_inter": dc.seq_inter,
            "seq_inter_changed": int((reranked & keep).sum()),
            "config_hash": section_hash(dc),
            "hashes": {"train.src": sha256_file(staging / "train.src"),
                       "train.tgt": sha256_file(staging / "train.tgt")},
        }
        write_json(staging / "manifest.json", manifest)
    log(f"distill: merged {len(ranges)} shards -> {manifest['lines']} pairs "
        f"({dropped_empty} empty and {dropped_worst} lowest-scoring hypotheses dropped"
        + (f", {manifest['seq_inter_changed']} picked below rank 1 by seq-inter" if dc.seq_inter else "")
        + ")")
    return manifest


def distill_corpus(cfg: Config, run_dir: str | Path, teacher_dir: str | Path | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """The whole single-worker stage: translate what is missing, then merge."""
    translate_shards(cfg, run_dir, teacher_dir, log=log)
    return merge_shards(cfg, run_dir, log=log)
