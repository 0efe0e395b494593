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

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from nmt_kd.config import Config, section_hash
from nmt_kd.errors import UserError
from nmt_kd.fileio import atomic_open, read_lines, sha256_file, write_json, write_lines


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


def translate_shards(
    cfg: Config, run_dir: str | Path, teacher_dir: str | Path | None = None,
    worker_index: int = 0, num_workers: int = 1, log: Callable[[str], None] = print,
) -> list[int]:
    """Translate the missing shards assigned to this worker; returns the shard indices done now."""
    from nmt_kd.models.registry import load_model_dir
    from nmt_kd.translate import Translator

    run_dir = Path(run_dir)
    dc = cfg.distill
    src = read_lines(run_dir / "data" / "train.src")
    ref = read_lines(run_dir / "data" / "train.tgt")
    if len(src) != len(ref):
        raise UserError(f"{run_dir / 'data'}: train.src has {len(src)} lines but train.tgt has {len(ref)}")
    ranges = shard_ranges(len(src), dc.shard_size)
    mine = [i for i in range(len(ranges)) if i % num_workers == worker_index]
    todo = [i for i in mine if not shard_path(run_dir, i).is_file()]
    log(f"distill: {len(ranges)} shards of <= {dc.shard_size} lines; worker {worker_index}/{num_workers} "
        f"has {len(mine)}, {len(mine) - len(todo)} already done")
    if not todo:
        return []
    teacher_dir = Path(teacher_dir or run_dir / "teacher")
    model, tokenizer, _ = load_model_dir(teacher_dir, cfg.decode.precision)
    translator = Translator(model, tokenizer, cfg.decode)
    nbest = max(dc.nbest, dc.beam if dc.seq_inter else 1)
    metric = _sentence_metric(dc.seq_inter_metric) if dc.seq_inter else None
    t0, lines_done = time.perf_counter(), 0
    total_lines = sum(ranges[i][1] - ranges[i][0] for i in todo)
    for i in todo:
        start, end = ranges[i]
        res = translator.translate(src[start:end], beam=dc.beam, nbest=nbest)
        with atomic_open(shard_path(run_dir, i)) as f:
            for k in range(end - start):
                record: dict = {"i": start + k}
                if res.nbest is not None and res.nbest[k]:
                    cands = res.nbest[k]
                    if metric is not None:
                        best = max(range(len(cands)), key=lambda j: (metric(cands[j][0], ref[start + k]), -j))
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
    """Check and merge all shards into RUN/distill/train.{src,tgt}; returns the manifest."""
    run_dir = Path(run_dir)
    dc = cfg.distill
    src = read_lines(run_dir / "data" / "train.src")
    ref = read_lines(run_dir / "data" / "train.tgt")
    ranges = shard_ranges(len(src), dc.shard_size)
    missing, _ = missing_shards(run_dir, len(src), dc.shard_size)
    if missing:
        raise UserError(f"distillation is incomplete: {len(missing)} of {len(ranges)} shards are "
                        f"missing (first: {shard_path(run_dir, missing[0])}); run `nmt-kd distill` again")
    records = []
    for i, (start, end) in enumerate(ranges):
        records.extend(read_shard(shard_path(run_dir, i), start, end))
    assert len(records) == len(src)  # guaranteed by read_shard's per-shard check
    keep = [r for r in records if r["hyp"].strip()]
    dropped_empty = len(records) - len(keep)
    if not keep:
        raise UserError(f"every teacher translation is empty ({len(records)} lines); the teacher "
                        "is not trained enough to distil from")
    dropped_worst = 0
    if dc.drop_worst > 0:
        scored = [r for r in keep if r["score"] is not None]
        n_drop = int(math.floor(dc.drop_worst * len(scored)))
        if n_drop:
            worst = {r["i"] for r in sorted(scored, key=lambda r: (r["score"], r["i"]))[:n_drop]}
            keep = [r for r in keep if r["i"] not in worst]
            dropped_worst = n_drop
    out_src = [src[r["i"]] for r in keep]
    out_tgt = [r["hyp"] for r in keep]
    if dc.keep_original:
        out_src += src
        out_tgt += ref
    out = run_dir / "distill"
    write_lines(out / "train.src", out_src)
    write_lines(out / "train.tgt", out_tgt)
    manifest = {
        "source_lines": len(src),
        "distilled_pairs": len(keep),
        "original_pairs_added": len(src) if dc.keep_original else 0,
        "lines": len(out_src),
        "dropped_empty_hypothesis": dropped_empty,
        "dropped_worst": dropped_worst,
        "seq_inter": dc.seq_inter,
        "seq_inter_changed": sum(1 for r in keep if r.get("rank", 0) > 0),
        "config_hash": section_hash(dc),
        "hashes": {"train.src": sha256_file(out / "train.src"),
                   "train.tgt": sha256_file(out / "train.tgt")},
    }
    write_json(out / "manifest.json", manifest)
    log(f"distill: merged {len(ranges)} shards -> {len(out_src)} pairs "
        f"({dropped_empty} empty and {dropped_worst} lowest-scoring hypotheses dropped"
        + (f", {manifest['seq_inter_changed']} picked below rank 1 by seq-inter" if dc.seq_inter else "")
        + ")")
    return manifest


def distill_corpus(cfg: Config, run_dir: str | Path, teacher_dir: str | Path | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """The whole single-worker stage: translate what is missing, then merge."""
    translate_shards(cfg, run_dir, teacher_dir, log=log)
    return merge_shards(cfg, run_dir, log=log)
