"""Bad input corpora through `nmt-kd prepare` and `nmt-kd translate` (issue #8).

Each case writes a small corpus whose line i carries the marker `n{i}.` on both sides, runs
`nmt-kd prepare` in-process through `cli.main` and checks one explicit outcome:

* error: exit code 2 and exactly one stderr line naming the file, the line and the problem.
  `cli.main` prints a user error and returns 2; any other exception escapes it and fails the
  test, so "no traceback" is really checked;
* clean: exit code 0, every skipped or removed pair counted in the manifest under its reason,
  and the pairs left still aligned (the marker of output src line j equals that of output tgt
  line j, and the markers are exactly the surviving indices, in corpus order).

The same source file is then read as `nmt-kd translate` input (from the file and from stdin).
The last tests run `nmt-kd translate` itself on a tiny untrained model: line-for-line output
for messy input, chunked == unchunked output, and a full disk (RLIMIT_FSIZE) that must fail a
stage in one line while the previous outputs stay intact.
"""

from __future__ import annotations

import errno
import gzip
import io
import random
import re
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import toy_pairs

from nmt_kd import cli
from nmt_kd.data.clean import normalize
from nmt_kd.errors import UserError
from nmt_kd.fileio import read_json, read_lines, sha256_file
from nmt_kd.translate import iter_input_lines

N = 60
_BASE = toy_pairs(N, seed=3)
SRC = [f"{s[:-1]} n{i}." for i, (s, _) in enumerate(_BASE)]  # "The dog runs n7."
TGT = [f"{t[:-1]} n{i}." for i, (_, t) in enumerate(_BASE)]
BOM = "\ufeff"
ACUTE = "\u0301"  # a combining acute accent
HEBREW = ["\u200fשלום עולם\u200f", "ספר טוב", "ילד קטן"]
ARABIC = ["مرحبا بالعالم", "كتاب جيد", "وَلَد صغير"]  # the last one with harakat (combining marks)


@dataclass
class Corpus:
    src: Path
    tgt: Path
    src_text: list[str]  # what each line of the source file means (decoded), for translate
    tgt_text: list[str]


@dataclass
class Case:
    make: object  # (tmp_path) -> Corpus
    error: str | None = None  # regex of the one-line prepare error; {src} and {tgt} filled in
    skip: bool = False  # run with data.on_bad_line=skip
    read_skipped: dict[str, int] = field(default_factory=dict)  # manifest read.skipped, by reason
    removed: dict[str, int] = field(default_factory=dict)  # manifest removed_from_train
    lost: set[int] = field(default_factory=set)  # line indices that must not reach the output
    # regex of the translate-input error ({src}: the file or <stdin>); without one, reading
    # the source file as translate input must give normalize(line) for each line
    tr_error: str | None = None


def _write(path: Path, lines: list[bytes], end: bytes = b"\n") -> Path:
    path.write_bytes(b"".join(x + end for x in lines))
    return path


def _files(tmp_path, src: list[str], tgt: list[str], src_raw=None, tgt_raw=None,
           end: bytes = b"\n", src_end: bytes | None = None) -> Corpus:
    s = _write(tmp_path / "c.en", src_raw or [x.encode() for x in src], src_end or end)
    t = _write(tmp_path / "c.de", tgt_raw or [x.encode() for x in tgt], end)
    return Corpus(s, t, src, tgt)


def _with(lines: list[str], **at: str) -> list[str]:
    out = list(lines)
    for k, v in at.items():
        out[int(k[1:])] = v
    return out


def mismatched(tmp_path):
    return _files(tmp_path, SRC, TGT[:-1])


def invalid_utf8(tmp_path):
    raw = [x.encode() for x in SRC]
    raw[16] = b"bad \xff byte n16."
    return _files(tmp_path, SRC, TGT, src_raw=raw)


def invalid_utf8_both_sides(tmp_path):
    s, t = [x.encode() for x in SRC], [x.encode() for x in TGT]
    s[16] = b"bad \xff byte n16."
    t[29] = TGT[29].encode() + b"\xc3"  # a multi-byte sequence cut short
    return _files(tmp_path, SRC, TGT, src_raw=s, tgt_raw=t)


