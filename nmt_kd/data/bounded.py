"""The prepare stage's whole-corpus decisions in bounded memory: which pairs are duplicates,
which pairs the valid/test cut takes, which pairs the data.max_train_pairs sample keeps.

Each needs to see all N pairs (users bring 1M-100M) before deciding about one. The per-pair
state lives in numpy arrays mapped from files in a scratch directory, so the process's
anonymous memory does not grow with N: the kernel's page cache holds what fits and writes
back the rest. The decisions are exactly those of the list-based code this replaced (the
first occurrence of a pair survives; the cut and the sample pick the same pairs for the same
seed); tests/test_prepare_stream.py compares the two.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nmt_kd.fileio import naming

BLOCK = 1 << 16  # flags read, and indices filled, this many at a time
FLUSH = 1 << 14  # digests buffered before they go to the bucket files (256 KB)
BUCKETS = 256
SORT_LIMIT = 1 << 16  # bucket entries sorted at once (1.5 MB)
_DIGEST = np.dtype([("hi", "<u8"), ("lo", "<u8")])
_ENTRY = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("idx", "<i8")])


def disk_array(path: Path, n: int, dtype) -> np.ndarray:
    """n zeros in a file mapped into memory.

    The file's blocks are allocated before it is mapped, so a full disk is an OSError naming
    the file here, not a SIGBUS on some later write through the map. numpy cannot map an
    empty file: n == 0 gives a plain empty array.
    """
    if n == 0:
        return np.zeros(0, dtype)
    with open(path, "wb") as f, naming(path):
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(f.fileno(), 0, n * np.dtype(dtype).itemsize)
        else:  # macOS: a sparse file, so a full disk shows only when a page is written
            f.truncate(n * np.dtype(dtype).itemsize)
    return np.memmap(path, dtype=dtype, mode="r+", shape=(n,))


def _disk_arange(path: Path, n: int) -> np.ndarray:
    a = disk_array(path, n, np.int64)
    for lo in range(0, n, BLOCK):
        a[lo:lo + BLOCK] = np.arange(lo, min(n, lo + BLOCK))
    return a


def count(flags: np.ndarray) -> int:
    """The number of true flags (counted in the mapped file, without a copy)."""
    return int(np.count_nonzero(flags))


def iter_flags(flags: np.ndarray) -> Iterator[bool]:
    """The flags one by one, read a block at a time (never the whole array as a list)."""
    for lo in range(0, len(flags), BLOCK):
        yield from flags[lo:lo + BLOCK].tolist()


def _firsts(e: np.ndarray) -> np.ndarray:
    """The entry of lowest position of each digest in `e`, sorted by digest."""
    e = e[np.lexsort((e["idx"], e["lo"], e["hi"]))]
    new = np.ones(len(e), bool)
    new[1:] = (e["hi"][1:] != e["hi"][:-1]) | (e["lo"][1:] != e["lo"][:-1])
    return e[new]


def _append_by_byte(e: np.ndarray, shift: int, paths: list[Path], files: dict) -> None:
    """Append entries to the file of their digest's byte at bit `shift` (opened on first use).

    `e` is sorted by digest and its digests share every bit above `shift + 8`, so that byte
    is sorted too and each file gets one contiguous slice.
    """
    byte = (e["hi"] >> np.uint64(shift)) & np.uint64(0xFF)
    bounds = np.searchsorted(byte, np.arange(BUCKETS + 1, dtype=np.uint64))
    for b in np.flatnonzero(np.diff(bounds)).tolist():
        if b not in files:
            files[b] = open(paths[b], "ab")
        with naming(paths[b]):
            files[b].write(e[bounds[b]:bounds[b + 1]].tobytes())


def _close(files: dict, paths: list[Path]) -> None:
    for b, f in files.items():
        with naming(paths[b]):
            f.close()


class FirstOccurrences:
    """Marks the first occurrence of each distinct (src, tgt) pair of a stream, without a set.

    `add` hashes each pair to a 128-bit BLAKE2b digest and buffers (digest, position); each
    full buffer keeps the first entry of each digest and appends it to one of 256 bucket
    files chosen by the digest's top byte. `finish` sorts one bucket at a time with numpy and
    flags the lowest position of every digest in a boolean array on disk; a bucket of more
    than SORT_LIMIT entries (past about 16M distinct pairs) is first split by the digest's
    next byte, so no sort holds more than SORT_LIMIT entries (1.5 MB) at once, and a pair
    repeated a million times is a bucket entry at most once per buffer. Two distinct pairs
    share a digest with probability about N^2 / 2^129 (1e-23 at 100M pairs); the later one
    would then count as a duplicate.

    Why not sqlite3 with a UNIQUE index: one B-tree insert per pair at a random key turns
    into random disk reads once the index outgrows sqlite's bounded cache, where numpy sorts
    a whole bucket in one call. Why not sorted runs and a k-way merge: the merge is a Python
    loop over every pair; a bucket needs nothing from the other buckets.
    """

    def __init__(self, scratch: Path):
        self.dir = Path(scratch) / "digests"
        self.dir.mkdir(parents=True)
        self._paths = [self.dir / f"bucket.{b}" for b in range(BUCKETS)]
        self._buf = bytearray()
        self._added = self._flushed = 0
        self._files: dict[int, object] = {}

    def __enter__(self) -> FirstOccurrences:
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files.values():  # left open only when an error is on its way out
            with contextlib.suppress(OSError):
                f.close()

    def add(self, src: str, tgt: str) -> None:
        # the length prefix keeps ("ab", "c") and ("a", "bc") apart
        self._buf += hashlib.blake2b(f"{len(src)}:{src}{tgt}".encode(), digest_size=16).digest()
        self._added += 1
        if self._added - self._flushed == FLUSH:
            self._flush()

    def _flush(self) -> None:
        digests = np.frombuffer(bytes(self._buf), _DIGEST)
        self._buf.clear()
        entries = np.empty(len(digests), _ENTRY)
        entries["hi"], entries["lo"] = digests["hi"], digests["lo"]
        entries["idx"] = np.arange(self._flushed, self._added)
        self._flushed = self._added
        _append_by_byte(_firsts(entries), 56, self._paths, self._files)

    def finish(self) -> np.ndarray:
        """One flag per added pair, in the order added: True for a first occurrence."""
        if self._added > self._flushed:
            self._flush()
        _close(self._files, self._paths)
        first = disk_array(self.dir / "first.bool", self._added, np.bool_)
        for b in sorted(self._files):
            _mark_firsts(self._paths[b], first, 48)
        return first


def _mark_firsts(path: Path, first: np.ndarray, shift: int) -> None:
    """Flag the first occurrences a bucket file records, then remove it. A file of more than
    SORT_LIMIT entries is split by the digest's byte at `shift` first, a block at a time."""
    n = path.stat().st_size // _ENTRY.itemsize
    if n <= SORT_LIMIT or shift < 0:  # past bit 0 they share `hi`: repeats no byte splits
        first[_firsts(np.fromfile(path, _ENTRY))["idx"]] = True
        path.unlink()
        return
    paths = [path.with_name(f"{path.name}.{b}") for b in range(BUCKETS)]
    files: dict = {}
    try:
        for lo in range(0, n, SORT_LIMIT):
            block = np.fromfile(path, _ENTRY, count=SORT_LIMIT, offset=lo * _ENTRY.itemsize)
            _append_by_byte(_firsts(block), shift, paths, files)
    finally:
        _close(files, paths)
    path.unlink()
    for b in sorted(files):
        _mark_firsts(paths[b], first, shift - 8)


