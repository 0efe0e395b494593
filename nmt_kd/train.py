"""Fit one model (teacher or student): schedule, checkpoints, resume, early stop, logs.

Reads:  RUN/data/{train,valid}.{src,tgt} (or RUN/distill/train.{src,tgt} for seq-KD),
        RUN/vocab/spm.model, and for word-KD the teacher's model directory.
Writes: RUN/encoded/{train,distill-train}-<hash>/ (the training split as memory-mapped token
        shards, `nmt_kd.shards`; reused by every model trained on the same text and vocabulary),
        RUN/<name>/checkpoints/ (last K and best/), RUN/<name>/logs/ (TensorBoard),
        RUN/<name>/{model.keras, spm.model, model.json, train_history.json, config.yaml}.

A resumed run (`resume=True`) restores the model, the optimizer (so the learning-rate
schedule continues from the same step), the position in the data (epoch and batch) and the
elapsed training time, then replays the same batches from where it stopped.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from nmt_kd.config import Config, save_config
from nmt_kd.dataset import BatchStream, encode_pairs, make_batch, token_batches
from nmt_kd.errors import UserError
from nmt_kd.fileio import read_lines, write_json
from nmt_kd.losses import label_smoothed_ce
from nmt_kd.models.persistence import save_model_dir
from nmt_kd.models.registry import build_model
from nmt_kd.shards import ShardStream, encode_corpus
from nmt_kd.tokenizer import Tokenizer


class TrainingDiverged(UserError):
    """The loss became NaN or Inf and train.on_nan is 'stop'."""


@keras.saving.register_keras_serializable(package="nmt_kd")
class InverseSqrtSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup` steps, then decay with 1/sqrt(step)."""

    def __init__(self, peak: float, warmup: int):
        self.peak, self.warmup = float(peak), int(warmup)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        warmup = tf.cast(max(self.warmup, 1), tf.float32)
        return self.peak * tf.minimum(step / warmup, tf.sqrt(warmup / step))

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup": self.warmup}


def train_section(cfg: Config, arch: str):
    """The teacher trains with `train`, every student with `student_train` (the role in the
    architecture registry)."""
    from nmt_kd.models.registry import get_architecture

    return cfg.train if get_architecture(arch).role == "teacher" else cfg.student_train


def set_precision(precision: str) -> None:
    policy = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]
    keras.mixed_precision.set_global_policy(policy)


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    epochs_done: int
    best: float | None
    history: list[dict]
    stopped_because: str
    model: keras.Model | None = None  # the final model (also saved in model_dir)
    losses: list[float] | None = None  # the training loss of every applied update, in order


