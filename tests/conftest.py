"""Shared fixtures: tiny generated parallel corpora (no downloads, no real data)."""

from __future__ import annotations

import os
import random
import re
import time
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


TINY_OVERRIDES = {
    "vocab": {"size": 60},
    "model": {"max_positions": 64,
              "teacher": {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "heads": 2,
                          "ff_dim": 64, "dropout": 0.0},
              "student_rnn": {"embed_dim": 16, "hidden": 16},
              "student_cnn": {"embed_dim": 16, "hidden": 16, "encoder_layers": 2,
                              "decoder_layers": 2},
              "student_transformer": {"d_model": 16, "encoder_layers": 2, "decoder_layers": 1,
                                      "heads": 2, "ff_dim": 32, "dropout": 0.0}},
    "train": {"max_tokens": 256, "max_len": 32, "max_steps": 12, "eval_every": 6,
              "checkpoint_every": 3, "eval_sentences": 10, "log_every": 3, "warmup_steps": 5,
              "learning_rate": 0.003},
    "decode": {"max_len_cap": 32, "batch_size": 16, "beam": 2},
}
TINY_OVERRIDES["student_train"] = dict(TINY_OVERRIDES["train"])


def clone_run(tiny_run, directory: Path) -> tuple[Path, dict]:
    """A private copy of the `tiny_run` directory (`directory/run`) and of its config tree."""
    import copy
    import shutil

    run, tree = tiny_run
    dst = Path(directory) / "run"
    shutil.copytree(run, dst)
    return dst, copy.deepcopy(tree)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A prepared run directory (data + vocab) over the toy corpus, and its config tree."""
    import copy

    from nmt_kd.config import config_from_dict
    from nmt_kd.data.prepare import prepare_data
    from nmt_kd.tokenizer import build_vocab

    base = tmp_path_factory.mktemp("tiny")
    src, tgt = write_pair_files(base / "raw", toy_pairs(600))
    tree = copy.deepcopy(TINY_OVERRIDES)
    tree["data"] = {"source": "files", "train_src": str(src), "train_tgt": str(tgt),
                    "valid_size": 30, "test_size": 30}
    cfg = config_from_dict(tree)
    run = base / "run"
    prepare_data(cfg, run, log=lambda _m: None)
    build_vocab(cfg.vocab, run, log=lambda _m: None)
    return run, tree


CKPT_STATE = re.compile(r'^model_checkpoint_path: "(?:.*/)?ckpt-(\d+)"$', re.M)


def checkpoint_state_step(ckpt_dir) -> int | None:
    """The step of the newest checkpoint recorded in the state file `checkpoint`, or None.

    The state file, not `ckpt-*.index`: TensorFlow writes a checkpoint's data and index
    first and names it in the state file last, so only a checkpoint named there is one a
    resumed run will restore.
    """
    try:
        found = CKPT_STATE.search((ckpt_dir / "checkpoint").read_text())
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(found.group(1)) if found else None


def wait_until(done, proc, log_path, what: str, hang_guard_s: float = 1800) -> None:
    """Wait until `done()` or the process ends; no deadline a slow machine could miss.

    `hang_guard_s` only catches a process that hangs without ending (far beyond any normal
    run). A process that ends first, or the guard, fails the test with its output.
    """
    t0 = time.monotonic()
    while not done():
        if proc.poll() is not None:
            if done():  # it got there just before it ended
                return
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}:\n"
                        + log_path.read_text(errors="replace")[-3000:])
        if time.monotonic() - t0 > hang_guard_s:
            proc.kill()
            pytest.fail(f"no {what} after {hang_guard_s:.0f} s (hung?):\n"
                        + log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.05)
