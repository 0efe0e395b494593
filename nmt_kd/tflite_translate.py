"""Translate with a TFLite export (`nmt-kd export --format tflite`): greedy, int8 or fp32.

The two flatbuffers are run by TFLite interpreters; the token loop is a few numpy
operations per step around one `invoke()` (the decoder step itself, argmax included, runs
inside TFLite). Outputs follow the conventions of `nmt_kd.decoding.greedy_search` exactly:
same per-sentence length limits, same early exit, eos not emitted.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from nmt_kd import BOS_ID, EOS_ID
from nmt_kd.backends import SearchOutput, SourceBatch
from nmt_kd.config import DecodeConfig
from nmt_kd.decode_policy import sentence_limits_np
from nmt_kd.errors import UserError
from nmt_kd.fileio import read_json
from nmt_kd.tokenizer import Tokenizer

TFLITE_FILES = ("encoder.tflite", "step.tflite")  # the export's model files


def is_tflite_dir(path: str | Path) -> bool:
    return (Path(path) / "tflite.json").is_file()


def new_interpreter(path: Path, threads: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        import tensorflow as tf

        return tf.lite.Interpreter(model_path=str(path), num_threads=threads)


def _interpreter(path: Path, threads: int, io: dict):
    """The interpreter and {name: tensor index} of its inputs and outputs (export order)."""
    interp = new_interpreter(path, threads)
    in_details, out_details = interp.get_input_details(), interp.get_output_details()
    if len(in_details) != len(io["inputs"]) or len(out_details) != len(io["outputs"]):
        raise UserError(f"{path}: its inputs/outputs do not match tflite.json (a different export?)")
    inputs = {name: d["index"] for name, d in zip(io["inputs"], in_details, strict=True)}
    outputs = {name: d["index"] for name, d in zip(io["outputs"], out_details, strict=True)}
    return interp, inputs, outputs


def read_embedding(interp, path: Path, spec: dict) -> np.ndarray:
    """The tied embedding `[V, E]` float32, dequantized from the step's output-layer weight."""
    found = [t for t in interp.get_tensor_details() if t["name"] == spec["tensor"]]
    if len(found) != 1 or list(found[0]["shape"]) != spec["shape"]:
        raise UserError(f"{path}: no {spec['shape']} tensor {spec['tensor']!r} (a different export?)")
    interp.allocate_tensors()
    table = interp.get_tensor(found[0]["index"])
    if table.dtype == np.float32:
        return table
    q = found[0]["quantization_parameters"]
    scales, zeros = q["scales"].astype(np.float32), q["zero_points"]
    if np.any(zeros != 0) or scales.size not in (1, table.shape[q["quantized_dimension"]]):
        raise UserError(f"{path}: embedding tensor with unexpected quantization {q}")
    if scales.size > 1:
        scales = scales.reshape([-1 if d == q["quantized_dimension"] else 1
                                 for d in range(table.ndim)])
    return table.astype(np.float32) * scales


