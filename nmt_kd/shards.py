"""An encoded corpus as memory-mapped token shards, read for training through `tf.data`.

Reads:  a split's text files (`*.src`, `*.tgt`) and the SentencePiece model.
Writes: ROOT/<name>-<hash>/{src.ids, tgt.ids, src.len, tgt.len, src.off, tgt.off,
        manifest.json (written last)}, ROOT usually RUN/encoded/.

The text is streamed through SentencePiece in chunks of lines, so memory does not grow with
the corpus. Every file is flat raw binary: the ids of all kept sentences end to end (uint16
when the vocabulary fits, else int32; the source with its eos, the target bare), their
lengths (int32: source + eos, and target + 1, i.e. the length of tgt_in / tgt_out) and
offsets (int64, one more than the pairs). Pairs longer than `max_len` on either side are
dropped and counted, as `encode_pairs` does. The directory is written under a temporary
name and renamed into place, so it is complete or absent; its name carries a hash of the
text files, of spm.model and of `max_len`, so an unchanged corpus is encoded once and
reused, and a changed one gets a directory of its own.

`ShardedPairs` is the memory-mapped view (usable where an `EncodedPairs` is: `src`, `tgt`,
`src_lengths`, `tgt_lengths`, `len`); `ShardStream` makes the same token-budget batches as
`dataset.BatchStream` for the same seed and epoch (`batch_plan`: numpy over the lengths
index, equal to `dataset.token_batches`) and delivers them as a `tf.data.Dataset`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nmt_kd import BOS_ID, EOS_ID
from nmt_kd.dataset import PAD_MULTIPLE
from nmt_kd.errors import UserError
from nmt_kd.fileio import iter_lines, read_json, sha256_file, write_json

FORMAT = 1
CHUNK_LINES = 8192
SIDES = ("src", "tgt")


def shard_key(src_path, tgt_path, spm_path, max_len: int) -> dict:
    """What an encoded directory depends on: the content of its inputs and `max_len`."""
    return {"format": FORMAT, "src_sha256": sha256_file(src_path),
            "tgt_sha256": sha256_file(tgt_path), "spm_sha256": sha256_file(spm_path),
            "max_len": int(max_len)}


def encode_corpus(tokenizer, src_path, tgt_path, max_len: int, root, name: str,
                  chunk_lines: int = CHUNK_LINES, log=lambda _m: None) -> ShardedPairs:
    """The shards of one split: reused when complete and current, else encoded (streamed)."""
    key = shard_key(src_path, tgt_path, tokenizer.model_path, max_len)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(root)
    final = root / f"{name}-{digest}"
    if (final / "manifest.json").is_file():
        return ShardedPairs(final)
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root, f".{final.name}.")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.pid{os.getpid()}.", dir=root))
    try:
        manifest = _write_shards(tokenizer, src_path, tgt_path, max_len, tmp, chunk_lines)
        write_json(tmp / "manifest.json", {**key, **manifest, "name": name})
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same shards first
            if not (final / "manifest.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"encoded {manifest['pairs']} {name} pairs into {final} "
        f"({manifest['dropped_too_long']} longer than {max_len} tokens dropped)")
    return ShardedPairs(final)


def _remove_abandoned(root: Path, prefix: str) -> None:
    """Temporary directories of writers on this host that were killed (their pid is gone)."""
    for d in root.glob(prefix + "pid*"):
        pid = d.name[len(prefix) + 3:].split(".")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


def _chunks(src_path, tgt_path, size: int) -> Iterator[tuple[list[str], list[str]]]:
    src, tgt = iter_lines(src_path), iter_lines(tgt_path)
    while True:
        a, b = list(itertools.islice(src, size)), list(itertools.islice(tgt, size))
        if len(a) != len(b):
            raise UserError(f"{src_path} and {tgt_path} have different line counts; "
                            "refusing misaligned data")
        if not a:
            return
        yield a, b


def _flat(ids: list[list[int]], keep: np.ndarray, lengths: np.ndarray, dtype,
          append_eos: bool) -> np.ndarray:
    """The kept sentences' ids end to end (each followed by eos when `append_eos`)."""
    kept = [ids[i] for i in np.flatnonzero(keep)]
    flat = np.fromiter(itertools.chain.from_iterable(kept), dtype=dtype,
                       count=int(lengths[keep].sum()))
    if append_eos:
        flat = np.insert(flat, np.cumsum(lengths[keep]), EOS_ID)
    return flat


