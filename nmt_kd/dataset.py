"""Strings -> ids -> token-budget batches as a `tf.data.Dataset`.

Each element is `((src_ids, tgt_in_ids), tgt_out_ids)`, int32, padded with 0:
    src_ids    = pieces(src) + [eos]
    tgt_in_ids = [bos] + pieces(tgt)
    tgt_out_ids = pieces(tgt) + [eos]
Batches are bounded by a token budget (batch size x longest sequence, i.e. the padded
size that the model really computes on), not by a sentence count, and built from
length-sorted pairs so that padding stays small. The order of an epoch is a pure function of
(seed, epoch): a resumed run replays the same batches from the one it stopped at.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from nmt_kd import BOS_ID, EOS_ID
from nmt_kd.tokenizer import Tokenizer

PAD_MULTIPLE = 8  # pad lengths up to a multiple of 8: few distinct shapes, aligned matmuls


@dataclass
class EncodedPairs:
    """Token ids of a parallel corpus: source with eos, target without bos/eos."""

    src: list[np.ndarray]
    tgt: list[np.ndarray]
    dropped_too_long: int = 0

    def __len__(self) -> int:
        return len(self.src)

    @property
    def src_lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.src), dtype=np.int32, count=len(self.src))

    @property
    def tgt_lengths(self) -> np.ndarray:  # length of tgt_in / tgt_out (one more than pieces)
        return np.fromiter((len(t) + 1 for t in self.tgt), dtype=np.int32, count=len(self.tgt))


def encode_pairs(
    tokenizer: Tokenizer, src_lines: Sequence[str], tgt_lines: Sequence[str], max_len: int
) -> EncodedPairs:
    """Tokenize a corpus; pairs longer than `max_len` tokens on either side are dropped (counted)."""
    if len(src_lines) != len(tgt_lines):
        raise ValueError(f"{len(src_lines)} source lines but {len(tgt_lines)} target lines")
    src_ids, tgt_ids = tokenizer.encode(src_lines), tokenizer.encode(tgt_lines)
    out = EncodedPairs([], [])
    for s, t in zip(src_ids, tgt_ids, strict=True):
        if len(s) + 1 > max_len or len(t) + 1 > max_len:
            out.dropped_too_long += 1
            continue
        out.src.append(np.asarray(s + [EOS_ID], dtype=np.int32))
        out.tgt.append(np.asarray(t, dtype=np.int32))
    return out


def token_batches(
    src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_tokens: int, seed: int = 0,
    epoch: int = 0, shuffle: bool = True,
) -> list[np.ndarray]:
    """Group example indices into batches of at most `max_tokens` padded tokens.

    Examples are sorted by length (ties broken at random when shuffling, so each epoch groups
    differently) and packed greedily; the batch order is then shuffled.
    """
    n = len(src_lengths)
    if n == 0:
        return []
    longest = np.maximum(src_lengths, tgt_lengths)
    padded = ((longest + PAD_MULTIPLE - 1) // PAD_MULTIPLE) * PAD_MULTIPLE
    rng = np.random.default_rng([seed, epoch])
    tie = rng.random(n) if shuffle else np.arange(n) / n
    order = np.lexsort((tie, longest))
    batches, start, width = [], 0, 0
    for pos, idx in enumerate(order):
        w = max(width, int(padded[idx]))
        if pos > start and w * (pos - start + 1) > max_tokens:
            batches.append(order[start:pos])
            start, w = pos, int(padded[idx])
        width = w
    batches.append(order[start:])
    if shuffle:
        rng.shuffle(batches)
    return batches


def pad_to(seqs: Sequence[np.ndarray], multiple: int = PAD_MULTIPLE) -> np.ndarray:
    width = max(len(s) for s in seqs)
    width = ((width + multiple - 1) // multiple) * multiple
    out = np.zeros((len(seqs), width), dtype=np.int32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def make_batch(pairs: EncodedPairs, idx: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    src = pad_to([pairs.src[i] for i in idx])
    tgt_in = pad_to([np.concatenate(([BOS_ID], pairs.tgt[i])) for i in idx])
    tgt_out = pad_to([np.concatenate((pairs.tgt[i], [EOS_ID])) for i in idx])
    return (src, tgt_in), tgt_out


class BatchStream:
    """Deterministic token-budget batches of an encoded corpus, epoch by epoch.

        stream = BatchStream(pairs, max_tokens=4096, seed=1)
        for (src, tgt_in), tgt_out in stream.dataset(epoch=0, start=0):
            ...
    """

    def __init__(self, pairs: EncodedPairs, max_tokens: int, seed: int = 0, shuffle: bool = True):
        self.pairs, self.max_tokens, self.seed, self.shuffle = pairs, max_tokens, seed, shuffle
        self._src_len, self._tgt_len = pairs.src_lengths, pairs.tgt_lengths
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def batches(self, epoch: int) -> list[np.ndarray]:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, token_batches(self._src_len, self._tgt_len, self.max_tokens,
                                                self.seed, epoch, self.shuffle))
        return self._cache[1]

    def num_batches(self, epoch: int = 0) -> int:
        return len(self.batches(epoch))

    def iter_indexed(self, epoch: int, start: int = 0) -> Iterator:
        """`(example_indices, batch)` for this epoch's batches from batch `start` on."""
        for idx in self.batches(epoch)[start:]:
            yield idx, make_batch(self.pairs, idx)

    def iter_numpy(self, epoch: int, start: int = 0) -> Iterator:
        for _, batch in self.iter_indexed(epoch, start):
            yield batch

    def dataset(self, epoch: int, start: int = 0, prefetch: int = 4):
        """A `tf.data.Dataset` of this epoch's batches from batch `start` on."""
        import tensorflow as tf

        spec = tf.TensorSpec(shape=(None, None), dtype=tf.int32)
        ds = tf.data.Dataset.from_generator(
            lambda: self.iter_numpy(epoch, start), output_signature=((spec, spec), spec)
        )
        return ds.prefetch(prefetch)
