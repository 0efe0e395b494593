"""Parallel corpus readers: two line-aligned files, TSV, JSONL and Hugging Face `datasets`.

Every reader yields `(src, tgt)` string pairs and never lets the two sides drift apart:
lines are split on '\\n' only (a lone '\\r' inside a line stays inside that line and is
cleaned later; a trailing '\\r' of a CRLF line end is removed), a UTF-8 BOM at the start of
a file is dropped (a UTF-16/32 one is refused), and `.gz` files are read transparently
(a truncated one is an error naming the last complete line). A line that cannot be decoded
(invalid UTF-8, NUL bytes, a malformed TSV/JSON record) is either an error naming the file
and line (`on_bad_line="error"`) or a counted skip of the whole pair (`on_bad_line="skip"`).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nmt_kd.errors import CorpusError


@dataclass
class ReadStats:
    """What a reader skipped, by reason ('invalid UTF-8', 'NUL byte', ...)."""

    pairs: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # a few 'file:line: reason' strings

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {reason}")

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


class _BadLine(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _open_binary(path: Path):
    if not path.exists():
        raise CorpusError(f"corpus file not found: {path}")
    if path.is_dir():
        raise CorpusError(f"corpus path is a directory, not a file: {path}")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


# Byte-order marks of encodings that are not UTF-8 (longest first: UTF-32 LE starts like UTF-16 LE).
_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
               (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def split_raw_lines(f, where: str | Path, gzipped: bool = False) -> Iterator[bytes]:
    """Yield the lines of an open binary stream, split on b'\\n' only, without the line end.

    A UTF-8 BOM at the start is dropped; a UTF-16/UTF-32 BOM, or gzip data in a file whose
    name does not end in .gz, is an error (every line would be garbage).
    """
    lineno = 0
    try:
        for raw in f:
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            lineno += 1
            if lineno == 1:
                raw = _check_start(raw, where, gzipped)
            yield raw
    except (EOFError, OSError, zlib.error) as e:
        if not gzipped:
            raise
        raise CorpusError(f"{where}: the compressed file is truncated or corrupt after line "
                          f"{lineno} ({e})") from None


def _check_start(raw: bytes, where: str | Path, gzipped: bool) -> bytes:
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:]
    for bom, name in _OTHER_BOMS:
        if raw.startswith(bom):
            raise CorpusError(f"{where}:1: the file starts with a {name} byte-order mark; it is "
                              f"{name}, not UTF-8 (convert it, e.g. iconv -f {name} -t UTF-8)")
    if raw.startswith(b"\x1f\x8b") and not gzipped:
        raise CorpusError(f"{where}:1: the data is gzip-compressed but is not read as gzip "
                          "(name the file *.gz, or decompress it)")
    return raw


def iter_raw_lines(path: str | Path) -> Iterator[bytes]:
    """Yield the lines of a file as bytes (see `split_raw_lines`); `.gz` files are decompressed."""
    path = Path(path)
    with _open_binary(path) as f:
        yield from split_raw_lines(f, path, gzipped=path.suffix == ".gz")


def decode_line(raw: bytes) -> str:
    """Decode one line; raise _BadLine for invalid UTF-8 or NUL bytes."""
    if b"\x00" in raw:
        raise _BadLine("NUL byte")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _BadLine(f"invalid UTF-8 at byte {e.start}") from None


def _count_rest(it: Iterator[bytes]) -> int:
    return sum(1 for _ in it)


def read_text_pairs(
    src_path: str | Path, tgt_path: str | Path, on_bad_line: str = "error",
    stats: ReadStats | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield aligned pairs from two line-aligned files; mismatched line counts are an error."""
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    stats = stats if stats is not None else ReadStats()
    src_it, tgt_it = iter_raw_lines(src_path), iter_raw_lines(tgt_path)
    lineno = 0
    while True:
        s = next(src_it, None)
        t = next(tgt_it, None)
        if s is None and t is None:
            return
        lineno += 1
        if s is None or t is None:
            n_src = lineno - 1 + (0 if s is None else 1 + _count_rest(src_it))
            n_tgt = lineno - 1 + (0 if t is None else 1 + _count_rest(tgt_it))
            raise CorpusError(
                f"line counts differ: {src_path} has {n_src} lines but {tgt_path} has "
                f"{n_tgt}; the files must be line-aligned"
            )
        pair = []
        for raw, path in ((s, src_path), (t, tgt_path)):
            try:
                pair.append(decode_line(raw))
            except _BadLine as e:
                if on_bad_line == "error":
                    raise CorpusError(
                        f"{path}:{lineno}: {e.reason} (set data.on_bad_line: skip to drop such pairs)"
                    ) from None
                stats.skip(e.reason, f"{path}:{lineno}")
                break
        if len(pair) == 2:
            stats.pairs += 1
            yield pair[0], pair[1]


