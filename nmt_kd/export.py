"""Export a trained model for serving: text in, text out.

`export_savedmodel` writes a SavedModel whose `serving_default` signature takes a batch of
UTF-8 sentences (`tf.string [N]`) and returns their translations (`{"translations":
tf.string [N]}`). Everything the Python `Translator` does happens inside the graph:

1. the training normalisation of `nmt_kd.data.clean.normalize` (NFC, BOM removed, control
   characters to spaces, Unicode whitespace collapsed, stripped), with `tensorflow_text`
   and RE2 regexes;
2. SentencePiece encoding (`tensorflow_text.SentencepieceTokenizer` holding the model's own
   `spm.model` bytes), truncation to `decode.max_src_len - 1` pieces, eos appended;
3. greedy or beam search (`nmt_kd.backends.decode_ids`, the same code `Translator` runs
   over a Keras model), with the cache size chosen by the same length buckets
   (`nmt_kd.decode_policy`): one branch per bucket in a `tf.switch_case`, so short batches
   do not pay for long caches;
4. SentencePiece decoding; an empty input line gives an empty translation.

The SavedModel loads with `tf.saved_model.load` in a process that imports only TensorFlow
and `tensorflow_text` (which registers the SentencePiece ops):

    import tensorflow as tf, tensorflow_text  # noqa: F401
    served = tf.saved_model.load("exported/student")
    served.signatures["serving_default"](tf.constant(["A dog runs."]))["translations"]
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

from nmt_kd import EOS_ID, UNK_ID
from nmt_kd.config import DecodeConfig
from nmt_kd.decode_policy import bucket_in_graph, length_buckets
from nmt_kd.errors import UserError
from nmt_kd.fileio import atomic_directory, write_json

# Characters Python's str.split() treats as whitespace that RE2's \s does not know
# (\x1c-\x1f and \x85 are control characters, already turned into spaces before).
_UNICODE_SPACES = r"\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"


def normalize_in_graph(text):
    """`nmt_kd.data.clean.normalize` as TensorFlow string ops (same output, tested)."""
    import tensorflow as tf
    import tensorflow_text as tft

    text = tft.normalize_utf8(text, "NFC")
    text = tf.strings.regex_replace(text, "\ufeff", "")
    text = tf.strings.regex_replace(text, r"[\x00-\x1f\x7f-\x{9f}]", " ")
    text = tf.strings.regex_replace(text, r"[\s" + _UNICODE_SPACES + "]+", " ")
    return tf.strings.regex_replace(text, r"^ | $", "")


def build_serving_module(model, spm_bytes: bytes, cfg: DecodeConfig, beam: int):
    """A `tf.Module` with a `translate(tf.string [N]) -> tf.string [N]` tf.function."""
    import tensorflow as tf
    import tensorflow_text as tft

    from nmt_kd.backends import decode_ids

    sizes = length_buckets(cfg)

    class ServedTranslator(tf.Module):
        def __init__(self):
            super().__init__(name="nmt_kd_translator")
            self.model = model
            # Keras 3 layer lists are not followed by TF's object tracking: list every
            # variable explicitly so that the SavedModel holds all of them.
            self.model_variables = list(model.variables)
            self.sp = tft.SentencepieceTokenizer(model=spm_bytes, out_type=tf.int32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentences")])
        def translate(self, sentences):
            text = normalize_in_graph(sentences)
            pieces = self.sp.tokenize(text)[:, : cfg.max_src_len - 1]
            n_pieces = pieces.row_lengths()
            eos = tf.fill([tf.shape(text)[0], 1], tf.constant(EOS_ID, tf.int32))
            ids = tf.concat([pieces, eos], axis=1)
            # An empty line has no pieces: decode nothing for it (its output is "").
            keep = n_pieces > 0
            ids = tf.ragged.boolean_mask(ids, keep)
            src = ids.to_tensor(default_value=0)
            n = tf.shape(src)[0]
            width = tf.shape(src)[1]
            bucket = bucket_in_graph(cfg, width)
            branch = tf.reduce_sum(tf.cast(tf.constant(sizes) < bucket, tf.int32))

            def branch_fn(size):
                def run():
                    out = decode_ids(self.model, cfg, src, beam, size)
                    out_ids, lengths = out["ids"], out["lengths"]
                    if beam > 1:
                        out_ids, lengths = out_ids[:, 0], lengths[:, 0]
                    # a fixed width, so every branch returns the same shape
                    pad = cfg.max_len_cap - size
                    return tf.pad(out_ids, [[0, 0], [0, pad]]), lengths
                return run

            def decode_all():
                out_ids, lengths = tf.switch_case(branch, [branch_fn(s) for s in sizes])
                positions = tf.range(cfg.max_len_cap)[None, :]
                real = (positions < lengths[:, None]) & ((out_ids > EOS_ID) | (out_ids == UNK_ID))
                return self.sp.detokenize(tf.ragged.boolean_mask(out_ids, real))

            texts = tf.cond(n > 0, decode_all, lambda: tf.zeros([0], tf.string))
            translations = tf.scatter_nd(tf.where(keep), texts, tf.shape(sentences, tf.int64))
            return {"translations": translations}

    return ServedTranslator()


def _require_empty(out: Path) -> None:
    """Refuse, before any work, an output directory `atomic_directory` could not replace."""
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty; choose a new --out directory")


def _refuse_ensemble(model_dir: Path) -> None:
    from nmt_kd.models.ensemble import is_ensemble_dir

    if is_ensemble_dir(model_dir):
        raise UserError(f"{model_dir} is an ensemble; export serves one model: export a member, "
                        "or distil the ensemble into a student and export that")


def export_savedmodel(model_dir: str | Path, out: str | Path, cfg: DecodeConfig,
                      beam: int | None = None, log=print) -> Path:
    """Write `out` (a SavedModel directory) atomically: complete or absent."""
    import tensorflow as tf

    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.models.registry import require_export

    model_dir, out = Path(model_dir), Path(out)
    beam = beam or cfg.beam
    if beam < 1:
        raise UserError(f"--beam must be at least 1, got {beam}")
    _require_empty(out)
    t0 = time.perf_counter()
    _refuse_ensemble(model_dir)
    model, tokenizer, meta = load_model_dir(model_dir, cfg.precision)
    require_export("savedmodel", model_dir, meta, model)
    module = build_serving_module(model, tokenizer.model_bytes(), cfg, beam)
    with atomic_directory(out) as tmp:
        tf.saved_model.save(module, str(tmp),
                            signatures={"serving_default": module.translate.get_concrete_function()})
        write_json(tmp / "nmt_kd_export.json", {
            "model_dir": str(model_dir), "model_type": meta.get("model_type"), "kd": meta.get("kd"),
            "beam": beam, "length_penalty": cfg.length_penalty, "max_len_a": cfg.max_len_a,
            "max_len_b": cfg.max_len_b, "max_len_cap": cfg.max_len_cap,
            "max_src_len": cfg.max_src_len, "length_buckets": length_buckets(cfg),
            "signature": "serving_default: sentences tf.string [N] -> translations tf.string [N]",
        })
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"export: {model_dir} -> {out} (SavedModel, beam {beam}, {size / 1e6:.1f} MB, "
        f"{time.perf_counter() - t0:.1f}s)")
    return out


# -- TFLite (int8 weights) ----------------------------------------------------------------

def _to_tflite(concrete, quantize: str) -> tuple[bytes, list[str], list[str]]:
    """(flatbuffer, input names, output names); TFLite keeps the function's tensor order."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    # Freeze first: Keras 3 variables are not found through object tracking, and unfrozen
    # variables would stay float resource variables in the flatbuffer.
    frozen = convert_variables_to_constants_v2(concrete)
    inputs = [spec.name for spec in tf.nest.flatten(concrete.structured_input_signature)]
    outputs = sorted(concrete.structured_outputs)  # a dict's values flatten in key order
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if quantize == "int8":
        # dynamic-range quantization: int8 weights, int8 GEMMs with activations quantized
        # on the fly (no calibration data needed)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert(), inputs, outputs