class Progress:
    """One status line: rewritten in place on a terminal, printed every N steps otherwise."""

    def __init__(self, every: int, total_steps: int, total_seconds: float):
        self.every, self.total_steps, self.total_seconds = every, total_steps, total_seconds
        self.tty = sys.stderr.isatty()

    def update(self, step: int, info: dict, elapsed: float) -> None:
        if not self.tty and step % self.every:
            return
        eta = ""
        fractions = []
        if self.total_steps:
            fractions.append(step / self.total_steps)
        if self.total_seconds:
            fractions.append(elapsed / self.total_seconds)
        if fractions and max(fractions) > 0:
            left = elapsed / max(fractions) - elapsed
            eta = f" | ETA {_fmt_time(left)}"
        line = (f"step {step} | ep {info['epoch']} | loss {info['loss']:.3f} | lr {info['lr']:.2e} | "
                f"{info['tok_s']:,.0f} tgt tok/s | {_fmt_time(elapsed)}{eta}")
        if self.tty:
            print("\r" + line.ljust(100), end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def newline(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _fmt_time(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def data_sha256(run_dir: Path, splits: tuple[str, ...] = ("train",), distilled: bool = False) -> str | None:
    """One hash of a run's files for `splits` (None if one is missing). Recorded in model.json
    for the training pairs and for the held-out splits, so that a bundled teacher tells a run
    whether its valid and test splits were held out of the teacher's training."""
    import hashlib

    from nmt_kd.fileio import sha256_file

    base = run_dir / ("distill" if distilled else "data")
    files = [base / f"{split}.{side}" for split in splits for side in ("src", "tgt")]
    if not all(f.is_file() for f in files):
        return None
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def pair_files(run_dir: Path, split: str, distilled: bool = False) -> tuple[Path, Path]:
    """The split's two text files, checked to exist and to have as many lines each."""
    from nmt_kd.fileio import count_lines

    base = Path(run_dir) / ("distill" if distilled else "data")
    src, tgt = base / f"{split}.src", base / f"{split}.tgt"
    for p in (src, tgt):
        if not p.is_file():
            hint = "run `nmt-kd distill` first" if distilled else "run `nmt-kd prepare` first"
            raise UserError(f"{p} not found; {hint}")
    n_src, n_tgt = count_lines(src), count_lines(tgt)
    if n_src != n_tgt:
        raise UserError(f"{src} has {n_src} lines but {tgt} has {n_tgt}; refusing misaligned data")
    return src, tgt


def load_pairs(run_dir: Path, split: str, distilled: bool = False) -> tuple[list[str], list[str]]:
    src, tgt = pair_files(run_dir, split, distilled)
    return read_lines(src), read_lines(tgt)


INPUT_PATHS = ("shards", "memory")


def training_stream(run_dir: Path, tokenizer: Tokenizer, tc, distilled: bool, role,
                    input_path: str = "shards", log: Callable[[str], None] = print):
    """The encoded training pairs and their batch stream.

    `shards` (the default): RUN/encoded/<split>-<hash>/, memory-mapped token shards (encoded
    once, reused while the text and spm.model are unchanged; a non-chief worker encodes into
    a scratch directory of its own), read through `tf.data` (`ShardStream`). `memory`: every
    sentence as a numpy array (`encode_pairs`) and `BatchStream`. Both give the same batches.
    """
    if input_path not in INPUT_PATHS:
        raise UserError(f"input path must be one of {', '.join(INPUT_PATHS)}, got {input_path!r}")
    src, tgt = pair_files(run_dir, "train", distilled)
    if input_path == "memory":
        pairs = encode_pairs(tokenizer, read_lines(src), read_lines(tgt), tc.max_len)
        return pairs, BatchStream(pairs, tc.max_tokens, seed=tc.seed)
    root = (run_dir / "encoded" if role.is_chief
            else Path(tempfile.mkdtemp(prefix=f"nmt_kd_worker{role.task_index}_encoded_")))
    pairs = encode_corpus(tokenizer, src, tgt, tc.max_len, root,
                          "distill-train" if distilled else "train", log=log)
    return pairs, ShardStream(pairs, tc.max_tokens, seed=tc.seed)


def epoch_batches(stream, epoch: int, start: int):
    """`(pair indices, src, tgt_in, tgt_out)` of an epoch's batches from batch `start` on."""
    if isinstance(stream, ShardStream):
        for idx, src, tgt_in, tgt_out in stream.dataset(epoch, start):
            yield idx.numpy(), src, tgt_in, tgt_out
    else:
        for idx, ((src, tgt_in), tgt_out) in stream.iter_indexed(epoch, start):
            yield idx, src, tgt_in, tgt_out


LossFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def load_kd_teacher(run_dir: str | Path, teacher_dir: str | Path):
    """The frozen teacher for word-level KD, checked before any training starts."""
    from nmt_kd.fileio import sha256_file
    from nmt_kd.models.ensemble import is_ensemble_dir
    from nmt_kd.models.persistence import load_model_dir

    teacher_dir = Path(teacher_dir)  # a model directory or an ensemble directory
    if not ((teacher_dir / "model.keras").is_file() or is_ensemble_dir(teacher_dir)):
        raise UserError(f"word-level KD needs a trained teacher, but {teacher_dir} holds no "
                        "model.keras (nor ensemble.json); train the teacher first or pass "
                        "--teacher DIR")
    teacher, _, _ = load_model_dir(teacher_dir)
    run_spm = Path(run_dir) / "vocab" / "spm.model"
    if sha256_file(teacher_dir / "spm.model") != sha256_file(run_spm):
        raise UserError(f"the teacher in {teacher_dir} was trained with a different SentencePiece "
                        f"model than {run_spm}; a student must share its teacher's vocabulary")
    teacher.trainable = False
    return teacher


def online_word_kd_loss(cfg: Config, run_dir: str | Path, teacher_dir: str | Path) -> LossFn:
    """Word-level KD against the frozen teacher run on the same batch."""
    from nmt_kd.losses import word_kd_loss

    teacher = load_kd_teacher(run_dir, teacher_dir)
    dc, eps = cfg.distill, cfg.student_train.label_smoothing

    def loss(logits, tgt_out, src, tgt_in):
        teacher_logits = tf.stop_gradient(teacher((src, tgt_in), training=False))
        return word_kd_loss(logits, tgt_out, dc.alpha, dc.temperature, eps,
                            teacher_logits=teacher_logits)

    return loss


def topk_word_kd_loss(cfg: Config):
    """Word-level KD against stored top-k teacher distributions (extra step inputs)."""
    from nmt_kd.losses import word_kd_loss

    dc, eps = cfg.distill, cfg.student_train.label_smoothing

    def loss(logits, tgt_out, src, tgt_in, topk_ids, topk_logp):
        return word_kd_loss(logits, tgt_out, dc.alpha, dc.temperature, eps,
                            topk=(topk_ids, topk_logp))

    return loss


def make_optimizer(tc, clip: bool = True) -> keras.optimizers.Optimizer:
    """Adam with inverse-square-root warm-up and (unless `clip` is False: the distributed
    step clips the all-reduced gradients itself) global-norm clipping."""
    optimizer = keras.optimizers.Adam(
        learning_rate=InverseSqrtSchedule(tc.learning_rate, tc.warmup_steps),
        beta_1=tc.adam_beta1, beta_2=tc.adam_beta2, epsilon=tc.adam_epsilon,
        global_clipnorm=(tc.clip_norm or None) if clip else None,
    )
    if tc.precision == "fp16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def make_train_step(model, optimizer, compute_loss, loss_scaling: bool = False,
                    xla: bool = False, extra_specs: tuple = (), strategy=None,
                    clip_norm: float = 0.0):
    """One compiled update: forward, masked loss, gradients, and an update only if finite.

    `compute_loss(logits, tgt_out, src, tgt_in, *extra)` gets any extra per-batch inputs
    (described by `extra_specs`). Returns `(loss, n_tokens, finite)`; a non-finite loss or
    gradient leaves every weight and optimizer slot untouched. Under a `strategy` the
    arguments are the global batch (see `_distributed_train_step`).
    """
    spec = tf.TensorSpec([None, None], tf.int32)
    if strategy is not None:
        return _distributed_train_step(model, optimizer, compute_loss, strategy, clip_norm,
                                       [spec, spec, spec, *extra_specs])

    @tf.function(input_signature=[spec, spec, spec, *extra_specs], jit_compile=xla or None,
                 reduce_retracing=True)
    def train_step(src, tgt_in, tgt_out, *extra):
        with tf.GradientTape() as tape:
            logits = model((src, tgt_in), training=True)
            loss_sum, ntok = compute_loss(logits, tgt_out, src, tgt_in, *extra)
            loss = loss_sum / tf.maximum(ntok, 1.0)
            scaled = optimizer.scale_loss(loss) if loss_scaling else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        finite = tf.math.is_finite(loss) & tf.math.is_finite(tf.linalg.global_norm(grads))

        def apply():
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return tf.constant(True)

        tf.cond(finite, apply, lambda: tf.constant(False))
        return loss, ntok, finite

    return train_step


def _distributed_train_step(model, optimizer, compute_loss, strategy, clip_norm, signature):
    """The update of `make_train_step` under a `tf.distribute` strategy.

    Every replica gets the same global batch and keeps its rows (`replica_rows`); the
    per-replica loss is divided by the GLOBAL token count and the gradients are summed
    across replicas (an all-reduce), then clipped by global norm: exactly the single-device
    gradient of the whole batch, on every replica. The update is applied
    by a second compiled function only when the loss and gradients are finite (decided on
    the host: a collective cannot sit inside a `tf.cond`), so a non-finite step leaves every
    weight and slot untouched. The optimizer is built without clipping (it would clip
    before any reduction).
    """
    from nmt_kd.distributed import replica_rows

    variables = model.trainable_variables
    total = tf.distribute.ReduceOp.SUM

    def replica_step(src, tgt_in, tgt_out, *extra):
        ctx = tf.distribute.get_replica_context()
        n, r = ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group
        src, tgt_in, tgt_out = (replica_rows(t, r, n) for t in (src, tgt_in, tgt_out))
        extra = tuple(replica_rows(e, r, n) for e in extra)
        with tf.GradientTape() as tape:
            logits = model((src, tgt_in), training=True)
            loss_sum, ntok = compute_loss(logits, tgt_out, src, tgt_in, *extra)
            global_ntok = ctx.all_reduce(total, ntok)
            loss = loss_sum / tf.maximum(global_ntok, 1.0)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(tape.gradient(loss, variables), variables, strict=True)]
        grads = ctx.all_reduce(total, grads)
        global_loss = ctx.all_reduce(total, loss)
        finite = tf.math.is_finite(global_loss) & tf.math.is_finite(tf.linalg.global_norm(grads))
        if clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, clip_norm)
        return global_loss, global_ntok, finite, grads

    @tf.function(input_signature=signature, reduce_retracing=True)
    def compute(*args):
        return strategy.run(replica_step, args=args)

    def replica_apply(grads):
        n = tf.distribute.get_replica_context().num_replicas_in_sync
        # the optimizer sums the gradients across replicas again: hand it 1/n of the total
        optimizer.apply_gradients(zip([g / n for g in grads], variables, strict=True))

    @tf.function
    def apply(grads):
        strategy.run(replica_apply, args=(grads,))

    def train_step(*args):
        loss, ntok, finite, grads = compute(*args)
        local = strategy.experimental_local_results
        finite = local(finite)[0]
        if bool(finite):  # decided on the host: no synchronisation inside a tf.cond
            apply(grads)
        return local(loss)[0], local(ntok)[0], finite

    return train_step


