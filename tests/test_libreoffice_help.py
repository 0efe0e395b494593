"""Tests for the LibreOffice-help corpus recipe (no apt, no network except the slow test)."""

from __future__ import annotations

import io
import json
import lzma
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from nmt_kd.data import libreoffice_help as lo
from nmt_kd.errors import CorpusError
from nmt_kd.fileio import read_lines

# --------------------------------------------------------------------------------------
# A fake package tree


def _page(body: str, lang: str = "en-US") -> str:
    return f"""<!DOCTYPE html>
<html lang="{lang}"><head><title>Title</title>
<script>var x = "<p id='par_script'>no</p>";</script></head>
<body>
<header id="TopLeftHeader"><p id="par_chrome" dir="auto">LibreOffice Help</p></header>
<div id="DisplayArea" itemprop="softwareHelp">
{body}
</div>
<div id="SearchFrame"></div>
<footer><div id="DEBUG" class="debug"><p id="bm_module" dir="auto">debug</p></div></footer>
</body></html>
"""


EN_A = """
<a name="bm_id1"></a>
<h1 id="hd_id1" dir="auto"><a name="top"></a>Load &amp; Save options</h1>
<p id="par_id2" class="paragraph">Choose <span id="swlnsys1" class="switchinline"><span hidden="true" id="MACtext1" class="MAC"><span class="emph">LibreOffice - Preferences</span></span><span hidden="true" id="defaulttext1"><span class="emph">Tools - Options</span></span></span><span class="emph"> - Load/Save</span>.</p>
<p id="par_id3">   Multi
line\ttext with <b>bold</b>&nbsp;and&#160;entities &lt;tag&gt; &quot;q&quot;  </p>
<div class="iconcell"><p id="par_id4"><img src="x.png" alt="icon"></p></div>
<table><tr><td><p id="par_id5" class="paragraphintable">Cell<br>text</p></td></tr></table>
<p id="par_id6">Only English</p>
<p id="par_id7" class="code">=SUM(A1:A3)</p>
<ul><li><p id="par_id8">Item <span id="swlnappl1" class="switchinline"><span hidden="true" id="WRITERx1" class="WRITER">in Writer </span></span>one</p></li></ul>
<h2 id="par_id9">Outer <p id="par_id10">inner</p> tail</h2>
<span id="swlnsys2" class="switch"><span hidden="true" id="WINx2" class="WIN"><p id="par_id11">Windows only paragraph</p></span><span hidden="true" id="defaultx2"></span></span>
<p id="par_id12">First use</p>
<div class="embedded"><p id="par_id12">Second use</p></div>
"""

DE_A = """
<a name="bm_id1"></a>
<h1 id="hd_id1" dir="auto"><a name="top"></a>Laden &amp; Speichern</h1>
<p id="par_id2" class="paragraph">Wählen Sie <span id="swlnsys1" class="switchinline"><span hidden="true" id="MACtext1" class="MAC"><span class="emph">LibreOffice – Einstellungen</span></span><span hidden="true" id="defaulttext1"><span class="emph">Extras – Optionen</span></span></span><span class="emph"> – Laden/Speichern</span>.</p>
<p id="par_id3">Mehrzeiliger
Text mit <b>fett</b> und Entitäten &lt;tag&gt; &quot;q&quot;</p>
<div class="iconcell"><p id="par_id4"><img src="x.png" alt="Symbol"></p></div>
<table><tr><td><p id="par_id5" class="paragraphintable">Zellen<br/>text</p></td></tr></table>
<p id="par_id7" class="code">=SUM(A1:A3)</p>
<ul><li><p id="par_id8">Eintrag <span id="swlnappl1" class="switchinline"><span hidden="true" id="WRITERx1" class="WRITER">in Writer </span></span>eins</p></li></ul>
<h2 id="par_id9">Außen <p id="par_id10">innen</p> Ende</h2>
<span id="swlnsys2" class="switch"><span hidden="true" id="WINx2" class="WIN"><p id="par_id11">Absatz nur für Windows</p></span><span hidden="true" id="defaultx2"></span></span>
<p id="par_id12">Erste Verwendung</p>
<div class="embedded"><p id="par_id12">Zweite Verwendung</p></div>
<p id="par_id99">Nur Deutsch</p>
"""

# A page whose sections are sorted by their translated titles (like Calc's function lists):
# ids repeat, and the order of sections differs between the languages.
EN_B = """
<h2 id="hd_fa">ALPHA</h2><h3 id="hd_ex">Example</h3><p id="par_r">alpha text</p>
<h2 id="hd_fb">BETA</h2><h3 id="hd_ex">Example</h3><p id="par_r">beta text</p>
"""
DE_B = """
<h2 id="hd_fb">BETA-DE</h2><h3 id="hd_ex">Beispiel</h3><p id="par_r">Beta-Text</p>
<h2 id="hd_fa">ALPHA-DE</h2><h3 id="hd_ex">Beispiel</h3><p id="par_r">Alpha-Text</p>
"""

