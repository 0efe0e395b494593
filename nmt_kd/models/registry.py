"""The architecture registry: one entry per model architecture, read by everything else.

An `Architecture` names a model architecture and says everything the package needs to know
about it; config validation (`model.<name>` sections, `pipeline.students[].arch`), the CLI's
choices (`train --model`, `export --format`), model building, loading (Keras class
registration), export and `nmt-kd bench` all iterate the registry instead of naming models.

    name        the `train --model` choice, `model_type` in model.json, and the config section
                `model.<name>` (a built-in's section is a typed field of `ModelConfig`; any
                other architecture's section is read with its `config` dataclass)
    role        "teacher" (trains with the `train` section) or "student" (`student_train`,
                and `pipeline.students[].arch` may name it)
    config      the dataclass of its config section
    model       its `keras.Model` class (registered with `keras.saving.register_keras_
                serializable`, implementing `nmt_kd.models.protocol.Seq2Seq`), or
                "module:Class" to import it only when a model is built or loaded
    kwargs      `(section config, ModelConfig) -> constructor keyword arguments` (besides
                `vocab_size`); default: the section's fields as they are
    exports     the `nmt-kd export --format` values it supports (`EXPORT_FORMATS`)
    param_split `model -> {"encoder", "decoder", "lookup"}` parameter counts for bench's
                flop estimate; default: `nmt_kd.bench.param_split` (by variable path)

A new architecture is one module with its model (and config dataclass) plus one line:

    register_architecture(Architecture("student_toy", "student", ToyConfig, ToyStudent))

or, as a class decorator in that module:

    @register_architecture(name="student_toy", role="student", config=ToyConfig)
    class ToyStudent(keras.Model): ...

This module imports no TensorFlow (the CLI builds its parser from it before TensorFlow
starts), and the modules it imports (`nmt_kd.config`) never import it back: a registered
architecture's config section reaches config validation through
`nmt_kd.config.register_model_section`. Saving and loading model directories is
`nmt_kd.models.persistence`, which imports this module (not the reverse).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nmt_kd.config import (
    CNNConfig,
    ModelConfig,
    RNNConfig,
    StudentTransformerConfig,
    TransformerConfig,
    register_model_section,
    unregister_model_section,
)
from nmt_kd.errors import UserError

ROLES = ("teacher", "student")
EXPORT_FORMATS = ("savedmodel", "tflite", "bundle", "ctranslate2")  # every `nmt-kd export --format`
EXPORT_HINTS = {"tflite": " (the TFLite export is for students whose decoding state has a "
                          "fixed size; the teacher's cache grows with the output)",
                "ctranslate2": " (CTranslate2 takes the Transformer models: teacher, student_transformer)"}
RESERVED = ("ensemble",)  # model_type of an ensemble directory


@dataclass(frozen=True)
class Architecture:
    name: str
    role: str
    config: type
    model: type | str
    kwargs: Callable[[Any, ModelConfig], dict] | None = None
    exports: tuple[str, ...] = ("savedmodel", "bundle")
    param_split: Callable[[Any], dict] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name in RESERVED:
            raise ValueError(f"architecture name {self.name!r} must be an identifier, not {RESERVED}")
        if self.role not in ROLES:
            raise ValueError(f"architecture {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if not dataclasses.is_dataclass(self.config):
            raise ValueError(f"architecture {self.name!r}: config must be a dataclass")
        unknown = set(self.exports) - set(EXPORT_FORMATS)
        if unknown:
            raise ValueError(f"architecture {self.name!r}: unknown export formats {sorted(unknown)}")
        if self.name in ModelConfig.builtin_sections() and \
                ModelConfig.builtin_sections()[self.name] is not self.config:
            raise ValueError(f"architecture {self.name!r}: model.{self.name} is typed "
                             f"{ModelConfig.builtin_sections()[self.name].__name__} in ModelConfig")

    def model_class(self) -> type:
        """The model class (importing its module, which registers it with Keras)."""
        if isinstance(self.model, str):
            module, _, attr = self.model.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self.model

    def model_kwargs(self, mcfg: ModelConfig) -> dict:
        section = mcfg.section(self.name)
        if self.kwargs is not None:
            return self.kwargs(section, mcfg)
        return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}

    def build(self, mcfg: ModelConfig, vocab_size: int):
        """A new model built (its variables created) for `vocab_size` tokens."""
        import numpy as np

        from nmt_kd.models.protocol import Seq2Seq

        model = self.model_class()(vocab_size=vocab_size, **self.model_kwargs(mcfg))
        if not isinstance(model, Seq2Seq):
            raise TypeError(f"architecture {self.name!r}: {type(model).__name__} does not "
                            "implement the Seq2Seq contract (nmt_kd/models/contract.md)")
        dummy = np.full((1, 4), 5, dtype="int32")
        model((dummy, dummy), training=False)
        return model

    def split_params(self, model) -> dict:
        if self.param_split is not None:
            return self.param_split(model)
        return param_split(model)


_ARCHITECTURES: dict[str, Architecture] = {}


def param_split(model) -> dict:
    """Parameters by role, for a flop estimate: encoder, decoder (output layer included:
    the tied `[V, E]` matrix counts as the decoder's output projection) and lookups (position
    tables, no flops). Classified by variable path: `encoder*` / `src_*` is the encoder.
    The default of every architecture; one may register its own (`Architecture.param_split`)."""
    enc = dec = lookup = 0
    for v in model.trainable_variables:
        parts = v.path.split("/")
        top, n = (parts[1] if len(parts) > 1 else parts[0]), int(v.shape.num_elements())
        if top.startswith(("encoder", "src_")):
            enc += n
        elif top.endswith("positions"):
            lookup += n
        else:
            dec += n
    return {"encoder": enc, "decoder": dec, "lookup": lookup}


def register_architecture(arch: Architecture | None = None, /, *, replace: bool = False, **fields):
    """Add an architecture to the registry and return it.

    `register_architecture(Architecture(...))`, or `register_architecture(name=..., role=...,
    config=..., model=..., ...)`, or without `model=` as a decorator of the model class
    (which it returns). Registering a name again is an error unless `replace=True` or the
    entry is the same.
    """
    if arch is None and "model" not in fields:
        def decorate(cls):
            register_architecture(Architecture(model=cls, **fields), replace=replace)
            return cls
        return decorate
    if arch is None:
        arch = Architecture(**fields)
    old = _ARCHITECTURES.get(arch.name)
    if old is not None and old != arch and not replace:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    _ARCHITECTURES[arch.name] = arch
    register_model_section(arch.name, arch.config, arch.role)  # config validation knows it
    return arch


def unregister_architecture(name: str) -> None:
    """Remove an architecture (tests that register a temporary one)."""
    _ARCHITECTURES.pop(name, None)
    unregister_model_section(name)


def architectures(role: str | None = None) -> list[Architecture]:
    """Every registered architecture (of `role`, if given), in registration order."""
    return [a for a in _ARCHITECTURES.values() if role is None or a.role == role]


def architecture_names(role: str | None = None) -> tuple[str, ...]:
    return tuple(a.name for a in architectures(role))


def get_architecture(name: str) -> Architecture:
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        raise UserError(f"unknown model architecture {name!r}; choose one of "
                        f"{', '.join(_ARCHITECTURES)}") from None


def find_architecture(name: str) -> Architecture | None:
    return _ARCHITECTURES.get(name)


def architecture_of(meta: dict | None = None, model=None) -> Architecture | None:
    """The architecture of a loaded model: its model.json `model_type`, else its class."""
    arch = find_architecture((meta or {}).get("model_type") or "")
    if arch is not None or model is None:
        return arch
    for a in _ARCHITECTURES.values():
        if isinstance(a.model, type) and isinstance(model, a.model):
            return a
        if isinstance(a.model, str) and a.model.endswith(f":{type(model).__name__}") \
                and a.model.partition(":")[0] == type(model).__module__:
            return a
    return None


def require_export(fmt: str, where, meta: dict | None = None, model=None) -> Architecture:
    """The model's architecture, or a UserError if it cannot be exported as `fmt`."""
    arch = architecture_of(meta, model)
    if arch is None:
        kind = (meta or {}).get("model_type") or type(model).__name__
        raise UserError(f"{where}: a model of type {kind!r} is not a registered architecture "
                        f"({', '.join(_ARCHITECTURES)}); it cannot be exported")
    if fmt not in arch.exports:
        raise UserError(f"{where}: architecture {arch.name!r} cannot be exported as {fmt}"
                        f"{EXPORT_HINTS.get(fmt, '')}; it exports as {', '.join(arch.exports)} "
                        f"(e.g. --format {arch.exports[0]})")
    return arch