def training_checkpoint(model, optimizer=None, **state) -> tf.train.Checkpoint:
    """A checkpoint of every model weight, every optimizer variable and the training state.

    Keras 3 models keep sub-layers in plain lists that `tf.train.Checkpoint`'s object graph
    does not follow, so the variables are listed explicitly (in the model's own stable order);
    restoring into a model of another architecture fails on the mismatch instead of silently
    restoring part of it.
    """
    objects = {"model_weights": list(model.weights)}
    if optimizer is not None:
        objects["optimizer_variables"] = list(optimizer.variables)
    return tf.train.Checkpoint(**objects, **state)


def average_checkpoints(model, paths: list[str]) -> None:
    """Set `model`'s weights to the mean of its weights in the given checkpoints."""
    ckpt = training_checkpoint(model)
    sums = None
    for p in paths:
        ckpt.restore(p).expect_partial()
        w = model.get_weights()
        sums = w if sums is None else [a + b for a, b in zip(sums, w, strict=True)]
    model.set_weights([a / len(paths) for a in sums])


def average_model_dir(cfg: Config, run_dir: str | Path, name: str, last: int, out_name: str,
                      log: Callable[[str], None] = print) -> Path:
    """Average the last `last` checkpoints of RUN/<name> into a new model directory."""
    from nmt_kd.fileio import read_json

    run_dir = Path(run_dir)
    src = run_dir / name
    meta = read_json(src / "model.json")
    state = tf.train.get_checkpoint_state(str(src / "checkpoints"))
    paths = list(state.all_model_checkpoint_paths)[-last:] if state else []
    if len(paths) < 2:
        raise UserError(f"{src / 'checkpoints'} holds {len(paths)} checkpoint(s); averaging needs two or more")
    tokenizer = Tokenizer(src / "spm.model")
    keras.mixed_precision.set_global_policy("float32")
    model = build_model(meta["model_type"], cfg.model, tokenizer.vocab_size)
    average_checkpoints(model, paths)
    meta.update(final_weights=f"average of {len(paths)} checkpoints: "
                + ", ".join(Path(p).name for p in paths), name=out_name)
    out = save_model_dir(model, run_dir / out_name, tokenizer, meta)
    log(f"averaged {len(paths)} checkpoints of {src} into {out}")
    return out