def read_tsv_pairs(
    path: str | Path, src_column: int = 0, tgt_column: int = 1, on_bad_line: str = "error",
    stats: ReadStats | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield pairs from the given columns of a tab-separated file."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    need = max(src_column, tgt_column) + 1
    for lineno, raw in enumerate(iter_raw_lines(path), 1):
        try:
            line = decode_line(raw)
            cols = line.split("\t")
            if len(cols) < need:
                raise _BadLine(f"expected at least {need} tab-separated columns, found {len(cols)}")
        except _BadLine as e:
            if on_bad_line == "error":
                raise CorpusError(f"{path}:{lineno}: {e.reason}") from None
            stats.skip(e.reason.split(",")[0], f"{path}:{lineno}")
            continue
        stats.pairs += 1
        yield cols[src_column], cols[tgt_column]


def _get_field(obj, dotted: str):
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(dotted)
        obj = obj[part]
    return obj


def _pair_from_record(record, src_field: str, tgt_field: str) -> tuple[str, str]:
    try:
        s, t = _get_field(record, src_field), _get_field(record, tgt_field)
    except KeyError as e:
        raise _BadLine(f"record has no field {e.args[0]!r}") from None
    if not isinstance(s, str) or not isinstance(t, str):
        raise _BadLine(f"fields {src_field!r} and {tgt_field!r} must be strings")
    return s, t


def read_jsonl_pairs(
    path: str | Path, src_field: str = "src", tgt_field: str = "tgt", on_bad_line: str = "error",
    stats: ReadStats | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield pairs from a JSON-lines file (one object per line; dotted field paths allowed)."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    for lineno, raw in enumerate(iter_raw_lines(path), 1):
        try:
            line = decode_line(raw)
            if not line.strip():
                raise _BadLine("empty line")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise _BadLine(f"not valid JSON ({e.msg})") from None
            pair = _pair_from_record(record, src_field, tgt_field)
        except _BadLine as e:
            if on_bad_line == "error":
                raise CorpusError(f"{path}:{lineno}: {e.reason}") from None
            stats.skip(e.reason, f"{path}:{lineno}")
            continue
        stats.pairs += 1
        yield pair


def read_hf_pairs(
    name: str, config: str | None = None, split: str = "train", data_files: str | None = None,
    src_lang: str = "en", tgt_lang: str = "de", src_field: str = "src", tgt_field: str = "tgt",
    on_bad_line: str = "error", stats: ReadStats | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield pairs from a Hugging Face `datasets` dataset.

    Rows with a `translation` column ({lang: text}, the WMT/opus layout) use `src_lang` and
    `tgt_lang`; other rows use `src_field` / `tgt_field`. `name` may be a hub dataset
    (needs internet) or a local builder such as "json" or "csv" with `data_files`.
    """
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency of the package
        raise CorpusError("the 'datasets' package is needed for data.source: hf") from None
    where = f"hf:{name}" + (f"/{config}" if config else "") + f"[{split}]"
    kwargs = {"split": split}
    if data_files:
        kwargs["data_files"] = data_files
    try:
        ds = datasets.load_dataset(name, config, **kwargs)
    except Exception as e:  # datasets raises many kinds; all mean "cannot load this"
        raise CorpusError(
            f"cannot load the datasets corpus {where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(without internet, point data.source at local files: files, tsv or jsonl)"
        ) from None
    stats = stats if stats is not None else ReadStats()
    use_translation = "translation" in ds.column_names
    for i, row in enumerate(ds):
        try:
            if use_translation:
                pair = _pair_from_record(row["translation"], src_lang, tgt_lang)
            else:
                pair = _pair_from_record(row, src_field, tgt_field)
        except _BadLine as e:
            if on_bad_line == "error":
                raise CorpusError(f"{where} row {i}: {e.reason}") from None
            stats.skip(e.reason, f"{where} row {i}")
            continue
        stats.pairs += 1
        yield pair