EXPECTED_EN_A = {
    "hd_id1": "Load & Save options",
    "par_id2": "Choose Tools - Options - Load/Save.",
    "par_id3": 'Multi line text with bold and entities <tag> "q"',
    "par_id4": "",
    "par_id5": "Cell text",
    "par_id6": "Only English",
    "par_id7": "=SUM(A1:A3)",
    "par_id8": "Item one",
    "par_id9": "Outer tail",
    "par_id10": "inner",
    "par_id11": "Windows only paragraph",
    "par_id12": "First use",
    "par_id12#2": "Second use",
}

EXPECTED_PAIRS = [
    ("text/scalc/b.html", "hd_fa", "ALPHA", "ALPHA-DE"),
    ("text/scalc/b.html", "hd_ex", "Example", "Beispiel"),
    ("text/scalc/b.html", "hd_fb", "BETA", "BETA-DE"),
    ("text/scalc/b.html", "hd_ex#2", "Example", "Beispiel"),
    ("text/shared/a.html", "hd_id1", "Load & Save options", "Laden & Speichern"),
    ("text/shared/a.html", "par_id2", "Choose Tools - Options - Load/Save.",
     "Wählen Sie Extras – Optionen – Laden/Speichern."),
    ("text/shared/a.html", "par_id3", 'Multi line text with bold and entities <tag> "q"',
     'Mehrzeiliger Text mit fett und Entitäten <tag> "q"'),
    ("text/shared/a.html", "par_id5", "Cell text", "Zellen text"),
    ("text/shared/a.html", "par_id8", "Item one", "Eintrag eins"),
    ("text/shared/a.html", "par_id9", "Outer tail", "Außen Ende"),
    ("text/shared/a.html", "par_id10", "inner", "innen"),
    ("text/shared/a.html", "par_id11", "Windows only paragraph", "Absatz nur für Windows"),
    ("text/shared/a.html", "par_id12", "First use", "Erste Verwendung"),
    ("text/shared/a.html", "par_id12#2", "Second use", "Zweite Verwendung"),
]


def make_tree(root: Path) -> Path:
    help_dir = root / "usr/share/libreoffice/help"
    pages = {
        "en-US": {"text/shared/a.html": EN_A, "text/scalc/b.html": EN_B,
                  "text/swriter/only_en.html": "<p id='par_x'>Lonely page</p>"},
        "de": {"text/shared/a.html": DE_A, "text/scalc/b.html": DE_B},
    }
    for lang, files in pages.items():
        for rel, body in files.items():
            path = help_dir / lang / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_page(body, lang), encoding="utf-8")
    (help_dir / "en-US" / "noscript.html").write_text(_page("<p id='p'>x</p>"), encoding="utf-8")
    return root


# --------------------------------------------------------------------------------------
# Names


def test_package_and_dir_names():
    assert lo.package_name("en") == "libreoffice-help-en-us"
    assert lo.package_name("de") == "libreoffice-help-de"
    assert lo.package_name("pt-br") == "libreoffice-help-pt-br"
    assert lo.package_name("pt_BR") == "libreoffice-help-pt-br"
    assert lo.help_lang_dir("en") == "en-US"
    assert lo.help_lang_dir("de") == "de"
    assert lo.help_lang_dir("pt-br") == "pt-BR"
    assert lo.help_lang_dir("pt_BR") == "pt-BR"
    assert lo.help_lang_dir("zh-cn") == "zh-CN"
    for bad in ("", "e", "de; rm -rf /", "../de", "-o"):
        with pytest.raises(CorpusError):
            lo.package_name(bad)


# --------------------------------------------------------------------------------------
# Extraction and alignment


def test_extract_paragraphs_rules():
    got = lo.extract_paragraphs(_page(EN_A))
    assert got == EXPECTED_EN_A
    assert list(got) == list(EXPECTED_EN_A)  # document order
    # page chrome outside DisplayArea (header, footer, scripts) is never extracted
    assert not {"par_chrome", "bm_module", "par_script"} & set(got)
    assert all("\n" not in t and "\t" not in t for t in got.values())


def test_extract_paragraphs_tolerates_broken_html():
    html = '<div id="DisplayArea"><p id="a">one <span>two</p></span><p id="b">three &unknown; x'
    assert lo.extract_paragraphs(html) == {"a": "one two", "b": "three &unknown; x"}
    assert lo.extract_paragraphs("<p id='a'>no display area</p>") == {}


