"""Training checkpoints: what one holds, the last-K and best managers of a run, averaging.

RUN/<name>/checkpoints/ holds the last `keep_checkpoints` checkpoints and best/ the best one.
A checkpoint's keys: `model_weights` (every model weight, in the model's order),
`optimizer_variables`, and the training state (`epoch`, `batch`, `elapsed`, `best`,
`bad_evals`; `TrainState.checkpointed`); the step is the optimizer's iteration count.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

from nmt_kd.config import Config
from nmt_kd.errors import UserError
from nmt_kd.models.persistence import save_model_dir
from nmt_kd.models.registry import build_model
from nmt_kd.tokenizer import Tokenizer


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


def checkpoint_step(path: str) -> int:
    """The step a checkpoint was saved at: the number in its name (`ckpt-2500` -> 2500)."""
    return int(Path(path).name.rsplit("-", 1)[-1])


def average_model_dir(cfg: Config, run_dir: str | Path, name: str, last: int, out_name: str,
                      log: Callable[[str], None] = print, until: int | None = None) -> Path:
    """Average the last `last` checkpoints of RUN/<name> into a new model directory.

    `until`: only checkpoints saved at or before that step, so the average of a shorter run
    (whose checkpoints are the same under a step-independent learning-rate schedule) can be
    chosen on valid without training it again.
    """
    from nmt_kd.fileio import read_json

    run_dir = Path(run_dir)
    src = run_dir / name
    if not (src / "model.json").is_file():
        raise UserError(f"{src} has no model.json: its training has not finished (or it is not "
                        "a model directory); averaging reads the model's type from it")
    meta = read_json(src / "model.json")
    state = tf.train.get_checkpoint_state(str(src / "checkpoints"))
    paths = list(state.all_model_checkpoint_paths) if state else []
    if until is not None:
        paths = [p for p in paths if checkpoint_step(p) <= until]
    paths = paths[-last:]
    if len(paths) < 2:
        where = f" at or before step {until}" if until is not None else ""
        raise UserError(f"{src / 'checkpoints'} holds {len(paths)} checkpoint(s){where}; "
                        "averaging needs two or more")
    tokenizer = Tokenizer(src / "spm.model")
    keras.mixed_precision.set_global_policy("float32")
    model = build_model(meta["model_type"], cfg.model, tokenizer.vocab_size)
    average_checkpoints(model, paths)
    meta.update(final_weights=f"average of {len(paths)} checkpoints: "
                + ", ".join(Path(p).name for p in paths), name=out_name)
    out = save_model_dir(model, run_dir / out_name, tokenizer, meta)
    log(f"averaged {len(paths)} checkpoints of {src} into {out}")
    return out


class RunCheckpoints:
    """A run's last-K checkpoints (RUN/<name>/checkpoints/) and its best one (best/).

    Every worker restores from the chief's checkpoints (a shared file system); a non-chief
    worker takes part in each save (collective ops) but writes to a scratch directory.
    """

    def __init__(self, ckpt: tf.train.Checkpoint, ckpt_dir: Path, role, keep: int, step_counter):
        self.ckpt, self.dir = ckpt, ckpt_dir
        write_dir = (ckpt_dir if role.is_chief
                     else Path(tempfile.mkdtemp(prefix=f"nmt_kd_worker{role.task_index}_")))
        self.last = tf.train.CheckpointManager(ckpt, write_dir, max_to_keep=max(keep, 1),
                                               step_counter=step_counter)
        self.best = tf.train.CheckpointManager(ckpt, write_dir / "best", max_to_keep=1,
                                               step_counter=step_counter)

    def latest(self) -> str | None:
        return tf.train.latest_checkpoint(self.dir)

    def restore(self, path: str) -> None:
        self.ckpt.restore(path).assert_existing_objects_matched()

    def save(self, step: int) -> None:
        self.last.save(checkpoint_number=step)

    def save_best(self, step: int) -> None:
        self.best.save(checkpoint_number=step)

    def restore_best(self) -> str | None:
        """Restore the best checkpoint's weights (if there is one); its path."""
        path = self.best.latest_checkpoint
        if path:
            self.ckpt.restore(path).expect_partial()
        return path
