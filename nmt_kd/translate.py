"""Translate text with any model of the seq2seq contract (teacher or student).

Sentences are tokenized, sorted by length into batches (less padding, fewer distinct
shapes), decoded with greedy or beam search inside one `tf.function` per (beam, length
bucket), and returned in the input order. An empty line translates to an empty line.
`Translator.translate_stream` does the same chunk by chunk over an iterable of lines, so
memory stays bounded by the chunk size however long the input is.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from nmt_kd import EOS_ID
from nmt_kd.config import DecodeConfig
from nmt_kd.decoding import beam_search, greedy_search, max_lengths_from_source, scale_milli
from nmt_kd.errors import UserError
from nmt_kd.tokenizer import Tokenizer

LEN_BUCKET = 16  # output-length limits are rounded up to this, bounding the number of traces
CHUNK_LINES = 10_000  # lines per chunk when translating a stream


@dataclass
class TranslationResult:
    hypotheses: list[str]
    token_counts: list[int]  # target pieces per hypothesis (eos excluded)
    seconds: float
    truncated: int = 0  # source lines cut to decode.max_src_len
    nbest: list[list[tuple[str, float]]] | None = None
    extra: dict = field(default_factory=dict)


def decode_ids(model, cfg: DecodeConfig, src: tf.Tensor, beam: int, max_len: int,
               nbest: int = 1) -> dict[str, tf.Tensor]:
    """Greedy (beam 1) or beam search over a padded batch of source ids (graph mode).

    `max_len` (a Python int) sizes the caches; each sentence's own limit is
    `min(max_len, floor(max_len_a * src_len) + max_len_b)`. Shared by `Translator` and the
    exported SavedModel (`nmt_kd.export`), so both decode exactly alike.
    """
    encoded = model.encode(src, training=False)
    state = model.init_decode_state(encoded, max_len)
    src_len = tf.reduce_sum(tf.cast(tf.not_equal(src, 0), tf.int32), axis=1)
    limits = max_lengths_from_source(src_len, cfg.max_len_a, cfg.max_len_b, max_len)
    batch = tf.shape(src)[0]
    if beam == 1:
        return greedy_search(model.decode_step, state, batch, max_len, limits)
    return beam_search(model.decode_step, state, batch, beam, max_len, limits,
                       length_penalty=cfg.length_penalty, nbest=nbest)


def max_len_bucket(cfg: DecodeConfig, longest_src: int) -> int:
    """The cache size for a batch whose longest source (eos included) has `longest_src` ids."""
    want = scale_milli(cfg.max_len_a) * longest_src // 1000 + cfg.max_len_b
    return int(min(cfg.max_len_cap, LEN_BUCKET * math.ceil(want / LEN_BUCKET)))


class Translator:
    """Batched translation with one model and its tokenizer.

        tr = Translator(model, tokenizer, DecodeConfig(beam=5))
        tr.translate(["A dog runs."]).hypotheses   # ["Ein Hund rennt."]
    """

    def __init__(self, model, tokenizer: Tokenizer, cfg: DecodeConfig):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.line_offset = 0  # added to line numbers in messages (set per chunk by translate_stream)
        self._fns: dict[tuple[int, int, int], tf.types.experimental.GenericFunction] = {}

    def _decode_fn(self, beam: int, max_len: int, nbest: int):
        key = (beam, max_len, nbest)
        if key not in self._fns:
            model, cfg = self.model, self.cfg

            @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)],
                         reduce_retracing=True)
            def decode(src):
                return decode_ids(model, cfg, src, beam, max_len, nbest)

            self._fns[key] = decode
        return self._fns[key]

    def _decode_batch(self, src: np.ndarray, beam: int, max_len: int, nbest: int):
        """Padded source ids `[B, S]` -> numpy (ids, lengths, scores) of the search."""
        out = self._decode_fn(beam, max_len, nbest)(tf.constant(src))
        return out["ids"].numpy(), out["lengths"].numpy(), out["scores"].numpy()

    def encode_sources(self, lines: Sequence[str]) -> tuple[list[list[int]], int]:
        ids = self.tokenizer.encode(lines)
        limit = self.cfg.max_src_len - 1  # room for eos
        truncated = 0
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                if self.cfg.on_long_line == "error":
                    raise UserError(
                        f"input line {self.line_offset + i + 1} has {len(seq)} tokens, more than decode.max_src_len="
                        f"{self.cfg.max_src_len} (set decode.on_long_line: truncate to cut it)"
                    )
                ids[i] = seq[:limit]
                truncated += 1
        return [seq + [EOS_ID] if seq else [] for seq in ids], truncated

    def _max_len(self, longest_src: int) -> int:
        return max_len_bucket(self.cfg, longest_src)

    def translate(
        self, lines: Sequence[str], beam: int | None = None, batch_size: int | None = None,
        nbest: int = 1, progress: bool = False, sort: bool = True,
    ) -> TranslationResult:
        beam = beam or self.cfg.beam
        batch_size = batch_size or self.cfg.batch_size
        if nbest > beam:
            raise UserError(f"n-best ({nbest}) cannot exceed the beam size ({beam})")
        t0 = time.perf_counter()
        src_ids, truncated = self.encode_sources(lines)
        n = len(src_ids)
        hyps: list[str] = [""] * n
        counts = [0] * n
        nbest_out: list[list[tuple[str, float]]] | None = [[] for _ in range(n)] if nbest > 1 else None
        todo = [i for i in range(n) if src_ids[i]]  # empty lines stay empty
        if sort:
            todo.sort(key=lambda i: len(src_ids[i]))
        done = 0
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            width = max(len(src_ids[i]) for i in idx)
            src = np.zeros((len(idx), width), dtype=np.int32)
            for row, i in enumerate(idx):
                src[row, : len(src_ids[i])] = src_ids[i]
            ids, lengths, scores = self._decode_batch(src, beam, self._max_len(width), nbest)
            if beam > 1:
                if nbest_out is not None:
                    for row, i in enumerate(idx):
                        texts = self.tokenizer.decode(
                            [ids[row, k, : lengths[row, k]] for k in range(nbest)])
                        nbest_out[i] = list(zip(texts, scores[row].tolist(), strict=True))
                ids, lengths = ids[:, 0], lengths[:, 0]
            texts = self.tokenizer.decode([ids[row, : lengths[row]] for row in range(len(idx))])
            for row, i in enumerate(idx):
                hyps[i], counts[i] = texts[row], int(lengths[row])
            done += len(idx)
            if progress:
                _progress(done, len(todo), time.perf_counter() - t0)
        if progress and todo:
            print(file=sys.stderr)
        return TranslationResult(hyps, counts, time.perf_counter() - t0, truncated, nbest_out)

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
    directory, a TFLite export or a CTranslate2 export (`nmt_kd.ct2`)."""
    from pathlib import Path

    from nmt_kd.export import TFLITE_FILES
    from nmt_kd.tflite_translate import TFLiteTranslator, is_tflite_dir

    model_dir = Path(model_dir)
    from nmt_kd.ct2 import ct2_translator_or_none

    if (found := ct2_translator_or_none(model_dir, cfg)) is not None:
        return found
    if is_tflite_dir(model_dir):
        tr = TFLiteTranslator(model_dir, cfg)
        meta = dict(tr.meta, model_type=f"{tr.meta.get('model_type')}",
                    format=f"tflite-{tr.meta['quantize']}")
        return tr, meta, sum((model_dir / f).stat().st_size for f in TFLITE_FILES)
    from nmt_kd.models.registry import load_model_dir, model_dir_bytes

    # an ensemble directory gives an Ensemble, which decodes through the same contract
    model, tokenizer, meta = load_model_dir(model_dir, cfg.precision)
    meta = dict(meta, format=f"keras-{'bf16' if model.compute_dtype == 'bfloat16' else 'fp32'}")
    return Translator(model, tokenizer, cfg), meta, model_dir_bytes(model_dir)


def _progress(done: int, total: int, elapsed: float) -> None:
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    width = 30
    filled = int(width * done / max(total, 1))
    print(f"\rtranslating [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
          f"{rate:.1f} sent/s, ETA {eta:.0f}s", end="", file=sys.stderr, flush=True)


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