def nul_byte(tmp_path):
    raw = [x.encode() for x in SRC]
    raw[22] = b"nul \x00 n22."
    return _files(tmp_path, SRC, TGT, src_raw=raw)


def nul_byte_both_sides(tmp_path):
    s, t = [x.encode() for x in SRC], [x.encode() for x in TGT]
    s[22] = b"nul \x00 n22."
    t[40] = b"\x00" + t[40]
    return _files(tmp_path, SRC, TGT, src_raw=s, tgt_raw=t)


def crlf(tmp_path):
    return _files(tmp_path, SRC, TGT, end=b"\r\n")


def lone_cr(tmp_path):
    src = _with(SRC, i9="The dog\rruns n9.", i33="\rA cat sits n33.\r")  # a CR before the LF too
    tgt = _with(TGT, i19="Der\rHund n19.")
    return _files(tmp_path, src, tgt)


def cr_only_line_ends(tmp_path):  # classic Mac line ends: the file is one line
    c = _files(tmp_path, SRC, TGT, src_end=b"\r")
    c.src_text = ["\r".join(SRC)]  # the last CR is a line end and is removed
    return c


def utf8_bom(tmp_path):
    src = _with(SRC, i0=BOM + SRC[0], i4=BOM + SRC[4])  # a BOM mid-file, as after `cat a b`
    return _files(tmp_path, src, _with(TGT, i0=BOM + TGT[0]))


def utf16_bom(tmp_path):
    c = _files(tmp_path, SRC, TGT)
    c.src.write_bytes("".join(x + "\n" for x in SRC).encode("utf-16"))
    return c


def empty_and_whitespace(tmp_path):
    ws = " \t\u00a0\u3000 "
    src = _with(SRC, i4="", i11=ws, i14="   ")
    tgt = _with(TGT, i7="", i11=ws)
    return _files(tmp_path, src, tgt)


def line_100k_chars(tmp_path):
    src = _with(SRC, i19=("lorem ipsum " * 10_000)[:99_996] + "n19.")  # 100k chars, 16k words
    tgt = _with(TGT, i20="x" * 100_000)  # one 100k-character word
    return _files(tmp_path, src, tgt)


def binary_garbage(tmp_path):
    rng = random.Random(5)
    garbage = b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(4096))
    c = _files(tmp_path, SRC[:3], TGT)
    c.src.write_bytes(c.src.read_bytes() + garbage)
    return c


def gzip_without_gz_suffix(tmp_path):
    c = _files(tmp_path, SRC, TGT)
    c.src.write_bytes(gzip.compress(c.src.read_bytes()))
    return c


def rtl_and_combining(tmp_path):
    src = [f"{HEBREW[i % 3]} {ARABIC[i % 3]} n{i}." for i in range(N)]
    # decomposed accents (e + U+0301), a combining mark at the start of a line, a ZWJ
    tgt = [f"Cafe{ACUTE} {ACUTE if i % 7 == 0 else ''}au lait\u200d n{i}." for i in range(N)]
    return _files(tmp_path, src, tgt)


