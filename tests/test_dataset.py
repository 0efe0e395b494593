import numpy as np
import pytest
from conftest import toy_pairs, write_pair_files

from nmt_kd.config import VocabConfig
from nmt_kd.dataset import BatchStream, encode_pairs, token_batches
from nmt_kd.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    pairs = toy_pairs(500, max_words=14)
    src, tgt = write_pair_files(d, pairs)
    tok = Tokenizer(train_tokenizer(VocabConfig(size=60), src, tgt, d / "vocab"))
    return tok, pairs, encode_pairs(tok, [s for s, _ in pairs], [t for _, t in pairs], max_len=20)


def test_too_long_pairs_dropped_and_counted(encoded):
    tok, pairs, enc = encoded
    src_ids, tgt_ids = tok.encode([s for s, _ in pairs]), tok.encode([t for _, t in pairs])
    lens = [max(len(a) + 1, len(b) + 1) for a, b in zip(src_ids, tgt_ids, strict=True)]
    assert enc.dropped_too_long == sum(n > 20 for n in lens) > 0
    assert len(enc) == sum(n <= 20 for n in lens)


def test_batches_respect_token_budget_and_cover_each_example_once(encoded):
    _, _, enc = encoded
    batches = token_batches(enc.src_lengths, enc.tgt_lengths, max_tokens=128, seed=3, epoch=0)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(enc)))
    stream = BatchStream(enc, max_tokens=128, seed=3)
    sizes = []
    for (src, tgt_in), tgt_out in stream.iter_numpy(0):
        assert src.shape[0] * max(src.shape[1], tgt_in.shape[1]) <= 128 or src.shape[0] == 1
        assert src.shape[1] % 8 == 0 and tgt_in.shape == tgt_out.shape
        sizes.append(src.shape[0])
    assert len(set(sizes)) > 1  # batch size adapts to length: a token budget, not a count


def test_epoch_order_is_seeded(encoded):
    _, _, enc = encoded
    a = token_batches(enc.src_lengths, enc.tgt_lengths, 128, seed=3, epoch=0)
    b = token_batches(enc.src_lengths, enc.tgt_lengths, 128, seed=3, epoch=0)
    c = token_batches(enc.src_lengths, enc.tgt_lengths, 128, seed=3, epoch=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)) and len(a) == len(b)
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, c, strict=False))


def test_bos_eos_placement_and_padding(encoded):
    tok, _, enc = encoded
    (src, tgt_in), tgt_out = next(BatchStream(enc, 256, seed=0).iter_numpy(0))
    for i in range(src.shape[0]):
        n_src = int((src[i] != 0).sum())
        n_tgt = int((tgt_in[i] != 0).sum())
        assert src[i, n_src - 1] == 3 and 3 not in src[i, : n_src - 1]
        assert tgt_in[i, 0] == 2 and tgt_out[i, n_tgt - 1] == 3
        np.testing.assert_array_equal(tgt_in[i, 1:n_tgt], tgt_out[i, : n_tgt - 1])
        assert (tgt_out[i, n_tgt:] == 0).all() and (src[i, n_src:] == 0).all()


def test_tf_dataset_matches_numpy_and_resumes_mid_epoch(encoded):
    _, _, enc = encoded
    stream = BatchStream(enc, 128, seed=5)
    ref = list(stream.iter_numpy(2))
    got = [((s.numpy(), ti.numpy()), to.numpy()) for (s, ti), to in stream.dataset(epoch=2, start=3)]
    assert len(got) == len(ref) - 3
    for ((rs, rt), ro), ((gs, gt), go) in zip(ref[3:], got, strict=True):
        np.testing.assert_array_equal(rs, gs)
        np.testing.assert_array_equal(rt, gt)
        np.testing.assert_array_equal(ro, go)
