"""Memory-mapped token shards and the tf.data input path over them (nmt_kd/shards.py)."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import toy_pairs, write_pair_files

from nmt_kd.config import VocabConfig
from nmt_kd.dataset import BatchStream, encode_pairs, token_batches
from nmt_kd.shards import ShardedPairs, ShardStream, batch_plan, encode_corpus
from nmt_kd.tokenizer import Tokenizer, train_tokenizer

MAX_LEN = 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    pairs = toy_pairs(700, max_words=14)
    src, tgt = write_pair_files(d, pairs)
    tok = Tokenizer(train_tokenizer(VocabConfig(size=60), src, tgt, d / "vocab"))
    old = encode_pairs(tok, [s for s, _ in pairs], [t for _, t in pairs], max_len=MAX_LEN)
    # chunks of 64 lines: a chunk boundary falls inside the corpus many times
    new = encode_corpus(tok, src, tgt, MAX_LEN, d / "encoded", "train", chunk_lines=64)
    return d, tok, src, tgt, old, new


def test_shards_hold_the_tokenizers_ids_and_drop_what_encode_pairs_drops(corpus):
    _, _, _, _, old, new = corpus
    assert len(new) == len(old) > 0 and new.dropped_too_long == old.dropped_too_long > 0
    assert new.manifest["dtype"] == "uint16"
    np.testing.assert_array_equal(new.src_lengths, old.src_lengths)
    np.testing.assert_array_equal(new.tgt_lengths, old.tgt_lengths)
    for i in range(len(old)):
        assert new.src[i].tolist() == old.src[i].tolist()
        assert new.tgt[i].tolist() == old.tgt[i].tolist()
    assert [a.tolist() for a in new.tgt[5:9]] == [a.tolist() for a in old.tgt[5:9]]


def test_gather_equals_make_batch(corpus):
    from nmt_kd.dataset import make_batch

    _, _, _, _, old, new = corpus
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = rng.choice(len(old), size=int(rng.integers(1, 40)), replace=False)
        (a_s, a_ti), a_to = make_batch(old, idx)
        (b_s, b_ti), b_to = new.gather(idx)
        for a, b in ((a_s, b_s), (a_ti, b_ti), (a_to, b_to)):
            assert a.dtype == b.dtype == np.int32
            np.testing.assert_array_equal(a, b)


def test_reused_when_unchanged_and_reencoded_when_text_or_tokenizer_changes(corpus, tmp_path):
    d, tok, src, tgt, _, new = corpus
    again = encode_corpus(tok, src, tgt, MAX_LEN, d / "encoded", "train")
    assert again.dir == new.dir
    root = tmp_path / "encoded"
    logs = []
    first = encode_corpus(tok, src, tgt, MAX_LEN, root, "train", log=logs.append)
    assert len(logs) == 1 and logs[0].startswith(f"encoded {len(first)} train pairs")
    mtime = (first.dir / "src.ids").stat().st_mtime_ns
    assert encode_corpus(tok, src, tgt, MAX_LEN, root, "train", log=logs.append).dir == first.dir
    assert (first.dir / "src.ids").stat().st_mtime_ns == mtime and len(logs) == 1  # not encoded
    changed = tmp_path / "changed.de"
    changed.write_text(tgt.read_text().replace("Hund", "Katze"))
    other = encode_corpus(tok, src, changed, MAX_LEN, root, "train")
    assert other.dir != first.dir and other.tgt[0] is not None
    pairs = toy_pairs(700, max_words=14)
    tok2 = Tokenizer(train_tokenizer(VocabConfig(size=50), src, tgt, tmp_path / "vocab2"))
    third = encode_corpus(tok2, src, tgt, MAX_LEN, root, "train")
    assert third.dir not in (first.dir, other.dir)
    old2 = encode_pairs(tok2, [s for s, _ in pairs], [t for _, t in pairs], MAX_LEN)
    assert [a.tolist() for a in third.src] == [a.tolist() for a in old2.src]
    assert [a.tolist() for a in third.src] != [a.tolist() for a in first.src]
    assert encode_corpus(tok, src, tgt, MAX_LEN + 1, root, "train").dir not in (first.dir,)


KILLED_WRITER = """
import os, signal, sys
import numpy as np
import nmt_kd.shards as shards
from nmt_kd.tokenizer import Tokenizer
real = shards._write_offsets
def die(*a, **k):  # killed after the ids and lengths, before offsets and manifest
    os.kill(os.getpid(), signal.SIGKILL)
shards._write_offsets = die
shards.encode_corpus(Tokenizer(sys.argv[1]), sys.argv[2], sys.argv[3], 20, sys.argv[4], "train",
                     chunk_lines=64)
