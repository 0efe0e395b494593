"""The prepare stage: read a corpus, clean it, split it, write it.

Reads:  the corpus named by the `data` config section (files, TSV, JSONL, a `datasets`
        dataset, or the built-in LibreOffice-help recipe).
Writes: RUN/data/{train,valid,test}.{src,tgt}, RUN/data/manifest.json (counts, what each
        filter removed and why, content hashes), RUN/data/config.yaml (resolved config).

Valid and test sets are never filtered or deduplicated. When they are given as files they
are kept exactly (only control characters become spaces); when they are cut from a single
corpus, the cut happens after whole-corpus de-duplication, so no test sentence repeats.

Memory does not grow with the corpus (1M-100M pairs): training pairs stream from the reader
through the filters into the output files, and the decisions that need the whole corpus
(which pairs are duplicates, which the valid/test cut and the max_train_pairs sample take)
are made on disk by `nmt_kd.data.bounded`, with the same outcome as when they were made on
Python lists. Only valid and test (small) are held. The passes: 1. read and normalise each
pair once into a draft of train.{src,tgt}; 2. collect the cut valid/test pairs from it (when
cut); 3. rewrite the draft without what the filters remove; 4. rewrite it with the sample
(when data.max_train_pairs applies). The draft and its rewrites take about twice the text's
size on disk at the peak, the scratch arrays up to 25 bytes a pair.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from itertools import compress
from pathlib import Path

import numpy as np

from nmt_kd.config import Config, DataConfig, expand_path, save_config, section_hash
from nmt_kd.data import bounded, clean
from nmt_kd.data.readers import (
    ReadStats,
    read_hf_pairs,
    read_jsonl_pairs,
    read_text_pairs,
    read_tsv_pairs,
)
from nmt_kd.errors import ConfigError, CorpusError
from nmt_kd.fileio import iter_lines, sha256_file, staged_files, write_json, write_pairs

Pairs = list[tuple[str, str]]
SPLITS = ("train", "valid", "test")
# the filter stages in the order they apply; the manifest lists their removals in this order
STAGES = ("empty", "duplicate", "length", "overlap", "sample")
SCRATCH = ".scratch"  # in the staging directory; a leading dot: never moved into RUN/data


def _require(cfg: DataConfig, *names: str) -> None:
    missing = [n for n in names if getattr(cfg, n) in (None, "")]
    if missing:
        raise ConfigError(
            f"data.source: {cfg.source} needs " + ", ".join(f"data.{n}" for n in missing)
        )


def _read_eval_split(cfg: DataConfig, split: str) -> Pairs | None:
    """A given valid/test split, kept exactly; a bad line here is always an error."""
    if cfg.source == "hf":
        hf_split = cfg.hf_valid_split if split == "valid" else cfg.hf_test_split
        if not hf_split:
            return None
        pairs = read_hf_pairs(cfg.hf_name, cfg.hf_config, hf_split, cfg.hf_data_files,
                              cfg.src_lang, cfg.tgt_lang, cfg.src_field, cfg.tgt_field, "error")
    else:
        src, tgt = getattr(cfg, f"{split}_src"), getattr(cfg, f"{split}_tgt")
        if not src and not tgt:
            return None
        if not (src and tgt):
            raise ConfigError(f"data.{split}_src and data.{split}_tgt must be given together")
        pairs = read_text_pairs(expand_path(src), expand_path(tgt), on_bad_line="error")
    return [(clean.sanitize_eval(s), clean.sanitize_eval(t)) for s, t in pairs]


def read_training_corpus(cfg: DataConfig, stats: ReadStats, log: Callable[[str], None]) -> Iterable:
    """The raw training pairs of the configured source (lazy where the reader is)."""
    if cfg.source == "files":
        _require(cfg, "train_src", "train_tgt")
        return read_text_pairs(expand_path(cfg.train_src), expand_path(cfg.train_tgt),
                               cfg.on_bad_line, stats)
    if cfg.source == "tsv":
        _require(cfg, "path")
        return read_tsv_pairs(expand_path(cfg.path), cfg.src_column, cfg.tgt_column,
                              cfg.on_bad_line, stats)
    if cfg.source == "jsonl":
        _require(cfg, "path")
        return read_jsonl_pairs(expand_path(cfg.path), cfg.src_field, cfg.tgt_field,
                                cfg.on_bad_line, stats)
    if cfg.source == "hf":
        _require(cfg, "hf_name")
        return read_hf_pairs(cfg.hf_name, cfg.hf_config, cfg.hf_split, cfg.hf_data_files,
                             cfg.src_lang, cfg.tgt_lang, cfg.src_field, cfg.tgt_field,
                             cfg.on_bad_line, stats)
    if cfg.source == "libreoffice_help":
        from nmt_kd.data.libreoffice_help import build_corpus

        src, tgt = build_corpus(cfg.src_lang, cfg.tgt_lang, expand_path(cfg.cache_dir),
                                tree_root=expand_path(cfg.recipe_root), log=log)
        return read_text_pairs(src, tgt, cfg.on_bad_line, stats)
    raise ConfigError(f"unknown data.source {cfg.source!r}")  # guarded by DataConfig too


def _draft(staging: Path) -> Iterator[tuple[str, str]]:
    """The training pairs as the last pass wrote them into the staging directory."""
    return zip(iter_lines(staging / "train.src"), iter_lines(staging / "train.tgt"), strict=True)


def _hashed(pairs: Iterable[tuple[str, str]],
            seen: bounded.FirstOccurrences) -> Iterator[tuple[str, str]]:
    for s, t in pairs:
        seen.add(s, t)
        yield s, t


def _draft_train(d: DataConfig, stats: ReadStats, log: Callable[[str], None], staging: Path,
                 report: clean.FilterReport) -> tuple[int, int, np.ndarray | None]:
    """Pass 1: read and normalise every pair, once. The non-empty pairs are the first draft
    of train.{src,tgt}, which the later passes read instead of the corpus (normalising is
    the costly part, and a source is then read once however many passes follow), and are
    hashed for de-duplication.

    Returns the pairs read, the pairs in the draft and, with data.dedupe, the draft's
    first-occurrence flags (on disk).
    """
    raw = ((clean.normalize(s), clean.normalize(t))
           for s, t in read_training_corpus(d, stats, log))
    pairs = clean.drop_empty(raw, report)
    with bounded.FirstOccurrences(staging / SCRATCH) as seen:
        if d.dedupe:
            pairs = _hashed(pairs, seen)
        n = write_pairs(staging / "train.src", staging / "train.tgt", pairs)
        first = seen.finish() if d.dedupe else None
    return n + report.removed["empty"], n, first


def _cut_eval(d: DataConfig, valid: Pairs | None, test: Pairs | None, staging: Path,
              distinct: int, first: np.ndarray | None) -> tuple[Pairs, Pairs, dict]:
    """Pass 2, when valid or test is not given: cut it from the corpus. The cut happens after
    whole-corpus de-duplication (so no test sentence repeats) and takes `distinct` pairs'
    seeded shuffle (`bounded.eval_cut`); the cut pairs are small enough to hold.

    Returns valid, test and the cut: {index among the distinct pairs: (split, position)}.
    """
    if valid is not None and test is not None:
        return valid, test, {}
    valid_size = 0 if valid is not None else d.valid_size
    test_size = 0 if test is not None else d.test_size
    if valid_size + test_size >= distinct // 2:
        raise CorpusError(
            f"the corpus has {distinct} usable pairs, too few to cut valid_size={valid_size} "
            f"and test_size={test_size} from it (they may use at most half); lower them or "
            "give valid/test files"
        )
    cut = bounded.eval_cut(distinct, valid_size, test_size, d.split_seed, staging / SCRATCH)
    taken: dict[str, list] = {"valid": [None] * valid_size, "test": [None] * test_size}
    if cut:
        pairs = _draft(staging) if first is None else compress(_draft(staging),
                                                                 bounded.iter_flags(first))
        for i, pair in enumerate(pairs):
            if i in cut:
                split, pos = cut[i]
                taken[split][pos] = pair
    return (valid if valid is not None else taken["valid"],
            test if test is not None else taken["test"], cut)


def _filter_train(d: DataConfig, staging: Path, first: np.ndarray | None, cut: dict,
                  eval_sources: set[str], reports: dict[str, clean.FilterReport]) -> int:
    """Pass 3: rewrite the draft without duplicates, the cut pairs and what the length and
    overlap filters remove; pass 4, when data.max_train_pairs applies: rewrite it with the
    seeded sample. Returns the number of training pairs."""
    pairs = _draft(staging)
    if first is not None:
        pairs = clean.keep_flagged(pairs, bounded.iter_flags(first), "duplicate",
                                   reports["duplicate"])
    if cut:
        pairs = (pair for i, pair in enumerate(pairs) if i not in cut)
    pairs = clean.length_filters(pairs, reports["length"], d.min_words, d.max_words,
                                 d.max_chars, d.max_length_ratio)
    if d.remove_eval_overlap:
        pairs = clean.drop_eval_overlap(pairs, eval_sources, reports["overlap"])
    n = write_pairs(staging / "train.src", staging / "train.tgt", pairs)
    if 0 < d.max_train_pairs < n:
        keep = bounded.sample_flags(n, d.max_train_pairs, d.split_seed, staging / SCRATCH)
        pairs = clean.keep_flagged(_draft(staging), bounded.iter_flags(keep),
                                   "sampled_out (data.max_train_pairs)", reports["sample"])
        n = write_pairs(staging / "train.src", staging / "train.tgt", pairs)
    return n


def _check_not_empty(n_train: int, before: int, report: clean.FilterReport,
                     stats: ReadStats) -> None:
    if n_train:
        return
    if before == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in stats.skipped.items()) or "no lines"
        raise CorpusError(f"the training corpus is empty: nothing was read ({reasons})")
    last = report.order[-1] if report.order else "?"
    raise CorpusError(
        "the training corpus is empty after filtering: "
        + ", ".join(f"{k} removed {v}" for k, v in report.as_dict().items())
        + f"; the last pairs were removed by the {last!r} filter (see the data section of the config)"
    )


def prepare_data(cfg: Config, run_dir: str | Path, log: Callable[[str], None] = print) -> dict:
    """Run the prepare stage; returns the manifest (also written to RUN/data/manifest.json)."""
    d = cfg.data
    t0 = time.time()
    stats = ReadStats()
    reports = {stage: clean.FilterReport() for stage in STAGES}

    valid, test = _read_eval_split(d, "valid"), _read_eval_split(d, "test")
    # every file is written into a staging directory and all move into RUN/data together at
    # the end: a failed write (full disk) leaves the previous outputs exactly as they were,
    # never half old and half new
    with staged_files(Path(run_dir) / "data") as staging:
        (staging / SCRATCH).mkdir()
        n_read, n_draft, first = _draft_train(d, stats, log, staging, reports["empty"])
        distinct = n_draft if first is None else bounded.count(first)
        valid, test, cut = _cut_eval(d, valid, test, staging, distinct, first)
        n_train = _filter_train(d, staging, first, cut,
                                {s for s, _ in valid} | {s for s, _ in test}, reports)
        report = clean.FilterReport.merged(reports.values())
        _check_not_empty(n_train, n_read, report, stats)
        for name, rows in (("valid", valid), ("test", test)):
            write_pairs(staging / f"{name}.src", staging / f"{name}.tgt", rows)
        hashes = {f"{name}.{side}": sha256_file(staging / f"{name}.{side}")
                  for name in SPLITS for side in ("src", "tgt")}
        counts = {"train": n_train, "valid": len(valid), "test": len(test)}
        manifest = _manifest(d, counts, n_read, stats, report, hashes, t0)
        save_config(cfg, staging / "config.yaml")
        write_json(staging / "manifest.json", manifest)  # moved last: marks a complete stage
    log(
        f"prepare: {counts['train']} train / {counts['valid']} valid / {counts['test']} test "
        "pairs; removed from train: "
        + (", ".join(f"{k} {v}" for k, v in report.as_dict().items()) or "nothing")
        + (f"; skipped while reading: {dict(stats.skipped)}" if stats.total_skipped else "")
    )
    return manifest


def _manifest(d: DataConfig, counts: dict[str, int], n_read: int, stats: ReadStats,
              report: clean.FilterReport, hashes: dict[str, str], t0: float) -> dict:
    return {
        "source": d.source,
        "src_lang": d.src_lang,
        "tgt_lang": d.tgt_lang,
        "test_set_name": d.test_set_name,
        "counts": counts,
        "read": {"pairs": n_read, "skipped": dict(stats.skipped), "skip_examples": stats.examples},
        "removed_from_train": report.as_dict(),
        "removed_examples": report.examples,
        "hashes": hashes,
        "config_hash": section_hash(d),
        "seconds": round(time.time() - t0, 2),
    }
