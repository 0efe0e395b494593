import pytest
from conftest import MULTI30K, toy_pairs, write_pair_files

from nmt_kd.config import VocabConfig
from nmt_kd.errors import UserError
from nmt_kd.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def toy_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    src, tgt = write_pair_files(d, toy_pairs(400))
    return Tokenizer(train_tokenizer(VocabConfig(size=60), src, tgt, d / "vocab"))


def test_special_ids_and_round_trip(toy_tok):
    sp = toy_tok.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    assert sp.id_to_piece(0) == "<pad>" and sp.id_to_piece(3) == "</s>"
    texts = ["The big dog runs.", "Ein rote Katze sitzt auf der Straße."]
    ids = toy_tok.encode(texts)
    assert all(i > 3 or i == 1 for seq in ids for i in seq)
    assert toy_tok.decode(ids) == texts
    assert toy_tok.decode([ids[0] + [3, 0, 0]]) == [texts[0]]  # eos and padding dropped


def _same_in_graph(tok: Tokenizer, texts: list[str]) -> None:
    import tensorflow as tf

    tf_tok = tok.tf_tokenizer()
    ragged = tf_tok.tokenize(tf.constant(texts))
    assert ragged.to_list() == tok.encode(texts)
    detok = [b.decode("utf-8") for b in tf_tok.detokenize(ragged).numpy()]
    assert detok == tok.decode(tok.encode(texts))


def test_python_and_tensorflow_text_agree(toy_tok):
    _same_in_graph(toy_tok, ["The big dog runs.", "Der kleine Hund spielt mit dem Ball.", "",
                             "Ünïcödé wörds ß ẞ “quotes” — 日本語", "a  b   c"])


@pytest.mark.skipif(not MULTI30K.exists(), reason="needs ../shared/data/multi30k")
def test_python_and_tensorflow_text_agree_on_real_sentences(tmp_path):
    src, tgt = MULTI30K / "train.en", MULTI30K / "train.de"
    tok = Tokenizer(train_tokenizer(VocabConfig(size=4000), src, tgt, tmp_path / "vocab"))
    lines = []
    for name in ("test_2016_flickr.en", "test_2016_flickr.de"):
        lines += (MULTI30K / name).read_text(encoding="utf-8").splitlines()[:300]
    _same_in_graph(tok, lines)


def test_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="tokenizer model not found"):
        Tokenizer(tmp_path / "spm.model")


def test_impossible_vocab_size_is_a_user_error(tmp_path):
    src, tgt = write_pair_files(tmp_path, toy_pairs(100))
    with pytest.raises(UserError, match="SentencePiece training failed for vocab.size=10"):
        train_tokenizer(VocabConfig(size=10), src, tgt, tmp_path / "vocab")
    assert not (tmp_path / "vocab/spm.model").exists()


def test_same_corpus_and_settings_give_the_same_model_bytes(tmp_path):
    """The model must not carry the temporary path it was trained in: the pipeline hashes
    spm.model, and a re-run of the vocab stage must not invalidate every later stage."""
    src, tgt = write_pair_files(tmp_path / "raw", toy_pairs(300))
    a = train_tokenizer(VocabConfig(size=60), src, tgt, tmp_path / "a")
    b = train_tokenizer(VocabConfig(size=60), src, tgt, tmp_path / "b" / "deeper")
    assert a.read_bytes() == b.read_bytes()
    assert str(tmp_path) not in a.read_bytes().decode("latin-1")
    assert Tokenizer(a).encode(["w1 w2"]) == Tokenizer(b).encode(["w1 w2"])