@contextlib.contextmanager
def _rows_fed(embedding, rows):
    """While tracing: `embedding.call(ids)` returns `rows` (looked up outside the graph)."""
    import tensorflow as tf

    def call(ids):
        shape = tf.concat([tf.shape(ids), [embedding.d_model]], axis=0)
        return tf.cast(tf.reshape(rows, shape), embedding.compute_dtype)

    embedding.call = call
    try:
        yield
    finally:
        del embedding.call


def _find_constant(path: Path, shape: list[int]) -> str:
    """The name of the one constant tensor of this shape in a flatbuffer (the embedding)."""
    from nmt_kd.tflite_translate import new_interpreter  # the reader's, to check what it reads

    found = [t["name"] for t in new_interpreter(path, 1).get_tensor_details()
             if list(t["shape"]) == shape]
    if len(found) != 1:
        raise UserError(f"{path}: expected one {shape} tensor (the tied embedding), found "
                        f"{len(found)}: {found}")
    return found[0]


def export_tflite(model_dir: str | Path, out: str | Path, cfg: DecodeConfig, quantize: str = "int8",
                  log=print) -> Path:
    """A student as two TFLite models driven by a small greedy loop
    (`nmt_kd.tflite_translate.TFLiteBackend`).

    `encoder.tflite`: source ids `[B, S]` and their embedding rows `[B, S, E]` -> the initial
    decoding state. `step.tflite`: one decoder step (token, its embedding row, position,
    state) -> the argmax token, its log-prob and the state entries that change; weights are
    constants there, so dynamic-range quantization turns every GEMM, the output layer
    included, into an int8 GEMM. The tied embedding matrix is stored once, as the weight of
    the step's output layer (int8 with one scale per row); the translator reads it from
    there and does the row lookups itself, so neither graph holds a second copy.
    Students only: their state does not grow with the output length (the teacher's cache does);
    the architecture registry says which export each architecture supports.
    """
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.models.registry import require_export
    from nmt_kd.tflite_translate import TFLITE_FILES

    model_dir, out = Path(model_dir), Path(out)
    if quantize not in ("int8", "none"):
        raise UserError(f"--quantize must be int8 or none, got {quantize!r}")
    _require_empty(out)
    t0 = time.perf_counter()
    _refuse_ensemble(model_dir)
    model, tokenizer, meta = load_model_dir(model_dir, "fp32")
    require_export("tflite", model_dir, meta, model)  # students (a fixed-size state)
    encode_concrete, keys = _tflite_encoder(model, cfg)
    step_concrete, changed = _tflite_step(model, encode_concrete)
    emb_dim = int(model.embedding.d_model)

    with atomic_directory(out) as tmp:
        io = {}
        for name, concrete in (("encoder", encode_concrete), ("step", step_concrete)):
            data, inputs, outputs = _to_tflite(concrete, quantize)
            (tmp / f"{name}.tflite").write_bytes(data)
            io[name] = {"inputs": inputs, "outputs": outputs}
        vocab = int(model.embedding.vocab_size)
        embedding = _find_constant(tmp / "step.tflite", [vocab, emb_dim])
        shutil.copyfile(tokenizer.model_path, tmp / "spm.model")
        write_json(tmp / "tflite.json", {
            "model_dir": str(model_dir), "model_type": meta.get("model_type"), "kd": meta.get("kd"),
            "params": int(model.count_params()), "quantize": quantize, "state": keys,
            "changing_state": changed, "max_len_a": cfg.max_len_a, "max_len_b": cfg.max_len_b,
            "max_len_cap": cfg.max_len_cap, "max_src_len": cfg.max_src_len, "tensors": io,
            "embedding": {"file": "step.tflite", "tensor": embedding, "shape": [vocab, emb_dim]},
        })
    size = sum((out / f).stat().st_size for f in TFLITE_FILES)
    log(f"export: {model_dir} -> {out} (TFLite, {quantize} weights, {size / 1e6:.1f} MB, "
        f"{time.perf_counter() - t0:.1f}s)")
    return out