def truncated_gzip(tmp_path):
    s, t = tmp_path / "c.en.gz", tmp_path / "c.de.gz"
    data = "".join(x + "\n" for x in SRC * 20).encode()  # 1200 lines
    s.write_bytes(gzip.compress(data)[: len(gzip.compress(data)) // 2])
    t.write_bytes(gzip.compress("".join(x + "\n" for x in TGT * 20).encode()))
    return Corpus(s, t, SRC * 20, TGT * 20)


TRUNCATED = r"{src}: the compressed file is truncated or corrupt after line (\d+)"

CASES = {
    "mismatched_line_counts": Case(
        mismatched, error=r"line counts differ: {src} has 60 lines but {tgt} has 59; "),
    "invalid_utf8": Case(
        invalid_utf8, error=r"{src}:17: invalid UTF-8 at byte 4 \(set data.on_bad_line: skip",
        tr_error=r"{src}:17: invalid UTF-8 at byte 4$"),
    "invalid_utf8_skipped": Case(
        invalid_utf8_both_sides, skip=True, read_skipped={"invalid UTF-8": 2}, lost={16, 29},
        tr_error=r"{src}:17: invalid UTF-8"),
    "nul_byte": Case(
        nul_byte, error=r"{src}:23: NUL byte \(set data.on_bad_line: skip",
        tr_error=r"{src}:23: NUL byte$"),
    "nul_byte_skipped": Case(
        nul_byte_both_sides, skip=True, read_skipped={"NUL byte": 2}, lost={22, 40},
        tr_error=r"{src}:23: NUL byte"),
    "crlf": Case(crlf),
    "lone_cr_inside_lines": Case(lone_cr),
    "cr_only_line_ends": Case(
        cr_only_line_ends, error=r"line counts differ: {src} has 1 lines but {tgt} has 60"),
    "utf8_bom": Case(utf8_bom),
    "utf16_bom": Case(
        utf16_bom, error=r"{src}:1: the file starts with a UTF-16 byte-order mark; it is UTF-16, "
                         r"not UTF-8",
        tr_error=r"{src}:1: the file starts with a UTF-16 byte-order mark"),
    "empty_and_whitespace_lines": Case(
        empty_and_whitespace, removed={"empty": 4}, lost={4, 7, 11, 14}),
    "line_100k_chars": Case(line_100k_chars, removed={"too_long": 2}, lost={19, 20}),
    "binary_garbage": Case(
        binary_garbage, error=r"{src}:4: invalid UTF-8 at byte 0 ",
        tr_error=r"{src}:4: invalid UTF-8 at byte 0$"),
    "gzip_without_gz_suffix": Case(
        gzip_without_gz_suffix, error=r"{src}:1: the data is gzip-compressed but is not read as gzip",
        tr_error=r"{src}:1: the data is gzip-compressed"),
    "rtl_and_combining": Case(rtl_and_combining),
    # truncation cannot be skipped: an error even with data.on_bad_line=skip
    "truncated_gzip": Case(truncated_gzip, skip=True, error=TRUNCATED, tr_error=TRUNCATED),
}

MARKER = re.compile(r".* n(\d+)\.", re.S)


def prepare(src: Path, tgt: Path, run: Path, *extra: str) -> int:
    return cli.main(["prepare", "--src", str(src), "--tgt", str(tgt), "--run-dir", str(run),
                     "--set", "data.valid_size=0", "--set", "data.test_size=0",
                     "--set", "vocab.size=200", *extra])


def one_line_error(err: str, others: bool = False) -> str:
    """The one stderr line of a user error (translate's '\\r' progress lines aside).

    `others`: a subprocess that imported TensorFlow also has TensorFlow's start-up log lines
    on stderr; then the error must be the last line and the only one of nmt-kd's.
    """
    assert "Traceback" not in err
    lines = [x for x in err.strip("\n").split("\n") if not x.startswith("\rtranslated ")]
    if others:
        assert [x for x in lines if x.startswith("nmt-kd:")] == lines[-1:], err
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("nmt-kd: error: "), err
    return lines[0]


def by_reason(skipped: dict[str, int]) -> dict[str, int]:
    """'invalid UTF-8 at byte 5' and '... at byte 9' are one reason."""
    out: dict[str, int] = {}
    for k, v in skipped.items():
        out[k.split(" at byte")[0]] = out.get(k.split(" at byte")[0], 0) + v
    return out


def check_translate_input(case: Case, c: Corpus, monkeypatch) -> None:
    sources = [str(c.src)]
    if c.src.suffix != ".gz":
        sources.append("-")  # the same bytes through stdin
    for where in sources:
        if where == "-":
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(c.src.read_bytes())))
        name = "<stdin>" if where == "-" else where
        if case.tr_error:
            with pytest.raises(UserError) as e:
                list(iter_input_lines(where))
            assert "\n" not in str(e.value)
            assert re.search(case.tr_error.format(src=re.escape(name)), str(e.value)), str(e.value)
        else:
            assert list(iter_input_lines(where)) == [normalize(x) for x in c.src_text]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_corpus(name, tmp_path, capfd, monkeypatch):
    case = CASES[name]
    c = case.make(tmp_path)
    run = tmp_path / "run"
    code = prepare(c.src, c.tgt, run, *(["--set", "data.on_bad_line=skip"] if case.skip else []))
    out, err = capfd.readouterr()
    if case.error:
        assert code == 2
        msg = one_line_error(err)
        pattern = case.error.format(src=re.escape(str(c.src)), tgt=re.escape(str(c.tgt)))
        m = re.search(pattern, msg)
        assert m, msg
        if case.error == TRUNCATED:
            assert 0 < int(m.group(1)) < 1200
        assert not (run / "data" / "manifest.json").exists()
    else:
        assert code == 0, err
        assert "error" not in err
        manifest = read_json(run / "data" / "manifest.json")
        assert by_reason(manifest["read"]["skipped"]) == case.read_skipped
        assert manifest["removed_from_train"] == case.removed
        if case.read_skipped:  # the skip is also in the log line
            assert f"skipped while reading: {manifest['read']['skipped']}" in out
        src_out = read_lines(run / "data" / "train.src")
        tgt_out = read_lines(run / "data" / "train.tgt")
        keep = [i for i in range(N) if i not in case.lost]
        assert [int(MARKER.fullmatch(x).group(1)) for x in src_out] == keep
        assert [int(MARKER.fullmatch(x).group(1)) for x in tgt_out] == keep
        assert manifest["counts"]["train"] == len(keep)
        # every kept line is the cleaned input line: no CR, BOM or NUL left, NFC applied
        assert src_out == [normalize(c.src_text[i]) for i in keep]
        assert tgt_out == [normalize(c.tgt_text[i]) for i in keep]
        assert not any(ch in x for x in src_out + tgt_out for ch in "\r\ufeff\x00")
        assert (run / "vocab" / "spm.model").is_file()
    check_translate_input(case, c, monkeypatch)


