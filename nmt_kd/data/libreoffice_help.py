"""Built-in corpus recipe: a human-translated parallel corpus from LibreOffice's help.

Debian ships LibreOffice's offline help as one package per language
(`libreoffice-help-en-us`, `libreoffice-help-de`, ...). Every package holds the same HTML
pages under ``usr/share/libreoffice/help/<LANGDIR>/text/**/*.html``, and inside each page's
``<div id="DisplayArea">`` every translatable block (``<p>``, ``<h1>``..``<h6>``, table-cell
and list paragraphs) carries a stable id (``par_id3146957``, ``hd_id3147291``, ...). The same
page path and the same id in another language's package is the human translation of that
block, so aligning two packages by (page, id) gives a sentence/paragraph-aligned corpus.
The help content is licensed MPL-2.0.

Extraction rules (see `extract_paragraphs`):

* only elements inside ``<div id="DisplayArea">`` count (the header, index, search box and
  the debug footer are page chrome, not content);
* a unit is a block element (p, h, h1..h6, li, td, th, dt, dd, caption) with an ``id``;
  its text is all the text inside it except the text of nested units, which are units of
  their own;
* inline OS/application switches (``<span class="switchinline">``) hold alternatives as
  ``hidden`` spans (``MAC...``, ``WRITER...``, ``default...``): only the ``default...``
  variant is kept, the rest is dropped (no default means the switch contributes nothing);
* block-level switches (``<span class="switch">``) hold whole paragraphs with ids of their
  own; those are ordinary, fully translated paragraphs and are kept;
* tags are dropped (links keep their text), entities decoded, ``<br>`` and block boundaries
  become spaces, all whitespace runs (including newlines, tabs, no-break spaces) collapse to
  one space and the text is stripped;
* an id that occurs more than once in one page (the help embeds shared snippets, and a few
  pages reuse ids) is keyed ``id``, ``id#2``, ``id#3``... by occurrence. Both languages'
  pages come from the same source, so occurrences line up -- except on pages whose sections
  are sorted by translated titles (Calc function lists); there a repeated id is kept only
  when all its occurrences carry the same text (one embedded snippet), else skipped.

Alignment rules (see `align_trees`): pages present in only one language and ids present in
only one language are skipped and counted; pairs where either side is empty are skipped; pairs
whose two sides are exactly identical are skipped by default (these are untranslated
strings, code lines, product and file-format names and numbers, which would only teach a
model to copy its input). Repeated ids that cannot be paired safely are skipped and counted.

`build_corpus` also drops exact duplicate (source, target) pairs, keeping the first: the
help embeds the same snippets ("Example" -> "Beispiel", shared notes) in hundreds of pages.
"""

from __future__ import annotations

import bz2
import contextlib
import datetime as _dt
import gzip
import io
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from nmt_kd.errors import CorpusError
from nmt_kd.fileio import atomic_open, read_json, write_json, write_lines

__all__ = [
    "package_name",
    "help_lang_dir",
    "extract_paragraphs",
    "align_trees",
    "download_packages",
    "unpack_deb",
    "build_corpus",
    "HELP_SUBDIR",
    "LICENSE",
]

HELP_SUBDIR = Path("usr/share/libreoffice/help")
LICENSE = "MPL-2.0"
SOURCE_URL = "https://help.libreoffice.org/ (Debian packages libreoffice-help-<lang>)"

_HOW_ELSE = (
    "To use another corpus instead, set `data.source: files` with `data.train_src` / "
    "`data.train_tgt` (line-aligned text files), or `data.source: tsv` / `data.source: jsonl`; "
    "or unpack the packages yourself (`dpkg-deb -x PKG.deb DIR`) and pass that directory as "
    "tree_root."
)

_LANG_RE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")

# Debian calls plain English "en-us"; every other code maps 1:1 (lower case, '-' separated).
_PACKAGE_ALIASES = {"en": "en-us"}
_DIR_ALIASES = {"en": "en-US"}


def _norm_lang(lang: str) -> str:
    if not isinstance(lang, str) or not _LANG_RE.match(lang.strip()):
        raise CorpusError(
            f"invalid language code {lang!r} for the LibreOffice help corpus "
            "(expected something like 'en', 'de', 'pt-br')"
        )
    return lang.strip().replace("_", "-").lower()


def package_name(lang: str) -> str:
    """Debian package holding the help in `lang`: "en" -> "libreoffice-help-en-us"."""
    code = _norm_lang(lang)
    return "libreoffice-help-" + _PACKAGE_ALIASES.get(code, code)