def import_model_classes() -> None:
    """Import every architecture's model class, registering it with Keras (before loading)."""
    for a in _ARCHITECTURES.values():
        a.model_class()


def build_model(arch: str, mcfg: ModelConfig, vocab_size: int):
    """A new, built model of the given architecture."""
    return get_architecture(arch).build(mcfg, vocab_size)


# -- the built-in architectures -------------------------------------------------------------


def _teacher_kwargs(t: TransformerConfig, mcfg: ModelConfig) -> dict:
    return dict(d_model=t.d_model, num_encoder_layers=t.encoder_layers,
                num_decoder_layers=t.decoder_layers, num_heads=t.heads, ff_dim=t.ff_dim,
                dropout=t.dropout, attention_dropout=t.attention_dropout,
                activation=t.activation, pre_norm=t.pre_norm, max_positions=mcfg.max_positions)


def _with_max_positions(section, mcfg: ModelConfig) -> dict:
    return {**{f.name: getattr(section, f.name) for f in dataclasses.fields(section)},
            "max_positions": mcfg.max_positions}


STUDENT_EXPORTS = ("savedmodel", "tflite", "bundle")
TRANSFORMER_EXPORTS = ("savedmodel", "bundle", "ctranslate2")  # the teacher's model class, either role

register_architecture(Architecture("teacher", "teacher", TransformerConfig,
                                   "nmt_kd.models.teacher_transformer:TransformerTeacher",
                                   kwargs=_teacher_kwargs, exports=TRANSFORMER_EXPORTS))
register_architecture(Architecture("student_rnn", "student", RNNConfig,
                                   "nmt_kd.models.student_rnn:RNNStudent", exports=STUDENT_EXPORTS))
register_architecture(Architecture("student_cnn", "student", CNNConfig,
                                   "nmt_kd.models.student_cnn:CNNStudent",
                                   kwargs=_with_max_positions, exports=STUDENT_EXPORTS))
register_architecture(Architecture("student_transformer", "student", StudentTransformerConfig,
                                   "nmt_kd.models.teacher_transformer:TransformerTeacher",
                                   kwargs=_teacher_kwargs, exports=TRANSFORMER_EXPORTS))

ARCHS = architecture_names()  # the built-ins (kept for old imports; use architecture_names())