class TFLiteBackend:
    """A TFLite export directory as a `SearchBackend`: greedy decoding only."""

    def __init__(self, export_dir: str | Path, cfg: DecodeConfig, threads: int | None = None):
        export_dir = Path(export_dir)
        if not is_tflite_dir(export_dir):
            raise UserError(f"{export_dir}: not a TFLite export (no tflite.json)")
        self.cfg = cfg
        self.meta = read_json(export_dir / "tflite.json")
        self.tokenizer = Tokenizer(export_dir / "spm.model")
        self.format = f"tflite-{self.meta['quantize']}"
        self.size_bytes = sum((export_dir / f).stat().st_size for f in TFLITE_FILES)
        threads = threads or os.cpu_count() or 1
        io = self.meta["tensors"]
        self._enc = _interpreter(export_dir / "encoder.tflite", threads, io["encoder"])
        self._step = _interpreter(export_dir / "step.tflite", threads, io["step"])
        self._embedding = read_embedding(self._step[0], export_dir / "step.tflite",
                                         self.meta["embedding"])
        self._state_keys = self.meta["state"]
        self._changing = self.meta["changing_state"]
        self._shapes: tuple | None = None
        self._src_shape: tuple | None = None

    def params(self) -> int:
        return int(self.meta["params"])

    def check(self, beam: int, nbest: int) -> None:
        if beam != 1 or nbest != 1:
            raise UserError("a TFLite export decodes greedily: use beam 1 (--beam 1)")

    def search(self, batch: SourceBatch, beam: int, max_len: int, nbest: int) -> SearchOutput:
        self._encode(batch.ids)
        step, step_in, step_out = self._step

        def one_step(tokens: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
            step.set_tensor(step_in["token"], tokens)
            step.set_tensor(step_in["token_emb"], self._embedding[tokens])
            step.set_tensor(step_in["step"], np.array(t, np.int32))
            step.invoke()
            for k in self._changing:  # the new state becomes the next step's input
                step.set_tensor(step_in[f"state_{k}"], step.get_tensor(step_out[f"new_{k}"]))
            return step.get_tensor(step_out["next"]), step.get_tensor(step_out["logp"])

        limits = sentence_limits_np(batch.ids, self.cfg, max_len)
        return SearchOutput(*host_greedy_loop(one_step, len(batch.ids), limits, max_len))

    def _encode(self, src: np.ndarray) -> None:
        """Run the encoder on `src` and feed its decoding state to the step interpreter."""
        enc, enc_in, enc_out = self._enc
        step, step_in, _ = self._step
        if src.shape != self._src_shape:
            enc.resize_tensor_input(enc_in["src"], list(src.shape))
            enc.resize_tensor_input(enc_in["src_emb"], [*src.shape, self._embedding.shape[1]])
            enc.allocate_tensors()
            self._src_shape = src.shape
        enc.set_tensor(enc_in["src"], src)
        enc.set_tensor(enc_in["src_emb"], self._embedding[src])
        enc.invoke()
        state = {k: enc.get_tensor(enc_out[f"state_{k}"]) for k in self._state_keys}
        shapes = tuple(state[k].shape for k in self._state_keys)
        if shapes != self._shapes:
            step.resize_tensor_input(step_in["token"], [src.shape[0]])
            step.resize_tensor_input(step_in["token_emb"], [src.shape[0], self._embedding.shape[1]])
            for k in self._state_keys:
                step.resize_tensor_input(step_in[f"state_{k}"], list(state[k].shape))
            step.allocate_tensors()
            self._shapes = shapes
        for k in self._state_keys:
            step.set_tensor(step_in[f"state_{k}"], state[k])


def host_greedy_loop(step, batch: int, limits: np.ndarray, max_len: int):
    """Greedy search with the token loop on the host, by the rules of `greedy_search`:
    per-sentence `limits` (`nmt_kd.decode_policy.sentence_limits_np`, clipped to
    `[1, max_len]`), eos not emitted, an early exit once every sentence is finished.

    `step(tokens [B] int32, t) -> (next tokens [B], their log-probs [B])` runs one decoder
    step and keeps the decoding state itself. Returns numpy (ids, lengths, scores).
    """
    limits = np.clip(limits, 1, max_len)
    tokens = np.full([batch], BOS_ID, np.int32)
    finished = np.zeros([batch], bool)
    lengths = np.zeros([batch], np.int32)
    scores = np.zeros([batch], np.float32)
    ids = np.zeros([batch, max_len], np.int32)
    for t in range(max_len):
        nxt, logp = step(tokens, t)
        alive = ~finished
        is_eos = nxt == EOS_ID
        emit = alive & ~is_eos
        scores += np.where(alive, logp, 0.0).astype(np.float32)
        ids[emit, t] = nxt[emit]
        lengths += emit
        finished |= is_eos | (t + 1 >= limits)
        if finished.all():
            break
        tokens = nxt.astype(np.int32)
    return ids, lengths, scores
