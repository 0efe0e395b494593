"""The one joint SentencePiece model: trained on both sides of the training split.

Ids are fixed in every model: pad=0, unk=1, bos=2, eos=3. The same `spm.model` file is used
from Python (`sentencepiece`, for data preparation) and inside the TensorFlow graph
(`tensorflow_text.SentencepieceTokenizer`, for exported models); both give identical ids.

Reads:  RUN/data/train.{src,tgt}
Writes: RUN/vocab/spm.model, RUN/vocab/spm.vocab
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from nmt_kd import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from nmt_kd.config import VocabConfig
from nmt_kd.errors import UserError
from nmt_kd.fileio import read_lines


def _both_sides(src_path: Path, tgt_path: Path) -> Iterator[str]:
    for path in (src_path, tgt_path):
        yield from read_lines(path)


def train_tokenizer(
    cfg: VocabConfig, src_path: str | Path, tgt_path: str | Path, out_dir: str | Path
) -> Path:
    """Train the joint model on both files; write `spm.model`/`spm.vocab` atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".spm.") as tmp:
        prefix = os.path.join(tmp, "spm")
        try:
            _train_spm(cfg, src_path, tgt_path, prefix)
        except RuntimeError as e:  # sentencepiece reports bad settings as RuntimeError
            raise UserError(f"SentencePiece training failed for vocab.size={cfg.size}: "
                            f"{str(e).split('] ')[-1]}") from None
        _drop_training_path(prefix + ".model")
        shutil.move(prefix + ".vocab", out_dir / "spm.vocab")
        os.replace(prefix + ".model", out_dir / "spm.model")  # the model file last
    return out_dir / "spm.model"


def _drop_training_path(model_file: str) -> None:
    """SentencePiece stores the (random, temporary) path it was trained into in the model;
    replace it with a fixed name, so that the same corpus and settings give the same bytes
    (the pipeline hashes spm.model to decide what later stages must redo)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    proto.trainer_spec.model_prefix = "spm"
    with open(model_file, "wb") as f:
        f.write(proto.SerializeToString())


def _train_spm(cfg: VocabConfig, src_path, tgt_path, prefix: str) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_both_sides(Path(src_path), Path(tgt_path)),
        model_prefix=prefix,
        vocab_size=cfg.size,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        input_sentence_size=cfg.input_sentence_size,
        shuffle_input_sentence=True,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        hard_vocab_limit=False,  # a tiny corpus gets a smaller vocabulary, not an error
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )


class Tokenizer:
    """A loaded joint SentencePiece model, with Python and TensorFlow views of it.

        tok = Tokenizer("runs/x/vocab/spm.model")
        ids = tok.encode(["A dog runs."])      # [[...]] without bos/eos
        tok.decode(ids)                         # ["A dog runs."]
    """

    def __init__(self, model_path: str | Path):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise UserError(f"tokenizer model not found: {self.model_path}")
        self._bytes: bytes | None = None
        self._load(spm.SentencePieceProcessor(model_file=str(self.model_path)), self.model_path)

    @classmethod
    def from_model_bytes(cls, data: bytes, where: str | Path) -> Tokenizer:
        """A tokenizer over SentencePiece model bytes (e.g. those held inside an exported
        graph); `where` names them in messages. It has no `model_path`."""
        tok = cls.__new__(cls)
        tok.model_path, tok._bytes = None, data
        tok._load(spm.SentencePieceProcessor(model_proto=data), where)
        return tok

    def _load(self, sp: spm.SentencePieceProcessor, where) -> None:
        self.sp = sp
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise UserError(
                f"{where}: special ids are pad/unk/bos/eos={ids}, expected (0, 1, 2, 3)"
            )
        self._tf = None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.sp.decode([[int(i) for i in seq if int(i) > EOS_ID or int(i) == UNK_ID]
                               for seq in ids])

    def model_bytes(self) -> bytes:
        return self._bytes if self.model_path is None else self.model_path.read_bytes()

    def tf_tokenizer(self):
        """`tensorflow_text.SentencepieceTokenizer` over the same model file (int32 ids)."""
        if self._tf is None:
            import tensorflow as tf
            import tensorflow_text as tft

            self._tf = tft.SentencepieceTokenizer(model=self.model_bytes(), out_type=tf.int32)
        return self._tf


def build_vocab(cfg: VocabConfig, run_dir: str | Path, log=print) -> Path:
    """The vocab stage: train on RUN/data/train.{src,tgt}, write RUN/vocab/spm.model."""
    run_dir = Path(run_dir)
    data = run_dir / "data"
    t0 = time.time()
    model = train_tokenizer(cfg, data / "train.src", data / "train.tgt", run_dir / "vocab")
    tok = Tokenizer(model)
    log(f"vocab: {tok.vocab_size} joint {cfg.model_type} pieces in {time.time() - t0:.1f}s -> {model}")
    return model