"""


def test_a_killed_write_leaves_nothing_that_looks_complete(corpus, tmp_path):
    d, tok, src, tgt, _, new = corpus
    root = tmp_path / "encoded"
    r = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tok.model_path), str(src),
                        str(tgt), str(root)], capture_output=True, text=True,
                       env=dict(os.environ, CUDA_VISIBLE_DEVICES="-1"))
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    left = list(root.iterdir())
    assert left and all(p.name.startswith(".") for p in left)  # only a temporary directory
    assert not list(root.glob("*/manifest.json")) and not list(root.glob("train-*"))
    again = encode_corpus(tok, src, tgt, MAX_LEN, root, "train", chunk_lines=64)
    assert [p.name for p in root.iterdir()] == [again.dir.name]  # the dead writer's tmp is gone
    assert again.dir.name == new.dir.name
    for name in ("src.ids", "tgt.ids", "src.off", "tgt.len"):
        assert (again.dir / name).read_bytes() == (new.dir / name).read_bytes()


def test_batch_plan_equals_token_batches(tmp_path):
    """In memory or memory-mapped in a scratch directory, in chunks of any size."""
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(0, 300))
        s, t = (rng.integers(1, 70, n).astype(np.int32) for _ in range(2))
        args = (int(rng.integers(8, 700)), int(rng.integers(0, 5)), int(rng.integers(0, 3)),
                bool(rng.integers(0, 2)))
        old = token_batches(s, t, *args)
        kw = {"scratch": tmp_path, "chunk": int(rng.integers(1, 120))} if trial % 2 else {}
        order, bounds = batch_plan(s, t, *args, **kw)
        new = [order[bounds[b]:bounds[b + 1]] for b in range(len(bounds) - 1)]
        assert [b.tolist() for b in old] == [b.tolist() for b in new]
    assert list(tmp_path.iterdir()) == []  # the scratch files were unlinked at once


def _padded(n):
    return -(-n // 8) * 8


def test_stream_batches_respect_the_budget_cover_every_pair_once_and_are_seeded(corpus):
    _, _, _, _, _, new = corpus
    stream = ShardStream(new, max_tokens=128, seed=3)
    seen, sizes = [], []
    for idx, ((src, tgt_in), _) in stream.iter_indexed(0):
        longest = np.maximum(new.src_lengths[idx], new.tgt_lengths[idx]).max()
        assert len(idx) == 1 or len(idx) * _padded(int(longest)) <= 128
        assert src.shape[0] * max(src.shape[1], tgt_in.shape[1]) <= 128 or len(idx) == 1
        seen += idx.tolist()
        sizes.append(len(idx))
    assert sorted(seen) == list(range(len(new))) and len(set(sizes)) > 1
    again = ShardStream(new, max_tokens=128, seed=3)
    other = ShardStream(new, max_tokens=128, seed=4)
    for e in (0, 1):
        assert np.array_equal(again.plan(e)[0], stream.plan(e)[0])
    assert not np.array_equal(stream.plan(1)[0], stream.plan(0)[0])
    assert not np.array_equal(other.plan(0)[0], stream.plan(0)[0])


def test_tf_dataset_gives_batchstreams_batches_and_resumes_mid_epoch(corpus):
    _, _, _, _, old, new = corpus
    ref = list(BatchStream(old, 128, seed=5).iter_indexed(2))
    stream = ShardStream(new, 128, seed=5)
    full = [tuple(t.numpy() for t in el) for el in stream.dataset(epoch=2)]
    # a run stopped after 7 batches resumes in a new process (a new stream) at batch 7
    rest = [tuple(t.numpy() for t in el) for el in ShardStream(new, 128, seed=5).dataset(2, 7)]
    assert len(full) == len(ref) > 7 and len(rest) == len(full) - 7
    for got in (full, rest):
        for (r_idx, ((rs, rti), rto)), (idx, s, ti, to) in zip(ref[len(ref) - len(got):], got,
                                                               strict=True):
            assert idx.tolist() == r_idx.tolist()
            for a, b in ((rs, s), (rti, ti), (rto, to)):
                np.testing.assert_array_equal(a, b)


def test_sharded_pairs_serve_the_offline_topk_store(corpus, tmp_path):
    """The top-k store computed from the shards is the one computed from `encode_pairs`."""
    from nmt_kd.topk import pairs_fingerprint

    _, _, _, _, old, new = corpus
    assert pairs_fingerprint(new) == pairs_fingerprint(old)
    assert isinstance(ShardedPairs(new.dir), ShardedPairs)


def test_training_through_the_shards_gives_the_old_paths_losses(tiny_run, tmp_path):
    """Same seed, same batches: the first losses through tf.data and the shards equal those
    of the in-memory path, and the shards were written once under RUN/encoded/."""
    from conftest import clone_run

    from nmt_kd.config import config_from_dict
    from nmt_kd.train import train_model

    run, tree = clone_run(tiny_run, tmp_path)
    tree["train"].update(max_steps=8, eval_every=0, checkpoint_every=0, max_tokens=128)
    cfg = config_from_dict(tree)
    logs = []
    new = train_model(cfg, run, "teacher", name="new", log=logs.append)
    old = train_model(cfg, run, "teacher", name="old", log=logs.append, input_path="memory")
    assert len(new.losses) == len(old.losses) == 8
    np.testing.assert_allclose(new.losses, old.losses, rtol=1e-6)
    (encoded,) = (run / "encoded").iterdir()
    assert encoded.name.startswith("train-") and (encoded / "manifest.json").is_file()
    assert sum(m.startswith("encoded ") for m in logs) == 1
