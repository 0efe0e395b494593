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
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from nmt_kd.config import Config, save_config
from nmt_kd.dataset import encode_pairs, make_batch, token_batches
from nmt_kd.distributed import Role, make_strategy, strategy_role
from nmt_kd.errors import UserError
from nmt_kd.fileio import read_json, sha256_file, write_json
from nmt_kd.models.persistence import load_model_dir, save_model_dir
from nmt_kd.models.registry import build_model
from nmt_kd.progress import TrainingProgress
from nmt_kd.tokenizer import Tokenizer
from nmt_kd.training.checkpoints import RunCheckpoints, average_checkpoints, training_checkpoint
from nmt_kd.training.data import data_sha256, epoch_batches, load_pairs, training_stream
from nmt_kd.training.kd import build_objective
from nmt_kd.training.objectives import LossFn, kd_mode
from nmt_kd.training.steps import make_eval_step, make_optimizer, make_train_step, set_precision


class TrainingDiverged(UserError):
    """The loss became NaN or Inf and train.on_nan is 'stop'."""


def train_section(cfg: Config, arch: str):
    """The teacher trains with `train`, every student with `student_train` (the role in the
    architecture registry)."""
    from nmt_kd.models.registry import get_architecture

    return cfg.train if get_architecture(arch).role == "teacher" else cfg.student_train


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


def _state_var(value, dtype) -> tf.Variable:
    return tf.Variable(value, dtype=dtype, trainable=False)


@dataclass
class TrainState:
    """All of a run's training state. The variables are checkpointed (`checkpointed`, under
    the names checkpoints have always used); the step is the optimizer's iteration count."""

    epoch: tf.Variable = field(default_factory=lambda: _state_var(0, tf.int64))
    batch: tf.Variable = field(default_factory=lambda: _state_var(0, tf.int64))  # in the epoch
    elapsed: tf.Variable = field(default_factory=lambda: _state_var(0.0, tf.float64))  # seconds
    best: tf.Variable = field(default_factory=lambda: _state_var(np.nan, tf.float64))
    bad_evals: tf.Variable = field(default_factory=lambda: _state_var(0, tf.int64))
    step: int = 0  # applied updates
    skipped_nan: int = 0
    losses: list[float] = field(default_factory=list)  # of every applied update
    history: list[dict] = field(default_factory=list)  # validations
    train_curve: list[dict] = field(default_factory=list)  # the training loss every log_every steps
    recent_train_loss: float | None = None

    def checkpointed(self) -> dict[str, tf.Variable]:
        return {"epoch": self.epoch, "batch": self.batch, "elapsed": self.elapsed,
                "best": self.best, "bad_evals": self.bad_evals}

    def best_value(self) -> float | None:
        best = float(self.best.numpy())
        return None if math.isnan(best) else best


@dataclass
class Window:
    """Training loss and target tokens since the last progress report."""

    tokens: float = 0.0
    t0: float = field(default_factory=time.perf_counter)
    loss: float = 0.0
    n: int = 0

    def add(self, loss: float, ntok: float) -> None:
        self.tokens, self.loss, self.n = self.tokens + ntok, self.loss + loss, self.n + 1

    def reset(self, now: float | None = None) -> None:
        self.tokens, self.t0, self.loss, self.n = 0.0, now or time.perf_counter(), 0.0, 0