def test_align_trees_exact_pairs_and_stats(tmp_path):
    root = make_tree(tmp_path) / "usr/share/libreoffice/help"
    stats: dict[str, int] = {}
    pairs = list(lo.align_trees(root / "en-US", root / "de", stats=stats))
    assert pairs == EXPECTED_PAIRS
    assert stats == {
        "pages_src": 3, "pages_tgt": 2, "pages_aligned": 2, "pages_src_only": 1,
        "pages_tgt_only": 0, "units_src_only": 1, "units_tgt_only": 1, "ambiguous": 2,
        "empty": 1, "identical": 1, "pairs": len(EXPECTED_PAIRS),
    }
    # identical pairs can be kept on request
    kept = list(lo.align_trees(root / "en-US", root / "de", keep_identical=True))
    assert ("text/shared/a.html", "par_id7", "=SUM(A1:A3)", "=SUM(A1:A3)") in kept


def test_align_trees_rejects_non_help_dir(tmp_path):
    with pytest.raises(CorpusError, match="no text/ folder"):
        list(lo.align_trees(tmp_path, tmp_path))


# --------------------------------------------------------------------------------------
# build_corpus


def test_build_corpus_from_tree_and_cache(tmp_path):
    tree = make_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    logs: list[str] = []
    src, tgt = lo.build_corpus("en", "de", cache, tree_root=tree, log=logs.append)
    out = cache / "libreoffice_help" / "en-de"
    assert (src, tgt) == (out / "corpus.en", out / "corpus.de")
    # exact duplicates ("Example" -> "Beispiel" twice) are written once
    unique = [p for i, p in enumerate(EXPECTED_PAIRS)
              if (p[2], p[3]) not in {(q[2], q[3]) for q in EXPECTED_PAIRS[:i]}]
    assert len(unique) == len(EXPECTED_PAIRS) - 1
    assert src.read_text(encoding="utf-8") == "".join(p[2] + "\n" for p in unique)
    assert tgt.read_text(encoding="utf-8") == "".join(p[3] + "\n" for p in unique)
    assert (out / "ids.tsv").read_text().splitlines()[0] == "text/scalc/b.html\thd_fa"
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["pairs"] == len(unique) and meta["pages"] == 2
    assert meta["license"] == "MPL-2.0"
    assert [p["name"] for p in meta["packages"]] == ["libreoffice-help-en-us", "libreoffice-help-de"]
    assert meta["stats"]["units_src_only"] == 1 and meta["stats"]["pages_src_only"] == 1
    assert meta["built_at"]
    assert any("1 pages in one language only" in m and "2 paragraphs in one language only" in m
               for m in logs)

    # second call: cached, does not touch the (now deleted) tree
    shutil.rmtree(tree)
    mtime = src.stat().st_mtime_ns
    logs.clear()
    assert lo.build_corpus("en", "de", cache, tree_root=tree, log=logs.append) == (src, tgt)
    assert src.stat().st_mtime_ns == mtime
    assert len(logs) == 1 and "cached" in logs[0]


