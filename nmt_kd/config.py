"""Typed, frozen configuration for every stage, loaded from YAML.

Precedence, lowest first: the dataclass defaults < the YAML file < `--set section.key=value`
overrides on the command line. An unknown or misspelt key is an error that names the key,
its section and the file, so a typo can never silently fall back to a default.

    cfg = load_config("configs/multi30k_en_de.yaml", overrides=["train.max_steps=100"])
    cfg.train.max_steps  # 100
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nmt_kd.errors import ConfigError
from nmt_kd.fileio import atomic_open
from nmt_kd.training.objectives import KD_MODES, WORD_KD_OBJECTIVES


@dataclass(frozen=True)
class DataConfig:
    """Where the parallel corpus comes from and how it is cleaned and split."""

    # files: train_src/train_tgt (+ optional valid_*/test_*); tsv | jsonl: `path`;
    # hf: a Hugging Face `datasets` dataset; libreoffice_help: the built-in Debian recipe.
    source: str = "files"
    src_lang: str = "en"
    tgt_lang: str = "de"
    train_src: str | None = None
    train_tgt: str | None = None
    valid_src: str | None = None
    valid_tgt: str | None = None
    test_src: str | None = None
    test_tgt: str | None = None
    path: str | None = None
    src_field: str = "src"  # JSONL key / HF column (dotted paths like translation.en work)
    tgt_field: str = "tgt"
    src_column: int = 0  # TSV columns
    tgt_column: int = 1
    hf_name: str | None = None
    hf_config: str | None = None
    hf_data_files: str | None = None  # for local files through `datasets` (hf_name: json|csv)
    hf_split: str = "train"
    hf_valid_split: str | None = None
    hf_test_split: str | None = None
    cache_dir: str = "~/.cache/nmt_kd"
    recipe_root: str | None = None  # libreoffice_help: an unpacked package tree instead of apt
    test_set_name: str | None = None  # e.g. "multi30k/test_2016_flickr", used in reports
    valid_size: int = 1000  # used only when no valid split is given
    test_size: int = 1000
    split_seed: int = 1234
    max_train_pairs: int = 0  # 0: keep all; else a seeded sample of the cleaned train split
    min_words: int = 1
    max_words: int = 200
    max_chars: int = 2000
    max_length_ratio: float = 3.0
    dedupe: bool = True
    remove_eval_overlap: bool = True  # drop training pairs whose source is in valid/test
    on_bad_line: str = "error"  # error | skip (counted and reported)

    def __post_init__(self) -> None:
        _one_of("data.source", self.source, ("files", "tsv", "jsonl", "hf", "libreoffice_help"))
        _one_of("data.on_bad_line", self.on_bad_line, ("error", "skip"))
        if self.max_length_ratio < 1.0:
            raise ConfigError(f"data.max_length_ratio must be >= 1, got {self.max_length_ratio}")


@dataclass(frozen=True)
class VocabConfig:
    """The one joint SentencePiece model shared by source, target, teacher and students."""

    size: int = 8000
    model_type: str = "unigram"  # unigram | bpe
    character_coverage: float = 1.0
    input_sentence_size: int = 2_000_000

    def __post_init__(self) -> None:
        _one_of("vocab.model_type", self.model_type, ("unigram", "bpe"))
        if self.size < 8:
            raise ConfigError(f"vocab.size must be at least 8, got {self.size}")


@dataclass(frozen=True)
class TransformerConfig:
    d_model: int = 256
    encoder_layers: int = 3
    decoder_layers: int = 3
    heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation: str = "relu"
    pre_norm: bool = True


@dataclass(frozen=True)
class StudentTransformerConfig(TransformerConfig):
    """A Transformer student: deep encoder, shallow decoder (Kasai et al., 2021, "Deep Encoder,
    Shallow Decoder"; the Bergamot students). Decoding time is spent in the decoder, one step
    per output token; the encoder runs once per sentence."""

    d_model: int = 128
    encoder_layers: int = 6
    decoder_layers: int = 1
    heads: int = 4
    ff_dim: int = 512


@dataclass(frozen=True)
class RNNConfig:
    cell: str = "gru"  # gru | lstm
    attention: str = "luong"  # luong | bahdanau
    embed_dim: int = 256
    hidden: int = 256
    encoder_layers: int = 1
    decoder_layers: int = 1
    dropout: float = 0.1

    def __post_init__(self) -> None:
        _one_of("model.student_rnn.cell", self.cell, ("gru", "lstm"))
        _one_of("model.student_rnn.attention", self.attention, ("luong", "bahdanau"))


@dataclass(frozen=True)
class CNNConfig:
    embed_dim: int = 256
    hidden: int = 256
    encoder_layers: int = 4
    decoder_layers: int = 3
    kernel_size: int = 3
    dropout: float = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """`model.max_positions` and one section `model.<name>` per architecture.

    The built-in architectures' sections are the typed fields below. The section of any
    other registered architecture (`nmt_kd.models.registry`) is read with that
    architecture's config dataclass into `others` (written back as `model.<name>`, never as
    `others`); `section(name)` gives any architecture's section, or its defaults.
    """

    max_positions: int = 256
    teacher: TransformerConfig = field(default_factory=TransformerConfig)
    student_rnn: RNNConfig = field(default_factory=RNNConfig)
    student_cnn: CNNConfig = field(default_factory=CNNConfig)
    student_transformer: StudentTransformerConfig = field(default_factory=StudentTransformerConfig)
    others: tuple[tuple[str, Any], ...] = field(default=(), metadata={"inline": True})

    def section(self, name: str) -> Any:
        """The config of architecture `name` (`model.<name>`)."""
        if name in self.builtin_sections():
            return getattr(self, name)
        for key, value in self.others:
            if key == name:
                return value
        if name not in _REGISTERED_SECTIONS:
            raise ConfigError(f"unknown model architecture {name!r}; choose one of "
                              f"{', '.join(model_section_names())}")
        return _REGISTERED_SECTIONS[name][0]()

    @classmethod
    def builtin_sections(cls) -> dict[str, type]:
        """Section name -> config dataclass, for the typed fields."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)
                if dataclasses.is_dataclass(hints[f.name])}

    @classmethod
    def inline_sections(cls) -> dict[str, type]:
        """Section name -> config dataclass, for registered architectures without a field."""
        return {name: config for name, (config, _role) in _REGISTERED_SECTIONS.items()
                if name not in cls.builtin_sections()}


