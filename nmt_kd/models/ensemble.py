"""An ensemble of seq2seq models that decodes and teaches as one model.

An *ensemble directory* (made by `nmt-kd ensemble --members DIR DIR [DIR ...] --out DIR`)
holds:
    ensemble.json  {"members": [model directories, relative to the ensemble directory or
                   absolute], "spm": "spm.model", "spm_sha256": ...}; its presence is what
                   makes a directory an ensemble
    spm.model      a copy of the SentencePiece model that every member shares byte for byte
                   (always this name: it is the ensemble's tokenizer, checked on every load)
    model.json     model_type "ensemble", kd, members, member_types, params (the sum),
                   vocab_size, tokenizer_sha256: for readers that do not load the models

`nmt_kd.models.persistence.load_model_dir` returns an `Ensemble` for such a directory, so every
command that decodes or teaches with a model directory (translate, evaluate, bench, distill,
train --kd word --teacher) takes an ensemble directory unchanged. This module never imports
Keras or a model class: the members arrive already loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from nmt_kd.errors import UserError
from nmt_kd.fileio import atomic_copy, read_json, sha256_file, write_json

ENSEMBLE_FILE = "ensemble.json"


class Ensemble:
    """Several models of the seq2seq contract, combined into one that follows the contract.

    The ensemble's log-probabilities are the **mean of the members' log_softmax** (a
    geometric mean of their distributions, as in OpenNMT-py's ensemble decoding), both for
    each decoding step and for the teacher-forced `call`. That mean is returned in place of
    logits: it is not normalised (its exponentials sum to at most 1), and every consumer
    normalises it again with a softmax. The searches apply `log_softmax` to it (which does not
    change the argmax; the beam scores become the renormalised geometric mean), and word-KD
    takes `softmax(mean / T)`. The decoding state is a dict `{"member0": state0, ...}` of the
    members' own states, which `tile_state` and the beam reordering handle like any nested
    state.

    Not a `keras.Model`: it has no weights of its own and cannot be trained or saved; the
    members are frozen Keras models.
    """

    def __init__(self, members, member_dirs=None):
        members = tuple(members)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        vocab = {int(m.get_config()["vocab_size"]) for m in members}
        if len(vocab) != 1:
            raise ValueError(f"ensemble members disagree on the vocabulary size: {sorted(vocab)}")
        self.members = members
        self.member_dirs = [str(d) for d in member_dirs] if member_dirs else None
        self.vocab_size = vocab.pop()

    def get_config(self) -> dict:
        return {"vocab_size": self.vocab_size, "members": len(self.members)}

    def count_params(self) -> int:
        return sum(int(m.count_params()) for m in self.members)

    def get_weights(self) -> list:
        """Every member's weights, member after member (numpy arrays)."""
        return [w for m in self.members for w in m.get_weights()]

    @property
    def compute_dtype(self) -> str:
        dtypes = {m.compute_dtype for m in self.members}
        return dtypes.pop() if len(dtypes) == 1 else "mixed"

    @property
    def trainable(self) -> bool:
        return any(m.trainable for m in self.members)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        for m in self.members:
            m.trainable = value

    def _mean_log_softmax(self, logits: list):
        import tensorflow as tf  # not at import time: persistence imports this module

        log_probs = [tf.nn.log_softmax(tf.cast(x, tf.float32), axis=-1) for x in logits]
        return tf.add_n(log_probs) / float(len(log_probs))

    def __call__(self, inputs, training: bool = False):
        """Teacher-forced `[B, T, V]`: the mean of the members' log_softmax."""
        return self._mean_log_softmax([m(inputs, training=training) for m in self.members])

    def encode(self, src_ids, training: bool = False) -> dict:
        return {f"member{i}": m.encode(src_ids, training=training)
                for i, m in enumerate(self.members)}

    def init_decode_state(self, encoded: dict, max_len: int) -> dict:
        return {f"member{i}": m.init_decode_state(encoded[f"member{i}"], max_len)
                for i, m in enumerate(self.members)}

    def decode_step(self, token_ids, step, state: dict) -> tuple:
        """`[B, V]` mean of the members' log_softmax at this step, and every member's new state."""
        logits, new_state = [], {}
        for i, m in enumerate(self.members):
            key = f"member{i}"
            member_logits, new_state[key] = m.decode_step(token_ids, step, state[key])
            logits.append(member_logits)
        return self._mean_log_softmax(logits), new_state


def is_ensemble_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def check_shared_spm(model_dirs: list[Path]) -> Path:
    """The first member's spm.model, after checking that every member's is the same bytes."""
    first = None
    for d in model_dirs:
        spm = d / "spm.model"
        if not spm.is_file():
            raise UserError(f"ensemble member {d} has no spm.model")
        if first is None:
            first = spm
        elif spm.read_bytes() != first.read_bytes():
            raise UserError(
                f"the ensemble members do not share one SentencePiece model: {first} and {spm} "
                "differ; an ensemble averages distributions over one vocabulary, so every member "
                "must be trained with the same spm.model")
    return first


def member_dirs(ensemble_dir: str | os.PathLike) -> list[Path]:
    """The member model directories named in ENSEMBLE_DIR/ensemble.json (relative ones are
    resolved against the ensemble directory), checked to be plain model directories that
    share the ensemble's spm.model."""
    ensemble_dir = Path(ensemble_dir)
    spec = read_json(ensemble_dir / ENSEMBLE_FILE)
    names = spec.get("members") if isinstance(spec, dict) else None
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise UserError(f"{ensemble_dir / ENSEMBLE_FILE}: \"members\" must list at least 2 "
                        "model directories")
    dirs = [ensemble_dir / n for n in names]  # an absolute name replaces the prefix
    for d in dirs:
        if is_ensemble_dir(d):
            raise UserError(f"ensemble member {d} is itself an ensemble; list its members instead")
        if not (d / "model.keras").is_file():
            raise UserError(f"ensemble member {d} (named in {ensemble_dir / ENSEMBLE_FILE}) holds "
                            "no model.keras")
    spm = ensemble_dir / "spm.model"
    if not spm.is_file():
        raise UserError(f"{ensemble_dir}: the ensemble's tokenizer spm.model is missing")
    shared = check_shared_spm(dirs)
    if shared.read_bytes() != spm.read_bytes():
        raise UserError(f"{spm} differs from its members' SentencePiece model {shared}; a member "
                        f"was retrained: re-create the ensemble with `nmt-kd ensemble`")
    return dirs


def ensemble_meta(ensemble_dir: str | os.PathLike, names: list[str] | None = None,
                  members: list | None = None) -> dict:
    """model.json-like metadata of an ensemble directory: params is the members' sum (counted
    on the loaded `members` if given, else read from their model.json files). `names`: the
    member names (default: those of ensemble.json)."""
    ensemble_dir = Path(ensemble_dir)
    if names is None:
        names = read_json(ensemble_dir / ENSEMBLE_FILE)["members"]
    dirs = [ensemble_dir / n for n in names]
    metas = [read_json(d / "model.json") if (d / "model.json").is_file() else {} for d in dirs]
    if members is not None:
        params = sum(int(m.count_params()) for m in members)
    elif all("params" in m for m in metas):
        params = sum(int(m["params"]) for m in metas)
    else:
        params = None
    return {"model_type": "ensemble", "kd": "none", "members": list(names),
            "member_types": [m.get("model_type", "unknown") for m in metas], "params": params,
            "vocab_size": metas[0].get("vocab_size"),
            "tokenizer_sha256": sha256_file(ensemble_dir / "spm.model")}


def create_ensemble_dir(members: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write an ensemble directory `out` naming `members` (>= 2 model directories).

    Member paths are stored relative to `out`, so a run directory holding both moves as one.
    The members must share their spm.model byte for byte; it is copied into `out`.
    ensemble.json is written last: a directory without it is not an ensemble.
    """

    out = Path(out)
    dirs = [Path(m) for m in members]
    if len(dirs) < 2:
        raise UserError(f"an ensemble needs at least 2 member model directories, got {len(dirs)}")
    for d in dirs:
        if is_ensemble_dir(d):
            raise UserError(f"{d} is itself an ensemble; list its members instead")
        if not (d / "model.keras").is_file():
            raise UserError(f"{d} is not a model directory (no model.keras)")
    if (out / "model.keras").is_file():
        raise UserError(f"{out} holds a single model (model.keras); choose another --out")
    spm = check_shared_spm(dirs)
    out.mkdir(parents=True, exist_ok=True)
    (out / ENSEMBLE_FILE).unlink(missing_ok=True)
    atomic_copy(spm, out / "spm.model")
    names = [os.path.relpath(d.resolve(), out.resolve()) for d in dirs]
    write_json(out / "model.json", ensemble_meta(out, names))
    write_json(out / ENSEMBLE_FILE, {"members": names, "spm": "spm.model",
                                     "spm_sha256": sha256_file(out / "spm.model")})
    return out