def test_rtl_and_combining_text_is_nfc_and_keeps_marks(tmp_path, capfd):
    c = rtl_and_combining(tmp_path)
    assert prepare(c.src, c.tgt, tmp_path / "run") == 0
    src = read_lines(tmp_path / "run/data/train.src")
    tgt = read_lines(tmp_path / "run/data/train.tgt")
    assert tgt[1] == "Café au lait\u200d n1." and "\u00e9" in tgt[1]  # e + U+0301 composed
    assert tgt[0] == "Café \u0301au lait\u200d n0."  # a lone combining mark has nothing to join
    assert src[0] == "\u200fשלום עולם\u200f مرحبا بالعالم n0."  # RLM marks kept
    assert "وَلَد" in src[2]  # harakat kept


# --- nmt-kd translate on a tiny untrained model ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_run, tmp_path_factory):
    import keras

    from nmt_kd.config import config_from_dict
    from nmt_kd.models.persistence import save_model_dir
    from nmt_kd.models.registry import build_model
    from nmt_kd.tokenizer import Tokenizer

    run, tree = tiny_run
    tok = Tokenizer(run / "vocab" / "spm.model")
    keras.utils.set_random_seed(7)
    model = build_model("student_rnn", config_from_dict(tree).model, tok.vocab_size)
    return save_model_dir(model, tmp_path_factory.mktemp("model") / "student", tok,
                          {"model_type": "student_rnn", "kd": "none"})


def translate(model: Path, inp: Path, out: Path, *extra: str) -> int:
    return cli.main(["translate", "--model", str(model), "--input", str(inp), "--output", str(out),
                     "--beam", "1", "--set", "decode.max_len_cap=16", *extra])


def test_cli_translate_messy_input_is_line_for_line(tiny_model, tmp_path, capfd):
    lines = [b"\xef\xbb\xbfThe dog runs.\r", b"", b"  \t ", b"A cat\rsits.", b"The man plays.\r",
             ("lorem " * 20_000).encode(), "\u200fשלום עולם\u200f".encode(), "Cafe\u0301.".encode(),
             b"\xc2\xa0"]
    inp = _write(tmp_path / "in.txt", lines)
    out = tmp_path / "out.txt"
    assert translate(tiny_model, inp, out) == 0
    err = capfd.readouterr().err
    assert "Traceback" not in err and "1 input lines were longer than decode.max_src_len" in err
    hyps = out.read_text(encoding="utf-8").split("\n")
    assert len(hyps) == len(lines) + 1 and hyps[-1] == ""
    assert hyps[1] == hyps[2] == hyps[8] == ""  # empty and whitespace-only lines stay empty


