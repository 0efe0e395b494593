"""Sentence splitting of input lines, for corpora whose lines are paragraphs.

With ``decode.split_sentences: LANG`` each input line is cut into sentences by `sentencex`
(Wikimedia's rule-based segmenter: ~250 languages, compiled, no model to download; chosen
over pysbd, which took 100x longer on the demo's valid split and split ``'B', '.'`` in two),
every sentence is translated on its own, and a line's translations are joined with one space.
A line keeps its place: the output has exactly one line per input line, and a line with no
sentence in it (empty) translates to an empty line.

Why: models trained on paragraph-level pairs often stop after a paragraph's first sentence
(an early end-of-sentence is cheap for a search that scores whole hypotheses), and beam search
makes it worse. On the LibreOffice-help demo the teacher's beam-4 output was 0.84 of the
reference length on valid (docs/benchmarks.md, "Demo").
"""

from __future__ import annotations

from collections.abc import Sequence


def split_lines(lines: Sequence[str], lang: str) -> tuple[list[str], list[int]]:
    """(sentences, owner): every sentence of every line, stripped and non-empty, and the
    index of the line each came from (ascending)."""
    import sentencex

    sentences: list[str] = []
    owner: list[int] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        for piece in sentencex.segment(lang, line):
            piece = piece.strip()
            if piece:
                sentences.append(piece)
                owner.append(i)
    return sentences, owner


def join_translations(n_lines: int, owner: Sequence[int], translations: Sequence[str]) -> list[str]:
    """One line per input line: the translations of its sentences, in order, joined by a space
    (empty translations left out)."""
    if len(owner) != len(translations):
        raise ValueError(f"{len(translations)} translations for {len(owner)} sentences")
    parts: list[list[str]] = [[] for _ in range(n_lines)]
    for i, text in zip(owner, translations, strict=True):
        if text:
            parts[i].append(text)
    return [" ".join(p) for p in parts]
