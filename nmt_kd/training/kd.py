"""The objective a run trains with, and the teacher side of word-level KD.

Word-KD modes use the teacher in `teacher_dir` (default: the config's KD teacher,
`nmt_kd.config.kd_teacher_dir`: RUN/teacher or RUN/teacher_ensemble): online, run frozen on
each batch, or, with `distill.teacher_mode: offline`, through a top-k store computed once
under RUN/distill/topk_<data>_k<k>_T<T>/ (`nmt_kd.topk`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nmt_kd.config import Config, kd_teacher_dir
from nmt_kd.errors import UserError
from nmt_kd.training.objectives import OBJECTIVES, LossFn, ObjectiveParams, objective_for


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


def kd_params(cfg: Config) -> ObjectiveParams:
    """Word-KD's settings: `distill.alpha`, `distill.temperature`, and the students'
    label smoothing (`student_train.label_smoothing`; word-KD trains students)."""
    dc = cfg.distill
    return ObjectiveParams(cfg.student_train.label_smoothing, dc.alpha, dc.temperature)


def online_word_kd_loss(cfg: Config, run_dir: str | Path, teacher_dir: str | Path) -> LossFn:
    """Word-level KD against the frozen teacher run on the same batch."""
    return OBJECTIVES["word_kd_online"].build(kd_params(cfg), load_kd_teacher(run_dir, teacher_dir))


def topk_word_kd_loss(cfg: Config) -> LossFn:
    """Word-level KD against stored top-k teacher distributions (extra step inputs)."""
    return OBJECTIVES["word_kd_topk"].build(kd_params(cfg), None)


def build_objective(cfg: Config, tc, kd: str, run_dir: Path, teacher_dir, pairs,
                    distilled: bool, log: Callable[[str], None] = print):
    """`(loss, top-k store or None)` for KD mode `kd` (`KD_MODES`); `pairs`: the encoded
    training pairs a top-k store is computed for."""
    objective = objective_for(kd, cfg.distill.teacher_mode)
    if objective.teacher is None:
        return objective.build(ObjectiveParams(tc.label_smoothing), None), None
    teacher_dir = Path(teacher_dir) if teacher_dir else kd_teacher_dir(cfg, run_dir)
    teacher = load_kd_teacher(run_dir, teacher_dir)
    if objective.teacher == "online":
        return objective.build(kd_params(cfg), teacher), None
    from nmt_kd.topk import compute_topk_store

    dc = cfg.distill
    data = "distill" if distilled else "data"
    store = compute_topk_store(
        teacher, pairs, run_dir / "distill" / f"topk_{data}_k{dc.top_k}_T{dc.temperature:g}",
        dc.top_k, dc.temperature, dc.shard_size, tc.max_tokens, log=log)
    del teacher
    return objective.build(kd_params(cfg), None), store
