"""CTranslate2 export and decoding of the Transformer teacher (`pip install nmt-kd[ct2]`).

`export_ctranslate2` writes the teacher's weights into a `ctranslate2.specs.TransformerSpec`
(no intermediate framework): the tied embedding becomes the source embedding, the target
embedding and the output projection (plus the output bias, when the model has one); our
interleaved sinusoidal table (sin on even dims, cos on odd dims) is stored as the position
encodings of both stacks, because CTranslate2's built-in sinusoid is concatenated
(sin half, cos half); LayerNorm epsilon 1e-5; Keras ``[in, out]`` kernels are transposed to
CTranslate2's ``[out, in]``; the fused q/k/v (self-attention) and k/v (cross-attention)
kernels keep their column order, which is CTranslate2's. The vocabulary is the pieces of
the model's own ``spm.model`` in id order, so piece strings map one to one to our ids
(pad/unk/bos/eos = ``<pad>``/``<unk>``/``<s>``/``</s>``; the decoder starts from ``<s>``,
our ``BOS_ID``).

`CT2Backend` is a search backend (`nmt_kd.backends`) whose batches run in CTranslate2
instead of the TensorFlow search; tokenization, sorting, batching and the output stay those
of `Translator`. Its search follows `nmt_kd.decoding` as far as CTranslate2 allows:

* length limits: each sentence's limit `min(max_len, floor(max_len_a * src_len) +
  max_len_b)` (src_len counts eos) is CTranslate2's `max_decoding_length`; a hypothesis
  that reaches it ends there without eos, as in our search; `min_decoding_length=0` (eos
  may come first, an empty output). Beam search: one call per distinct limit within a
  batch. Greedy: one call under the batch's longest limit, outputs cut at each sentence's
  own limit (greedy is prefix-stable), and only the sentences that reach their limit are
  decoded again under it, for the score of a forced end;
* greedy: the same argmax path; scores are the summed log-probs, eos included;
* beam: CTranslate2 divides by `length ** alpha`, not our GNMT `((5 + length) / 6) **
  alpha`. So the search is run with a negligible penalty (`LP_EPS`, which also turns off
  its stop-at-first-finished rule: it then collects `beam` finished hypotheses) and
  returns them all with eos included; they are re-ranked here by our GNMT score, the
  length counting eos. What still differs: CTranslate2 stops a sentence once `beam`
  hypotheses finished, where ours keeps going while an alive hypothesis could still beat
  the worst finished one, and ours also keeps eos endings ranked beyond the first `beam`
  of the `2 * beam` candidates. Outputs therefore match ours on most, not all,
  sentences (tests/test_ct2.py; docs/bench/teacher_decode.json for BLEU).

A CTranslate2 directory holds model.bin, shared_vocabulary.json, config.json (CTranslate2's
files), spm.model and ct2.json (ours: the source model, the compute type to load with).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from nmt_kd import EOS_ID
from nmt_kd.backends import SearchOutput, SourceBatch
from nmt_kd.config import DecodeConfig
from nmt_kd.decode_policy import sentence_limits_np
from nmt_kd.errors import UserError
from nmt_kd.fileio import atomic_directory, read_json, write_json
from nmt_kd.tokenizer import Tokenizer

CT2_META = "ct2.json"
# CTranslate2's length penalty is `score / length ** lp`; with a non-zero lp it keeps
# searching until `beam` hypotheses finished. This lp changes a score by a factor
# length ** 1e-6 (< 1.00001 for any length here), which `_rerank` undoes exactly.
LP_EPS = 1e-6


def is_ct2_dir(path: str | Path) -> bool:
    return (Path(path) / CT2_META).is_file() and (Path(path) / "model.bin").is_file()


def _require_ct2():
    try:
        import ctranslate2
    except ImportError:
        raise UserError("CTranslate2 is not installed: pip install 'nmt-kd[ct2]' "
                        "(or pip install ctranslate2)") from None
    return ctranslate2


def _np(variable) -> np.ndarray:
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable, np.float32)


def _linear(spec, kernel, bias) -> None:
    spec.weight = np.ascontiguousarray(_np(kernel).T)  # Keras [in, out] -> CT2 [out, in]
    spec.bias = _np(bias)


def _norm(spec, layer) -> None:
    spec.gamma = _np(layer.gamma)
    spec.beta = _np(layer.beta)


def _ffn(spec, ffn) -> None:
    _linear(spec.linear_0, ffn.kernel_in, ffn.bias_in)
    _linear(spec.linear_1, ffn.kernel_out, ffn.bias_out)


def _activation(name: str):
    from ctranslate2.specs import common_spec

    acts = {"relu": common_spec.Activation.RELU,
            "gelu": common_spec.Activation.GELU}  # keras gelu is exact (erf), as CT2's GELU
    if name not in acts:
        raise UserError(f"CTranslate2 export: activation {name!r} is not supported "
                        f"(supported: {', '.join(acts)})")
    return acts[name]


def teacher_spec(model, pieces: list[str]):
    """A validated `ctranslate2.specs.TransformerSpec` holding `model`'s weights.

    `model` is a built `TransformerTeacher`; `pieces` the vocabulary in id order.
    """
    _require_ct2()
    from ctranslate2.specs import transformer_spec as ts

    from nmt_kd.layers.transformer import sinusoidal_table
    from nmt_kd.models.teacher_transformer import TransformerTeacher

    if not isinstance(model, TransformerTeacher):
        raise UserError(f"CTranslate2 export is for the Transformer teacher, not {type(model).__name__}")
    if len(pieces) != model.vocab_size:
        raise UserError(f"the vocabulary has {len(pieces)} pieces but the model {model.vocab_size}")
    act = _activation(model.activation)
    encoder = ts.TransformerEncoderSpec(model.num_encoder_layers, model.num_heads,
                                        pre_norm=model.pre_norm, activation=act)
    decoder = ts.TransformerDecoderSpec(model.num_decoder_layers, model.num_heads,
                                        pre_norm=model.pre_norm, activation=act)
    spec = ts.TransformerSpec(encoder, decoder)
    spec.config.layer_norm_epsilon = float(model.encoder_layers[0].epsilon
                                           if model.encoder_layers else 1e-5)

    emb = _np(model.embedding.embeddings)
    table = sinusoidal_table(model.max_positions, model.d_model)  # interleaved sin/cos
    encoder.embeddings[0].weight = emb
    encoder.scale_embeddings = True  # x * sqrt(d_model), as TransformerTeacher._embed
    encoder.position_encodings.encodings = table
    decoder.embeddings.weight = emb
    decoder.scale_embeddings = True
    decoder.position_encodings.encodings = table
    decoder.projection.weight = emb  # tied output projection: logits = h @ E^T (+ b)
    if model.embedding.output_bias is not None:
        decoder.projection.bias = _np(model.embedding.output_bias)
    if model.pre_norm:
        _norm(encoder.layer_norm, model.encoder_norm)
        _norm(decoder.layer_norm, model.decoder_norm)

    for layer_spec, block in zip(encoder.layer, model.encoder_layers, strict=True):
        att = block.self_attn
        _norm(layer_spec.self_attention.layer_norm, block.self_attn_norm)
        _linear(layer_spec.self_attention.linear[0], att.qkv_kernel, att.qkv_bias)
        _linear(layer_spec.self_attention.linear[1], att.out_kernel, att.out_bias)
        _norm(layer_spec.ffn.layer_norm, block.ffn_norm)
        _ffn(layer_spec.ffn, block.ffn)
    for layer_spec, block in zip(decoder.layer, model.decoder_layers, strict=True):
        att, cross = block.self_attn, block.cross_attn
        _norm(layer_spec.self_attention.layer_norm, block.self_attn_norm)
        _linear(layer_spec.self_attention.linear[0], att.qkv_kernel, att.qkv_bias)
        _linear(layer_spec.self_attention.linear[1], att.out_kernel, att.out_bias)
        _norm(layer_spec.attention.layer_norm, block.cross_attn_norm)
        _linear(layer_spec.attention.linear[0], cross.q_kernel, cross.q_bias)
        _linear(layer_spec.attention.linear[1], cross.kv_kernel, cross.kv_bias)
        _linear(layer_spec.attention.linear[2], cross.out_kernel, cross.out_bias)
        _norm(layer_spec.ffn.layer_norm, block.ffn_norm)
        _ffn(layer_spec.ffn, block.ffn)

    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    spec.validate()
    return spec


def spm_pieces(tokenizer: Tokenizer) -> list[str]:
    return [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]


def export_ctranslate2(model_dir: str | Path, out: str | Path, quantize: str = "none",
                       log=print) -> Path:
    """Write `out`, a CTranslate2 model directory, atomically (complete or absent).

    `quantize`: "none" stores float32 weights (load with any compute type); "int8" stores
    int8 weights and records compute type int8.
    """
    from nmt_kd.export import _refuse_ensemble, _require_empty
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.models.registry import require_export

    if quantize not in ("none", "int8"):
        raise UserError(f"--quantize for ctranslate2 is none or int8, got {quantize!r}")
    model_dir, out = Path(model_dir), Path(out)
    _require_empty(out)
    _require_ct2()
    t0 = time.perf_counter()
    _refuse_ensemble(model_dir)
    model, tokenizer, meta = load_model_dir(model_dir, "fp32")
    require_export("ctranslate2", model_dir, meta, model)  # the registry's word, as other exports
    spec = teacher_spec(model, spm_pieces(tokenizer))
    spec.optimize(quantization=None if quantize == "none" else "int8")
    with atomic_directory(out) as tmp:
        spec.save(str(tmp))
        (tmp / "spm.model").write_bytes(tokenizer.model_bytes())
        write_json(tmp / CT2_META, {
            "model_dir": str(model_dir), "model_type": meta.get("model_type"),
            "kd": meta.get("kd"), "params": int(model.count_params()),
            "vocab_size": tokenizer.vocab_size, "max_positions": model.max_positions,
            "quantize": quantize, "compute_type": "int8" if quantize == "int8" else "default",
        })
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"export: {model_dir} -> {out} (CTranslate2, {quantize} weights, {size / 1e6:.1f} MB, "
        f"{time.perf_counter() - t0:.1f}s)")
    return out


def gnmt_penalty(length, alpha: float):
    """Our length penalty ((5 + length) / 6) ** alpha (nmt_kd.decoding._length_penalty)."""
    return ((5.0 + np.asarray(length, np.float64)) / 6.0) ** alpha


class CT2Backend:
    """A CTranslate2 export directory as a `nmt_kd.backends.SearchBackend` (greedy and beam).

    `compute_type`: None takes the export's (ct2.json), e.g. "default" or "int8";
    `intra_threads`: 0 lets CTranslate2 use every core (env NMT_KD_CT2_THREADS overrides).
    """

    def __init__(self, ct2_dir: str | Path, cfg: DecodeConfig, compute_type: str | None = None,
                 intra_threads: int | None = None):
        ctranslate2 = _require_ct2()
        ct2_dir = Path(ct2_dir)
        if not is_ct2_dir(ct2_dir):
            raise UserError(f"{ct2_dir}: not a CTranslate2 export (no {CT2_META} and model.bin)")
        self.cfg = cfg
        self.meta = read_json(ct2_dir / CT2_META)
        self.meta_dir = ct2_dir
        self.tokenizer = Tokenizer(ct2_dir / "spm.model")
        self.compute_type = (compute_type or os.environ.get("NMT_KD_CT2_COMPUTE_TYPE")
                             or self.meta.get("compute_type", "default"))
        self.format = f"ctranslate2-{self.compute_type}"
        self.size_bytes = sum(f.stat().st_size for f in ct2_dir.iterdir() if f.is_file())
        if intra_threads is None:
            intra_threads = int(os.environ.get("NMT_KD_CT2_THREADS", "0"))
        self.ct2 = ctranslate2.Translator(str(ct2_dir), device="cpu",
                                          compute_type=self.compute_type,
                                          inter_threads=1, intra_threads=intra_threads)
        self.pieces = spm_pieces(self.tokenizer)
        self.piece_ids = {p: i for i, p in enumerate(self.pieces)}

    def params(self) -> int:
        return int(self.meta.get("params", 0))

    def check(self, beam: int, nbest: int) -> None:
        pass  # any beam, any n-best up to the beam (Translator checks that)

    def search(self, batch: SourceBatch, beam: int, max_len: int, nbest: int) -> SearchOutput:
        return SearchOutput(*self.decode_batch(batch.ids, beam, max_len, nbest))

    def decode_batch(self, src: np.ndarray, beam: int, max_len: int, nbest: int):
        """Padded source ids `[B, S]` -> numpy (ids, lengths, scores) shaped as our searches'."""
        batch = src.shape[0]
        limits = sentence_limits_np(src, self.cfg, max_len)
        tokens = [[self.pieces[i] for i in row if i != 0] for row in src.tolist()]
        if beam == 1:
            ids = np.zeros([batch, max_len], np.int32)
            lengths = np.zeros([batch], np.int32)
            scores = np.zeros([batch], np.float32)
        else:
            ids = np.zeros([batch, nbest, max_len], np.int32)
            lengths = np.zeros([batch, nbest], np.int32)
            scores = np.zeros([batch, nbest], np.float32)
        if beam == 1:
            # Greedy under the batch's longest limit gives every sentence the output it has
            # under its own limit, cut there; only the few that reach their limit are decoded
            # again under it, for the score of a forced end (no eos).
            again = self._greedy(tokens, np.arange(batch), int(limits.max()), limits,
                                 ids, lengths, scores)
            for limit in np.unique(limits[again]):
                self._greedy(tokens, again[limits[again] == limit], int(limit), limits,
                             ids, lengths, scores)
            return ids, lengths, scores
        # Beam search is not prefix-stable: one call per distinct limit.
        for limit in np.unique(limits):
            rows = np.flatnonzero(limits == limit)
            for r, res in zip(rows, self._call(tokens, rows, beam, int(limit)), strict=True):
                hyps = [[self.piece_ids[p] for p in h] for h in res.hypotheses]
                for k, (seq, score) in enumerate(self._rerank(hyps, res.scores)[:nbest]):
                    ids[r, k, :len(seq)] = seq
                    lengths[r, k], scores[r, k] = len(seq), score
        return ids, lengths, scores

    def _call(self, tokens, rows, beam: int, limit: int):
        return self.ct2.translate_batch(
            [tokens[r] for r in rows], beam_size=beam, num_hypotheses=beam,
            length_penalty=0.0 if beam == 1 else LP_EPS, patience=1.0,
            max_decoding_length=limit, min_decoding_length=0, max_input_length=0,
            return_scores=True, return_end_token=True)

    def _greedy(self, tokens, rows, limit: int, limits, ids, lengths, scores) -> np.ndarray:
        """Greedy-decode `rows` under `limit`; fill their outputs; return the rows that
        reached their own limit without eos before it (to decode again under it)."""
        again = []
        for r, res in zip(rows, self._call(tokens, rows, 1, limit), strict=True):
            seq = [self.piece_ids[p] for p in res.hypotheses[0]]
            if seq and seq[-1] == EOS_ID:
                seq = seq[:-1]
            if len(seq) >= limits[r] and limit != limits[r]:
                again.append(r)
                seq = seq[:limits[r]]
            ids[r, :len(seq)] = seq
            lengths[r], scores[r] = len(seq), res.scores[0]
        return np.asarray(again, np.int64)

    def _rerank(self, hyps: list[list[int]], scores: list[float]) -> list[tuple[list[int], float]]:
        """CTranslate2's finished hypotheses (eos included) -> (tokens, our GNMT score), best first."""
        out = []
        for seq, score in zip(hyps, scores, strict=True):
            length = max(len(seq), 1)  # eos included; a forced end at the limit has none
            log_prob = score * length**LP_EPS  # undo CTranslate2's own normalisation
            tokens = seq[:-1] if seq and seq[-1] == EOS_ID else seq
            out.append((tokens, float(log_prob / gnmt_penalty(length, self.cfg.length_penalty))))
        out.sort(key=lambda t: -t[1])  # stable: CTranslate2's order breaks ties
        return out
