"""Translate text with any model: a model directory (teacher, student or ensemble), a TFLite
export or a SavedModel export.

`Translator` does the same around every backend (`nmt_kd.backends`): sentences are tokenized
(long ones truncated or refused), sorted by length into batches and padded
(`nmt_kd.decode_policy.length_sorted_batches`), each batch gets its output-length bucket
(`nmt_kd.decode_policy.max_len_bucket`) and is searched by the backend, and the translations
come back in the input order. An empty line translates to an empty line. With
`decode.split_sentences` set, each line is first cut into sentences (`nmt_kd.sentences`), the
sentences are translated as above and each line's translations are joined again.
`Translator.translate_stream` does the same chunk by chunk over an iterable of lines, so
memory stays bounded by the chunk size however long the input is.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nmt_kd import EOS_ID
from nmt_kd.backends import KerasBackend, SearchBackend, SearchOutput, SourceBatch
from nmt_kd.config import DecodeConfig
from nmt_kd.decode_policy import length_sorted_batches, max_len_bucket
from nmt_kd.errors import UserError
from nmt_kd.progress import StatusLine
from nmt_kd.sentences import join_translations, split_lines
from nmt_kd.tokenizer import Tokenizer

CHUNK_LINES = 10_000  # lines per chunk when translating a stream


@dataclass
class TranslationResult:
    hypotheses: list[str]
    token_counts: list[int]  # target pieces per hypothesis (eos excluded)
    seconds: float
    truncated: int = 0  # source lines cut to decode.max_src_len
    nbest: list[list[tuple[str, float]]] | None = None
    extra: dict = field(default_factory=dict)


class Translator:
    """Batched translation through one backend.

        tr = Translator(model, tokenizer, DecodeConfig(beam=5))   # a Keras model
        tr.translate(["A dog runs."]).hypotheses   # ["Ein Hund rennt."]
        Translator.from_backend(TFLiteBackend("exported/rnn", cfg))   # any other backend
    """

    def __init__(self, model, tokenizer: Tokenizer | None, cfg: DecodeConfig):
        self._bind(KerasBackend(model, tokenizer, cfg))

    @classmethod
    def from_backend(cls, backend: SearchBackend) -> Translator:
        tr = cls.__new__(cls)
        tr._bind(backend)
        return tr

    def _bind(self, backend: SearchBackend) -> None:
        self.backend = backend
        self.line_offset = 0  # added to line numbers in messages (set per chunk by translate_stream)
        self._line_of: Sequence[int] | None = None  # sentence -> its line, while splitting

    @property
    def cfg(self) -> DecodeConfig:
        return self.backend.cfg

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.backend.tokenizer

    def params(self) -> int:
        return self.backend.params()

    def encode_sources(self, lines: Sequence[str]) -> tuple[list[list[int]], int]:
        ids = self.tokenizer.encode(lines)
        limit = self.cfg.max_src_len - 1  # room for eos
        truncated = 0
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                if self.cfg.on_long_line == "error":
                    where = (f"input line {self.line_offset + i + 1}" if self._line_of is None else
                             f"a sentence of input line {self.line_offset + self._line_of[i] + 1}")
                    raise UserError(
                        f"{where} has {len(seq)} tokens, more than decode.max_src_len="
                        f"{self.cfg.max_src_len} (set decode.on_long_line: truncate to cut it)"
                    )
                ids[i] = seq[:limit]
                truncated += 1
        return [seq + [EOS_ID] if seq else [] for seq in ids], truncated

    def translate(
        self, lines: Sequence[str], beam: int | None = None, batch_size: int | None = None,
        nbest: int = 1, progress: bool = False, sort: bool = True,
    ) -> TranslationResult:
        if self.cfg.split_sentences:
            return self._translate_sentences(lines, self.cfg.split_sentences, beam, batch_size,
                                             nbest, progress, sort)
        return self._translate_lines(lines, beam, batch_size, nbest, progress, sort)

    def _translate_sentences(self, lines: Sequence[str], lang: str, beam, batch_size, nbest: int,
                             progress: bool, sort: bool) -> TranslationResult:
        """Each line's sentences translated on their own and joined (`decode.split_sentences`);
        `extra["sentences"]` counts them. `token_counts` sum each line's sentences."""
        if nbest > 1:
            raise UserError("decode.split_sentences translates each sentence of a line on its "
                            "own, so a line has no n-best list: set distill.nbest: 1 and "
                            "distill.seq_inter: false, or decode.split_sentences: null")
        t0 = time.perf_counter()
        sentences, owner = split_lines(lines, lang)
        self._line_of = owner
        try:
            res = self._translate_lines(sentences, beam, batch_size, 1, progress, sort)
        finally:
            self._line_of = None
        counts = [0] * len(lines)
        for i, n in zip(owner, res.token_counts, strict=True):
            counts[i] += n
        return TranslationResult(join_translations(len(lines), owner, res.hypotheses), counts,
                                 time.perf_counter() - t0, res.truncated,
                                 extra={"sentences": len(sentences)})

    def _translate_lines(
        self, lines: Sequence[str], beam: int | None, batch_size: int | None, nbest: int,
        progress: bool, sort: bool,
    ) -> TranslationResult:
        beam = beam or self.cfg.beam
        batch_size = batch_size or self.cfg.batch_size
        self.backend.check(beam, nbest)
        if nbest > beam:
            raise UserError(f"n-best ({nbest}) cannot exceed the beam size ({beam})")
        t0 = time.perf_counter()
        src_ids, truncated = self.encode_sources(lines)
        n = len(src_ids)
        hyps: list[str] = [""] * n
        counts = [0] * n
        nbest_out: list[list[tuple[str, float]]] | None = [[] for _ in range(n)] if nbest > 1 else None
        total, done = sum(1 for seq in src_ids if seq), 0  # empty lines stay empty
        status = StatusLine(rewrite=True)
        for idx, src in length_sorted_batches(src_ids, batch_size, sort):
            out = self.backend.search(SourceBatch(src, [lines[i] for i in idx]), beam,
                                      max_len_bucket(self.cfg, src.shape[1]), nbest)
            texts, lengths = self._hypotheses(out, idx, beam, nbest, nbest_out)
            for row, i in enumerate(idx):
                hyps[i], counts[i] = texts[row], int(lengths[row])
            done += len(idx)
            if progress:
                status.show(_progress_text(done, total, time.perf_counter() - t0))
        status.end()
        return TranslationResult(hyps, counts, time.perf_counter() - t0, truncated, nbest_out)

    def _hypotheses(self, out: SearchOutput, idx: list[int], beam: int, nbest: int,
                    nbest_out: list | None) -> tuple[list[str], object]:
        """(best translation, its piece count) per row; fills `nbest_out[i]` when asked."""
        if out.texts is not None:
            return out.texts, out.lengths
        ids, lengths, scores = out.ids, out.lengths, out.scores
        if beam > 1:
            if nbest_out is not None:
                for row, i in enumerate(idx):
                    texts = self.tokenizer.decode(
                        [ids[row, k, : lengths[row, k]] for k in range(nbest)])
                    nbest_out[i] = list(zip(texts, scores[row].tolist(), strict=True))
            ids, lengths = ids[:, 0], lengths[:, 0]
        return self.tokenizer.decode([ids[row, : lengths[row]] for row in range(len(idx))]), lengths

    def translate_stream(
        self, lines: Iterable[str], chunk_lines: int = CHUNK_LINES, beam: int | None = None,
        batch_size: int | None = None,
    ) -> Iterator[TranslationResult]:
        """Translate `lines` (any iterable, read lazily) `chunk_lines` at a time.

        Yields one `TranslationResult` per chunk, in input order; each chunk is length-sorted
        and batched like `translate`, so the output is line for line that of
        `translate(list(lines))` (only the batches, cut within each chunk, differ).
        """
        if chunk_lines < 1:
            raise UserError(f"the chunk size must be at least 1 line, got {chunk_lines}")
        it = iter(lines)
        first = 0
        while chunk := list(itertools.islice(it, chunk_lines)):
            self.line_offset = first
            try:
                result = self.translate(chunk, beam=beam, batch_size=batch_size)
            finally:
                self.line_offset = 0
            first += len(chunk)
            yield result


