"""decode.split_sentences: paragraphs translated sentence by sentence, line for line."""

import copy

import numpy as np
import pytest

from nmt_kd.backends import SearchOutput
from nmt_kd.config import ConfigError, DecodeConfig, config_from_dict
from nmt_kd.errors import UserError
from nmt_kd.sentences import join_translations, split_lines
from nmt_kd.translate import Translator


class WordTokenizer:
    """One id per whitespace-separated word (enough for the translator's length checks)."""

    def encode(self, lines):
        return [[5] * len(line.split()) for line in lines]


class UpperBackend:
    """A text backend whose 'translation' is the source in capitals; records what it saw."""

    format = "fake"

    def __init__(self, cfg):
        self.cfg, self.tokenizer, self.seen = cfg, WordTokenizer(), []

    def params(self):
        return 0

    def check(self, beam, nbest):
        pass

    def search(self, batch, beam, max_len, nbest):
        self.seen += batch.lines
        return SearchOutput(None, np.array([len(s.split()) for s in batch.lines]), np.zeros(len(batch.lines)),
                            texts=[s.upper() for s in batch.lines])


LINES = ["The dog runs. The cat sleeps.", "", "One sentence only.", "Dr. Smith arrived. He sat down!"]


def test_split_lines_keeps_each_sentence_with_its_line():
    sentences, owner = split_lines(LINES + ["   "], "en")
    assert sentences == ["The dog runs.", "The cat sleeps.", "One sentence only.",
                         "Dr. Smith arrived.", "He sat down!"]
    assert owner == [0, 0, 2, 3, 3]
    assert join_translations(5, owner, ["a", "b", "c", "", "e"]) == ["a b", "", "c", "e", ""]
    with pytest.raises(ValueError):
        join_translations(5, owner, ["a"])


def _translator(split):
    return Translator.from_backend(UpperBackend(DecodeConfig(beam=1, split_sentences=split)))


def test_translator_splits_translates_each_sentence_and_rejoins_line_for_line():
    tr = _translator("en")
    res = tr.translate(LINES)
    assert res.hypotheses == ["THE DOG RUNS. THE CAT SLEEPS.", "", "ONE SENTENCE ONLY.",
                              "DR. SMITH ARRIVED. HE SAT DOWN!"]
    # the model saw sentences, never a whole paragraph
    assert sorted(tr.backend.seen) == sorted(["The dog runs.", "The cat sleeps.", "One sentence only.",
                                              "Dr. Smith arrived.", "He sat down!"])
    assert res.token_counts == [6, 0, 3, 6]
    assert res.extra["sentences"] == 5
    # the same translator without splitting hands whole lines to the model
    whole = _translator(None)
    assert whole.translate(LINES).hypotheses == [s.upper() for s in LINES]
    assert sorted(whole.backend.seen) == sorted(s for s in LINES if s)


def test_split_translation_refuses_nbest_and_names_the_line_of_a_too_long_sentence():
    with pytest.raises(UserError, match="n-best"):
        _translator("en").translate(LINES, beam=2, nbest=2)
    cfg = DecodeConfig(beam=1, split_sentences="en", max_src_len=5, on_long_line="error")
    tr = Translator.from_backend(UpperBackend(cfg))
    lines = ["Short one. Also short.", "Fine.", "Ok. This sentence is much too long for it."]
    with pytest.raises(UserError, match="a sentence of input line 3 has 8 tokens"):
        tr.translate(lines)


def test_split_sentences_config_takes_a_language_code():
    assert DecodeConfig(split_sentences="en").split_sentences == "en"
    assert DecodeConfig(split_sentences="zh-hans").split_sentences == "zh-hans"
    for bad in ("", "e n", "en."):
        with pytest.raises(ConfigError, match="split_sentences"):
            DecodeConfig(split_sentences=bad)


def test_split_sentences_changes_distillation_and_evaluation_not_training(tiny_run, tmp_path):
    """Setting it re-distils and re-evaluates; it never retrains (the training loop's
    validation translates whole lines); unset, the hashes are those of older run directories."""
    from nmt_kd.pipeline import build_stages, stage_hash

    _, tree = tiny_run
    tree = copy.deepcopy(tree)
    tree["pipeline"] = {"name": "tiny", "students": [{"name": "rnn_seq", "arch": "student_rnn", "kd": "seq"}]}
    run = tmp_path / "run"

    def hashes(split):
        t = copy.deepcopy(tree)
        t.setdefault("decode", {})["split_sentences"] = split
        stages = [s for s in build_stages(config_from_dict(t), run, lambda _m: None)
                  if s.group in ("teacher", "distill", "students", "evaluate")]
        for p in {p for s in stages for p in s.inputs}:
            if not p.is_file():
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("x\n")
        if split is None:
            assert all("split_sentences" not in (s.config.get("decode") or {}) for s in stages)
        return {s.name: stage_hash(s, run) for s in stages}

    off, on = hashes(None), hashes("en")
    changed = {n for n in off if off[n] != on[n]}
    assert changed == {"distill"} | {n for n in off if n.startswith("evaluate")}
    assert "teacher" in off and "student rnn_seq" in off