def _tflite_encoder(model, cfg: DecodeConfig):
    """The encoder's concrete function (ids and their embedding rows -> the initial decoding
    state as `state_<key>` outputs) and the state's keys, sorted."""
    import tensorflow as tf

    from nmt_kd.layers.rnn import tflite_friendly_loops

    emb_dim = int(model.embedding.d_model)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="src"),
                                  tf.TensorSpec([None, None, emb_dim], tf.float32, name="src_emb")])
    def encode(src, src_emb):
        with _rows_fed(model.embedding, src_emb):
            memory = model.encode(src, training=False)
        state = model.init_decode_state(memory, cfg.max_len_cap)
        return {f"state_{k}": v for k, v in state.items()}

    with tflite_friendly_loops():  # no TensorArrays in the encoder's time loops
        concrete = encode.get_concrete_function()
    return concrete, sorted(name[len("state_"):] for name in concrete.structured_outputs)


def _tflite_step(model, encode_concrete):
    """One decoder step's concrete function (token, its embedding row, position, state ->
    argmax token, its log-prob, the state entries that change) and the changing keys."""
    import tensorflow as tf

    emb_dim = int(model.embedding.d_model)
    # the decoding state's names, dtypes and shapes (batch and source length left open)
    specs = {name[len("state_"):]: tf.TensorSpec(v.shape, v.dtype, name=name)
             for name, v in sorted(encode_concrete.structured_outputs.items())}
    keys = list(specs)

    # Which entries does a step change? (decode_step passes the others through unchanged)
    probe = {}

    def step_body(token, token_emb, step, *values):
        state = dict(zip(keys, values, strict=True))
        with _rows_fed(model.embedding, token_emb):
            logits, new_state = model.decode_step(token, step, state)
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        nxt = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
        probe["changed"] = [k for k in keys if new_state[k] is not state[k]]
        return {"next": nxt, "logp": tf.gather(log_probs, nxt, batch_dims=1),
                **{f"new_{k}": new_state[k] for k in probe["changed"]}}

    step_fn = tf.function(step_body, input_signature=[
        tf.TensorSpec([None], tf.int32, name="token"),
        tf.TensorSpec([None, emb_dim], tf.float32, name="token_emb"),
        tf.TensorSpec([], tf.int32, name="step"), *specs.values()])
    concrete = step_fn.get_concrete_function()
    return concrete, probe["changed"]