def test_build_corpus_interrupted_build_is_redone(tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "tree")
    cache = tmp_path / "cache"

    def boom(*a, **k):
        raise KeyboardInterrupt  # killed just before meta.json is written

    monkeypatch.setattr(lo, "write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        lo.build_corpus("en", "de", cache, tree_root=tree, log=lambda m: None)
    out = cache / "libreoffice_help" / "en-de"
    assert not (out / "meta.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temp leftovers
    (out / "corpus.en").write_text("partial\n")  # simulate a half-written earlier attempt
    monkeypatch.undo()
    logs: list[str] = []
    src, _ = lo.build_corpus("en", "de", cache, tree_root=tree, log=logs.append)
    assert not any("cached" in m for m in logs)
    assert src.read_text(encoding="utf-8").startswith("ALPHA\n")
    assert (out / "meta.json").is_file()


def test_build_corpus_missing_language_in_tree(tmp_path):
    tree = make_tree(tmp_path / "tree")
    with pytest.raises(CorpusError, match="libreoffice-help-fr") as e:
        lo.build_corpus("en", "fr", tmp_path / "cache", tree_root=tree, log=lambda m: None)
    assert "de, en-US" in str(e.value)
    with pytest.raises(CorpusError, match="same"):
        lo.build_corpus("de", "de", tmp_path / "cache", tree_root=tree, log=lambda m: None)


# --------------------------------------------------------------------------------------
# download_packages (apt-get simulated)


def test_download_packages_unknown_language(tmp_path, monkeypatch):
    monkeypatch.setattr(lo.shutil, "which", lambda name: f"/usr/bin/{name}")

    def fake_run(cmd, **kw):
        assert cmd[1:] == ["download", "libreoffice-help-xx"]
        return subprocess.CompletedProcess(
            cmd, 100, "", "E: Unable to locate package libreoffice-help-xx\n")

    monkeypatch.setattr(lo.subprocess, "run", fake_run)
    with pytest.raises(CorpusError) as e:
        lo.download_packages(["xx"], tmp_path)
    msg = str(e.value)
    assert "libreoffice-help-xx" in msg and "Unable to locate package" in msg
    assert "data.source: files" in msg and "train_src" in msg


def test_download_packages_without_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(lo.shutil, "which", lambda name: None)
    with pytest.raises(CorpusError) as e:
        lo.download_packages(["en", "de"], tmp_path)
    msg = str(e.value)
    assert "libreoffice-help-en-us" in msg and "libreoffice-help-de" in msg
    assert "apt-get" in msg and "data.source: files" in msg


def test_download_packages_success(tmp_path, monkeypatch):
    monkeypatch.setattr(lo.shutil, "which", lambda name: f"/usr/bin/{name}")

    def fake_run(cmd, cwd, **kw):
        (Path(cwd) / f"{cmd[2]}_4%3a7.4.7-1_all.deb").write_bytes(b"!<arch>\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(lo.subprocess, "run", fake_run)
    got = lo.download_packages(["en", "de"], tmp_path / "debs")
    assert got == {"en": tmp_path / "debs/libreoffice-help-en-us_4%3a7.4.7-1_all.deb",
                   "de": tmp_path / "debs/libreoffice-help-de_4%3a7.4.7-1_all.deb"}


# --------------------------------------------------------------------------------------
# unpack_deb on a hand-made .deb


def _tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members:
        header = (f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}").encode() + b"`\n"
        assert len(header) == 60
        out += [header, data, b"\n" if len(data) % 2 else b""]
    return b"".join(out)


def _make_deb(path: Path, compress=lzma.compress, ext: str = ".xz") -> Path:
    page = "usr/share/libreoffice/help/en-US/text/shared/a.html"
    data = _tar({"./" + page: _page(EN_A).encode(), "./../evil.txt": b"x"},
                links={"./usr/share/doc/link": "/etc/passwd"})
    control = _tar({"./control": b"Package: libreoffice-help-en-us\nVersion: 4:7.4.7-1\n"})
    path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", lzma.compress(control)),
                          ("odd", b"abc"),  # an odd-sized member exercises the 2-byte padding
                          ("data.tar" + ext, compress(data))]))
    return path


@pytest.mark.parametrize("compress,ext", [(lzma.compress, ".xz"), (lambda b: b, ""),
                                          (__import__("gzip").compress, ".gz")])
def test_unpack_deb(tmp_path, compress, ext):
    deb = _make_deb(tmp_path / "x.deb", compress, ext)
    dest = tmp_path / "out"
    assert lo.unpack_deb(deb, dest) == dest
    page = dest / "usr/share/libreoffice/help/en-US/text/shared/a.html"
    assert lo.extract_paragraphs(page.read_text(encoding="utf-8")) == EXPECTED_EN_A
    assert not (tmp_path / "evil.txt").exists()  # path traversal refused
    assert not (dest / "usr/share/doc/link").is_symlink()  # absolute link skipped
    assert lo.deb_version(deb) == "4:7.4.7-1"


def test_unpack_deb_errors(tmp_path, monkeypatch):
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"not an archive")
    with pytest.raises(CorpusError, match="not a Debian package"):
        lo.unpack_deb(bad, tmp_path / "o")
    bad.write_bytes(_ar([("debian-binary", b"2.0\n")]))
    with pytest.raises(CorpusError, match="no data.tar"):
        lo.unpack_deb(bad, tmp_path / "o")
    bad.write_bytes(_ar([("data.tar.xz", b"garbage!")]))
    with pytest.raises(CorpusError, match="cannot decompress"):
        lo.unpack_deb(bad, tmp_path / "o")
    # zstd that Python cannot read and no dpkg-deb to fall back on
    bad.write_bytes(_ar([("data.tar.zst", b"\x28\xb5\x2f\xfd")]))
    monkeypatch.setattr(lo, "_decompress", lambda name, payload, deb: None)
    monkeypatch.setattr(lo.shutil, "which", lambda name: None)
    with pytest.raises(CorpusError, match="zstd"):
        lo.unpack_deb(bad, tmp_path / "o")


# --------------------------------------------------------------------------------------
# The real thing (network + apt): pytest -m slow


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
def test_real_download_and_build(tmp_path):
    src, tgt = lo.build_corpus("en", "de", tmp_path)
    src_lines, tgt_lines = read_lines(src), read_lines(tgt)
    assert len(src_lines) == len(tgt_lines) >= 25_000
    assert all(s and t and s != t for s, t in zip(src_lines, tgt_lines, strict=True))
    meta = json.loads((src.parent / "meta.json").read_text(encoding="utf-8"))
    assert meta["pairs"] == len(src_lines)
    assert all(p["version"] for p in meta["packages"])
