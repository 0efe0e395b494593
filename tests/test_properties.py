"""Property-based tests (hypothesis): whatever the input, no pair is lost, duplicated or
misaligned by cleaning, token batching, shard merging or resuming.

Example counts are kept small (a 2-core machine); each property is checked against an
independent reference written here.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt_kd.config import config_from_dict
from nmt_kd.data import clean
from nmt_kd.data.bounded import FirstOccurrences, iter_flags
from nmt_kd.dataset import PAD_MULTIPLE, BatchStream, EncodedPairs, token_batches
from nmt_kd.fileio import read_lines, write_lines

# no example database: nothing written into the working tree
FEW = settings(max_examples=40, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# short texts from a small alphabet, so that empties, duplicates, control characters,
# odd whitespace and NFC/NFD pairs all turn up often
_TEXT = st.lists(st.sampled_from(["a", "b", "c", " ", "\t", "\x00", "\u00a0", "\ufeff", "e\u0301",
                                  "\u00e9", "\r"]), max_size=8).map("".join)
# one line of text: anything but what splits lines
_LINE = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=12)


@FEW
@given(pairs=st.lists(st.tuples(_TEXT, _TEXT), max_size=40),
       min_words=st.integers(0, 2), max_words=st.integers(1, 4),
       max_ratio=st.sampled_from([1.5, 2.0, 9.0]), overlap=st.sets(_TEXT, max_size=3),
       data=st.data())
def test_cleaning_keeps_every_good_pair_once_in_order_and_aligned(pairs, min_words, max_words,
                                                                  max_ratio, overlap, data):
    # held-out sources also drawn from the corpus itself, so that the overlap filter drops
    # pairs in most examples (independent draws alone rarely hit a source that survives the
    # length filters, and an uncounted overlap drop then passed 3 runs in 4)
    if pairs:
        picked = data.draw(st.sets(st.integers(0, len(pairs) - 1), max_size=3))
        overlap = set(overlap) | {pairs[i][0] for i in picked}
    report = clean.FilterReport()
    raw = [(clean.normalize(s), clean.normalize(t)) for s, t in pairs]
    out = list(clean.drop_empty(raw, report))
    with tempfile.TemporaryDirectory() as scratch, FirstOccurrences(Path(scratch)) as seen:
        for s, t in out:
            seen.add(s, t)
        out = list(clean.keep_flagged(out, iter_flags(seen.finish()), "duplicate", report))
    out = clean.length_filters(out, report, min_words, max_words, 100, max_ratio)
    eval_sources = {clean.normalize(x) for x in overlap}
    out = list(clean.drop_eval_overlap(out, eval_sources, report))

    # reference: the first occurrence of each good pair, in corpus order
    want, seen = [], set()
    for s, t in raw:
        if not s or not t or (s, t) in seen:
            continue
        seen.add((s, t))
        ws, wt = len(s.split()), len(t.split())
        ratio = max(ws + 1, wt + 1) / min(ws + 1, wt + 1)
        if min(ws, wt) >= min_words and max(ws, wt) <= max_words and ratio <= max_ratio \
                and s not in eval_sources:
            want.append((s, t))
    assert out == want
    assert len(out) + sum(report.removed.values()) == len(pairs)  # every drop counted
    for s, t in out:  # normalised: no control characters, single spaces, stripped
        for x in (s, t):
            assert x == " ".join(x.split()) and not any(ord(c) < 32 for c in x)


@FEW
@given(n=st.integers(4, 60), valid=st.integers(0, 8), test=st.integers(0, 8),
       seed=st.integers(0, 3))
def test_split_partitions_the_pairs(n, valid, test, seed):
    from nmt_kd.data.prepare import prepare_data
    from nmt_kd.errors import CorpusError

    pairs = [(f"s{i}", f"t{i}") for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_lines(d / "c.src", [s for s, _ in pairs])
        write_lines(d / "c.tgt", [t for _, t in pairs])
        cfg = config_from_dict({"data": {"train_src": str(d / "c.src"),
                                         "train_tgt": str(d / "c.tgt"), "valid_size": valid,
                                         "test_size": test, "split_seed": seed}})
        try:
            prepare_data(cfg, d / "run", log=lambda _m: None)
        except CorpusError:
            assert valid + test >= n // 2
            return
        out = {name: list(zip(read_lines(d / f"run/data/{name}.src"),
                              read_lines(d / f"run/data/{name}.tgt"), strict=True))
               for name in ("train", "valid", "test")}
    assert (len(out["valid"]), len(out["test"])) == (valid, test)
    assert sorted(out["train"] + out["valid"] + out["test"]) == sorted(pairs)  # each pair once
    train = set(out["train"])
    assert out["train"] == [p for p in pairs if p in train]  # training keeps corpus order


def _padded(length: int) -> int:
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE


@FEW
@given(lengths=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), max_size=60),
       max_tokens=st.integers(8, 300), seed=st.integers(0, 5), epoch=st.integers(0, 3),
       shuffle=st.booleans())
def test_token_batches_cover_every_example_once_within_the_budget(lengths, max_tokens, seed,
                                                                  epoch, shuffle):
    src_len = np.array([a for a, _ in lengths], np.int32)
    tgt_len = np.array([b for _, b in lengths], np.int32)
    batches = token_batches(src_len, tgt_len, max_tokens, seed, epoch, shuffle)
    flat = [int(i) for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # each example exactly once
    for b in batches:
        assert len(b) >= 1
        width = max(_padded(max(src_len[i], tgt_len[i])) for i in b)
        assert len(b) == 1 or width * len(b) <= max_tokens  # only a lone example may exceed
    again = token_batches(src_len, tgt_len, max_tokens, seed, epoch, shuffle)
    assert [b.tolist() for b in batches] == [b.tolist() for b in again]  # a pure function


def _tagged_pairs(lengths) -> EncodedPairs:
    """Pairs whose every token names the pair: src i is [i+4]*len + eos, tgt i is [i+4]*len."""
    src = [np.array([i + 4] * (a - 1) + [3], np.int32) for i, (a, _) in enumerate(lengths)]
    tgt = [np.array([i + 4] * (b - 1), np.int32) for i, (_, b) in enumerate(lengths)]
    return EncodedPairs(src, tgt)


@FEW
@given(lengths=st.lists(st.tuples(st.integers(1, 30), st.integers(1, 30)), min_size=1,
                        max_size=50),
       max_tokens=st.integers(16, 200), seed=st.integers(0, 5), epoch=st.integers(0, 2),
       stop=st.integers(0, 60))
def test_batches_stay_aligned_and_a_resumed_epoch_replays_exactly_the_rest(lengths, max_tokens,
                                                                          seed, epoch, stop):
    pairs = _tagged_pairs(lengths)
    stream = BatchStream(pairs, max_tokens, seed=seed)
    full = list(stream.iter_indexed(epoch))
    for idx, ((src, tgt_in), tgt_out) in full:
        for row, i in enumerate(idx):  # each row holds pair i on all three sides
            a, b = lengths[i]
            assert src[row].tolist() == [i + 4] * (a - 1) + [3] + [0] * (src.shape[1] - a)
            assert tgt_in[row].tolist() == [2] + [i + 4] * (b - 1) + [0] * (tgt_in.shape[1] - b)
            assert tgt_out[row].tolist() == [i + 4] * (b - 1) + [3] + [0] * (tgt_out.shape[1] - b)
    # a run killed after `stop` batches resumes in a new process (a new stream) at batch `stop`
    stop = min(stop, len(full))
    resumed = list(BatchStream(pairs, max_tokens, seed=seed).iter_indexed(epoch, stop))
    done = [int(i) for idx, _ in full[:stop] for i in idx]
    rest = [int(i) for idx, _ in resumed for i in idx]
    assert sorted(done + rest) == list(range(len(lengths)))
    assert [idx.tolist() for idx, _ in resumed] == [idx.tolist() for idx, _ in full[stop:]]
    for (_, a), (_, b) in zip(resumed, full[stop:], strict=True):
        for x, y in zip(a[0] + (a[1],), b[0] + (b[1],), strict=True):
            np.testing.assert_array_equal(x, y)


def _distill_run(tmp: Path, n: int, shard_size: int, **distill):
    run = tmp / "run"
    src = [f"source {i}" for i in range(n)]
    write_lines(run / "data/train.src", src)
    write_lines(run / "data/train.tgt", [f"reference {i}" for i in range(n)])
    cfg = config_from_dict({"distill": {"shard_size": shard_size, **distill}})
    return run, cfg, src


def _write_shards(run: Path, records: list[dict], shard_size: int) -> None:
    from nmt_kd.distill import shard_path, shard_ranges

    for k, (a, b) in enumerate(shard_ranges(len(records), shard_size)):
        p = shard_path(run, k)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[a:b]),
                     encoding="utf-8")


@FEW
@given(data=st.data(), n=st.integers(1, 40), shard_size=st.integers(1, 12),
       drop_worst=st.sampled_from([0.0, 0.25, 0.5]), keep_original=st.booleans())
def test_merged_shards_hold_each_kept_line_once_aligned_with_its_source(data, n, shard_size,
                                                                        drop_worst,
                                                                        keep_original):
    from nmt_kd.distill import merge_shards
    from nmt_kd.errors import UserError

    hyps = data.draw(st.lists(st.one_of(_LINE, st.just(""), st.just("  ")), min_size=n,
                              max_size=n))
    scores = data.draw(st.lists(st.one_of(st.none(), st.integers(-20, 0).map(float)),
                                min_size=n, max_size=n))
    with tempfile.TemporaryDirectory() as tmp:
        run, cfg, src = _distill_run(Path(tmp), n, shard_size, drop_worst=drop_worst,
                                     keep_original=keep_original)
        records = [{"i": i, "hyp": h, "score": s, "rank": 0}
                   for i, (h, s) in enumerate(zip(hyps, scores, strict=True))]
        _write_shards(run, records, shard_size)
        kept = [i for i in range(n) if hyps[i].strip()]
        if not kept:
            with pytest.raises(UserError, match="every teacher translation is empty"):
                merge_shards(cfg, run, log=lambda _m: None)
            return
        m = merge_shards(cfg, run, log=lambda _m: None)
        scored = [i for i in kept if scores[i] is not None]
        n_drop = int(drop_worst * len(scored))
        worst = set(sorted(scored, key=lambda i: (scores[i], i))[:n_drop])
        kept = [i for i in kept if i not in worst]
        out_src = read_lines(run / "distill/train.src")
        out_tgt = read_lines(run / "distill/train.tgt")
        want_src = [src[i] for i in kept] + (src if keep_original else [])
        want_tgt = [hyps[i] for i in kept] + ([f"reference {i}" for i in range(n)]
                                              if keep_original else [])
        assert out_src == want_src and out_tgt == want_tgt
        assert m["lines"] == len(want_src) and m["dropped_worst"] == n_drop


class _FakeTranslator:
    """Stands in for the teacher: the 'translation' of a line is the line reversed."""

    def __init__(self, *args, **kwargs):
        self.line_offset = 0

    def translate(self, lines, beam=None, nbest=1, **kwargs):
        from nmt_kd.translate import TranslationResult

        return TranslationResult([x[::-1] for x in lines], [len(x) for x in lines], 0.0)


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(1, 40), shard_size=st.integers(1, 9))
def test_distill_resumed_after_any_lost_shards_equals_an_uninterrupted_run(data, n, shard_size):
    import nmt_kd.models.persistence as persistence
    import nmt_kd.translate as translate
    from nmt_kd.distill import merge_shards, shard_path, shard_ranges, translate_shards

    quiet = lambda _m: None  # noqa: E731
    n_shards = len(shard_ranges(n, shard_size))
    lost = data.draw(st.sets(st.integers(0, n_shards - 1)))
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as tmp:
        mp.setattr(persistence, "load_model_dir", lambda *a, **k: (None, None, {}))
        mp.setattr(translate, "Translator", _FakeTranslator)
        run, cfg, src = _distill_run(Path(tmp), n, shard_size)
        assert translate_shards(cfg, run, log=quiet) == list(range(n_shards))
        merge_shards(cfg, run, log=quiet)
        full = (read_lines(run / "distill/train.src"), read_lines(run / "distill/train.tgt"))
        assert full == (src, [s[::-1] for s in src])
        for k in lost:  # a run killed before these shards were written
            shard_path(run, k).unlink()
        assert translate_shards(cfg, run, log=quiet) == sorted(lost)  # only those are redone
        merge_shards(cfg, run, log=quiet)
        assert (read_lines(run / "distill/train.src"),
                read_lines(run / "distill/train.tgt")) == full
