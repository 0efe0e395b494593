"""Offline word-level KD: the teacher's top-k distribution per target position, stored once.

Reads:  the training pairs as the student sees them (`EncodedPairs`), the teacher model.
Writes: DIR/shard-NNNNN/{offsets,ids,logp}.npy and DIR/index.json (written last; it records
        the data, k, T and the teacher's weights the store was computed for).

For every training example and every target position (pieces + eos), the teacher's k most
likely tokens and their log-probabilities under the temperature-softened softmax,
renormalised over those k (float16 on disk). Shards are directories renamed into place, so
a killed run leaves only complete shards, and a re-run computes only the missing ones.
Training memory-maps the shards, so memory stays bounded whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nmt_kd.dataset import EncodedPairs, make_batch, token_batches
from nmt_kd.errors import UserError
from nmt_kd.fileio import read_json, write_json


def pairs_fingerprint(pairs: EncodedPairs) -> str:
    """A hash of the encoded training data: the store is only valid for exactly these pairs."""
    h = hashlib.sha256()
    for s, t in zip(pairs.src, pairs.tgt, strict=True):  # as int32, whatever the storage
        h.update(np.asarray(s, np.int32).tobytes())
        h.update(b"|")
        h.update(np.asarray(t, np.int32).tobytes())
        h.update(b"\n")
    return h.hexdigest()[:20]


def teacher_fingerprint(teacher) -> str:
    """A hash of the teacher's weights (an ensemble's: every member's, in order): a store is
    only valid for the teacher that computed it."""
    h = hashlib.sha256()
    for w in teacher.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:20]


class TopKStore:
    """Memory-mapped top-k teacher distributions, looked up by example index."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        index = self.dir / "index.json"
        if not index.is_file():
            raise UserError(f"{self.dir}: no index.json; the top-k store is incomplete")
        meta = read_json(index)
        self.k, self.temperature, self.fingerprint = meta["k"], meta["temperature"], meta["fingerprint"]
        self.shard_size, self.count = meta["shard_size"], meta["count"]
        self._shards = []
        for i in range(meta["shards"]):
            d = self.dir / f"shard-{i:05d}"
            self._shards.append(tuple(np.load(d / f"{n}.npy", mmap_mode="r")
                                      for n in ("offsets", "ids", "logp")))

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        offsets, ids, logp = self._shards[i // self.shard_size]
        j = i % self.shard_size
        return ids[offsets[j]:offsets[j + 1]], logp[offsets[j]:offsets[j + 1]]

    def batch(self, idx: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Padded `[B, width, k]` ids (int32) and log-probs (float32) for examples `idx`."""
        ids = np.zeros((len(idx), width, self.k), np.int32)
        logp = np.zeros((len(idx), width, self.k), np.float32)
        for row, i in enumerate(idx):
            e_ids, e_lp = self.example(int(i))
            ids[row, : len(e_ids)] = e_ids
            logp[row, : len(e_lp)] = e_lp
        return ids, logp


def compute_topk_store(
    teacher, pairs: EncodedPairs, out_dir: str | Path, k: int, temperature: float,
    shard_size: int = 2000, max_tokens: int = 4096, log: Callable[[str], None] = print,
) -> TopKStore:
    """Run the frozen teacher over `pairs` and store its top-k (missing shards only)."""
    import tensorflow as tf

    from nmt_kd.losses import teacher_topk

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint, teacher_id = pairs_fingerprint(pairs), teacher_fingerprint(teacher)
    want = {"k": k, "temperature": temperature, "fingerprint": fingerprint, "teacher": teacher_id,
            "shard_size": shard_size}
    index = out_dir / "index.json"
    if _complete_or_resumable(out_dir, want, log):
        return TopKStore(out_dir)
    if k > teacher.get_config()["vocab_size"]:
        raise UserError(f"distill.top_k={k} exceeds the vocabulary size")
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[spec, spec])
    def topk(src, tgt_in):
        return teacher_topk(teacher((src, tgt_in), training=False), k, temperature)

    n = len(pairs)
    n_shards = (n + shard_size - 1) // shard_size
    for s in range(n_shards):
        final = out_dir / f"shard-{s:05d}"
        if final.is_dir():
            continue
        start, end = s * shard_size, min(n, (s + 1) * shard_size)
        sub = EncodedPairs(pairs.src[start:end], pairs.tgt[start:end])
        per_example: list[tuple[np.ndarray, np.ndarray] | None] = [None] * (end - start)
        for idx in token_batches(sub.src_lengths, sub.tgt_lengths, max_tokens, shuffle=False):
            (src, tgt_in), _ = make_batch(sub, idx)
            ids, logp = topk(src, tgt_in)
            ids, logp = ids.numpy(), logp.numpy().astype(np.float16)
            for row, j in enumerate(idx):
                length = len(sub.tgt[j]) + 1
                per_example[j] = (ids[row, :length], logp[row, :length])
        lengths = np.array([len(e[0]) for e in per_example], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        tmp = Path(tempfile.mkdtemp(prefix=f".shard-{s:05d}.", dir=out_dir))
        np.save(tmp / "offsets.npy", offsets)
        np.save(tmp / "ids.npy", np.concatenate([e[0] for e in per_example]).astype(np.int32))
        np.save(tmp / "logp.npy", np.concatenate([e[1] for e in per_example]))
        os.replace(tmp, final)
        log(f"top-k: shard {s + 1}/{n_shards} ({end - start} examples) stored")
    write_json(index, {**want, "count": n, "shards": n_shards})  # building.json stays: a
    return TopKStore(out_dir)  # store whose index is lost resumes from its shards


def _complete_or_resumable(out_dir: Path, want: dict, log: Callable[[str], None]) -> bool:
    """True when `out_dir` holds a complete store of `want` (same data, k, T and teacher
    weights). Otherwise it is left ready for the build: a killed build's shards are kept when
    its building.json names the same data, settings, teacher and shard size; anything else
    there (another teacher's shards, shards with no record of their origin) is removed."""
    same = ("fingerprint", "k", "temperature", "teacher")
    index, building = out_dir / "index.json", out_dir / "building.json"
    if index.is_file():
        if all(read_json(index).get(x) == want[x] for x in same):
            log(f"top-k: store {out_dir} is complete and current")
            return True
        why = "was built for other data, settings or teacher"
    elif building.is_file():
        if all(read_json(building).get(x) == want[x] for x in (*same, "shard_size")):
            return False  # resume: the finished shards are this teacher's
        why = "was being built for other data, settings or teacher"
    elif any(out_dir.glob("shard-*")):
        why = "holds shards with no record of the teacher that made them"
    else:
        write_json(building, want)
        return False
    log(f"top-k: store {out_dir} {why}; rebuilding")
    shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    write_json(building, want)
    return False