# Architectures registered beyond the built-in sections: name -> (config dataclass, role).
# Filled by `nmt_kd.models.registry.register_architecture`, so that this module, which the
# registry imports, never imports the registry (no import cycle).
_REGISTERED_SECTIONS: dict[str, tuple[type, str]] = {}


def register_model_section(name: str, config: type, role: str) -> None:
    """Make `model.<name>` a known section (called by the architecture registry)."""
    _REGISTERED_SECTIONS[name] = (config, role)


def unregister_model_section(name: str) -> None:
    _REGISTERED_SECTIONS.pop(name, None)


def model_section_names(role: str | None = None) -> tuple[str, ...]:
    """The architectures a config may name (of `role`: teacher | student): the built-in
    sections (`teacher` is the teacher, the others students) and the registered ones."""
    names = {n: ("teacher" if n == "teacher" else "student") for n in ModelConfig.builtin_sections()}
    names.update({n: role_ for n, (_c, role_) in _REGISTERED_SECTIONS.items()})
    return tuple(n for n, r in names.items() if role is None or r == role)


# The range of each numeric training key (TrainConfig and a student row's own train keys):
# ">=1", ">=0" (0: off or no limit), ">0", "[0,1)", or "lr" (>= 0; 0 keeps the weights as they
# are, which tests and frozen-weight runs use).
_TRAIN_RANGES = {
    **dict.fromkeys(("max_tokens", "max_len", "log_every", "keep_checkpoints", "eval_batch_size"), ">=1"),
    **dict.fromkeys(("max_steps", "max_epochs", "max_minutes", "warmup_steps", "checkpoint_every",
                     "eval_every", "eval_sentences", "patience", "average_last", "clip_norm"), ">=0"),
    "learning_rate": "lr", "adam_epsilon": ">0",
    **dict.fromkeys(("label_smoothing", "adam_beta1", "adam_beta2"), "[0,1)"),
}