def test_cli_translate_bad_line_late_in_the_input_keeps_previous_output(tiny_model, tmp_path, capfd):
    src = [f"{s} {i}" for i, (s, _) in enumerate(toy_pairs(140, seed=9))]
    raw = [x.encode() for x in src]
    raw[129] = b"bad \xfe byte"
    inp = _write(tmp_path / "in.txt", raw)
    out = tmp_path / "out.txt"
    out.write_text("previous output\n", encoding="utf-8")
    # two chunks of 50 lines are translated and written before line 130 is read
    assert translate(tiny_model, inp, out, "--chunk-lines", "50") == 2
    msg = one_line_error(capfd.readouterr().err)
    assert msg == f"nmt-kd: error: {inp}:130: invalid UTF-8 at byte 4"
    assert out.read_text(encoding="utf-8") == "previous output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]  # no temp file


def test_chunked_translation_equals_unchunked(tiny_model, tmp_path, capfd):
    src = [s for s, _ in toy_pairs(150, seed=11)]
    for i in (3, 60, 149):
        src[i] = ""
    inp = tmp_path / "in.txt"
    inp.write_text("".join(x + "\n" for x in src), encoding="utf-8")
    outs = {}
    for chunk in (50, 1000):  # three chunks; one chunk holding everything
        outs[chunk] = tmp_path / f"out{chunk}.txt"
        # batch size 1: each sentence is decoded alone, so the two runs do the same arithmetic
        assert translate(tiny_model, inp, outs[chunk], "--chunk-lines", str(chunk),
                         "--batch-size", "1") == 0, capfd.readouterr().err
    chunked = read_lines(outs[50])
    assert chunked == read_lines(outs[1000])
    assert len(chunked) == 150 and all(chunked[i] == "" for i in (3, 60, 149))
    assert len(set(chunked)) > 50  # outputs differ by input, so a shifted line would show
    # an error in the third chunk names the line in the whole input, not in its chunk
    src[120] = " ".join(["dog"] * 200)
    inp.write_text("".join(x + "\n" for x in src), encoding="utf-8")
    assert translate(tiny_model, inp, outs[50], "--chunk-lines", "50", "--set",
                     "decode.max_src_len=100", "--set", "decode.on_long_line=error") == 2
    assert "input line 121 has" in one_line_error(capfd.readouterr().err)
    assert read_lines(outs[50]) == chunked


def test_translate_stream_matches_translate(tiny_model):
    from nmt_kd.config import DecodeConfig
    from nmt_kd.translate import open_translator

    tr, _, _ = open_translator(tiny_model, DecodeConfig(max_len_cap=16))
    src = [s for s, _ in toy_pairs(23, seed=2)] + ["", "  "]
    whole = tr.translate(src, beam=1, batch_size=1).hypotheses
    parts = list(tr.translate_stream(iter(src), chunk_lines=7, beam=1, batch_size=1))
    assert [len(p.hypotheses) for p in parts] == [7, 7, 7, 4]
    assert [h for p in parts for h in p.hypotheses] == whole
    with pytest.raises(UserError, match="at least 1 line"):
        list(tr.translate_stream(src, chunk_lines=0))


# --- a full disk: the write fails, the stage fails in one line, old outputs stay -------------