def _write_shards(tokenizer, src_path, tgt_path, max_len, out: Path, chunk_lines) -> dict:
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    files = {n: open(out / n, "wb") for n in ("src.ids", "tgt.ids", "src.len", "tgt.len")}
    pairs = dropped = 0
    try:
        for src_lines, tgt_lines in _chunks(src_path, tgt_path, chunk_lines):
            s_ids, t_ids = tokenizer.encode(src_lines), tokenizer.encode(tgt_lines)
            s_len = np.fromiter(map(len, s_ids), np.int32, len(s_ids))
            t_len = np.fromiter(map(len, t_ids), np.int32, len(t_ids))
            keep = (s_len + 1 <= max_len) & (t_len + 1 <= max_len)
            files["src.ids"].write(_flat(s_ids, keep, s_len, dtype, True).tobytes())
            files["tgt.ids"].write(_flat(t_ids, keep, t_len, dtype, False).tobytes())
            files["src.len"].write((s_len[keep] + 1).tobytes())  # with eos
            files["tgt.len"].write((t_len[keep] + 1).tobytes())  # tgt_in / tgt_out
            pairs, dropped = pairs + int(keep.sum()), dropped + int((~keep).sum())
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f in files.values():
            f.close()
    for side, extra in (("src", 0), ("tgt", -1)):
        _write_offsets(out / f"{side}.len", out / f"{side}.off", extra, pairs)
    return {"pairs": pairs, "dropped_too_long": dropped, "dtype": np.dtype(dtype).name,
            "vocab_size": tokenizer.vocab_size}


def _write_offsets(len_path: Path, off_path: Path, extra: int, n: int,
                   chunk: int = 1 << 18) -> None:
    """Offsets (int64, n + 1) of sentences of `length + extra` ids, streamed in chunks."""
    lengths = np.memmap(len_path, np.int32, "r", shape=(n,)) if n else np.zeros(0, np.int32)
    total = 0
    with open(off_path, "wb") as f:
        f.write(np.zeros(1, np.int64).tobytes())
        for a in range(0, n, chunk):
            off = total + np.cumsum(lengths[a:a + chunk].astype(np.int64) + extra)
            f.write(off.tobytes())
            total = int(off[-1])
        f.flush()
        os.fsync(f.fileno())