# Each rule of _TRAIN_RANGES: its test and how an error states it.
_RANGE_RULES = {
    ">=1": (lambda v: v >= 1, ">= 1"),
    ">=0": (lambda v: v >= 0, ">= 0 (0: off)"),
    ">0": (lambda v: v > 0, "> 0"),
    "[0,1)": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "lr": (lambda v: v >= 0, ">= 0 (0: the weights do not change)"),
}


def _check_train_range(name: str, key: str, value: float) -> None:
    ok, text = _RANGE_RULES[_TRAIN_RANGES[key]]
    if not ok(value):
        raise ConfigError(f"{name} must be {text}, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    max_tokens: int = 4096  # token budget per batch (padded tokens, max of both sides)
    max_len: int = 128  # longer training pairs (in subword tokens) are dropped and counted
    max_steps: int = 0  # 0: no step limit
    max_epochs: int = 0  # 0: no epoch limit
    max_minutes: float = 0.0  # 0: no time limit
    learning_rate: float = 1e-3  # peak, reached at the end of warm-up
    warmup_steps: int = 1000
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-9
    precision: str = "fp32"  # fp32 | bf16 | fp16
    xla: bool = False
    seed: int = 1
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 500
    eval_sentences: int = 0  # 0: the whole valid set for validation BLEU
    eval_batch_size: int = 64  # validation BLEU's greedy decoding batch (not decode.batch_size)
    early_stop_metric: str = "bleu"  # bleu | loss
    patience: int = 0  # evaluations without improvement before stopping; 0: never stop early
    average_last: int = 0  # average the last K checkpoints into the final model; 0: off
    on_nan: str = "stop"  # stop | skip
    strategy: str = "default"  # default | mirrored | multi_worker | tpu (nmt_kd.distributed)
    # pipeline teacher stage only: start from this model bundle (`nmt-kd export --format
    # bundle`) instead of training; its sha256 must equal init_sha256. The run then uses the
    # bundle's SentencePiece model instead of training one. With pipeline.teacher_seeds, a
    # list: one bundle per teacher (in teacher_seeds order, all with one SentencePiece
    # model), and init_sha256 the list of their hashes.
    init: str | tuple[str, ...] | None = None
    init_sha256: str | tuple[str, ...] | None = None

    # the section name in error messages; `_build` puts `student_train` there for that section
    _section: typing.ClassVar[str] = "train"

    def __post_init__(self) -> None:
        for key in _TRAIN_RANGES:
            _check_train_range(f"train.{key}", key, getattr(self, key))
        _one_of("train.precision", self.precision, ("fp32", "bf16", "fp16"))
        _one_of("train.strategy", self.strategy, ("default", "mirrored", "multi_worker", "tpu"))
        _one_of("train.early_stop_metric", self.early_stop_metric, ("bleu", "loss"))
        _one_of("train.on_nan", self.on_nan, ("stop", "skip"))
        if self.max_tokens < self.max_len:
            raise ConfigError(
                f"train.max_tokens ({self.max_tokens}) must be at least the section's max_len ({self.max_len})"
            )
        if isinstance(self.init, str) and isinstance(self.init_sha256, tuple):
            raise ConfigError(f"train.init names one bundle: train.init_sha256 must be one hash, "
                              f"got a list {list(self.init_sha256)}")
        if isinstance(self.init, tuple) and self.init_sha256 is not None and (
                not isinstance(self.init_sha256, tuple) or len(self.init_sha256) != len(self.init)):
            raise ConfigError(f"train.init names {len(self.init)} bundles: train.init_sha256 must be "
                              f"a list of as many hashes, got {self.init_sha256!r}")

    def init_bundles(self) -> list[tuple[str, str | None]]:
        """(bundle path, expected sha256) for each teacher `init` names; [] without init."""
        if not self.init:
            return []
        if isinstance(self.init, str):
            return [(self.init, self.init_sha256)]
        shas = self.init_sha256 or (None,) * len(self.init)
        return list(zip(self.init, shas, strict=True))


@dataclass(frozen=True)
class DecodeConfig:
    beam: int = 5
    length_penalty: float = 0.6  # GNMT alpha
    max_len_a: float = 1.5  # max output length = a * source length + b, capped
    max_len_b: int = 10
    max_len_cap: int = 256
    batch_size: int = 64
    max_src_len: int = 250  # longer inputs are truncated (counted) or refused
    on_long_line: str = "truncate"  # truncate | error
    # Arithmetic of decoding: bf16 matmuls (oneDNN, AVX512-BF16 / AMX CPUs), fp32, or
    # "trained" (whatever policy the model was saved with: bf16 when trained in bf16).
    precision: str = "trained"
    # A source language code (e.g. "en"): each input line is split into sentences
    # (nmt_kd/sentences.py), each translated on its own, the translations joined with a space;
    # for corpora whose lines are paragraphs. null: every line is translated whole.
    split_sentences: str | None = None

    def __post_init__(self) -> None:
        _one_of("decode.on_long_line", self.on_long_line, ("truncate", "error"))
        s = self.split_sentences
        if s is not None and not s.replace("-", "").replace("_", "").isalpha():
            raise ConfigError("decode.split_sentences takes the source language's code (e.g. en) "
                              f"or null, got {s!r}")
        _one_of("decode.precision", self.precision, ("trained", "fp32", "bf16"))
        if self.beam < 1:
            raise ConfigError(f"decode.beam must be >= 1, got {self.beam}")


@dataclass(frozen=True)
class DistillConfig:
    alpha: float = 0.5  # weight of the KD term in word-level KD
    temperature: float = 1.0
    top_k: int = 8  # entries kept per position by the offline store
    teacher_mode: str = "online"  # online | offline
    beam: int = 5
    nbest: int = 1
    seq_inter: bool = False
    seq_inter_metric: str = "bleu"  # bleu | chrf
    keep_original: bool = False
    drop_worst: float = 0.0  # fraction of lowest-scoring teacher translations to drop
    shard_size: int = 2000
    batch_size: int = 64  # the teacher's decoding batch (its own: decode.batch_size is evaluation's)
    # tensorflow: the teacher's own search; ctranslate2: the teacher converted to CTranslate2
    # for the distillation (2-3x faster on CPU, same BLEU; pip install 'nmt-kd[ct2]')
    engine: str = "tensorflow"

    def __post_init__(self) -> None:
        _one_of("distill.engine", self.engine, ("tensorflow", "ctranslate2"))
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.drop_worst < 1.0:
            raise ConfigError(f"distill.drop_worst must be in [0, 1), got {self.drop_worst}")
        _one_of("distill.teacher_mode", self.teacher_mode, tuple(WORD_KD_OBJECTIVES))
        if self.teacher_mode == "offline" and self.top_k < 1:
            raise ConfigError("distill.teacher_mode: offline stores the teacher's top-k; set distill.top_k >= 1")
        _one_of("distill.seq_inter_metric", self.seq_inter_metric, ("bleu", "chrf"))


@dataclass(frozen=True)
class EvalConfig:
    beams: tuple[int, ...] = (1, 5)
    batch_sizes: tuple[int, ...] = (1, 64)
    speed_sentences: int = 200  # sentences timed for speed at each batch size
    bootstrap_resamples: int = 1000
    # source files without references (blind test sets): the evaluate stage translates each
    # with every beam of `beams` into RUN/eval/<model>/blind/<file stem>.beam<B>.txt
    blind_sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class StudentTrainOverrides:
    """A student row's own training recipe: each key set here replaces student_train's for this
    row only (e.g. the teacher's larger batches and learning rate for one Transformer student);
    unset keys keep the section's values."""
    max_tokens: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    label_smoothing: float | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int | None = None
    max_minutes: float | None = None

    def __post_init__(self) -> None:  # the same ranges as student_train's own keys
        for key, value in self.changes().items():
            _check_train_range(f"pipeline.students[].train.{key}", key, value)

    def changes(self) -> dict:
        """The keys set here, as student_train's field names and values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class StudentSpec:
    name: str = "rnn_seq"
    arch: str = "student_rnn"  # a registered student architecture: student_rnn | student_cnn | ...
    kd: str = "seq"  # a mode of KD_MODES: none | word | seq | seq+word
    max_steps: int | None = None  # this student's student_train.max_steps (None: the section's)
    # this student's student_train.average_last: its final model is the mean of its last K
    # checkpoints instead of the best one (None: the section's)
    average_last: int | None = None
    # one model per seed, each in RUN/<name>.seed<k>/ and trained with student_train.seed=k;
    # empty: one model in RUN/<name>/ with student_train.seed
    seeds: tuple[int, ...] = ()
    # this student's own student_train keys (None: the section's for every key)
    train: StudentTrainOverrides | None = None

    def __post_init__(self) -> None:
        _one_of("pipeline.students[].arch", self.arch, model_section_names("student"))
        _one_of("pipeline.students[].kd", self.kd, tuple(KD_MODES))
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"pipeline.students[].max_steps must be >= 1, got {self.max_steps}")
        if self.average_last is not None and self.average_last < 0:
            raise ConfigError(f"pipeline.students[].average_last must be >= 0, got {self.average_last}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"pipeline.students[].seeds of {self.name!r} repeats a seed: {list(self.seeds)}")
        if ".seed" in self.name:
            raise ConfigError(f"pipeline.students[].name {self.name!r}: '.seed' is reserved for seed directories")

    # a row's own train keys that only keep the books (how often to save, how many to keep, a
    # time cap as a safety net): two rows that differ only in these train the same way
    BOOKKEEPING: typing.ClassVar[frozenset[str]] = frozenset(
        {"checkpoint_every", "keep_checkpoints", "max_minutes"})

    def recipe(self, section: TrainConfig) -> dict:
        """How this row trains apart from its KD and its seeds, its own keys resolved against
        `section` (student_train): its architecture, max_steps, average_last and every key a
        row may set for itself but the bookkeeping ones. A KD row's gain is measured against
        the no-KD row of equal recipe (`nmt_kd.report`)."""
        own = self.train.changes() if self.train is not None else {}
        keys = [f.name for f in dataclasses.fields(StudentTrainOverrides) if f.name not in self.BOOKKEEPING]
        return {"arch": self.arch,
                "max_steps": section.max_steps if self.max_steps is None else self.max_steps,
                "average_last": section.average_last if self.average_last is None else self.average_last,
                **{k: own.get(k, getattr(section, k)) for k in keys}}

    def model_names(self) -> list[tuple[str, int | None]]:
        """(model directory name, seed) of each model this student row trains."""
        if not self.seeds:
            return [(self.name, None)]
        return [(f"{self.name}.seed{k}", k) for k in self.seeds]


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "experiment"
    run_dir: str = "runs/experiment"
    students: tuple[StudentSpec, ...] = ()
    # one teacher per seed: the first in RUN/teacher, the others in RUN/teacher.seed<k>
    # (empty: one teacher with train.seed)
    teacher_seeds: tuple[int, ...] = ()
    # what distill and word-KD learn from: the teacher (RUN/teacher) or the ensemble of all
    # the teachers (RUN/teacher_ensemble, averaging their log-probabilities at each step)
    kd_teacher: str = "single"
    # processes that run the stages at once (`nmt-kd pipeline --lanes N` overrides it): with 2,
    # a student without KD trains while the teacher distils, and evaluations run side by side
    lanes: int = 1

    def __post_init__(self) -> None:
        if self.lanes < 1:
            raise ConfigError(f"pipeline.lanes must be at least 1, got {self.lanes}")
        _one_of("pipeline.kd_teacher", self.kd_teacher, ("single", "ensemble"))
        if len(set(self.teacher_seeds)) != len(self.teacher_seeds):
            raise ConfigError(f"pipeline.teacher_seeds repeats a seed: {list(self.teacher_seeds)}")
        if self.kd_teacher == "ensemble" and len(self.teacher_seeds) < 2:
            raise ConfigError("pipeline.kd_teacher: ensemble needs at least two pipeline.teacher_seeds")


@dataclass(frozen=True)
class Config:
    """All sections. `train` configures the teacher's training, `student_train` the students'."""

    data: DataConfig = field(default_factory=DataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # the teacher's training
    student_train: TrainConfig = field(default_factory=TrainConfig)  # every student's training
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def __post_init__(self) -> None:
        for spec in self.pipeline.students:  # a student's own recipe must make a valid student_train
            if spec.train is not None:
                try:
                    dataclasses.replace(self.student_train, **spec.train.changes())
                except ConfigError as e:
                    raise ConfigError(f"pipeline.students[] {spec.name!r}, its train keys: {e}") from None


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


# --------------------------------------------------------------------------- loading


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one YAML value against a type hint; `where` names it in errors."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        # `str | tuple[str, ...]`: a YAML list takes the tuple member, anything else the first
        listy = isinstance(value, (list, tuple))
        chosen = next((a for a in inner if (typing.get_origin(a) is tuple) == listy), inner[0])
        return _coerce(value, chosen, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
        item_tp = typing.get_args(tp)[0]
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")  # a bug, not a user error


def _build(cls: type, values: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields if not f.metadata.get("inline")]
    # a field marked inline holds (name, section) pairs read from keys of their own
    # (ModelConfig.others: the sections of architectures registered outside config.py)
    inline = next((f.name for f in fields if f.metadata.get("inline")), None)
    sections = cls.inline_sections() if inline else {}
    kwargs, others = {}, []
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key in sections:
            others.append((key, _coerce(value, sections[key], path)))
            continue
        if key not in names:
            section = where or "top level"
            raise ConfigError(
                f"unknown key {key!r} in section {section!r}; known keys: "
                f"{', '.join(names + list(sections))}"
            )
        kwargs[key] = _coerce(value, hints[key], path)
    if others:
        kwargs[inline] = tuple(others)
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a class shared by sections (TrainConfig) names the one read here
        section = getattr(cls, "_section", None)
        if section and where and where != section and str(e).startswith(section + "."):
            raise ConfigError(where + str(e)[len(section):]) from None
        raise


def config_from_dict(values: dict, source: str = "<dict>") -> Config:
    """Build a Config from nested plain values; errors name `source` (usually the file)."""
    try:
        return _build(Config, values or {}, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _apply_override(tree: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"--set expects section.key=value, got {override!r}")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"--set expects section.key=value, got {override!r}")
    value = yaml.safe_load(raw) if raw.strip() else ""
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
    node[keys[-1]] = value


def _yaml_error(path: str | os.PathLike, e: yaml.YAMLError) -> str:
    """One line: file, line and problem (a `!!python/...` tag is refused like any other error)."""
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    what = "; ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
    if "python/" in what:
        what += "; only plain YAML is read, no Python tags"
    return f"{where}: not valid YAML ({' '.join((what or str(e)).split())})"


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (safe_load only), apply `--set` overrides, validate strictly."""
    tree: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            with open(path, encoding="utf-8") as f:
                tree = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(_yaml_error(path, e)) from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for ov in overrides or []:
        _apply_override(tree, ov)
    if overrides:
        source += " (with --set " + ", ".join(overrides) + ")"
    return config_from_dict(tree, source)


def config_to_dict(cfg: Any) -> dict:
    """The fully resolved config as plain values (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            out = {}
            for f in dataclasses.fields(v):
                if f.metadata.get("inline"):  # (name, section) pairs, written as name: section
                    out.update((name, plain(section)) for name, section in getattr(v, f.name))
                else:
                    out[f.name] = plain(getattr(v, f.name))
            return out
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the fully resolved config as YAML, atomically."""
    with atomic_open(path) as f:
        f.write("# fully resolved nmt-kd config (defaults + file + overrides)\n")
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, allow_unicode=True)


def section_hash(section: Any) -> str:
    """A stable hash of one config section (for stage caching)."""
    blob = json.dumps(config_to_dict(section), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


ENSEMBLE_NAME = "teacher_ensemble"  # RUN/<this>: the ensemble of the pipeline's teachers


def kd_teacher_dir(cfg: Config, run: str | Path) -> Path:
    """The teacher that distillation and word-KD learn from when none is named: RUN/teacher, or
    RUN/teacher_ensemble with `pipeline.kd_teacher: ensemble`. The pipeline and the step-by-step
    commands (`nmt-kd distill`, `nmt-kd train --kd word`) share it, so both learn from the same
    teacher."""
    return Path(run) / (ENSEMBLE_NAME if cfg.pipeline.kd_teacher == "ensemble" else "teacher")


def expand_path(p: str | None) -> Path | None:
    return None if p is None else Path(os.path.expanduser(p))
