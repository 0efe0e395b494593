"""Training on `tf.distribute`: the strategy named in the config, and who writes what.

`train.strategy` (or `student_train.strategy`):

* `default`: one device, no strategy (what every single-machine run uses);
* `mirrored`: `MirroredStrategy` over the host's GPUs, or over its logical CPU devices
  when it has no GPU (tests use two logical CPUs);
* `multi_worker`: `MultiWorkerMirroredStrategy`; the workers and this process's index come
  from the `TF_CONFIG` environment variable (see docs/distributed.md);
* `tpu`: `TPUStrategy` on the TPU named by `TPU_NAME` (or the local one).

The config's `max_tokens` is the GLOBAL batch: every worker reads the same deterministic
batch stream and each replica takes every N-th row of the batch (`replica_rows`); the loss
is normalised by the token count of the whole global batch and gradients are summed across
replicas before clipping, so a step means the same update under every strategy, and the
learning-rate schedule (a function of the step) is unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from nmt_kd.errors import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


@dataclass
class Role:
    """This process's place in a multi-worker job (chief writes checkpoints and outputs)."""

    task_index: int = 0
    num_workers: int = 1

    @property
    def is_chief(self) -> bool:
        return self.task_index == 0


def tf_config_role() -> Role:
    """The worker index and count from `TF_CONFIG` (a single worker when it is unset)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return Role()
    try:
        conf = json.loads(raw)
        workers = conf.get("cluster", {}).get("worker", [])
        task = conf.get("task", {})
    except (json.JSONDecodeError, AttributeError) as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON of the expected shape: {e}") from None
    chief = len(conf.get("cluster", {}).get("chief", []))
    if task.get("type") not in ("worker", "chief"):
        raise ConfigError(f"TF_CONFIG task type must be 'worker' or 'chief', got {task.get('type')!r}")
    index = int(task.get("index", 0)) + (chief if task.get("type") == "worker" else 0)
    return Role(index, len(workers) + chief)


def make_strategy(name: str):
    """The `tf.distribute` strategy for `name`, or None for `default`."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "default":
        return None
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError("strategy multi_worker needs the TF_CONFIG environment variable "
                              "(cluster and task); see docs/distributed.md")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def strategy_role(strategy) -> Role:
    if strategy is None:
        return Role()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type is not None and os.environ.get("TF_CONFIG"):
        return tf_config_role()
    return Role()


def free_local_ports(n: int) -> list[int]:
    """`n` TCP ports free on 127.0.0.1 right now (for local multi-worker jobs and tests)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def replica_rows(x, replica: int, replicas: int):
    """Rows `replica`, `replica + replicas`, ... of a batch: each replica's share."""
    return x[replica::replicas]
