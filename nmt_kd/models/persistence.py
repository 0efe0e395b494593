"""Save and load a model directory.

A model directory (e.g. RUN/teacher/) holds everything needed to translate:
    model.keras   the Keras model (weights + architecture), loaded with safe_mode=True
    spm.model     the joint SentencePiece model it was trained with
    model.json    model_type (the architecture's registry name), kd, vocab size, parameter
                  count, tokenizer hash

An ensemble directory (`nmt_kd.models.ensemble`) loads as an `Ensemble` of its members.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nmt_kd.errors import UserError
from nmt_kd.fileio import atomic_copy, atomic_path, read_json, sha256_file, write_json
from nmt_kd.models.ensemble import is_ensemble_dir
from nmt_kd.tokenizer import Tokenizer


def _import_all_models() -> None:
    """Register every architecture's model class with Keras before loading a `.keras` file."""
    from nmt_kd.models.registry import import_model_classes

    import_model_classes()


def save_model_dir(model, out_dir: str | Path, tokenizer: Tokenizer, meta: dict) -> Path:
    """Write model.keras, spm.model and model.json into `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    if tokenizer.model_path.resolve() != (out_dir / "spm.model").resolve():
        atomic_copy(tokenizer.model_path, out_dir / "spm.model")
    meta = dict(meta)
    meta.update(vocab_size=tokenizer.vocab_size, params=int(model.count_params()),
                tokenizer_sha256=sha256_file(out_dir / "spm.model"))
    write_json(out_dir / "model.json", meta)
    return out_dir


def load_model_dir(model_dir: str | Path, precision: str = "trained"):
    """Load (model, tokenizer, meta) from a model directory, checking that they match.

    An ensemble directory (one holding ensemble.json) gives an `Ensemble` of its members.

    `precision`: "trained" keeps the dtype policy the model was saved with (a model trained
    in bf16 computes in bf16); "fp32" or "bf16" rebuilds it under that policy with the same
    weights (variables stay float32 either way).
    """
    import keras

    model_dir = Path(model_dir)
    if is_ensemble_dir(model_dir):
        return load_ensemble_dir(model_dir, precision)
    if not (model_dir / "model.keras").is_file():
        raise UserError(f"{model_dir}: no model.keras in this model directory")
    if not (model_dir / "spm.model").is_file():
        raise UserError(f"{model_dir}: the model's tokenizer spm.model is missing from the directory")
    meta = read_json(model_dir / "model.json") if (model_dir / "model.json").is_file() else {}
    tokenizer = Tokenizer(model_dir / "spm.model")
    _import_all_models()
    try:
        model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True, compile=False)
    except Exception as e:  # a corrupt or foreign file: the user's to fix
        why = " ".join(str(e).split())  # one line: Keras messages span several
        raise UserError(f"{model_dir / 'model.keras'}: cannot load the model ({type(e).__name__}: {why})") from None
    vocab = int(model.get_config().get("vocab_size", -1))
    if vocab != tokenizer.vocab_size:
        raise UserError(
            f"{model_dir}: the tokenizer has {tokenizer.vocab_size} pieces but the model was "
            f"built for a vocabulary of {vocab}; they do not belong together"
        )
    if precision != "trained":
        model = with_precision(model, precision)
    return model, tokenizer, meta


def load_ensemble_dir(ensemble_dir: str | Path, precision: str = "trained"):
    """(Ensemble, tokenizer, meta) for an ensemble directory (see `nmt_kd.models.ensemble`);
    each member is loaded and checked like a single model directory, under `precision`."""
    from nmt_kd.models.ensemble import Ensemble, ensemble_meta, member_dirs

    ensemble_dir = Path(ensemble_dir)
    dirs = member_dirs(ensemble_dir)  # checks that every member shares the ensemble's spm.model
    members = [load_model_dir(d, precision)[0] for d in dirs]
    meta = ensemble_meta(ensemble_dir, members=members)
    return Ensemble(members, dirs), Tokenizer(ensemble_dir / "spm.model"), meta


def model_dir_bytes(model_dir: str | Path) -> int:
    """The size on disk of a model directory's weights (an ensemble's: all its members')."""
    model_dir = Path(model_dir)
    if is_ensemble_dir(model_dir):
        from nmt_kd.models.ensemble import member_dirs

        return sum((d / "model.keras").stat().st_size for d in member_dirs(model_dir))
    return (model_dir / "model.keras").stat().st_size


POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}


def with_precision(model, precision: str):
    """The same model (same weights) under the dtype policy of `precision` (fp32 | bf16)."""
    policy = POLICIES[precision]
    if model.dtype_policy.name == policy:
        return model
    config = dict(model.get_config(), dtype=policy)
    copy = type(model).from_config(config)
    dummy = np.zeros((1, 2), np.int32)
    copy((dummy, dummy), training=False)
    copy.set_weights(model.get_weights())
    return copy
