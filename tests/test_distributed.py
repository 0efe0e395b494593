"""Training and distillation on tf.distribute: same updates as one device, sharded distill.

The multi-process tests start real worker processes on 127.0.0.1 (free ports), as a
two-host job would, with tiny models and a few steps.
"""

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import clone_run

from nmt_kd.config import config_from_dict
from nmt_kd.distributed import Role, free_local_ports, make_strategy, replica_rows, tf_config_role
from nmt_kd.errors import ConfigError

quiet = lambda _m: None  # noqa: E731
STEPS = 8


def test_tf_config_role(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tf_config_role() == Role(0, 1) and Role().is_chief
    conf = {"cluster": {"worker": ["h1:1", "h2:2", "h3:3"]}, "task": {"type": "worker", "index": 2}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(conf))
    role = tf_config_role()
    assert role == Role(2, 3) and not role.is_chief
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        tf_config_role()


def test_multi_worker_without_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        make_strategy("multi_worker")
    with pytest.raises(ConfigError, match="strategy"):
        config_from_dict({"train": {"strategy": "horovod"}})


def test_replica_rows_partition_the_batch():
    rows = np.arange(7)
    parts = [replica_rows(rows, r, 3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == rows.tolist()
    assert [len(p) for p in parts] == [3, 2, 2]


WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    args = json.load(open(sys.argv[1]))
    if args.get("logical_cpus"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args["logical_cpus"])
    from nmt_kd.config import config_from_dict
    from nmt_kd.losses import label_smoothed_ce
    from nmt_kd.train import train_model
    cfg = config_from_dict(args["tree"])
    rows, logs, loss_fn = [], [], None
    if args.get("record_rows"):  # the source rows each replica's loss saw, step by step
        eps = cfg.train.label_smoothing

        def record(replica, src):
            rows.append([int(replica.numpy()), src.numpy().tolist()])
            return np.int32(0)

        def loss_fn(logits, tgt_out, src, tgt_in):
            ctx = tf.distribute.get_replica_context()
            replica = tf.convert_to_tensor(ctx.replica_id_in_sync_group)
            with tf.control_dependencies([tf.py_function(record, [replica, src], tf.int32)]):
                loss, n = label_smoothed_ce(logits, tgt_out, eps)
                return tf.identity(loss), tf.identity(n)
    res = train_model(cfg, args["run"], args.get("arch", "teacher"),
                      name=args["name"], kd=args.get("kd", "none"), resume=args.get("resume", False),
                      teacher_dir=args.get("teacher_dir"), log=logs.append, loss_fn=loss_fn)
    np.savez(args["out"], *res.model.get_weights())
    copies = [[c.numpy() for c in getattr(getattr(v, "value", v), "values", [v])]
              for v in res.model.trainable_variables]
    json.dump({"losses": res.losses, "steps": res.steps, "rows": rows, "log": logs,
               "replica_copies": min(len(c) for c in copies),
               "replica_diff": max(float(np.abs(c[0] - x).max()) for c in copies for x in c)},
              open(args["out"] + ".json", "w"))
""")


def _replica_rows_seen(run, tree, record, replicas=2):
    """Check that replica r's loss saw exactly rows r, r + N, ... of each global batch."""
    from nmt_kd.dataset import BatchStream, encode_pairs
    from nmt_kd.tokenizer import Tokenizer
    from nmt_kd.train import load_pairs

    tc = config_from_dict(tree).train
    pairs = encode_pairs(Tokenizer(run / "vocab" / "spm.model"), *load_pairs(run, "train"),
                         tc.max_len)
    stream = BatchStream(pairs, tc.max_tokens, seed=tc.seed)
    batches = [src for (src, _), _ in stream.iter_numpy(0)][:STEPS]
    seen = {}
    for replica, src in record["rows"]:
        seen.setdefault(replica, []).append(src)
    return seen, {r: [b[r::replicas].tolist() for b in batches] for r in range(replicas)}


@pytest.fixture(scope="module")
def setup(tiny_run, tmp_path_factory):
    """The run directory, the config tree, and the single-device reference run."""
    from nmt_kd.train import train_model

    base, tree = clone_run(tiny_run, tmp_path_factory.mktemp("dist"))
    tree["train"].update(max_steps=STEPS, eval_every=0, checkpoint_every=4, log_every=1)
    ref = train_model(config_from_dict(tree), base, "teacher", name="single", log=quiet)
    assert ref.steps == STEPS and len(ref.losses) == STEPS
    return base, tree, ref


def _launch(tmp_path, run, tree, name, out, env=None, logical_cpus=0, **train_args):
    args = {"tree": tree, "run": str(run), "name": name, "out": str(out), "logical_cpus": logical_cpus,
            **train_args}
    arg_file = tmp_path / f"{out.name}.args.json"
    arg_file.write_text(json.dumps(args))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", **(env or {}))
    return subprocess.Popen([sys.executable, str(script), str(arg_file)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _result(proc, out):
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    weights = np.load(str(out) + ".npz")
    return [weights[k] for k in sorted(weights.files, key=lambda k: int(k.split("_")[1]))], \
        json.loads((out.parent / (out.name + ".json")).read_text())


def _assert_same_training(ref, weights, record):
    """Every step's loss matches the single-device run tightly; the weights closely.

    Weights get a looser bound: a parameter whose true gradient is zero (the attention key
    bias: softmax ignores a constant added to every score; the bias of a ReLU unit that is
    dead on the batch) receives float noise, and Adam turns any gradient, noise included,
    into a step of about the learning rate. So all but a handful of elements agree within
    2e-3 (learning rate 3e-3), and none by more than a step of the learning rate per step.
    """
    assert record["steps"] == STEPS
    np.testing.assert_allclose(record["losses"], ref.losses, rtol=2e-5)
    assert len(record["losses"]) == STEPS
    ref_weights = ref.model.get_weights()
    assert len(weights) == len(ref_weights)
    diffs = np.concatenate([np.abs(a - b).ravel()
                            for a, b in zip(weights, ref_weights, strict=True)])
    assert (diffs > 2e-3).sum() <= max(2, diffs.size // 2000), np.sort(diffs)[-10:]
    assert diffs.max() < STEPS * 3e-3, diffs.max()


def test_mirrored_over_two_logical_cpus_matches_one_device(setup, tmp_path):
    run, tree, ref = setup
    tree = copy.deepcopy(tree)
    tree["train"]["strategy"] = "mirrored"
    out = tmp_path / "mirrored"
    proc = _launch(tmp_path, run, tree, "mirrored", out, logical_cpus=2, record_rows=True)
    weights, record = _result(proc, out)
    _assert_same_training(ref, weights, record)
    assert (run / "mirrored" / "model.keras").is_file()
    # really two replicas, each with its own rows of every global batch, in sync at the end
    assert any("strategy mirrored, 2 replicas, 1 worker(s)" in m for m in record["log"]), record["log"]
    seen, want = _replica_rows_seen(run, tree, record)
    assert set(seen) == {0, 1} and seen == want
    assert record["replica_copies"] == 2 and record["replica_diff"] == 0.0


def test_online_word_kd_under_mirrored_matches_one_device(setup, tmp_path):
    from nmt_kd.train import train_model

    run, tree, _ = setup
    tree = copy.deepcopy(tree)
    tree["student_train"].update(max_steps=STEPS, eval_every=0, checkpoint_every=4, log_every=1)
    tree["distill"] = {"teacher_mode": "online", "alpha": 0.5, "temperature": 2.0}
    tree["model"]["student_rnn"]["dropout"] = 0.0  # replicas draw other dropout masks
    teacher = str(run / "single")
    ref = train_model(config_from_dict(tree), run, "student_rnn", name="kd_single", kd="word",
                      teacher_dir=teacher, log=quiet)
    tree["student_train"]["strategy"] = "mirrored"
    out = tmp_path / "kd_mirrored"
    proc = _launch(tmp_path, run, tree, "kd_mirrored", out, logical_cpus=2, arch="student_rnn",
                   kd="word", teacher_dir=teacher)
    weights, record = _result(proc, out)
    _assert_same_training(ref, weights, record)


def _free_ports(n):
    return free_local_ports(n)


def test_two_workers_end_identical_and_match_one_process(setup, tmp_path):
    run, tree, ref = setup
    tree = copy.deepcopy(tree)
    tree["train"]["strategy"] = "multi_worker"
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    # the second worker gets its own copy of the run directory: whatever it writes there
    # shows (on a shared file system the chief alone must write)
    other = tmp_path / "worker1_run"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("multi"))
    procs, outs = [], []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        outs.append(tmp_path / f"worker{index}")
        procs.append(_launch(tmp_path, (run, other)[index], tree, "multi", outs[-1],
                             env={"TF_CONFIG": json.dumps(tf_config)}, record_rows=True))
    results = [_result(p, o) for p, o in zip(procs, outs, strict=True)]
    (w0, r0), (w1, r1) = results
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)  # the workers hold one model
    assert r0["losses"] == r1["losses"]
    _assert_same_training(ref, w0, r0)
    # one replica per worker, two in sync; the chief reports, the other worker stays quiet
    assert any("strategy multi_worker, 2 replicas, 2 worker(s)" in m for m in r0["log"]), r0["log"]
    assert r1["log"] == []
    seen0, want = _replica_rows_seen(run, tree, r0)
    seen1, _ = _replica_rows_seen(run, tree, r1)
    assert seen0 == {0: want[0]} and seen1 == {1: want[1]}  # worker i is replica i
    # the chief alone wrote the model and the checkpoints
    assert (run / "multi" / "model.keras").is_file()
    assert sorted(p.name for p in (run / "multi" / "checkpoints").glob("ckpt-*.index")) == \
        ["ckpt-4.index", "ckpt-8.index"]
    written = [p.relative_to(other) for p in (other / "multi").rglob("*") if p.is_file()]
    assert written == [], written


def test_two_workers_resume_from_the_chiefs_checkpoint(setup, tmp_path):
    """Stopped at step 4 and resumed to 8 on both workers = one uninterrupted 8-step run."""
    run, tree, ref = setup
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]

    def job(steps, resume):
        t = copy.deepcopy(tree)
        t["train"].update(strategy="multi_worker", max_steps=steps)
        procs, outs = [], []
        for index in range(2):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            outs.append(tmp_path / f"w{index}_{steps}")
            procs.append(_launch(tmp_path, run, t, "multi_resume", outs[-1], resume=resume,
                                 env={"TF_CONFIG": json.dumps(tf_config)}))
        return [_result(p, o) for p, o in zip(procs, outs, strict=True)]

    first = job(4, False)
    assert first[0][1]["steps"] == 4
    (w0, r0), (w1, _) = job(STEPS, True)
    assert r0["steps"] == STEPS and len(r0["losses"]) == STEPS - 4  # continued, not restarted
    np.testing.assert_allclose(first[0][1]["losses"] + r0["losses"], ref.losses, rtol=2e-5)
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sharded_distill_on_two_worker_processes_equals_one_process(tiny_run, tmp_path):
    import yaml

    from nmt_kd.distill import distill_corpus
    from nmt_kd.fileio import read_lines
    from nmt_kd.train import train_model

    run, tree = tiny_run
    tree = copy.deepcopy(tree)
    tree["train"].update(max_steps=150, eval_every=0)
    tree["distill"] = {"shard_size": 100, "beam": 2}
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(run, one)
    cfg = config_from_dict(tree)
    train_model(cfg, one, "teacher", log=quiet)
    shutil.copytree(one, two)
    distill_corpus(cfg, one, log=quiet)

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tree))
    cmd = [sys.executable, "-m", "nmt_kd.cli", "distill", "--config", str(cfg_path), "--run-dir", str(two)]
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):  # the worker index and count come from TF_CONFIG
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CONFIG=json.dumps(tf_config))
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output[-3000:]
    shards = sorted((two / "distill" / "shards").iterdir())
    assert len(shards) == 6  # 540 lines in shards of 100, split over the two workers
    merged = subprocess.run(cmd + ["--merge-only"], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES="-1"))
    assert merged.returncode == 0, merged.stderr[-3000:]
    for side in ("src", "tgt"):
        assert read_lines(two / "distill" / f"train.{side}") == read_lines(one / "distill" / f"train.{side}")
    assert len(read_lines(two / "distill" / "train.src")) >= 500
