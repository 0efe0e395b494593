"""The optimizer, its learning-rate schedule, and the compiled update (single device or
under a `tf.distribute` strategy)."""

from __future__ import annotations

import keras
import tensorflow as tf


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


def set_precision(precision: str) -> None:
    policy = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]
    keras.mixed_precision.set_global_policy(policy)


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


def make_eval_step(model):
    """The compiled validation loss of one batch: `(loss_sum, n_tokens)`, no label smoothing."""
    from nmt_kd.losses import label_smoothed_ce

    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[spec, spec, spec], reduce_retracing=True)
    def eval_step(src, tgt_in, tgt_out):
        logits = model((src, tgt_in), training=False)
        return label_smoothed_ce(logits, tgt_out, 0.0)

    return eval_step
