"""The run's text files and the training batch stream.

Reads RUN/data/{split}.{src,tgt} (RUN/distill/train.* for a distilled corpus); the training
split is encoded once into RUN/encoded/{train,distill-train}-<hash>/ (`nmt_kd.shards`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from nmt_kd.dataset import BatchStream, encode_pairs
from nmt_kd.errors import UserError
from nmt_kd.fileio import read_lines
from nmt_kd.shards import ShardStream, encode_corpus
from nmt_kd.tokenizer import Tokenizer


def data_sha256(run_dir: Path, splits: tuple[str, ...] = ("train",), distilled: bool = False) -> str | None:
    """One hash of a run's files for `splits` (None if one is missing). Recorded in model.json
    for the training pairs and for the held-out splits, so that a bundled teacher tells a run
    whether its valid and test splits were held out of the teacher's training."""
    import hashlib

    from nmt_kd.fileio import sha256_file

    base = run_dir / ("distill" if distilled else "data")
    files = [base / f"{split}.{side}" for split in splits for side in ("src", "tgt")]
    if not all(f.is_file() for f in files):
        return None
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def pair_files(run_dir: Path, split: str, distilled: bool = False) -> tuple[Path, Path]:
    """The split's two text files, checked to exist and to have as many lines each."""
    from nmt_kd.fileio import count_lines

    base = Path(run_dir) / ("distill" if distilled else "data")
    src, tgt = base / f"{split}.src", base / f"{split}.tgt"
    for p in (src, tgt):
        if not p.is_file():
            hint = "run `nmt-kd distill` first" if distilled else "run `nmt-kd prepare` first"
            raise UserError(f"{p} not found; {hint}")
    n_src, n_tgt = count_lines(src), count_lines(tgt)
    if n_src != n_tgt:
        raise UserError(f"{src} has {n_src} lines but {tgt} has {n_tgt}; refusing misaligned data")
    return src, tgt


def load_pairs(run_dir: Path, split: str, distilled: bool = False) -> tuple[list[str], list[str]]:
    src, tgt = pair_files(run_dir, split, distilled)
    return read_lines(src), read_lines(tgt)


INPUT_PATHS = ("shards", "memory")


def training_stream(run_dir: Path, tokenizer: Tokenizer, tc, distilled: bool, role,
                    input_path: str = "shards", log: Callable[[str], None] = print):
    """The encoded training pairs and their batch stream.

    `shards` (the default): RUN/encoded/<split>-<hash>/, memory-mapped token shards (encoded
    once, reused while the text and spm.model are unchanged; a non-chief worker encodes into
    a scratch directory of its own), read through `tf.data` (`ShardStream`). `memory`: every
    sentence as a numpy array (`encode_pairs`) and `BatchStream`. Both give the same batches.
    """
    if input_path not in INPUT_PATHS:
        raise UserError(f"input path must be one of {', '.join(INPUT_PATHS)}, got {input_path!r}")
    src, tgt = pair_files(run_dir, "train", distilled)
    if input_path == "memory":
        pairs = encode_pairs(tokenizer, read_lines(src), read_lines(tgt), tc.max_len)
        return pairs, BatchStream(pairs, tc.max_tokens, seed=tc.seed)
    root = (run_dir / "encoded" if role.is_chief
            else Path(tempfile.mkdtemp(prefix=f"nmt_kd_worker{role.task_index}_encoded_")))
    pairs = encode_corpus(tokenizer, src, tgt, tc.max_len, root,
                          "distill-train" if distilled else "train", log=log)
    return pairs, ShardStream(pairs, tc.max_tokens, seed=tc.seed)


def epoch_batches(stream, epoch: int, start: int):
    """`(pair indices, src, tgt_in, tgt_out)` of an epoch's batches from batch `start` on."""
    if isinstance(stream, ShardStream):
        for idx, src, tgt_in, tgt_out in stream.dataset(epoch, start):
            yield idx.numpy(), src, tgt_in, tgt_out
    else:
        for idx, ((src, tgt_in), tgt_out) in stream.iter_indexed(epoch, start):
            yield idx, src, tgt_in, tgt_out