def help_lang_dir(lang: str) -> str:
    """Directory name under usr/share/libreoffice/help: "en" -> "en-US", "pt-br" -> "pt-BR"."""
    code = _norm_lang(lang)
    if code in _DIR_ALIASES:
        return _DIR_ALIASES[code]
    parts = code.split("-")
    out = [parts[0]]
    for sub in parts[1:]:
        if len(sub) == 4 and sub.isalpha():  # script subtag: sr-latn -> sr-Latn
            out.append(sub.title())
        elif len(sub) in (2, 3):  # region: pt-br -> pt-BR
            out.append(sub.upper())
        else:
            out.append(sub)
    return "-".join(out)


# --------------------------------------------------------------------------------------
# HTML extraction

_UNIT_TAGS = frozenset({"p", "h", "h1", "h2", "h3", "h4", "h5", "h6",
                        "li", "td", "th", "dt", "dd", "caption"})
_VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link",
                        "meta", "param", "source", "track", "wbr"})
_INLINE_TAGS = frozenset({"a", "abbr", "b", "bdi", "bdo", "big", "cite", "code", "data", "dfn",
                          "em", "font", "i", "kbd", "label", "mark", "q", "s", "samp", "small",
                          "span", "strong", "sub", "sup", "time", "tt", "u", "var"})
_SKIP_TAGS = frozenset({"script", "style", "template", "noscript"})


def _normalise(text: str) -> str:
    """Collapse every whitespace run (newline, tab, no-break space, ...) to one space; strip."""
    return " ".join(text.split())


class _Frame:
    __slots__ = ("tag", "classes", "unit", "skip", "area")

    def __init__(self, tag: str, classes: tuple[str, ...]):
        self.tag = tag
        self.classes = classes
        self.unit: list[str] | None = None  # text parts if this element opened a unit
        self.skip = False  # this element's content is dropped
        self.area = False  # this element is <div id="DisplayArea">


class _ParagraphParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[_Frame] = []
        self.units: dict[str, str | None] = {}  # id -> text (None while still open)
        self._owners: list[tuple[_Frame, str]] = []  # open units: frame, id
        self._seen: dict[str, int] = {}  # id -> occurrences so far
        self._skipping = 0
        self._in_area = False
        self._done = False

    # helpers -----------------------------------------------------------------------
    def _current(self) -> list[str] | None:
        for frame in reversed(self.stack):
            if frame.unit is not None:
                return frame.unit
        return None

    def _emit(self, text: str) -> None:
        if self._in_area and not self._done and not self._skipping:
            parts = self._current()
            if parts is not None:
                parts.append(text)

    def _close(self, frame: _Frame) -> None:
        if frame.skip:
            self._skipping -= 1
        if frame.unit is not None:
            for i in range(len(self._owners) - 1, -1, -1):
                if self._owners[i][0] is frame:
                    _, uid = self._owners.pop(i)
                    self.units[uid] = _normalise("".join(frame.unit))
                    break
        if frame.area:
            self._done = True
        if frame.tag not in _INLINE_TAGS:
            self._emit(" ")

    # HTMLParser callbacks ----------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._done:
            return
        if tag in _VOID_TAGS:
            if tag in ("br", "hr"):
                self._emit(" ")
            return
        attr = {k: (v or "") for k, v in attrs}
        elem_id = attr.get("id", "").strip()
        parent = self.stack[-1] if self.stack else None
        frame = _Frame(tag, tuple(attr.get("class", "").split()))
        if tag not in _INLINE_TAGS:
            self._emit(" ")  # block boundary inside a unit
        self.stack.append(frame)
        if not self._in_area:
            if tag == "div" and elem_id == "DisplayArea":
                frame.area = True
                self._in_area = True
            return
        if tag in _SKIP_TAGS or (
            "hidden" in attr
            and parent is not None
            and "switchinline" in parent.classes
            and not elem_id.startswith("default")
        ):
            frame.skip = True
            self._skipping += 1
            return
        if tag in _UNIT_TAGS and elem_id and not self._skipping:
            # Some pages reuse an id (embedded snippets, copy-pasted table rows): the n-th
            # occurrence (n >= 2) is keyed "id#n"; both languages share the page structure.
            self._seen[elem_id] = n = self._seen.get(elem_id, 0) + 1
            key = elem_id if n == 1 else f"{elem_id}#{n}"
            frame.unit = []
            self.units[key] = None
            self._owners.append((frame, key))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._done or tag in _VOID_TAGS:
            return
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i].tag == tag:
                break
        else:
            return  # stray end tag: ignore
        while len(self.stack) > i:
            self._close(self.stack.pop())

    def handle_data(self, data: str) -> None:
        self._emit(data)

    def close(self) -> None:
        super().close()
        while self.stack:  # unclosed elements at end of input
            self._close(self.stack.pop())