class Trainer:
    """One training run of `arch` on RUN's data into RUN/<name>/ (see `train_model`)."""

    def __init__(self, cfg: Config, run_dir: Path, arch: str, name: str, kd: str = "none",
                 resume: bool = False, log: Callable[[str], None] = print,
                 loss_fn: LossFn | None = None, distilled_data: bool = False,
                 meta: dict | None = None, teacher_dir=None, strategy=None, role=None,
                 input_path: str = "shards", init_from: str | Path | None = None):
        self.cfg, self.run_dir, self.arch, self.name, self.kd = cfg, Path(run_dir), arch, name, kd
        self.resume, self.log, self.loss_fn, self.meta = resume, log, loss_fn, meta
        self.teacher_dir, self.strategy, self.role = teacher_dir, strategy, role or Role()
        self.input_path = input_path
        self.init_from = Path(init_from) if init_from else None
        self.tc = train_section(cfg, arch)
        self.out = self.run_dir / name
        self.distilled = distilled_data or kd_mode(kd).distilled
        self.history_path = self.out / "train_history.json"

    # -- set up --------------------------------------------------------------------------

    def setup(self) -> None:
        tc = self.tc
        self.tokenizer = Tokenizer(self.run_dir / "vocab" / "spm.model")
        set_precision(tc.precision)
        keras.utils.set_random_seed(tc.seed)
        self._load_data()
        self._build_objective()
        self.log(f"train {self.name}: {len(self.pairs)} pairs ({self.pairs.dropped_too_long} longer "
                 f"than {tc.max_len} tokens dropped), {self.stream.num_batches(0)} batches/epoch "
                 f"of <= {tc.max_tokens} tokens")
        self._build_model()
        self.state = TrainState()
        self.checkpoints = RunCheckpoints(
            training_checkpoint(self.model, self.optimizer, **self.state.checkpointed()),
            self.out / "checkpoints", self.role, tc.keep_checkpoints, self.optimizer.iterations)

    def _load_data(self) -> None:
        tc = self.tc
        self.pairs, self.stream = training_stream(self.run_dir, self.tokenizer, tc, self.distilled,
                                                  self.role, self.input_path, self.log)
        if len(self.pairs) == 0:
            section = "train" if self.tc is self.cfg.train else "student_train"
            raise UserError(f"no training pair fits {section}.max_len={tc.max_len} tokens")
        self.valid_src, self.valid_tgt = load_pairs(self.run_dir, "valid")
        self.valid_pairs = encode_pairs(self.tokenizer, self.valid_src, self.valid_tgt, 10**9)

    def _build_objective(self) -> None:
        """The loss (an injected `loss_fn` replaces the mode's objective) and any top-k store."""
        self.topk_store = None
        self.compute_loss = self.loss_fn
        if self.compute_loss is None:
            self.compute_loss, self.topk_store = build_objective(
                self.cfg, self.tc, self.kd, self.run_dir, self.teacher_dir, self.pairs,
                self.distilled, self.log)

    def _build_model(self) -> None:
        tc, name = self.tc, self.name
        self.model = build_model(self.arch, self.cfg.model, self.tokenizer.vocab_size)
        self.log(f"train {name}: {self.arch} with {self.model.count_params():,} parameters, "
                 f"precision {tc.precision}")
        self.optimizer = make_optimizer(tc, clip=self.strategy is None)
        self.optimizer.build(self.model.trainable_variables)
        if self.strategy is not None:
            self.log(f"train {name}: strategy {tc.strategy}, {self.strategy.num_replicas_in_sync} "
                     f"replicas, {self.role.num_workers} worker(s); global batch <= "
                     f"{tc.max_tokens} tokens")

    def _build_steps(self) -> None:
        tc = self.tc
        extra_specs = (tf.TensorSpec([None, None, None], tf.int32),
                       tf.TensorSpec([None, None, None], tf.float32)) if self.topk_store else ()
        self.train_step = make_train_step(self.model, self.optimizer, self.compute_loss,
                                          tc.precision == "fp16", tc.xla, extra_specs,
                                          strategy=self.strategy, clip_norm=tc.clip_norm)
        self.eval_step = make_eval_step(self.model)
        self.writer = (tf.summary.create_file_writer(str(self.out / "logs")) if self.role.is_chief
                       else tf.summary.create_noop_writer())
        self.progress = TrainingProgress(tc.log_every, tc.max_steps, tc.max_minutes * 60)

    # -- restore -------------------------------------------------------------------------

    def restore(self) -> None:
        """Continue from the newest checkpoint (only when resuming) and its history."""
        latest, s = self.checkpoints.latest(), self.state
        if latest:
            if not self.resume:
                raise UserError(f"{self.checkpoints.dir} already holds checkpoints; pass --resume "
                                "to continue that run, or use a new run directory")
            self.checkpoints.restore(latest)
            step = int(self.optimizer.iterations.numpy())
            if self.history_path.is_file():
                saved = read_json(self.history_path)
                s.history = [h for h in saved["evals"] if h["step"] <= step]
                s.train_curve = [h for h in saved.get("train", []) if h["step"] <= step]
            self.log(f"train {self.name}: resumed from {latest} at step {step}, epoch "
                     f"{int(s.epoch.numpy())}, batch {int(s.batch.numpy())}")
        elif self.init_from is not None:
            self._init_weights(self.init_from)
        if self.role.is_chief:
            save_config(self.cfg, self.out / "config.yaml")

    def _init_weights(self, model_dir: Path) -> None:
        """Continued training (`init_from`): the weights of a trained model directory of the
        same architecture, shape and tokenizer; the optimizer and the learning-rate schedule
        start at step 0. A resumed run takes its checkpoint instead."""
        model, tokenizer, meta = load_model_dir(model_dir)
        if sha256_file(tokenizer.model_path) != sha256_file(self.tokenizer.model_path):
            raise UserError(f"{model_dir / 'spm.model'}: not this run's tokenizer "
                            f"({self.tokenizer.model_path}); a model continues training only with "
                            "the vocabulary it was trained with (start the run from its bundle: train.init)")
        if meta.get("model_type", self.arch) != self.arch:
            raise UserError(f"{model_dir}: a {meta['model_type']} model; this run trains {self.arch}")
        try:
            self.model.set_weights(model.get_weights())
        except ValueError as e:
            raise UserError(f"{model_dir}: its weights do not fit this run's {self.arch} "
                            f"(config model.{self.arch} must give the same shape): {e}") from None
        self.meta = dict(self.meta or {}, init_from=str(model_dir),
                         init_from_steps=meta.get("steps"))
        self.log(f"train {self.name}: weights from {model_dir} ({self.model.count_params():,} "
                 f"parameters, {meta.get('steps', '?')} steps there); optimizer and schedule start at step 0")

    # -- run -----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self.setup()
        self.restore()
        self._build_steps()
        self.state.step = int(self.optimizer.iterations.numpy())
        self._start_elapsed, self._t_start = float(self.state.elapsed.numpy()), time.perf_counter()
        self.window = Window()
        reason = self.out_of_budget()
        while reason is None:
            reason = self.run_epoch()
        return self.finish(reason)

    def elapsed(self) -> float:
        return self._start_elapsed + time.perf_counter() - self._t_start

    def out_of_budget(self) -> str | None:
        tc = self.tc
        if tc.max_steps and self.state.step >= tc.max_steps:
            return "max_steps"
        if tc.max_minutes and self.elapsed() >= tc.max_minutes * 60:
            return "max_minutes"
        if tc.max_epochs and int(self.state.epoch.numpy()) >= tc.max_epochs:
            return "max_epochs"
        return None

    def run_epoch(self) -> str | None:
        """The rest of the current epoch; why training stops, or None to go on."""
        s = self.state
        epoch = int(s.epoch.numpy())
        for idx, src, tgt_in, tgt_out in epoch_batches(self.stream, epoch, int(s.batch.numpy())):
            extra = self.topk_store.batch(idx, tgt_out.shape[1]) if self.topk_store else ()
            loss, ntok, finite = self.train_step(src, tgt_in, tgt_out, *extra)
            s.batch.assign_add(1)
            if not bool(finite):
                self._skip_non_finite(loss, epoch)
                continue
            s.step += 1
            s.losses.append(float(loss))
            self.window.add(float(loss), float(ntok))
            self._report(epoch)
            reason = self._after_step()
            if reason:
                return reason
        s.epoch.assign_add(1)
        s.batch.assign(0)
        return self.out_of_budget()

    def _skip_non_finite(self, loss, epoch: int) -> None:
        """A non-finite update was not applied: stop (`on_nan: stop`) or count it and go on."""
        s = self.state
        if self.tc.on_nan == "stop":
            self.progress.newline()
            raise TrainingDiverged(
                f"training {self.name} stopped: the loss became {float(loss)} at step {s.step + 1} "
                f"(epoch {epoch}, batch {int(s.batch.numpy())}); the update was not applied "
                f"and the last good checkpoint in {self.checkpoints.dir} is intact (lower "
                "train.learning_rate, or set train.on_nan: skip)")
        s.skipped_nan += 1
        self.log(f"train {self.name}: skipped a non-finite update at batch "
                 f"{int(s.batch.numpy())} ({s.skipped_nan} so far)")

    def _after_step(self) -> str | None:
        """Validate or checkpoint when due; why training stops, or None."""
        tc, step = self.tc, self.state.step
        if tc.eval_every and step % tc.eval_every == 0:
            if self.validate():
                return "early_stop"
            self.window.reset()  # validation time is not training time
        elif tc.checkpoint_every and step % tc.checkpoint_every == 0:
            self.save_checkpoint()
        return self.out_of_budget()

    def _report(self, epoch: int) -> None:
        """The progress line, and every `log_every` steps the training curve and TensorBoard."""
        tc, s, w = self.tc, self.state, self.window
        if not (s.step % tc.log_every == 0 or self.progress.tty):
            return
        now = time.perf_counter()
        tok_s = w.tokens / max(now - w.t0, 1e-9)
        lr = self.optimizer.learning_rate
        lr = float(lr.numpy()) if hasattr(lr, "numpy") else tc.learning_rate
        info = {"epoch": epoch, "loss": w.loss / w.n, "lr": lr, "tok_s": tok_s}
        s.recent_train_loss = info["loss"]
        self.progress.update(s.step, info, self.elapsed())
        if s.step % tc.log_every == 0:
            s.train_curve.append({"step": s.step, "loss": round(info["loss"], 4)})
            with self.writer.as_default(step=s.step):
                tf.summary.scalar("train/loss", info["loss"])
                tf.summary.scalar("train/learning_rate", lr)
                tf.summary.scalar("train/target_tokens_per_second", tok_s)
            w.reset(now)

    def save_checkpoint(self) -> None:
        self.state.elapsed.assign(self.elapsed())
        self.checkpoints.save(self.state.step)

    def _write_history(self) -> None:
        if self.role.is_chief:
            write_json(self.history_path, {"evals": self.state.history,
                                           "train": self.state.train_curve})

    # -- validate ------------------------------------------------------------------------

    def valid_loss(self) -> float:
        total, count = 0.0, 0.0
        vp = self.valid_pairs
        for idx in token_batches(vp.src_lengths, vp.tgt_lengths, self.tc.max_tokens, shuffle=False):
            (s, ti), to = make_batch(vp, idx)
            ls, n = self.eval_step(s, ti, to)
            total, count = total + float(ls), count + float(n)
        return total / max(count, 1.0)

    def valid_bleu(self) -> float:
        import sacrebleu

        from nmt_kd.translate import Translator

        n = self.tc.eval_sentences or len(self.valid_src)
        # whole lines (decode.split_sentences is evaluation's: it never changes training)
        decode = dataclasses.replace(self.cfg.decode, split_sentences=None)
        hyps = Translator(self.model, self.tokenizer, decode).translate(
            self.valid_src[:n], beam=1, batch_size=self.tc.eval_batch_size).hypotheses
        return sacrebleu.corpus_bleu(hyps, [self.valid_tgt[:n]]).score

    def _valid_record(self, vl: float) -> dict:
        s = self.state
        record = {"step": s.step, "epoch": int(s.epoch.numpy()), "valid_loss": round(vl, 4),
                  "elapsed_s": round(self.elapsed(), 1)}
        if s.recent_train_loss is not None:
            record["train_loss"] = round(s.recent_train_loss, 4)
        return record

    def validate(self) -> bool:
        """Validate, log, keep the best checkpoint; True when patience is exhausted."""
        tc, s = self.tc, self.state
        vl = self.valid_loss()
        record = self._valid_record(vl)
        if tc.early_stop_metric == "bleu":
            record["valid_bleu"] = round(self.valid_bleu(), 2)
        improved = self._track_best(record["valid_bleu"] if tc.early_stop_metric == "bleu" else vl)
        record["best"] = float(s.best.numpy())
        s.history.append(record)
        with self.writer.as_default(step=s.step):
            tf.summary.scalar("valid/loss", vl)
            if "valid_bleu" in record:
                tf.summary.scalar("valid/bleu", record["valid_bleu"])
        self.progress.newline()
        self.log(f"eval step {s.step}: valid loss {vl:.4f}"
                 + (f", valid BLEU (greedy) {record['valid_bleu']:.2f}" if "valid_bleu" in record else "")
                 + (" (best)" if improved else f" (no improvement {int(s.bad_evals.numpy())}x)"))
        self.save_checkpoint()
        if improved:
            s.elapsed.assign(self.elapsed())
            self.checkpoints.save_best(s.step)
        self._write_history()
        return tc.patience > 0 and int(s.bad_evals.numpy()) >= tc.patience

    def _track_best(self, metric: float) -> bool:
        """Update the best score and the evaluations without improvement; True if improved."""
        s, higher_better = self.state, self.tc.early_stop_metric == "bleu"
        best = float(s.best.numpy())
        improved = math.isnan(best) or (metric > best if higher_better else metric < best)
        if improved:
            s.best.assign(metric)
            s.bad_evals.assign(0)
        else:
            s.bad_evals.assign_add(1)
        return improved

    # -- finish --------------------------------------------------------------------------

    def finish(self, stopped: str) -> TrainResult:
        """The last validation and checkpoint, the final weights, the model directory."""
        s = self.state
        self.progress.newline()
        if not s.history or s.history[-1]["step"] != s.step:
            if self.tc.eval_every:
                self.validate()
            else:
                self.save_checkpoint()
                # no periodic validation: one validation loss at the end, for the report's curves
                s.history.append(self._valid_record(self.valid_loss()))
        self._write_history()
        self.writer.flush()
        final_from = self._final_weights()
        self._save_model_dir(stopped, final_from)
        self.log(f"train {self.name}: stopped ({stopped}) at step {s.step}; saved {final_from} "
                 f"to {self.out / 'model.keras'}")
        return TrainResult(self.out, s.step, int(s.epoch.numpy()), s.best_value(), s.history,
                           stopped, self.model, s.losses)

    def _final_weights(self) -> str:
        """Load the final weights into the model (the average of the last checkpoints, the
        best checkpoint, or the last weights as they are); where they came from."""
        tc, last = self.tc, self.checkpoints.last
        if tc.average_last > 1 and len(last.checkpoints) > 1:
            paths = last.checkpoints[-tc.average_last:]
            average_checkpoints(self.model, paths)
            return f"average of last {len(paths)} checkpoints"
        if tc.eval_every:
            best = self.checkpoints.restore_best()
            if best:
                return f"best checkpoint ({best})"
        return "last"

    def _save_model_dir(self, stopped: str, final_from: str) -> None:
        tc, s = self.tc, self.state
        info = dict(self.meta or {}, model_type=self.arch, kd=self.kd, name=self.name, steps=s.step,
                    epochs=int(s.epoch.numpy()), train_seconds=round(self.elapsed(), 1),
                    stopped_because=stopped, final_weights=final_from,
                    skipped_nan_updates=s.skipped_nan, precision=tc.precision, seed=tc.seed,
                    train_data_sha256=data_sha256(self.run_dir, ("train",), self.distilled),
                    heldout_sha256=data_sha256(self.run_dir, ("valid", "test")))
        keras.mixed_precision.set_global_policy("float32")
        if self.role.is_chief:
            save_model_dir(self.model, self.out, self.tokenizer, info)


