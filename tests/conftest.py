"""Shared fixtures: tiny generated parallel corpora (no downloads, no real data)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"

_EN = ["the", "a", "dog", "cat", "man", "woman", "runs", "sits", "red", "big", "small",
       "house", "street", "ball", "plays", "with", "in", "on", "green", "child"]
_DE = {"the": "der", "a": "ein", "dog": "Hund", "cat": "Katze", "man": "Mann",
       "woman": "Frau", "runs": "rennt", "sits": "sitzt", "red": "rote", "big": "große",
       "small": "kleine", "house": "Haus", "street": "Straße", "ball": "Ball",
       "plays": "spielt", "with": "mit", "in": "in", "on": "auf", "green": "grüne",
       "child": "Kind"}


def toy_pairs(n: int, seed: int = 0, min_words: int = 2, max_words: int = 9) -> list[tuple[str, str]]:
    """A toy 'translation' task: word-by-word mapping; distinct sentences, deterministic."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        words = [rng.choice(_EN) for _ in range(rng.randint(min_words, max_words))]
        src = " ".join(words).capitalize() + "."
        if src in seen:
            continue
        seen.add(src)
        out.append((src, " ".join(_DE[w] for w in words).capitalize() + "."))
    return out


def write_pair_files(directory: Path, pairs, stem: str = "corpus") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    src, tgt = directory / f"{stem}.en", directory / f"{stem}.de"
    src.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    tgt.write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    return src, tgt


@pytest.fixture
def toy_corpus(tmp_path) -> tuple[Path, Path]:
    return write_pair_files(tmp_path / "raw", toy_pairs(600))


@pytest.fixture
def toy_config_tree(tmp_path, toy_corpus) -> dict:
    """A config dict for the toy corpus with tiny sizes (split from one corpus)."""
    src, tgt = toy_corpus
    return {
        "data": {"source": "files", "train_src": str(src), "train_tgt": str(tgt),
                 "valid_size": 40, "test_size": 40},
        "vocab": {"size": 60},
        "pipeline": {"run_dir": str(tmp_path / "run")},
    }