class _Ragged:
    """Sentence `i` of a flat id array as `ids[off[i]:off[i] + length]` (a view, no copy)."""

    def __init__(self, ids: np.ndarray, off: np.ndarray, lo: int = 0, hi: int | None = None):
        self.ids, self.off, self.lo = ids, off, lo
        self.hi = len(off) - 1 if hi is None else hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                raise ValueError("only contiguous slices of a sharded corpus")
            return _Ragged(self.ids, self.off, self.lo + lo, self.lo + max(hi, lo))
        i = int(i) + (len(self) if int(i) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = self.lo + i
        return self.ids[self.off[j]:self.off[j + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class ShardedPairs:
    """The memory-mapped pairs of one encoded directory (see the module docstring)."""

    def __init__(self, directory):
        self.dir = Path(directory)
        meta = read_json(self.dir / "manifest.json")
        self.manifest, n = meta, meta["pairs"]
        self.dropped_too_long = meta["dropped_too_long"]
        dtype = np.dtype(meta["dtype"])

        def mm(name, dt, count):
            return np.memmap(self.dir / name, dt, "r", shape=(count,)) if count else np.zeros(0, dt)

        self._off = {s: mm(f"{s}.off", np.int64, n + 1) for s in SIDES}
        self._ids = {s: mm(f"{s}.ids", dtype, int(self._off[s][-1])) for s in SIDES}
        self._len = {s: mm(f"{s}.len", np.int32, n) for s in SIDES}
        self.src, self.tgt = (_Ragged(self._ids[s], self._off[s]) for s in SIDES)

    def __len__(self) -> int:
        return len(self._len["src"])

    @property
    def src_lengths(self) -> np.ndarray:  # with eos
        return self._len["src"]

    @property
    def tgt_lengths(self) -> np.ndarray:  # of tgt_in / tgt_out (one more than the pieces)
        return self._len["tgt"]

    def gather(self, idx: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """`make_batch(self, idx)`, vectorised: `((src, tgt_in), tgt_out)` int32, padded."""
        idx = np.asarray(idx, np.int64)
        src = _padded_rows(self._ids["src"], self._off["src"][idx], self._len["src"][idx], 0)
        t_len = self._len["tgt"][idx]
        t_start = self._off["tgt"][idx]
        tgt_out = _padded_rows(self._ids["tgt"], t_start, t_len - 1, 1, EOS_ID)
        tgt_in = np.empty_like(tgt_out)
        tgt_in[:, 0] = BOS_ID
        tgt_in[:, 1:] = tgt_out[:, :-1]
        tgt_in[np.arange(tgt_in.shape[1])[None, :] >= t_len[:, None]] = 0  # the shifted eos
        return (src, tgt_in), tgt_out


def _padded_rows(flat, starts, lengths, extra: int, end_id: int = 0) -> np.ndarray:
    """Rows `flat[start:start + length]` (then `end_id` when `extra`), zero-padded to a
    multiple of PAD_MULTIPLE wide."""
    width = int(lengths.max()) + extra if len(lengths) else 0
    width = -(-max(width, 1) // PAD_MULTIPLE) * PAD_MULTIPLE
    cols = np.arange(width)
    inside = cols[None, :] < lengths[:, None]
    pos = np.where(inside, starts[:, None] + cols[None, :], 0)
    out = np.where(inside, flat[pos] if len(flat) else 0, 0).astype(np.int32)
    if extra:
        out[np.arange(len(lengths)), lengths] = end_id
    return out


PLAN_CHUNK = 1 << 18


def batch_plan(src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_tokens: int, seed: int = 0,
               epoch: int = 0, shuffle: bool = True, scratch=None,
               chunk: int = PLAN_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """`dataset.token_batches` as two arrays: batch `b` is `order[bounds[b]:bounds[b + 1]]`.

    The same random draws in the same order (the ties, then the shuffle of the batches), the
    same sort (by length, then tie, then index) and the same greedy packing, so the batches
    are identical. But the sort is a counting sort by length (in chunks) then one sort of
    ties per length, the packing walks batches, not sentences (over runs of equal padded
    width), and the order comes back already shuffled (int32 when it fits). With a
    `scratch` directory the per-pair arrays (order, ties) are memory-mapped files there,
    unlinked at once: the plan's anonymous memory is then bounded by a chunk and the
    largest group of equal length, whatever the corpus size.
    """
    n = len(src_lengths)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    counts = _length_counts(src_lengths, tgt_lengths, chunk)
    order = _scratch_array(n, np.int32 if n < 1 << 31 else np.int64, scratch)
    _sort_by_length(src_lengths, tgt_lengths, counts, order, chunk)
    values = np.flatnonzero(counts)
    counts = counts[values]
    rng = np.random.default_rng([seed, epoch])
    if shuffle:  # without shuffling the ties are the index: the stable sort's order already
        tie = _scratch_array(n, np.float64, scratch)
        for lo in range(0, n, chunk):  # the same stream as rng.random(n)
            tie[lo:lo + chunk] = rng.random(min(chunk, n - lo))
        _sort_groups(order, tie, counts.tolist())
        del tie
    widths = -(-values.astype(np.int64) // PAD_MULTIPLE) * PAD_MULTIPLE
    starts = _pack(widths, np.cumsum(counts), max_tokens)
    bounds = np.append(starts, n)
    if not shuffle:
        return order, bounds
    perm = np.arange(len(starts))
    rng.shuffle(perm)
    shuffled = _scratch_array(n, order.dtype, scratch)
    new_bounds = np.concatenate(([0], np.cumsum(np.diff(bounds)[perm])))
    for b, lo in zip(perm.tolist(), new_bounds[:-1].tolist(), strict=True):
        shuffled[lo:lo + bounds[b + 1] - bounds[b]] = order[bounds[b]:bounds[b + 1]]
    return shuffled, new_bounds


def _scratch_array(n: int, dtype, scratch) -> np.ndarray:
    """An array of `n` items: a memory-mapped, already unlinked file in `scratch`, or in
    memory (no scratch directory, or one this process cannot write to)."""
    if scratch is not None:
        try:
            with tempfile.TemporaryFile(dir=scratch, prefix=".plan.") as f:
                f.truncate(n * np.dtype(dtype).itemsize)
                return np.memmap(f, dtype, "r+", shape=(n,))  # the mapping outlives the fd
        except OSError:
            pass
    return np.empty(n, dtype)


def _length_counts(src_lengths, tgt_lengths, chunk: int) -> np.ndarray:
    """How many pairs have each longest side length (index: the length)."""
    counts = np.zeros(1, np.int64)
    for lo in range(0, len(src_lengths), chunk):
        c = np.bincount(np.maximum(src_lengths[lo:lo + chunk], tgt_lengths[lo:lo + chunk]))
        if len(c) > len(counts):
            counts = np.pad(counts, (0, len(c) - len(counts)))
        counts[:len(c)] += c
    return counts


def _sort_by_length(src_lengths, tgt_lengths, counts: np.ndarray, out: np.ndarray,
                    chunk: int) -> None:
    """`out` = a stable argsort of the longest side length, as a counting sort in chunks."""
    fill = np.concatenate(([0], np.cumsum(counts)[:-1]))  # next free slot of each length
    for lo in range(0, len(src_lengths), chunk):
        vals = np.maximum(src_lengths[lo:lo + chunk], tgt_lengths[lo:lo + chunk])
        idx = np.argsort(vals, kind="stable")
        v = vals[idx]
        rank = np.arange(len(v)) - np.searchsorted(v, v, "left")  # place within its length
        out[fill[v] + rank] = lo + idx
        fill += np.bincount(vals, minlength=len(fill))


def _sort_groups(order: np.ndarray, tie: np.ndarray, counts: list[int]) -> None:
    """Within each run of equal length (`counts`, in order), sort `order` by `tie` (stable)."""
    lo = 0
    for c in counts:
        if c > 1:
            group = np.asarray(order[lo:lo + c])
            order[lo:lo + c] = group[np.argsort(tie[group], kind="stable")]
        lo += c


def _pack(widths: np.ndarray, ends: np.ndarray, max_tokens: int) -> np.ndarray:
    """Greedy packing of length-sorted examples: the start of every batch.

    Groups of examples of padded width `widths[g]` end at `ends[g]` (widths ascending). A
    batch from `s` takes every next example while `width * count <= max_tokens` (a lone
    example may exceed it). Widths only grow along the sort, so within a run of equal width
    W the batch can reach `s + max_tokens // W`; one step per batch and per run it spans.
    """
    keep = np.append(np.diff(widths) != 0, True)  # merge groups of equal padded width
    run_w, run_hi = widths[keep].tolist(), ends[keep].tolist()
    run_lo = [0] + run_hi[:-1]
    n = run_hi[-1]
    starts, s, k = [], 0, 0
    while s < n:
        while run_hi[k] <= s:
            k += 1
        e, j = s + 1, k
        while j < len(run_w):
            cap = s + max_tokens // run_w[j]
            if cap <= max(run_lo[j], s):
                break
            e = max(e, min(run_hi[j], cap))
            if cap < run_hi[j]:
                break
            j += 1
        starts.append(s)
        s = e
    return np.asarray(starts, np.int64)


class ShardStream:
    """Deterministic token-budget batches of `ShardedPairs`, epoch by epoch, via `tf.data`.

        stream = ShardStream(pairs, max_tokens=4096, seed=1)
        for idx, src, tgt_in, tgt_out in stream.dataset(epoch=0, start=0):
            ...

    The batches of an epoch are `dataset.BatchStream`'s for the same pairs, seed and epoch;
    `idx` are the pair indices of each batch (for the offline top-k store).
    """

    def __init__(self, pairs: ShardedPairs, max_tokens: int, seed: int = 0, shuffle: bool = True,
                 parallel: int = 2):
        self.pairs, self.max_tokens, self.seed, self.shuffle = pairs, max_tokens, seed, shuffle
        self.parallel = parallel
        self._cache: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = None  # free the previous epoch's plan first
            self._cache = (epoch, batch_plan(self.pairs.src_lengths, self.pairs.tgt_lengths,
                                             self.max_tokens, self.seed, epoch, self.shuffle,
                                             scratch=getattr(self.pairs, "dir", None)))
        return self._cache[1]

    def num_batches(self, epoch: int = 0) -> int:
        return len(self.plan(epoch)[1]) - 1

    def indices(self, epoch: int, b: int) -> np.ndarray:
        order, bounds = self.plan(epoch)
        return order[bounds[b]:bounds[b + 1]]

    def iter_indexed(self, epoch: int, start: int = 0) -> Iterator:
        """`(example_indices, batch)` in numpy, as `BatchStream.iter_indexed`."""
        for b in range(start, self.num_batches(epoch)):
            idx = self.indices(epoch, b)
            yield idx, self.pairs.gather(idx)

    def dataset(self, epoch: int, start: int = 0, prefetch: int | None = None):
        """This epoch's batches from batch `start` on: `(idx, src, tgt_in, tgt_out)`."""
        import tensorflow as tf

        order, bounds = self.plan(epoch)

        def load(b):
            idx = order[bounds[b]:bounds[b + 1]].astype(np.int64)
            (src, tgt_in), tgt_out = self.pairs.gather(idx)
            return idx, src, tgt_in, tgt_out

        def fetch(b):
            out = tf.numpy_function(load, [b], (tf.int64, tf.int32, tf.int32, tf.int32),
                                    stateful=False)
            out[0].set_shape([None])
            for t in out[1:]:
                t.set_shape([None, None])
            return tuple(out)

        ds = tf.data.Dataset.range(start, len(bounds) - 1)
        ds = ds.map(fetch, num_parallel_calls=self.parallel, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE if prefetch is None else prefetch)