def train_model(
    cfg: Config, run_dir: str | Path, arch: str = "teacher", name: str | None = None,
    kd: str = "none", resume: bool = False, log: Callable[[str], None] = print,
    loss_fn: LossFn | None = None, distilled_data: bool = False, meta: dict | None = None,
    teacher_dir: str | Path | None = None, input_path: str = "shards",
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train `arch` on the run's data; the final model goes to RUN/<name>/.

    `kd`: a mode of `nmt_kd.training.objectives.KD_MODES` (none | word | seq | seq+word).
    Sequence-level modes read RUN/distill/train.*; word modes use the teacher in `teacher_dir`
    (default RUN/teacher), online on each batch or, with `distill.teacher_mode: offline`,
    through a stored top-k (`nmt_kd.topk`). `loss_fn(logits, tgt_out, src, tgt_in) ->
    (loss_sum, n_tokens)` replaces the loss (tests inject faults with it). `input_path`: see
    `nmt_kd.training.data.training_stream`. `init_from`: a trained model directory whose
    weights the model starts from (continued training, e.g. a teacher on more data or a
    longer budget); ignored when a checkpoint is resumed.
    """
    tc = train_section(cfg, arch)
    # created first: MultiWorkerMirroredStrategy must exist before any other TF op runs
    strategy = make_strategy(tc.strategy)
    role = strategy_role(strategy)
    if not role.is_chief:
        log = lambda _m: None  # noqa: E731  (the chief reports for the job)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        return Trainer(cfg, Path(run_dir), arch, name or arch, kd, resume, log, loss_fn,
                       distilled_data, meta, teacher_dir, strategy, role, input_path, init_from).run()