def extract_paragraphs(html: str) -> dict[str, str]:
    """Map each translatable block id in the page's DisplayArea to its normalised text.

    Document order (by opening tag); the n-th repetition (n >= 2) of an id is keyed
    ``"<id>#<n>"``. Empty units are included with text "" so that callers can tell "empty"
    from "absent". See the module docstring for the rules.
    """
    parser = _ParagraphParser()
    parser.feed(html)
    parser.close()
    return {k: (v or "") for k, v in parser.units.items()}


# --------------------------------------------------------------------------------------
# Alignment

def _pages(root: Path) -> set[str]:
    text = root / "text"
    if not text.is_dir():
        return set()
    return {p.relative_to(root).as_posix() for p in text.rglob("*.html") if p.is_file()}


def _read_page(path: Path) -> dict[str, str]:
    try:
        return extract_paragraphs(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CorpusError(f"help page {path} is not valid UTF-8 ({e})") from None
    except OSError as e:
        raise CorpusError(f"cannot read help page {path}: {e}") from None


def _base_id(key: str) -> str:
    base, sep, n = key.rpartition("#")
    return base if sep and n.isdigit() else key


def _ambiguous_keys(src: dict[str, str], tgt: dict[str, str]) -> set[str]:
    """Keys of repeated ids whose occurrences cannot be paired safely by their number.

    Occurrence numbers line up when both pages list their shared ids in the same order. Some
    pages do not (Calc's function lists are sorted by the translated function name), and
    there an id repeated with different texts (not just one embedded snippet) is skipped.
    """
    if [k for k in src if k in tgt] == [k for k in tgt if k in src]:
        return set()  # same order (ignoring ids that exist in one language only)
    groups: dict[str, list[str]] = {}
    for key in (*src, *tgt):
        groups.setdefault(_base_id(key), []).append(key)
    out: set[str] = set()
    for keys in groups.values():
        if len(keys) <= 2 and len(set(keys)) == 1:
            continue  # a single occurrence in each language
        if len({src[k] for k in keys if k in src}) > 1 or len({tgt[k] for k in keys if k in tgt}) > 1:
            out.update(keys)
    return out


def align_trees(
    src_root: Path,
    tgt_root: Path,
    *,
    keep_identical: bool = False,
    stats: dict[str, int] | None = None,
) -> Iterator[tuple[str, str, str, str]]:
    """Yield (page_rel_path, para_id, src_text, tgt_text) for every block translated in both.

    `src_root` / `tgt_root` are language help directories (the ones holding ``text/``, e.g.
    ``.../usr/share/libreoffice/help/en-US``). Pages are visited in sorted path order, ids
    in the source page's document order. Skipped: pages or ids present in one language only,
    pairs with an empty side, and (unless `keep_identical`) pairs with identical sides.
    If `stats` is given it is filled with counters as the iteration proceeds.
    """
    src_root, tgt_root = Path(src_root), Path(tgt_root)
    for root in (src_root, tgt_root):
        if not (root / "text").is_dir():
            raise CorpusError(f"{root} is not a LibreOffice help language directory "
                              "(it has no text/ folder)")
    st = stats if stats is not None else {}
    for key in ("pages_src", "pages_tgt", "pages_aligned", "pages_src_only", "pages_tgt_only",
                "units_src_only", "units_tgt_only", "ambiguous", "empty", "identical", "pairs"):
        st[key] = 0
    src_pages, tgt_pages = _pages(src_root), _pages(tgt_root)
    common = sorted(src_pages & tgt_pages)
    st.update(pages_src=len(src_pages), pages_tgt=len(tgt_pages), pages_aligned=len(common),
              pages_src_only=len(src_pages - tgt_pages), pages_tgt_only=len(tgt_pages - src_pages))
    for rel in common:
        src = _read_page(src_root / rel)
        tgt = _read_page(tgt_root / rel)
        st["units_tgt_only"] += sum(1 for k in tgt if k not in src)
        ambiguous = _ambiguous_keys(src, tgt)
        for pid, s in src.items():
            t = tgt.get(pid)
            if t is None:
                st["units_src_only"] += 1
            elif pid in ambiguous:
                st["ambiguous"] += 1
            elif not s or not t:
                st["empty"] += 1
            elif s == t and not keep_identical:
                st["identical"] += 1
            else:
                st["pairs"] += 1
                yield rel, pid, s, t


# --------------------------------------------------------------------------------------
# Debian packages

def download_packages(langs: list[str], dest: Path) -> dict[str, Path]:
    """`apt-get download` the help package of each language into `dest`; lang -> .deb path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    pkgs = {lang: package_name(lang) for lang in langs}
    apt = shutil.which("apt-get")
    if apt is None:
        raise CorpusError(
            f"cannot download {', '.join(pkgs.values())}: `apt-get` is not available on this "
            f"machine (the LibreOffice help corpus is built from Debian packages). {_HOW_ELSE}"
        )
    out: dict[str, Path] = {}
    for lang, pkg in pkgs.items():
        try:
            proc = subprocess.run([apt, "download", pkg], cwd=dest, capture_output=True,
                                  text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            raise CorpusError(f"`apt-get download {pkg}` could not run ({e}). {_HOW_ELSE}") from None
        debs = sorted(dest.glob(f"{pkg}_*.deb"), key=lambda p: p.stat().st_mtime)
        if proc.returncode != 0 or not debs:
            detail = " ".join((proc.stderr or proc.stdout or "").split())[-400:]
            raise CorpusError(
                f"could not download Debian package {pkg} for language {lang!r} "
                f"(`apt-get download {pkg}` exited {proc.returncode}"
                f"{': ' + detail if detail else ''}); the package may not exist for this "
                f"language or the package archive is unreachable (try `apt-get update`). "
                f"{_HOW_ELSE}"
            )
        out[lang] = debs[-1]
    return out


def _ar_members(deb: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (name, data) for each member of an `ar` archive (the .deb container)."""
    try:
        data = Path(deb).read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read {deb}: {e}") from None
    if not data.startswith(b"!<arch>\n"):
        raise CorpusError(f"{deb} is not a Debian package (no ar archive header)")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        if header[58:60] != b"`\n":
            raise CorpusError(f"{deb} is corrupt (bad ar member header at byte {pos})")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise CorpusError(f"{deb} is corrupt (bad ar member size at byte {pos})") from None
        start = pos + 60
        if start + size > len(data):
            raise CorpusError(f"{deb} is truncated (member {name!r} needs {size} bytes)")
        yield name, data[start:start + size]
        pos = start + size + (size & 1)  # members are 2-byte aligned


def _decompress(name: str, payload: bytes, deb: Path) -> bytes | None:
    """Decompress a `*.tar.<ext>` member; None when Python cannot (zstd without a module)."""
    ext = name.rsplit(".", 1)[-1] if name.count(".") >= 2 else "tar"
    if ext == "tar":
        return payload
    if ext == "xz" or ext == "lzma":
        return lzma.decompress(payload)
    if ext == "gz":
        return gzip.decompress(payload)
    if ext == "bz2":
        return bz2.decompress(payload)
    if ext == "zst":
        for mod in ("compression.zstd", "zstandard"):  # Python 3.14+, then PyPI zstandard
            with contextlib.suppress(ImportError):
                m = __import__(mod, fromlist=["_"])
                if mod == "zstandard":
                    return m.ZstdDecompressor().stream_reader(io.BytesIO(payload)).read()
                return m.decompress(payload)
        return None
    raise CorpusError(f"{deb}: unsupported compression for member {name!r}")


def _safe_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """tarfile's 'data' filter, but skip (not fail on) members it refuses, e.g. absolute links."""
    try:
        return tarfile.data_filter(member, path)
    except tarfile.FilterError:
        return None


def _tar_member(deb: Path, prefix: str) -> tuple[str, bytes | None]:
    for name, payload in _ar_members(deb):
        if name.startswith(prefix):
            try:
                return name, _decompress(name, payload, deb)
            except (lzma.LZMAError, OSError, EOFError, ValueError) as e:
                raise CorpusError(f"{deb}: cannot decompress {name} ({e})") from None
    raise CorpusError(f"{deb} has no {prefix}* member; is it a Debian package?")


def unpack_deb(deb: Path, dest: Path) -> Path:
    """Extract the package's files (its data.tar.*) under `dest`, like `dpkg-deb -x`.

    Pure Python for uncompressed, gzip, bzip2 and xz data (Debian 12's help packages use xz);
    zstd is read with `compression.zstd` / `zstandard` when importable, else by `dpkg-deb -x`.
    """
    deb, dest = Path(deb), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name, tar_bytes = _tar_member(deb, "data.tar")
    if tar_bytes is None:
        dpkg = shutil.which("dpkg-deb")
        if dpkg is None:
            raise CorpusError(
                f"{deb}: {name} is zstd-compressed and neither a Python zstd module nor "
                f"`dpkg-deb` is available (pip install zstandard). {_HOW_ELSE}"
            )
        proc = subprocess.run([dpkg, "-x", str(deb), str(dest)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise CorpusError(f"`dpkg-deb -x {deb}` failed: {proc.stderr.strip()[-400:]}")
        return dest
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tf:
            tf.extractall(dest, filter=_safe_filter)
    except tarfile.TarError as e:
        raise CorpusError(f"{deb}: corrupt {name} ({e})") from None
    return dest


def deb_version(deb: Path) -> str | None:
    """The Version field of a .deb's control file (None if it cannot be read)."""
    try:
        _, tar_bytes = _tar_member(deb, "control.tar")
        if tar_bytes is None:
            return None
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tf:
            for m in tf.getmembers():
                if m.name.lstrip("./") == "control" and m.isfile():
                    f = tf.extractfile(m)
                    text = f.read().decode("utf-8", "replace") if f else ""
                    match = re.search(r"^Version:\s*(\S+)", text, re.M)
                    return match.group(1) if match else None
    except (CorpusError, tarfile.TarError):
        return None
    return None


def _tree_version(tree_root: Path, pkg: str) -> str | None:
    """Package version from usr/share/doc/<pkg>/changelog.Debian.gz in an unpacked tree."""
    log = tree_root / "usr/share/doc" / pkg / "changelog.Debian.gz"
    with contextlib.suppress(OSError, EOFError, gzip.BadGzipFile):
        with gzip.open(log, "rt", encoding="utf-8", errors="replace") as f:
            match = re.match(r"\S+ \(([^)]+)\)", f.readline())
            return match.group(1) if match else None
    return None


# --------------------------------------------------------------------------------------
# Corpus recipe

def _lang_root(tree_root: Path, lang: str) -> Path:
    root = tree_root / HELP_SUBDIR / help_lang_dir(lang)
    if not (root / "text").is_dir():
        base = tree_root / HELP_SUBDIR
        have = sorted(p.name for p in base.iterdir() if (p / "text").is_dir()) if base.is_dir() else []
        raise CorpusError(
            f"no LibreOffice help for language {lang!r} under {tree_root} (expected "
            f"{root}/text; found languages: {', '.join(have) or 'none'}); unpack package "
            f"{package_name(lang)} there (`dpkg-deb -x`). {_HOW_ELSE}"
        )
    return root


def _aligned_pairs(src: str, tgt: str, work: Path, tree_root: Path | None, log):
    """(packages, unique aligned pairs, stats): from `tree_root`, or from the two packages
    downloaded and unpacked under `work` (removed afterwards)."""
    packages = {lang: {"name": package_name(lang), "version": None} for lang in (src, tgt)}
    try:
        if tree_root is None:
            shutil.rmtree(work, ignore_errors=True)
            log(f"libreoffice_help: downloading {packages[src]['name']} and "
                f"{packages[tgt]['name']} with apt-get")
            debs = download_packages([src, tgt], work / "debs")
            for lang, deb in debs.items():
                packages[lang]["version"] = deb_version(deb)
                packages[lang]["file"] = deb.name
                unpack_deb(deb, work / "tree")
            root = work / "tree"
        else:
            root = Path(tree_root)
            for lang in (src, tgt):
                packages[lang]["version"] = _tree_version(root, packages[lang]["name"])
        src_root, tgt_root = _lang_root(root, src), _lang_root(root, tgt)
        stats: dict[str, int] = {}
        pairs = []
        seen: set[tuple[str, str]] = set()
        for pair in align_trees(src_root, tgt_root, stats=stats):
            if (pair[2], pair[3]) not in seen:  # embedded snippets repeat across pages
                seen.add((pair[2], pair[3]))
                pairs.append(pair)
        stats["duplicates"] = stats["pairs"] - len(pairs)
    finally:
        if tree_root is None:
            shutil.rmtree(work, ignore_errors=True)
    return packages, pairs, stats


def _write_corpus(src: str, tgt: str, out_dir: Path, pairs: list, packages: dict, stats: dict,
                  elapsed: float, log) -> None:
    """The corpus files, ids.tsv, and meta.json last (it marks the cache complete)."""
    src_file, tgt_file, meta_file = out_dir / f"corpus.{src}", out_dir / f"corpus.{tgt}", out_dir / "meta.json"
    write_lines(src_file, (p[2] for p in pairs))
    write_lines(tgt_file, (p[3] for p in pairs))
    with atomic_open(out_dir / "ids.tsv") as f:  # provenance: which page/id each line came from
        for rel, pid, _, _ in pairs:
            f.write(f"{rel}\t{pid}\n")
    meta = {
        "corpus": "libreoffice_help",
        "src_lang": src,
        "tgt_lang": tgt,
        "packages": list(packages.values()),
        "license": LICENSE,
        "source": SOURCE_URL,
        "pages": stats["pages_aligned"],
        "pairs": len(pairs),
        "pairs_before_dedup": stats["pairs"],
        "stats": stats,
        "files": {"src": src_file.name, "tgt": tgt_file.name, "ids": "ids.tsv"},
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(elapsed, 2),
    }
    write_json(meta_file, meta)  # last: marks the cache complete
    log(
        f"libreoffice_help {src}-{tgt}: {len(pairs)} pairs from {stats['pages_aligned']} pages "
        f"in {elapsed:.1f}s ({stats['pairs']} aligned, {stats['duplicates']} exact duplicates "
        f"dropped); skipped {stats['pages_src_only'] + stats['pages_tgt_only']} pages "
        f"in one language only ({stats['pages_src_only']} {src}, {stats['pages_tgt_only']} {tgt}), "
        f"{stats['units_src_only'] + stats['units_tgt_only']} paragraphs in one language only "
        f"({stats['units_src_only']} {src}, {stats['units_tgt_only']} {tgt}), "
        f"{stats['ambiguous']} repeated ids not safely pairable, "
        f"{stats['empty']} with an empty side, {stats['identical']} identical in both"
    )


def build_corpus(
    src_lang: str,
    tgt_lang: str,
    cache_dir: Path,
    tree_root: Path | None = None,
    log: Callable[[str], Any] = print,
) -> tuple[Path, Path]:
    """Build (or reuse) the aligned LibreOffice-help corpus; returns (src_file, tgt_file).

    Output: ``cache_dir/libreoffice_help/<src>-<tgt>/corpus.<src>``, ``corpus.<tgt>`` (one
    segment per line, UTF-8) and ``meta.json``. meta.json is written last; the cache counts
    as complete only when it exists, so an interrupted build is simply redone. With
    `tree_root` (a directory containing usr/share/libreoffice/help/...) nothing is
    downloaded; otherwise both packages are fetched with `apt-get download` and unpacked in
    a scratch directory that is removed afterwards.
    """
    src, tgt = _norm_lang(src_lang), _norm_lang(tgt_lang)
    if help_lang_dir(src) == help_lang_dir(tgt):
        raise CorpusError(f"source and target language are the same ({src_lang!r})")
    out_dir = Path(cache_dir) / "libreoffice_help" / f"{src}-{tgt}"
    src_file, tgt_file, meta_file = out_dir / f"corpus.{src}", out_dir / f"corpus.{tgt}", out_dir / "meta.json"
    if meta_file.is_file() and src_file.is_file() and tgt_file.is_file():
        with contextlib.suppress(Exception):
            n = read_json(meta_file).get("pairs")
            log(f"libreoffice_help {src}-{tgt}: using cached corpus ({n} pairs) in {out_dir}")
            return src_file, tgt_file
    t0 = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        meta_file.unlink()  # a stale meta.json must never vouch for files being rewritten
    packages, pairs, stats = _aligned_pairs(src, tgt, out_dir / ".work", tree_root, log)
    if not pairs:
        raise CorpusError(f"the LibreOffice help for {src} and {tgt} has no aligned paragraphs")
    _write_corpus(src, tgt, out_dir, pairs, packages, stats, time.monotonic() - t0, log)
    return src_file, tgt_file


def _main() -> None:  # pragma: no cover - manual use: python -m nmt_kd.data.libreoffice_help
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("tgt")
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/nmt_kd"))
    ap.add_argument("--tree-root", default=None)
    a = ap.parse_args()
    print(*build_corpus(a.src, a.tgt, Path(a.cache_dir),
                        Path(a.tree_root) if a.tree_root else None), sep="\n")


if __name__ == "__main__":  # pragma: no cover
    _main()