def train_model(
    cfg: Config, run_dir: str | Path, arch: str = "teacher", name: str | None = None,
    kd: str = "none", resume: bool = False, log: Callable[[str], None] = print,
    loss_fn: LossFn | None = None, distilled_data: bool = False, meta: dict | None = None,
    teacher_dir: str | Path | None = None, input_path: str = "shards",
) -> TrainResult:
    """Train `arch` on the run's data; the final model goes to RUN/<name>/.

    `kd`: none | word | seq | seq+word. Sequence-level modes read RUN/distill/train.*; word
    modes use the teacher in `teacher_dir` (default RUN/teacher), online on each batch or,
    with `distill.teacher_mode: offline`, through a stored top-k (`nmt_kd.topk`).
    `loss_fn(logits, tgt_out, src, tgt_in) -> (loss_sum, n_tokens)` replaces the loss
    (tests inject faults with it). `input_path`: see `training_stream`.
    """
    from nmt_kd.distributed import make_strategy, strategy_role

    tc = train_section(cfg, arch)
    # created first: MultiWorkerMirroredStrategy must exist before any other TF op runs
    strategy = make_strategy(tc.strategy)
    role = strategy_role(strategy)
    if not role.is_chief:
        log = lambda _m: None  # noqa: E731  (the chief reports for the job)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        return _train_model(cfg, Path(run_dir), arch, name or arch, kd, resume, log, loss_fn,
                            distilled_data, meta, teacher_dir, tc, strategy, role, input_path)