def eval_cut(n: int, valid_size: int, test_size: int, seed: int,
             scratch: Path) -> dict[int, tuple[str, int]]:
    """Which of n pairs the valid/test cut takes: {pair index: ("test" | "valid", position)}.

    The list-based split was `order = list(range(n)); random.Random(seed).shuffle(order)`,
    test = order[:test_size], valid = the next valid_size. This is that same shuffle call,
    made on an index array on disk instead of a list (shuffle only reads and swaps items),
    so it is the same permutation for the same seed at any n; the list cost 36 bytes a pair.
    """
    if valid_size + test_size == 0:
        return {}
    order = _disk_arange(Path(scratch) / "cut.order", n)
    random.Random(seed).shuffle(order)
    head = order[:test_size + valid_size].tolist()
    return {i: ("test", p) if p < test_size else ("valid", p - test_size)
            for p, i in enumerate(head)}


def sample_flags(n: int, k: int, seed: int, scratch: Path) -> np.ndarray:
    """Flags on disk for the positions `random.Random(seed).sample(range(n), k)` picks.

    `Random.sample` keeps a k-item result list and either an n-item pool list or a k-item
    set. This repeats its algorithm (CPython 3.8-3.13) step for step, pool and set on disk:
    the same branch for the same (n, k), the same `_randbelow` draws (`randrange(m)` is
    `_randbelow(m)` for m > 0), hence the same positions for the same seed. Should CPython
    change `sample`, tests/test_prepare_stream.py, which checks this against it for both
    branches, fails.
    """
    rng = random.Random(seed)
    picked = disk_array(Path(scratch) / "sample.flags", n, np.bool_)
    setsize = 21
    if k > 5:
        setsize += 4 ** math.ceil(math.log(k * 3, 4))
    if n <= setsize:  # sample's pool branch: non-selected positions at pool[:n - i]
        pool = _disk_arange(Path(scratch) / "sample.pool", n)
        for i in range(k):
            j = rng.randrange(n - i)
            picked[pool[j]] = True
            pool[j] = pool[n - i - 1]
    else:  # sample's set branch: draw again while the draw was picked before
        for _ in range(k):
            j = rng.randrange(n)
            while picked[j]:
                j = rng.randrange(n)
            picked[j] = True
    return picked