def run_limited(args: list[str], max_file_bytes: int) -> subprocess.CompletedProcess:
    """`nmt-kd ARGS` in a subprocess whose files cannot grow past `max_file_bytes`.

    With SIGXFSZ ignored, a write past RLIMIT_FSIZE fails with EFBIG, as a full disk fails
    with ENOSPC: the same path through the code, without filling a real disk.
    """
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([sys.executable, "-m", "nmt_kd.cli", *args], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit)


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): sha256_file(p)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_full_disk_during_prepare_keeps_every_previous_file(tmp_path, capfd):
    (tmp_path / "old").mkdir()
    old = _files(tmp_path / "old", SRC, TGT)
    run = tmp_path / "run"
    assert prepare(old.src, old.tgt, run) == 0
    capfd.readouterr()
    before = snapshot(run)
    # the new train.src (~2 KB) fits under the limit, the new train.tgt (~12 KB) does not:
    # the failure comes after one new file is complete, which must not replace the old one
    (tmp_path / "new").mkdir()
    long_tgt = [" ".join(w * 12 for w in t.split()) for t in TGT]
    new = _files(tmp_path / "new", [s.replace("n", "N", 1) for s in SRC], long_tgt)
    limit = 6000
    assert new.src.stat().st_size < limit < new.tgt.stat().st_size
    r = run_limited(["prepare", "--src", str(new.src), "--tgt", str(new.tgt), "--run-dir", str(run),
                     "--set", "data.valid_size=0", "--set", "data.test_size=0",
                     "--set", "vocab.size=200", "--set", "data.max_chars=100000",
                     "--set", "data.max_length_ratio=100"], limit)
    assert r.returncode == 2, r.stderr
    msg = one_line_error(r.stderr)
    assert "file too large" in msg and f"while writing {run / 'data' / 'train.tgt'};" in msg
    assert "intact" in msg
    assert snapshot(run) == before  # same files, same bytes: nothing new, nothing partial


def test_full_disk_during_translate_keeps_the_previous_output(tiny_model, tmp_path):
    rng = random.Random(4)
    words = [w for s, _ in toy_pairs(50, seed=4) for w in s.split()]
    inp = _write(tmp_path / "in.txt", [" ".join(rng.choices(words, k=40)).encode() for _ in range(300)])
    out = tmp_path / "out.txt"
    out.write_text("previous output\n", encoding="utf-8")
    # up to 64 pieces a line (~30 bytes on average): the output passes 4 KB after a few chunks
    r = run_limited(["translate", "--model", str(tiny_model), "--input", str(inp), "--output",
                     str(out), "--beam", "1", "--set", "decode.max_len_cap=64",
                     "--chunk-lines", "50"], 4096)
    assert r.returncode == 2, r.stderr[-2000:]
    # (like a really full disk, the limit also stops AutoGraph's temporary source files; it
    # then runs the decoding functions unconverted, which is a warning on stderr, not an error)
    msg = one_line_error(r.stderr, others=True)
    assert f"while writing {out};" in msg and "file too large" in msg
    assert out.read_text(encoding="utf-8") == "previous output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]


def test_write_errors_that_mean_no_room_are_one_line(monkeypatch, capsys):
    for code, words in ((errno.ENOSPC, "no space left"), (errno.EDQUOT, "quota"),
                        (errno.EFBIG, "file too large")):
        def full(*_a, _code=code, **_k):
            raise OSError(_code, "x")

        monkeypatch.setattr(cli, "cmd_prepare", full)
        assert cli.main(["prepare", "--src", "a", "--tgt", "b"]) == 2
        assert words in one_line_error(capsys.readouterr().err)

    def other(*_a, **_k):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cli, "cmd_prepare", other)
    with pytest.raises(PermissionError):  # not a "no room" error: stays a visible bug/traceback
        cli.main(["prepare", "--src", "a", "--tgt", "b"])


def test_staging_left_by_a_killed_process_is_removed_by_the_next_write(tmp_path):
    import os

    from nmt_kd.fileio import staged_files

    out = tmp_path / "data"
    dead = out / ".staging.999999999.abc"  # no such process
    live = out / f".staging.{os.getpid()}.xyz"  # a writer still running (this one)
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "train.src").write_text("half\n")
    with staged_files(out) as staging:
        (staging / "train.src").write_text("new\n")
        (staging / "manifest.json").write_text("{}")
    assert not dead.exists() and live.is_dir()
    assert (out / "train.src").read_text() == "new\n"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["manifest.json", "train.src"]
