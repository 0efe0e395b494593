"""The prepare stage: read a corpus, clean it, split it, write it.

Reads:  the corpus named by the `data` config section (files, TSV, JSONL, a `datasets`
        dataset, or the built-in LibreOffice-help recipe).
Writes: RUN/data/{train,valid,test}.{src,tgt}, RUN/data/manifest.json (counts, what each
        filter removed and why, content hashes), RUN/data/config.yaml (resolved config).

Valid and test sets are never filtered or deduplicated. When they are given as files they
are kept exactly (only control characters become spaces); when they are cut from a single
corpus, the cut happens after whole-corpus de-duplication, so no test sentence repeats.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from nmt_kd.config import Config, DataConfig, expand_path, save_config, section_hash
from nmt_kd.data import clean
from nmt_kd.data.readers import (
    ReadStats,
    read_hf_pairs,
    read_jsonl_pairs,
    read_text_pairs,
    read_tsv_pairs,
)
from nmt_kd.errors import ConfigError, CorpusError
from nmt_kd.fileio import sha256_file, staged_files, write_json, write_lines

Pairs = list[tuple[str, str]]
SPLITS = ("train", "valid", "test")


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


def _split(pairs: Pairs, valid_size: int, test_size: int, seed: int) -> tuple[Pairs, Pairs, Pairs]:
    if valid_size + test_size >= len(pairs) // 2:
        raise CorpusError(
            f"the corpus has {len(pairs)} usable pairs, too few to cut valid_size={valid_size} "
            f"and test_size={test_size} from it (they may use at most half); lower them or "
            "give valid/test files"
        )
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    test = [pairs[i] for i in order[:test_size]]
    valid = [pairs[i] for i in order[test_size:test_size + valid_size]]
    rest = sorted(order[test_size + valid_size:])  # training data keeps corpus order
    return [pairs[i] for i in rest], valid, test


def _check_not_empty(train: Pairs, before: int, report: clean.FilterReport, stats: ReadStats) -> None:
    if train:
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
    out = Path(run_dir) / "data"
    t0 = time.time()
    stats = ReadStats()
    report = clean.FilterReport()

    valid, test = _read_eval_split(d, "valid"), _read_eval_split(d, "test")
    raw = [(clean.normalize(s), clean.normalize(t)) for s, t in read_training_corpus(d, stats, log)]
    n_read = len(raw)
    pairs = clean.drop_empty(raw, report)
    if d.dedupe:
        pairs = clean.dedupe(pairs, report)
    if valid is None or test is None:
        train, cut_valid, cut_test = _split(
            pairs, 0 if valid is not None else d.valid_size,
            0 if test is not None else d.test_size, d.split_seed,
        )
        valid = valid if valid is not None else cut_valid
        test = test if test is not None else cut_test
    else:
        train = pairs
    train = clean.length_filters(train, report, d.min_words, d.max_words, d.max_chars,
                                 d.max_length_ratio)
    if d.remove_eval_overlap:
        train = clean.drop_eval_overlap(train, {s for s, _ in valid} | {s for s, _ in test}, report)
    train = clean.sample(train, d.max_train_pairs, d.split_seed, report)
    _check_not_empty(train, n_read, report, stats)

    splits = {"train": train, "valid": valid, "test": test}
    hashes = {}
    # all files move into RUN/data together at the end: a failed write (full disk) leaves
    # the previous outputs exactly as they were, never half old and half new
    with staged_files(out) as staging:
        for name, rows in splits.items():
            for side, idx in (("src", 0), ("tgt", 1)):
                path = staging / f"{name}.{side}"
                write_lines(path, (r[idx] for r in rows))
                hashes[f"{name}.{side}"] = sha256_file(path)
        manifest = _manifest(d, splits, n_read, stats, report, hashes, t0)
        save_config(cfg, staging / "config.yaml")
        write_json(staging / "manifest.json", manifest)  # moved last: marks a complete stage
    log(
        f"prepare: {manifest['counts']['train']} train / {manifest['counts']['valid']} valid / "
        f"{manifest['counts']['test']} test pairs; removed from train: "
        + (", ".join(f"{k} {v}" for k, v in report.as_dict().items()) or "nothing")
        + (f"; skipped while reading: {dict(stats.skipped)}" if stats.total_skipped else "")
    )
    return manifest


def _manifest(d: DataConfig, splits: dict[str, Pairs], n_read: int, stats: ReadStats,
              report: clean.FilterReport, hashes: dict[str, str], t0: float) -> dict:
    return {
        "source": d.source,
        "src_lang": d.src_lang,
        "tgt_lang": d.tgt_lang,
        "test_set_name": d.test_set_name,
        "counts": {name: len(rows) for name, rows in splits.items()},
        "read": {"pairs": n_read, "skipped": dict(stats.skipped), "skip_examples": stats.examples},
        "removed_from_train": report.as_dict(),
        "removed_examples": report.examples,
        "hashes": hashes,
        "config_hash": section_hash(d),
        "seconds": round(time.time() - t0, 2),
    }
