"""Compatibility module: training now lives in the package `nmt_kd.training`.

The names that callers (the CLI, the pipeline, benchmarks, scripts, tests) import from
`nmt_kd.train` are re-exported here unchanged.
"""

from nmt_kd.progress import TrainingProgress as Progress
from nmt_kd.training.checkpoints import average_checkpoints, average_model_dir, training_checkpoint
from nmt_kd.training.data import (
    INPUT_PATHS,
    data_sha256,
    epoch_batches,
    load_pairs,
    pair_files,
    training_stream,
)
from nmt_kd.training.kd import load_kd_teacher, online_word_kd_loss, topk_word_kd_loss
from nmt_kd.training.objectives import KD_MODES, LossFn
from nmt_kd.training.steps import (
    InverseSqrtSchedule,
    make_eval_step,
    make_optimizer,
    make_train_step,
    set_precision,
)
from nmt_kd.training.trainer import (
    Trainer,
    TrainingDiverged,
    TrainResult,
    TrainState,
    train_model,
    train_section,
)

__all__ = [
    "INPUT_PATHS", "KD_MODES", "InverseSqrtSchedule", "LossFn", "Progress", "TrainResult",
    "TrainState", "Trainer", "TrainingDiverged", "average_checkpoints", "average_model_dir",
    "data_sha256", "epoch_batches", "load_kd_teacher", "load_pairs", "make_eval_step",
    "make_optimizer", "make_train_step", "online_word_kd_loss", "pair_files", "set_precision",
    "topk_word_kd_loss", "train_model", "train_section", "training_checkpoint",
    "training_stream",
]