def open_translator(model_dir, cfg: DecodeConfig) -> tuple[Translator, dict, int]:
    """(translator, model meta, size on disk in bytes) for a model directory, an ensemble
    directory, a TFLite export, a SavedModel export or a CTranslate2 export (`nmt_kd.ct2`)."""
    from nmt_kd.ct2 import CT2Backend, is_ct2_dir
    from nmt_kd.savedmodel_translate import SavedModelBackend, is_savedmodel_dir
    from nmt_kd.tflite_translate import TFLiteBackend, is_tflite_dir

    model_dir = Path(model_dir)
    exports = [(is_tflite_dir, TFLiteBackend), (is_savedmodel_dir, SavedModelBackend),
               (is_ct2_dir, CT2Backend)]
    for is_kind, kind in exports:
        if not is_kind(model_dir):
            continue
        backend = kind(model_dir, cfg)
        meta = dict(backend.meta, model_type=f"{backend.meta.get('model_type')}",
                    format=backend.format)
        return Translator.from_backend(backend), meta, backend.size_bytes
    from nmt_kd.models.persistence import load_model_dir, model_dir_bytes

    # an ensemble directory gives an Ensemble, which decodes through the same contract
    model, tokenizer, meta = load_model_dir(model_dir, cfg.precision)
    backend = KerasBackend(model, tokenizer, cfg)
    return Translator.from_backend(backend), dict(meta, format=backend.format), model_dir_bytes(model_dir)


def _progress_text(done: int, total: int, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    width = 30
    filled = int(width * done / max(total, 1))
    return (f"translating [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
            f"{rate:.1f} sent/s, ETA {eta:.0f}s")


def iter_input_lines(path: str | None, clean: bool = True) -> Iterator[str]:
    """Lines from a file or stdin (`-` or None), read lazily, split on '\\n' only, CR/LF ends removed.

    With `clean`, each line gets the training normalisation (NFC, whitespace); references
    are read with `clean=False` so that they are scored exactly as given. A line that is not
    valid UTF-8 or holds a NUL byte is an error naming the file and line.
    """
    from nmt_kd.data.clean import normalize
    from nmt_kd.data.readers import _BadLine, decode_line, iter_raw_lines, split_raw_lines

    if path in (None, "-"):
        raw_lines: Iterable[bytes] = split_raw_lines(sys.stdin.buffer, "<stdin>")
        where = "<stdin>"
    else:
        raw_lines, where = iter_raw_lines(path), path
    for lineno, raw in enumerate(raw_lines, 1):
        try:
            text = decode_line(raw)
        except _BadLine as e:
            raise UserError(f"{where}:{lineno}: {e.reason}") from None
        yield normalize(text) if clean else text


def read_input_lines(path: str | None, clean: bool = True) -> list[str]:
    """All lines of a file or stdin as a list (see `iter_input_lines`)."""
    return list(iter_input_lines(path, clean))
