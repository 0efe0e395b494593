import gzip
import json

import pytest

from nmt_kd.data.readers import (
    ReadStats,
    read_hf_pairs,
    read_jsonl_pairs,
    read_text_pairs,
    read_tsv_pairs,
)
from nmt_kd.errors import CorpusError


def pair_files(tmp_path, src: bytes, tgt: bytes, suffix=""):
    s, t = tmp_path / f"a.en{suffix}", tmp_path / f"a.de{suffix}"
    s.write_bytes(src)
    t.write_bytes(tgt)
    return s, t


def test_aligned_pairs(tmp_path):
    s, t = pair_files(tmp_path, b"one\ntwo\n", b"eins\nzwei\n")
    assert list(read_text_pairs(s, t)) == [("one", "eins"), ("two", "zwei")]


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
    s, t = pair_files(tmp_path, b"1\n2\n3\n4\n", b"1\n2\n3\n")
    with pytest.raises(CorpusError) as e:
        list(read_text_pairs(s, t))
    msg = str(e.value)
    assert str(s) in msg and str(t) in msg and "4 lines" in msg and "has 3" in msg
    with pytest.raises(CorpusError, match="has 1 lines but .* has 3"):
        list(read_text_pairs(*pair_files(tmp_path, b"1\n", b"1\n2\n3\n")))


def test_invalid_utf8_error_names_file_and_line(tmp_path):
    s, t = pair_files(tmp_path, b"ok\nbad \xff byte\nok\n", b"gut\nschlecht\ngut\n")
    with pytest.raises(CorpusError, match=rf"{s}:2: invalid UTF-8"):
        list(read_text_pairs(s, t))


def test_skip_mode_counts_and_keeps_alignment(tmp_path):
    s, t = pair_files(tmp_path, b"a\nb\xff\nc\nd\x00d\ne\n", b"A\nB\nC\nD\nE\xc3\n")
    stats = ReadStats()
    pairs = list(read_text_pairs(s, t, on_bad_line="skip", stats=stats))
    assert pairs == [("a", "A"), ("c", "C")]
    assert stats.skipped["NUL byte"] == 1
    assert sum(v for k, v in stats.skipped.items() if k.startswith("invalid UTF-8")) == 2
    assert stats.pairs == 2 and stats.total_skipped == 3
    assert any(":2:" in x or x.endswith(":2: invalid UTF-8 at byte 1") for x in stats.examples)


def test_nul_byte_is_an_error_by_default(tmp_path):
    s, t = pair_files(tmp_path, b"a\x00b\n", b"x\n")
    with pytest.raises(CorpusError, match=rf"{s}:1: NUL byte"):
        list(read_text_pairs(s, t))


def test_crlf_bom_and_lone_cr(tmp_path):
    # CRLF ends are removed; a lone CR inside a line must not split the line (that would
    # shift every later pair); a BOM at the start of a file is dropped.
    s, t = pair_files(tmp_path, b"\xef\xbb\xbfone\r\ntw\ro\r\nthree\r\n", b"eins\nzwei\ndrei")
    assert list(read_text_pairs(s, t)) == [("one", "eins"), ("tw\ro", "zwei"), ("three", "drei")]


def test_gzip_and_truncated_gzip(tmp_path):
    s, t = tmp_path / "x.en.gz", tmp_path / "x.de.gz"
    s.write_bytes(gzip.compress(b"one\ntwo\n" * 1000))
    t.write_bytes(gzip.compress(b"eins\nzwei\n" * 1000))
    assert len(list(read_text_pairs(s, t))) == 2000
    s.write_bytes(s.read_bytes()[:-20])
    with pytest.raises(CorpusError, match="compressed file"):
        list(read_text_pairs(s, t))


def test_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="not found: .*nope.en"):
        list(read_text_pairs(tmp_path / "nope.en", tmp_path / "nope.de"))


def test_tsv(tmp_path):
    p = tmp_path / "c.tsv"
    p.write_bytes(b"id\tone\teins\nid\ttwo\tzwei\n")
    assert list(read_tsv_pairs(p, 1, 2)) == [("one", "eins"), ("two", "zwei")]
    p.write_bytes(b"one\teins\nno tab here\nthree\tdrei\n")
    with pytest.raises(CorpusError, match=rf"{p}:2: expected at least 2"):
        list(read_tsv_pairs(p))
    stats = ReadStats()
    assert list(read_tsv_pairs(p, on_bad_line="skip", stats=stats)) == [("one", "eins"), ("three", "drei")]
    assert stats.total_skipped == 1


def test_jsonl(tmp_path):
    p = tmp_path / "c.jsonl"
    rows = [{"translation": {"en": "one", "de": "eins"}}, {"translation": {"en": "two", "de": "zwei"}}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert list(read_jsonl_pairs(p, "translation.en", "translation.de")) == [("one", "eins"), ("two", "zwei")]
    p.write_text('{"src": "a", "tgt": "b"}\n{"src": "a"\n{"src": "c", "tgt": 5}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=rf"{p}:2: not valid JSON"):
        list(read_jsonl_pairs(p))
    stats = ReadStats()
    assert list(read_jsonl_pairs(p, on_bad_line="skip", stats=stats)) == [("a", "b")]
    assert stats.total_skipped == 2


def test_hf_datasets_on_local_files(tmp_path):
    p = tmp_path / "c.jsonl"
    rows = [{"translation": {"en": f"s{i}", "de": f"t{i}"}} for i in range(5)]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    pairs = list(read_hf_pairs("json", split="train", data_files=str(p), src_lang="en", tgt_lang="de"))
    assert pairs == [(f"s{i}", f"t{i}") for i in range(5)]
    q = tmp_path / "d.jsonl"
    q.write_text('{"english": "x", "german": "y"}\n', encoding="utf-8")
    assert list(read_hf_pairs("json", data_files=str(q), src_field="english", tgt_field="german")) == [("x", "y")]


def test_hf_unavailable_dataset_is_a_clear_error(monkeypatch):
    import datasets

    # `datasets` reads the offline switch when it is imported; set it on the module too so
    # the test fails fast instead of waiting for network time-outs.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusError, match="cannot load the datasets corpus hf:no-such-org/no-such-set"):
        list(read_hf_pairs("no-such-org/no-such-set", split="train"))
