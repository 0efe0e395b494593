"""Text normalisation and the training-data filters, each of which counts what it removes.

Filters apply to training pairs only: valid and test sets are never filtered, so BLEU stays
comparable with published figures on the same test set.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

# C0/C1 control characters (tab, CR, NUL included) become spaces; the BOM / zero-width
# no-break space is removed. Other format characters (RLM, ZWJ) carry meaning and are kept.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BOM = "\ufeff"


def normalize(text: str) -> str:
    """NFC, control characters removed, whitespace collapsed to single spaces, stripped."""
    text = unicodedata.normalize("NFC", text).replace(_BOM, "")
    text = _CONTROL.sub(" ", text)
    return " ".join(text.split())


def sanitize_eval(text: str) -> str:
    """Minimal clean-up for valid/test text: only what would break line-based files.

    Control characters (a lone CR, tab, NUL) become spaces; nothing else changes, so the
    references stay as published.
    """
    return _CONTROL.sub(" ", text.replace(_BOM, ""))


@dataclass
class FilterReport:
    """Pairs removed by each filter, in the order the filters ran."""

    removed: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def drop(self, name: str, src: str, tgt: str) -> None:
        if name not in self.order:
            self.order.append(name)
        self.removed[name] += 1
        ex = self.examples.setdefault(name, [])
        if len(ex) < 3:
            ex.append(f"{src[:80]} ||| {tgt[:80]}")

    def as_dict(self) -> dict:
        return {name: self.removed[name] for name in self.order}


def word_ratio(src: str, tgt: str) -> float:
    """Length ratio in words, smoothed by one so that 1-word vs 2-word pairs are not extreme."""
    a, b = len(src.split()) + 1, len(tgt.split()) + 1
    return max(a, b) / min(a, b)


def drop_empty(pairs: Iterable[tuple[str, str]], report: FilterReport) -> list[tuple[str, str]]:
    out = []
    for s, t in pairs:
        if not s or not t:
            report.drop("empty", s, t)
        else:
            out.append((s, t))
    return out


def dedupe(pairs: Iterable[tuple[str, str]], report: FilterReport) -> list[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in pairs:
        if p in seen:
            report.drop("duplicate", *p)
        else:
            seen.add(p)
            out.append(p)
    return out


def length_filters(
    pairs: Iterable[tuple[str, str]], report: FilterReport, min_words: int, max_words: int,
    max_chars: int, max_ratio: float,
) -> list[tuple[str, str]]:
    out = []
    for s, t in pairs:
        ws, wt = len(s.split()), len(t.split())
        if min(ws, wt) < min_words:
            report.drop("too_short", s, t)
        elif max(ws, wt) > max_words or max(len(s), len(t)) > max_chars:
            report.drop("too_long", s, t)
        elif word_ratio(s, t) > max_ratio:
            report.drop("length_ratio", s, t)
        else:
            out.append((s, t))
    return out


def drop_eval_overlap(
    pairs: Iterable[tuple[str, str]], eval_sources: set[str], report: FilterReport
) -> list[tuple[str, str]]:
    out = []
    for s, t in pairs:
        if s in eval_sources:
            report.drop("overlaps_valid_test", s, t)
        else:
            out.append((s, t))
    return out


def sample(
    pairs: list[tuple[str, str]], max_pairs: int, seed: int, report: FilterReport
) -> list[tuple[str, str]]:
    """Keep a seeded random subset of at most `max_pairs` pairs, in corpus order."""
    if max_pairs <= 0 or len(pairs) <= max_pairs:
        return pairs
    keep = sorted(random.Random(seed).sample(range(len(pairs)), max_pairs))
    kept = set(keep)
    for i, (s, t) in enumerate(pairs):
        if i not in kept:
            report.drop("sampled_out (data.max_train_pairs)", s, t)
    return [pairs[i] for i in keep]
