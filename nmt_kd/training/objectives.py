"""Training objectives, and the one table of KD modes.

An objective is a loss over a batch: `loss(logits, tgt_out, src, tgt_in, *extra) ->
(loss_sum, n_tokens)` (see `nmt_kd.losses`). Each is registered by name with
`register_objective`, as a factory `build(params, teacher)`; `Objective.teacher` says what it
needs from the teacher: nothing, the frozen teacher model run on each batch (`online`), or a
stored top-k of its distributions (`topk`: the step gets `(topk_ids, topk_logp)` as extra
inputs; `nmt_kd.topk`).

`KD_MODES` maps each `--kd` mode to the data it trains on (the gold corpus, RUN/data/train.*,
or the teacher's distilled corpus, RUN/distill/train.*) and its objective; the word-KD
objective is online or top-k as `distill.teacher_mode` says (`WORD_KD_OBJECTIVES`).

At load time this module imports only `nmt_kd.errors` (`nmt_kd.config` reads the modes from
it); the losses and TensorFlow are imported when an objective is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nmt_kd.errors import UserError

LossFn = Callable[..., tuple[Any, Any]]


@dataclass(frozen=True)
class ObjectiveParams:
    label_smoothing: float = 0.1
    alpha: float = 0.5  # the KD term's weight
    temperature: float = 1.0


@dataclass(frozen=True)
class Objective:
    name: str
    build: Callable[[ObjectiveParams, Any], LossFn]  # (params, teacher model or None)
    teacher: str | None = None  # None | "online" | "topk"


OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, teacher: str | None = None):
    """Register the decorated factory `build(params, teacher) -> loss` as objective `name`."""
    if teacher not in (None, "online", "topk"):
        raise ValueError(f"an objective's teacher is None, 'online' or 'topk', got {teacher!r}")

    def register(build):
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered already")
        OBJECTIVES[name] = Objective(name, build, teacher)
        return build

    return register


@register_objective("cross_entropy")
def cross_entropy(params: ObjectiveParams, teacher=None) -> LossFn:
    """Label-smoothed cross-entropy against the reference."""
    from nmt_kd.losses import label_smoothed_ce

    eps = params.label_smoothing

    def loss(logits, tgt_out, src, tgt_in):
        return label_smoothed_ce(logits, tgt_out, eps)

    return loss


@register_objective("word_kd_online", teacher="online")
def online_word_kd(params: ObjectiveParams, teacher) -> LossFn:
    """Word-level KD against the frozen teacher run on the same batch."""
    import tensorflow as tf

    from nmt_kd.losses import word_kd_loss

    p = params

    def loss(logits, tgt_out, src, tgt_in):
        teacher_logits = tf.stop_gradient(teacher((src, tgt_in), training=False))
        return word_kd_loss(logits, tgt_out, p.alpha, p.temperature, p.label_smoothing,
                            teacher_logits=teacher_logits)

    return loss


@register_objective("word_kd_topk", teacher="topk")
def topk_word_kd(params: ObjectiveParams, teacher=None) -> LossFn:
    """Word-level KD against stored top-k teacher distributions (extra step inputs)."""
    from nmt_kd.losses import word_kd_loss

    p = params

    def loss(logits, tgt_out, src, tgt_in, topk_ids, topk_logp):
        return word_kd_loss(logits, tgt_out, p.alpha, p.temperature, p.label_smoothing,
                            topk=(topk_ids, topk_logp))

    return loss


@dataclass(frozen=True)
class KDMode:
    data: str  # "gold": RUN/data/train.* | "distilled": RUN/distill/train.*
    objective: str  # a registered objective, or "word_kd" (see WORD_KD_OBJECTIVES)

    @property
    def distilled(self) -> bool:
        return self.data == "distilled"

    @property
    def word_kd(self) -> bool:
        return self.objective == "word_kd"


KD_MODES: dict[str, KDMode] = {
    "none": KDMode("gold", "cross_entropy"),
    "word": KDMode("gold", "word_kd"),
    "seq": KDMode("distilled", "cross_entropy"),
    "seq+word": KDMode("distilled", "word_kd"),
}

# the word-KD objective by distill.teacher_mode
WORD_KD_OBJECTIVES: dict[str, str] = {"online": "word_kd_online", "offline": "word_kd_topk"}


def kd_mode(kd: str) -> KDMode:
    if kd not in KD_MODES:
        raise UserError(f"KD mode must be one of {', '.join(KD_MODES)}, got {kd!r}")
    return KD_MODES[kd]


def objective_for(kd: str, teacher_mode: str = "online") -> Objective:
    """The registered objective that KD mode `kd` trains with."""
    name = kd_mode(kd).objective
    return OBJECTIVES[WORD_KD_OBJECTIVES[teacher_mode] if name == "word_kd" else name]
