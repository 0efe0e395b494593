"""Translation backends: what `nmt_kd.translate.Translator` drives to search a batch.

`Translator` does everything around the search the same way for every backend (tokenizing,
truncating long lines, length-sorted batches, the output-length policy of
`nmt_kd.decode_policy`, detokenizing, the input order); a backend only searches:

* `KerasBackend`: a loaded Keras model (teacher, student or ensemble); greedy or beam search
  of `nmt_kd.decoding` compiled into one `tf.function` per (beam, length bucket, n-best);
* `nmt_kd.tflite_translate.TFLiteBackend`: a TFLite export, greedy, the token loop on the host;
* `nmt_kd.savedmodel_translate.SavedModelBackend`: a SavedModel export, text in, text out
  through its `serving_default` signature (beam fixed at export time).

Every backend satisfies the `SearchBackend` protocol.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from nmt_kd.config import DecodeConfig
from nmt_kd.decode_policy import sentence_limits
from nmt_kd.decoding import beam_search, greedy_search
from nmt_kd.tokenizer import Tokenizer


class SourceBatch(NamedTuple):
    """One batch of non-empty sources, as the translator prepared it."""

    ids: np.ndarray  # int32 [B, S]: pieces, eos, then padding
    lines: list[str]  # the (normalised, untruncated) source lines of the rows


class SearchOutput(NamedTuple):
    """A backend's answer for one batch (numpy). With beam > 1, `ids`, `lengths` and `scores`
    have an n-best axis after the batch one (`[B, nbest, T]`, `[B, nbest]`)."""

    ids: np.ndarray | None  # int32 [B, T]: emitted tokens, no eos, padded; None with `texts`
    lengths: np.ndarray  # int32 [B]: target pieces per hypothesis (eos excluded)
    scores: np.ndarray  # float32 [B] (beam search; zeros from the Keras greedy search)
    texts: list[str] | None = None  # set by a backend that detokenizes itself


class SearchBackend(Protocol):
    """The search behind a `Translator`."""

    cfg: DecodeConfig  # the decode settings the backend follows
    tokenizer: Tokenizer | None
    format: str  # for reports: keras-fp32, keras-bf16, tflite-int8, savedmodel, ...

    def params(self) -> int:
        """The model's parameter count."""

    def check(self, beam: int, nbest: int) -> None:
        """Raise `UserError` if this backend cannot decode with this beam / n-best."""

    def search(self, batch: SourceBatch, beam: int, max_len: int, nbest: int) -> SearchOutput:
        """Search one batch; `max_len` is its output-length bucket (the loop bound)."""


def decode_ids(model, cfg: DecodeConfig, src, beam: int, max_len: int, nbest: int = 1,
               greedy_scores: bool = True) -> dict:
    """Greedy (beam 1) or beam search over a padded batch of source ids (graph mode).

    `max_len` (a Python int) sizes the caches; each sentence's own limit is
    `nmt_kd.decode_policy.sentence_limits`. Shared by `KerasBackend` and the exported
    SavedModel (`nmt_kd.export`), so both decode exactly alike. `greedy_scores=False` skips
    the greedy search's softmax (same tokens, scores zero): what a translation needs.
    """
    import tensorflow as tf

    encoded = model.encode(src, training=False)
    state = model.init_decode_state(encoded, max_len)
    limits = sentence_limits(src, cfg, max_len)
    batch = tf.shape(src)[0]
    if beam == 1:
        return greedy_search(model.decode_step, state, batch, max_len, limits,
                             with_scores=greedy_scores)
    return beam_search(model.decode_step, state, batch, beam, max_len, limits,
                       length_penalty=cfg.length_penalty, nbest=nbest)


class KerasBackend:
    """A Keras model of the seq2seq contract (an ensemble too), searched in graph mode."""

    def __init__(self, model, tokenizer: Tokenizer | None, cfg: DecodeConfig):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self._fns: dict[tuple[int, int, int], object] = {}

    @property
    def format(self) -> str:
        return f"keras-{'bf16' if self.model.compute_dtype == 'bfloat16' else 'fp32'}"

    def params(self) -> int:
        return int(self.model.count_params())

    def check(self, beam: int, nbest: int) -> None:
        pass  # any beam, any n-best up to the beam (Translator checks that)

    def _decode_fn(self, beam: int, max_len: int, nbest: int):
        key = (beam, max_len, nbest)
        if key not in self._fns:
            import tensorflow as tf

            model, cfg = self.model, self.cfg

            @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)],
                         reduce_retracing=True)
            def decode(src):
                return decode_ids(model, cfg, src, beam, max_len, nbest, greedy_scores=False)

            self._fns[key] = decode
        return self._fns[key]

    def search(self, batch: SourceBatch, beam: int, max_len: int, nbest: int) -> SearchOutput:
        import tensorflow as tf

        out = self._decode_fn(beam, max_len, nbest)(tf.constant(batch.ids))
        return SearchOutput(out["ids"].numpy(), out["lengths"].numpy(), out["scores"].numpy())
