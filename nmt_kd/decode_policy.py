"""The decoding policy every translation backend follows: output-length limits and batches.

One rule sets how long a translation may get: a source of `n` ids (eos included) may give at
most `floor(max_len_a * n) + max_len_b` target tokens, capped. `max_len_a` is used in
thousandths, in exact integer arithmetic, so that e.g. a=1.1, n=10 gives exactly 11 (no float
rounding) and the graphs convert to TFLite (no float64 ops). The rule is written once
(`wanted_length`) and evaluated on Python ints, numpy arrays and int32 tensors alike:

* `max_len_bucket` (Python): the cache size / loop bound of a batch, from its longest source,
  rounded up to a multiple of `LEN_BUCKET` so that few distinct shapes are traced;
* `length_buckets`: every size `max_len_bucket` can choose (the SavedModel export has one
  branch per size) and `bucket_in_graph`, the same choice inside a graph;
* `sentence_limits` / `sentence_limits_np`: each sentence's own limit inside a batch,
  `min(max_len, wanted_length(src_len))`, for the graph searches and the host loop.

`length_sorted_batches` cuts encoded sources into padded batches, sorted by length (less
padding, fewer distinct shapes), skipping empty sources.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from nmt_kd.config import DecodeConfig

LEN_BUCKET = 16  # output-length limits are rounded up to this, bounding the number of traces


def scale_milli(a: float) -> int:
    """`a` in thousandths: length limits use `a` rounded to 0.001, in exact integer arithmetic."""
    return int(round(a * 1000))


def wanted_length(src_len, a: float, b: int):
    """`floor(a * src_len) + b` in integer arithmetic; `src_len` is a Python int, an integer
    numpy array or an int32 tensor (the result has the same kind)."""
    return scale_milli(a) * src_len // 1000 + b


def _round_up_to_bucket(want):
    return LEN_BUCKET * ((want + LEN_BUCKET - 1) // LEN_BUCKET)


def max_len_bucket(cfg: DecodeConfig, longest_src: int) -> int:
    """The cache size for a batch whose longest source (eos included) has `longest_src` ids."""
    want = wanted_length(longest_src, cfg.max_len_a, cfg.max_len_b)
    return int(min(cfg.max_len_cap, _round_up_to_bucket(want)))


def bucket_in_graph(cfg: DecodeConfig, longest_src):
    """`max_len_bucket` for an int32 scalar tensor (inside a graph)."""
    import tensorflow as tf

    want = wanted_length(longest_src, cfg.max_len_a, cfg.max_len_b)
    return tf.minimum(cfg.max_len_cap, _round_up_to_bucket(want))


def length_buckets(cfg: DecodeConfig) -> list[int]:
    """Every cache size `max_len_bucket` can choose for this config."""
    longest_want = wanted_length(cfg.max_src_len, cfg.max_len_a, cfg.max_len_b)
    sizes = {max_len_bucket(cfg, 1)}
    for k in range(1, math.ceil(longest_want / LEN_BUCKET) + 1):
        sizes.add(min(cfg.max_len_cap, LEN_BUCKET * k))
    return sorted(sizes)


def max_lengths_from_source(src_lengths, a: float, b: int, cap: int):
    """Per-sentence output limits: int32 `[B]` = `min(cap, floor(a * src_len) + b)` (graph)."""
    import tensorflow as tf

    return tf.minimum(wanted_length(tf.cast(src_lengths, tf.int32), a, b), cap)


def sentence_limits(src, cfg: DecodeConfig, max_len: int):
    """Each sentence's output limit for padded source ids `src` int32 `[B, S]` (graph)."""
    import tensorflow as tf

    src_len = tf.reduce_sum(tf.cast(tf.not_equal(src, 0), tf.int32), axis=1)
    return max_lengths_from_source(src_len, cfg.max_len_a, cfg.max_len_b, max_len)


def sentence_limits_np(src: np.ndarray, cfg: DecodeConfig, max_len: int) -> np.ndarray:
    """`sentence_limits` for a numpy batch (int64 `[B]`)."""
    src_len = (src != 0).sum(axis=1).astype(np.int64)
    return np.minimum(wanted_length(src_len, cfg.max_len_a, cfg.max_len_b), max_len)


def length_sorted_batches(src_ids: Sequence[list[int]], batch_size: int, sort: bool = True,
                          ) -> Iterator[tuple[list[int], np.ndarray]]:
    """(indices, padded int32 `[len(indices), width]` ids) per batch of `batch_size` sources.

    Empty sources are left out (they translate to empty lines); with `sort`, sources are
    ordered by length first (stable), so each batch holds similar lengths.
    """
    todo = [i for i in range(len(src_ids)) if src_ids[i]]
    if sort:
        todo.sort(key=lambda i: len(src_ids[i]))
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        width = max(len(src_ids[i]) for i in idx)
        src = np.zeros((len(idx), width), dtype=np.int32)
        for row, i in enumerate(idx):
            src[row, : len(src_ids[i])] = src_ids[i]
        yield idx, src