def _train_model(cfg, run_dir, arch, name, kd, resume, log, loss_fn, distilled_data, meta,
                 teacher_dir, tc, strategy, role, input_path="shards") -> TrainResult:
    out = run_dir / name
    tokenizer = Tokenizer(run_dir / "vocab" / "spm.model")
    set_precision(tc.precision)
    keras.utils.set_random_seed(tc.seed)

    distilled_data = distilled_data or kd in ("seq", "seq+word")
    pairs, stream = training_stream(run_dir, tokenizer, tc, distilled_data, role, input_path, log)
    if len(pairs) == 0:
        section = "train" if tc is cfg.train else "student_train"
        raise UserError(f"no training pair fits {section}.max_len={tc.max_len} tokens")
    valid_src, valid_tgt = load_pairs(run_dir, "valid")
    valid_pairs = encode_pairs(tokenizer, valid_src, valid_tgt, 10**9)
    topk_store = None
    if kd in ("word", "seq+word") and loss_fn is None:
        dc = cfg.distill
        teacher_dir = Path(teacher_dir or run_dir / "teacher")
        if dc.teacher_mode == "offline":
            from nmt_kd.topk import compute_topk_store

            teacher = load_kd_teacher(run_dir, teacher_dir)
            data = "distill" if distilled_data else "data"
            topk_store = compute_topk_store(
                teacher, pairs, run_dir / "distill" / f"topk_{data}_k{dc.top_k}_T{dc.temperature:g}",
                dc.top_k, dc.temperature, dc.shard_size, tc.max_tokens, log=log)
            del teacher
            loss_fn = topk_word_kd_loss(cfg)
        else:
            loss_fn = online_word_kd_loss(cfg, run_dir, teacher_dir)
    log(f"train {name}: {len(pairs)} pairs ({pairs.dropped_too_long} longer than {tc.max_len} "
        f"tokens dropped), {stream.num_batches(0)} batches/epoch of <= {tc.max_tokens} tokens")

    model = build_model(arch, cfg.model, tokenizer.vocab_size)
    log(f"train {name}: {arch} with {model.count_params():,} parameters, precision {tc.precision}")
    optimizer = make_optimizer(tc, clip=strategy is None)
    optimizer.build(model.trainable_variables)
    if strategy is not None:
        log(f"train {name}: strategy {tc.strategy}, {strategy.num_replicas_in_sync} replicas, "
            f"{role.num_workers} worker(s); global batch <= {tc.max_tokens} tokens")

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    batch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    elapsed_var = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    best_var = tf.Variable(np.nan, dtype=tf.float64, trainable=False)
    bad_evals_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    ckpt = training_checkpoint(model, optimizer, epoch=epoch_var, batch=batch_var,
                               elapsed=elapsed_var, best=best_var, bad_evals=bad_evals_var)
    ckpt_dir = out / "checkpoints"
    # Every worker restores from the chief's checkpoints (a shared file system); a
    # non-chief worker takes part in each save (collective ops) but writes to a scratch dir.
    write_dir = ckpt_dir if role.is_chief else Path(tempfile.mkdtemp(prefix=f"nmt_kd_worker{role.task_index}_"))
    manager = tf.train.CheckpointManager(ckpt, write_dir, max_to_keep=max(tc.keep_checkpoints, 1),
                                         step_counter=optimizer.iterations)
    best_manager = tf.train.CheckpointManager(ckpt, write_dir / "best", max_to_keep=1,
                                              step_counter=optimizer.iterations)
    latest = tf.train.latest_checkpoint(ckpt_dir)
    history_path = out / "train_history.json"
    history: list[dict] = []  # validations
    train_curve: list[dict] = []  # the training loss every log_every steps
    if latest:
        if not resume:
            raise UserError(f"{ckpt_dir} already holds checkpoints; pass --resume to continue "
                            "that run, or use a new run directory")
        ckpt.restore(latest).assert_existing_objects_matched()
        if history_path.is_file():
            from nmt_kd.fileio import read_json

            saved = read_json(history_path)
            history = [h for h in saved["evals"] if h["step"] <= int(optimizer.iterations.numpy())]
            train_curve = [h for h in saved.get("train", [])
                           if h["step"] <= int(optimizer.iterations.numpy())]
        log(f"train {name}: resumed from {latest} at step "
            f"{int(optimizer.iterations.numpy())}, epoch {int(epoch_var.numpy())}, batch {int(batch_var.numpy())}")
    if role.is_chief:
        save_config(cfg, out / "config.yaml")

    eps = tc.label_smoothing
    compute_loss = loss_fn or (lambda logits, tgt_out, src, tgt_in: label_smoothed_ce(logits, tgt_out, eps))
    spec = tf.TensorSpec([None, None], tf.int32)

    extra_specs = (tf.TensorSpec([None, None, None], tf.int32),
                   tf.TensorSpec([None, None, None], tf.float32)) if topk_store else ()
    train_step = make_train_step(model, optimizer, compute_loss, tc.precision == "fp16", tc.xla,
                                 extra_specs, strategy=strategy, clip_norm=tc.clip_norm)

    @tf.function(input_signature=[spec, spec, spec], reduce_retracing=True)
    def eval_step(src, tgt_in, tgt_out):
        logits = model((src, tgt_in), training=False)
        return label_smoothed_ce(logits, tgt_out, 0.0)

    def valid_loss() -> float:
        total, count = 0.0, 0.0
        for idx in token_batches(valid_pairs.src_lengths, valid_pairs.tgt_lengths,
                                 tc.max_tokens, shuffle=False):
            (s, ti), to = make_batch(valid_pairs, idx)
            ls, n = eval_step(s, ti, to)
            total, count = total + float(ls), count + float(n)
        return total / max(count, 1.0)

    def valid_bleu() -> float:
        import sacrebleu

        from nmt_kd.translate import Translator

        n = tc.eval_sentences or len(valid_src)
        hyps = Translator(model, tokenizer, cfg.decode).translate(
            valid_src[:n], beam=1, batch_size=tc.eval_batch_size).hypotheses
        return sacrebleu.corpus_bleu(hyps, [valid_tgt[:n]]).score

    writer = (tf.summary.create_file_writer(str(out / "logs")) if role.is_chief
              else tf.summary.create_noop_writer())
    progress = Progress(tc.log_every, tc.max_steps, tc.max_minutes * 60)
    start_elapsed = float(elapsed_var.numpy())
    t_start = time.perf_counter()
    window_tokens, window_t0, window_loss, window_n = 0.0, time.perf_counter(), 0.0, 0
    skipped_nan = 0
    losses: list[float] = []
    recent_train_loss: float | None = None
    stopped = "finished"
    step = int(optimizer.iterations.numpy())
    higher_better = tc.early_stop_metric == "bleu"

    def elapsed() -> float:
        return start_elapsed + time.perf_counter() - t_start

    def save_ckpt() -> None:
        elapsed_var.assign(elapsed())
        manager.save(checkpoint_number=step)

    def evaluate_now() -> bool:
        """Validate, log, keep the best checkpoint; True when patience is exhausted."""
        vl = valid_loss()
        record = {"step": step, "epoch": int(epoch_var.numpy()), "valid_loss": round(vl, 4),
                  "elapsed_s": round(elapsed(), 1)}
        if recent_train_loss is not None:
            record["train_loss"] = round(recent_train_loss, 4)
        if tc.early_stop_metric == "bleu":
            record["valid_bleu"] = round(valid_bleu(), 2)
        metric = record["valid_bleu"] if higher_better else vl
        best = float(best_var.numpy())
        improved = math.isnan(best) or (metric > best if higher_better else metric < best)
        if improved:
            best_var.assign(metric)
            bad_evals_var.assign(0)
        else:
            bad_evals_var.assign_add(1)
        record["best"] = float(best_var.numpy())
        history.append(record)
        with writer.as_default(step=step):
            tf.summary.scalar("valid/loss", vl)
            if "valid_bleu" in record:
                tf.summary.scalar("valid/bleu", record["valid_bleu"])
        progress.newline()
        log(f"eval step {step}: valid loss {vl:.4f}"
            + (f", valid BLEU (greedy) {record['valid_bleu']:.2f}" if "valid_bleu" in record else "")
            + (" (best)" if improved else f" (no improvement {int(bad_evals_var.numpy())}x)"))
        save_ckpt()
        if improved:
            elapsed_var.assign(elapsed())
            best_manager.save(checkpoint_number=step)
        if role.is_chief:
            write_json(history_path, {"evals": history, "train": train_curve})
        return tc.patience > 0 and int(bad_evals_var.numpy()) >= tc.patience

    def out_of_budget() -> str | None:
        if tc.max_steps and step >= tc.max_steps:
            return "max_steps"
        if tc.max_minutes and elapsed() >= tc.max_minutes * 60:
            return "max_minutes"
        if tc.max_epochs and int(epoch_var.numpy()) >= tc.max_epochs:
            return "max_epochs"
        return None

    reason = out_of_budget()
    while reason is None:
        epoch = int(epoch_var.numpy())
        start = int(batch_var.numpy())
        for idx, src, tgt_in, tgt_out in epoch_batches(stream, epoch, start):
            extra = topk_store.batch(idx, tgt_out.shape[1]) if topk_store else ()
            loss, ntok, finite = train_step(src, tgt_in, tgt_out, *extra)
            batch_var.assign_add(1)
            if not bool(finite):
                if tc.on_nan == "stop":
                    progress.newline()
                    raise TrainingDiverged(
                        f"training {name} stopped: the loss became {float(loss)} at step {step + 1} "
                        f"(epoch {epoch}, batch {int(batch_var.numpy())}); the update was not applied "
                        f"and the last good checkpoint in {ckpt_dir} is intact (lower "
                        "train.learning_rate, or set train.on_nan: skip)")
                skipped_nan += 1
                log(f"train {name}: skipped a non-finite update at batch {int(batch_var.numpy())} "
                    f"({skipped_nan} so far)")
                continue
            step += 1
            losses.append(float(loss))
            window_tokens += float(ntok)
            window_loss += float(loss)
            window_n += 1
            if step % tc.log_every == 0 or progress.tty:
                now = time.perf_counter()
                tok_s = window_tokens / max(now - window_t0, 1e-9)
                lr = float(optimizer.learning_rate.numpy()) if hasattr(optimizer.learning_rate, "numpy") else tc.learning_rate
                info = {"epoch": epoch, "loss": window_loss / window_n, "lr": lr, "tok_s": tok_s}
                recent_train_loss = info["loss"]
                progress.update(step, info, elapsed())
                if step % tc.log_every == 0:
                    train_curve.append({"step": step, "loss": round(info["loss"], 4)})
                    with writer.as_default(step=step):
                        tf.summary.scalar("train/loss", info["loss"])
                        tf.summary.scalar("train/learning_rate", lr)
                        tf.summary.scalar("train/target_tokens_per_second", tok_s)
                    window_tokens, window_t0, window_loss, window_n = 0.0, now, 0.0, 0
            if tc.eval_every and step % tc.eval_every == 0:
                if evaluate_now():
                    reason = "early_stop"
                    break
                # validation time is not training time: restart the throughput window
                window_tokens, window_t0, window_loss, window_n = 0.0, time.perf_counter(), 0.0, 0
            elif tc.checkpoint_every and step % tc.checkpoint_every == 0:
                save_ckpt()
            reason = out_of_budget()
            if reason:
                break
        else:
            epoch_var.assign_add(1)
            batch_var.assign(0)
            reason = out_of_budget()
    progress.newline()
    stopped = reason
    if not history or history[-1]["step"] != step:
        if tc.eval_every:
            evaluate_now()
        else:
            save_ckpt()
            # no periodic validation: one validation loss at the end, for the report's curves
            history.append({"step": step, "epoch": int(epoch_var.numpy()),
                            "valid_loss": round(valid_loss(), 4), "elapsed_s": round(elapsed(), 1),
                            **({"train_loss": round(recent_train_loss, 4)}
                               if recent_train_loss is not None else {})})
    if role.is_chief:
        write_json(history_path, {"evals": history, "train": train_curve})
    writer.flush()

    final_from = "last"
    if tc.average_last > 1 and len(manager.checkpoints) > 1:
        paths = manager.checkpoints[-tc.average_last:]
        average_checkpoints(model, paths)
        final_from = f"average of last {len(paths)} checkpoints"
    elif tc.eval_every and best_manager.latest_checkpoint:
        ckpt.restore(best_manager.latest_checkpoint).expect_partial()
        final_from = f"best checkpoint ({best_manager.latest_checkpoint})"
    info = dict(meta or {}, model_type=arch, kd=kd, name=name, steps=step,
                epochs=int(epoch_var.numpy()), train_seconds=round(elapsed(), 1),
                stopped_because=stopped, final_weights=final_from, skipped_nan_updates=skipped_nan,
                precision=tc.precision, seed=tc.seed,
                train_data_sha256=data_sha256(run_dir, ("train",), distilled_data),
                heldout_sha256=data_sha256(run_dir, ("valid", "test")))
    keras.mixed_precision.set_global_policy("float32")
    if role.is_chief:
        save_model_dir(model, out, tokenizer, info)
    log(f"train {name}: stopped ({stopped}) at step {step}; saved {final_from} to {out / 'model.keras'}")
    best = float(best_var.numpy())
    return TrainResult(out, step, int(epoch_var.numpy()), None if math.isnan(best) else best,
                       history, stopped, model, losses)
