"""Text normalisation and the training-data filters, each of which counts what it removes.

Filters apply to training pairs only: valid and test sets are never filtered, so BLEU stays
comparable with published figures on the same test set. Each filter is a generator, so that
the prepare stage runs them one pair at a time over corpora larger than memory.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
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

    @classmethod
    def merged(cls, stages: Iterable[FilterReport]) -> FilterReport:
        """One report of filter stages in the order given.

        The stages run interleaved, one pair at a time, so a single report would list the
        filters in the order of their first removal; the manifest lists them stage by stage.
        """
        out = cls()
        for stage in stages:
            for name in stage.order:
                out.order.append(name)
                out.removed[name] = stage.removed[name]
                out.examples[name] = stage.examples[name]
        return out


def word_ratio(src: str, tgt: str) -> float:
    """Length ratio in words, smoothed by one so that 1-word vs 2-word pairs are not extreme."""
    a, b = len(src.split()) + 1, len(tgt.split()) + 1
    return max(a, b) / min(a, b)


def drop_empty(pairs: Iterable[tuple[str, str]],
               report: FilterReport) -> Iterator[tuple[str, str]]:
    for s, t in pairs:
        if not s or not t:
            report.drop("empty", s, t)
        else:
            yield s, t


def keep_flagged(pairs: Iterable[tuple[str, str]], flags: Iterable[bool], reason: str,
                 report: FilterReport) -> Iterator[tuple[str, str]]:
    """The pairs whose flag is true; the others are counted as removed for `reason`.

    The flags come from a decision over the whole corpus (`nmt_kd.data.bounded`: first
    occurrences, the max_train_pairs sample), made before this pass.
    """
    for (s, t), keep in zip(pairs, flags, strict=True):
        if keep:
            yield s, t
        else:
            report.drop(reason, s, t)


def length_filters(
    pairs: Iterable[tuple[str, str]], report: FilterReport, min_words: int, max_words: int,
    max_chars: int, max_ratio: float,
) -> Iterator[tuple[str, str]]:
    for s, t in pairs:
        ws, wt = len(s.split()), len(t.split())
        if min(ws, wt) < min_words:
            report.drop("too_short", s, t)
        elif max(ws, wt) > max_words or max(len(s), len(t)) > max_chars:
            report.drop("too_long", s, t)
        elif word_ratio(s, t) > max_ratio:
            report.drop("length_ratio", s, t)
        else:
            yield s, t


def drop_eval_overlap(
    pairs: Iterable[tuple[str, str]], eval_sources: set[str], report: FilterReport
) -> Iterator[tuple[str, str]]:
    for s, t in pairs:
        if s in eval_sources:
            report.drop("overlaps_valid_test", s, t)
        else:
            yield s, t
