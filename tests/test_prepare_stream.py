"""The streaming prepare stage (issue #16) against the list-based one it replaced.

`reference_prepare` below is the list-based stage as it was (the whole corpus in Python
lists, a set of pairs for dedupe, `random.shuffle` of a list of indices for the valid/test
cut, `random.sample` for data.max_train_pairs), kept here verbatim in what it decides. Both
run on a generated corpus with duplicates (also ones that only normalisation makes equal),
empty sides, too short, too long and unbalanced pairs, bad UTF-8 lines, sources shared with
valid/test and a sample, under several configurations; the output files and the manifest's
counts, removals (in order), examples and hashes must be identical. The disk-backed pieces are
also checked one by one against the stdlib calls they repeat, over many sizes and seeds.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest

from nmt_kd.config import config_from_dict
from nmt_kd.data import bounded, clean
from nmt_kd.data.prepare import _read_eval_split, prepare_data, read_training_corpus
from nmt_kd.data.readers import ReadStats
from nmt_kd.errors import CorpusError
from nmt_kd.fileio import read_json, read_lines

# --- the list-based stage, as it was ------------------------------------------------------


def _drop_empty(pairs, report):
    out = []
    for s, t in pairs:
        if not s or not t:
            report.drop("empty", s, t)
        else:
            out.append((s, t))
    return out


def _dedupe(pairs, report):
    seen, out = set(), []
    for p in pairs:
        if p in seen:
            report.drop("duplicate", *p)
        else:
            seen.add(p)
            out.append(p)
    return out


def _length_filters(pairs, report, min_words, max_words, max_chars, max_ratio):
    out = []
    for s, t in pairs:
        ws, wt = len(s.split()), len(t.split())
        if min(ws, wt) < min_words:
            report.drop("too_short", s, t)
        elif max(ws, wt) > max_words or max(len(s), len(t)) > max_chars:
            report.drop("too_long", s, t)
        elif clean.word_ratio(s, t) > max_ratio:
            report.drop("length_ratio", s, t)
        else:
            out.append((s, t))
    return out


def _drop_eval_overlap(pairs, eval_sources, report):
    out = []
    for s, t in pairs:
        if s in eval_sources:
            report.drop("overlaps_valid_test", s, t)
        else:
            out.append((s, t))
    return out


def _sample(pairs, max_pairs, seed, report):
    if max_pairs <= 0 or len(pairs) <= max_pairs:
        return pairs
    keep = sorted(random.Random(seed).sample(range(len(pairs)), max_pairs))
    kept = set(keep)
    for i, (s, t) in enumerate(pairs):
        if i not in kept:
            report.drop("sampled_out (data.max_train_pairs)", s, t)
    return [pairs[i] for i in keep]


def _split(pairs, valid_size, test_size, seed):
    if valid_size + test_size >= len(pairs) // 2:
        raise CorpusError("too few to cut")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    test = [pairs[i] for i in order[:test_size]]
    valid = [pairs[i] for i in order[test_size:test_size + valid_size]]
    rest = sorted(order[test_size + valid_size:])
    return [pairs[i] for i in rest], valid, test


def reference_prepare(cfg):
    """{split: pairs}, pairs read, ReadStats and FilterReport of the list-based stage."""
    d = cfg.data
    stats, report = ReadStats(), clean.FilterReport()
    valid, test = _read_eval_split(d, "valid"), _read_eval_split(d, "test")
    raw = [(clean.normalize(s), clean.normalize(t))
           for s, t in read_training_corpus(d, stats, lambda _m: None)]
    pairs = _drop_empty(raw, report)
    if d.dedupe:
        pairs = _dedupe(pairs, report)
    if valid is None or test is None:
        train, cut_valid, cut_test = _split(pairs, 0 if valid is not None else d.valid_size,
                                            0 if test is not None else d.test_size, d.split_seed)
        valid = valid if valid is not None else cut_valid
        test = test if test is not None else cut_test
    else:
        train = pairs
    train = _length_filters(train, report, d.min_words, d.max_words, d.max_chars,
                            d.max_length_ratio)
    if d.remove_eval_overlap:
        train = _drop_eval_overlap(train, {s for s, _ in valid} | {s for s, _ in test}, report)
    train = _sample(train, d.max_train_pairs, d.split_seed, report)
    return {"train": train, "valid": valid, "test": test}, len(raw), stats, report


# --- a corpus with every kind of pair the filters act on ----------------------------------

WORDS = "the a dog cat runs sits red big small house tree under over near".split()


def _sentence(rng, lo=2, hi=9):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def messy_corpus(n: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """n raw (src, tgt) lines as bytes."""
    rng = random.Random(seed)
    out: list[tuple[bytes, bytes]] = []
    for _ in range(n):
        r = rng.random()
        if out and r < 0.12:  # an exact repeat of an earlier pair
            out.append(rng.choice(out))
            continue
        s, t = _sentence(rng), _sentence(rng)
        if out and r < 0.16:  # equal to an earlier pair only after normalisation
            s0, t0 = rng.choice(out)
            s, t = "  " + s0.decode(errors="replace") + "\t", t0.decode(errors="replace") + " \r"
        elif r < 0.19:
            s, t = rng.choice([("", t), (s, "   "), ("\ufeff", t), (s, "\x00")])
        elif r < 0.22:
            s = _sentence(rng, 13, 20)  # too long (max_words 12)
        elif r < 0.235:
            t = rng.choice(WORDS)  # too short (min_words 2)
        elif r < 0.25:
            s, t = _sentence(rng, 10, 12), _sentence(rng, 2, 2)  # unbalanced: ratio > 3
        elif out and r < 0.30:  # an earlier source with another target
            s = rng.choice(out)[0].decode(errors="replace")
        elif r < 0.31:
            out.append((s.encode() + b"\xff", t.encode()))  # invalid UTF-8
            continue
        out.append((s.encode(), t.encode()))
    return out


def _write(directory: Path, stem: str, pairs) -> tuple[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / f"{stem}.src", directory / f"{stem}.tgt"
    for side, path in enumerate(paths):
        path.write_bytes(b"".join(p[side] + b"\n" for p in pairs))
    return str(paths[0]), str(paths[1])


def _utf8(pairs):
    return [(s.encode(), t.encode()) for s, t in pairs]


def _tree(tmp_path: Path, case: str) -> dict:
    corpus = messy_corpus(2600)
    src, tgt = _write(tmp_path / "in", "train", corpus)
    data = {"train_src": src, "train_tgt": tgt, "on_bad_line": "skip", "min_words": 2,
            "max_words": 12, "max_length_ratio": 3.0, "split_seed": 11}
    # held-out pairs of their own, plus sources also found in the corpus (overlaps)
    rng = random.Random(3)
    held = [(_sentence(rng).encode(), _sentence(rng).encode()) for _ in range(60)]
    shared = [p for p in rng.sample(corpus, 30) if b"\xff" not in p[0]]
    if case in ("valid_given", "both_given", "both_given_no_dedupe"):
        data["valid_src"], data["valid_tgt"] = _write(tmp_path / "in", "valid",
                                                      held[:30] + shared[:15])
    if case in ("both_given", "both_given_no_dedupe"):
        data["test_src"], data["test_tgt"] = _write(tmp_path / "in", "test",
                                                    held[30:] + shared[15:])
    data |= {
        "cut_sample_pool": {"valid_size": 100, "test_size": 80, "max_train_pairs": 1200},
        "cut_sample_set": {"valid_size": 40, "test_size": 0, "max_train_pairs": 40},
        "cut_no_overlap_filter": {"valid_size": 0, "test_size": 120,
                                  "remove_eval_overlap": False},
        "valid_given": {"test_size": 90, "max_train_pairs": 3},
        "both_given": {"max_train_pairs": 1500},
        "both_given_no_dedupe": {"dedupe": False},
    }[case]
    return {"data": data}


CASES = ["cut_sample_pool", "cut_sample_set", "cut_no_overlap_filter", "valid_given",
         "both_given", "both_given_no_dedupe"]


@pytest.mark.parametrize("case", CASES)
def test_streaming_prepare_writes_what_the_list_based_one_did(case, tmp_path, monkeypatch):
    # tiny buffer, block and sort sizes: many flushes, blocks and split buckets, on a small corpus
    monkeypatch.setattr(bounded, "FLUSH", 97)
    monkeypatch.setattr(bounded, "BLOCK", 64)
    monkeypatch.setattr(bounded, "SORT_LIMIT", 4)
    cfg = config_from_dict(_tree(tmp_path, case))
    splits, n_read, stats, report = reference_prepare(cfg)
    assert stats.total_skipped and len(report.order) >= 4  # the corpus exercises the filters
    m = prepare_data(cfg, tmp_path / "run", log=lambda _m: None)
    out = tmp_path / "run" / "data"
    for name, pairs in splits.items():
        for side in (0, 1):
            lines = [p[side] for p in pairs]
            path = out / f"{name}.{('src', 'tgt')[side]}"
            assert read_lines(path) == lines, path.name
            text = "".join(x + "\n" for x in lines).encode()
            assert m["hashes"][path.name] == hashlib.sha256(text).hexdigest()
    assert m["counts"] == {name: len(pairs) for name, pairs in splits.items()}
    assert list(m["removed_from_train"].items()) == list(report.as_dict().items())  # in order
    assert m["removed_examples"] == report.examples
    assert m["read"] == {"pairs": n_read, "skipped": dict(stats.skipped),
                         "skip_examples": stats.examples}
    assert read_json(out / "manifest.json") == m
    assert sorted(p.name for p in out.iterdir()) == sorted(  # no scratch file left behind
        ["config.yaml", "manifest.json"] + [f"{n}.{s}" for n in splits for s in ("src", "tgt")])


@pytest.mark.parametrize("distinct, sort_limit", [(24, 1 << 16), (24, 1), (3000, 5)])
def test_first_occurrences_flags_what_a_set_would(distinct, sort_limit, tmp_path, monkeypatch):
    monkeypatch.setattr(bounded, "FLUSH", 50)
    monkeypatch.setattr(bounded, "SORT_LIMIT", sort_limit)  # small: buckets split, level by level
    rng = random.Random(5)
    # digests repeat within and across flushes; with few distinct pairs, one pair's entries
    # in a bucket outnumber what a sort may hold, and no byte can split them
    pairs = [(str(rng.randrange(distinct)), rng.choice("xyz")) for _ in range(6000)]
    pairs += [("ab", "c"), ("a", "bc")]  # the same text once joined: still distinct
    with bounded.FirstOccurrences(tmp_path / "s") as seen:
        for s, t in pairs:
            seen.add(s, t)
        flags = list(bounded.iter_flags(seen.finish()))
    want, first = set(), []
    for p in pairs:
        first.append(p not in want)
        want.add(p)
    assert flags == first
    assert not list((tmp_path / "s" / "digests").glob("bucket*"))  # removed once sorted


@pytest.mark.parametrize("n", [2, 3, 10, 97, 1000, 4099])
def test_eval_cut_is_the_list_shuffle(n, tmp_path):
    for seed in (0, 1, 1234):
        for valid, test in ((0, 1), (1, 0), (3, 2), (n // 4, n // 5)):
            order = list(range(n))
            random.Random(seed).shuffle(order)
            want = {i: ("test", p) for p, i in enumerate(order[:test])}
            want |= {i: ("valid", p) for p, i in enumerate(order[test:test + valid])}
            scratch = tmp_path / f"{seed}_{valid}_{test}"
            scratch.mkdir()
            assert bounded.eval_cut(n, valid, test, seed, scratch) == want
    assert bounded.eval_cut(n, 0, 0, 1, tmp_path) == {}


# (n, k) pairs on both sides of `Random.sample`'s pool/set choice: k <= 5 always takes the
# set unless n <= 21; otherwise the pool when n <= 21 + 4 ** ceil(log4(3k))
SAMPLES = [(1, 1), (5, 0), (21, 5), (22, 5), (300, 5), (100, 6), (100, 50), (278, 40),
           (277, 40), (5000, 100), (5000, 3000), (20_000, 19_999)]


@pytest.mark.parametrize("n, k", SAMPLES)
def test_sample_flags_pick_what_random_sample_picks(n, k, tmp_path):
    for seed in (0, 7, 1234):
        scratch = tmp_path / str(seed)
        scratch.mkdir()
        got = np.flatnonzero(bounded.sample_flags(n, k, seed, scratch)).tolist()
        assert got == sorted(random.Random(seed).sample(range(n), k))


def test_disk_arrays_are_files_not_anonymous_memory(tmp_path):
    a = bounded.disk_array(tmp_path / "a", 1000, np.int64)
    assert isinstance(a, np.memmap) and (tmp_path / "a").stat().st_size == 8000
    assert not a.any()
    assert bounded.disk_array(tmp_path / "b", 0, np.bool_).shape == (0,)
