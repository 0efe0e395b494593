import copy
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import checkpoint_state_step, clone_run, wait_until

from nmt_kd.config import config_from_dict
from nmt_kd.errors import UserError
from nmt_kd.losses import label_smoothed_ce
from nmt_kd.models.persistence import load_model_dir
from nmt_kd.train import InverseSqrtSchedule, TrainingDiverged, train_model


def fresh_run(tiny_run, tmp_path):
    return clone_run(tiny_run, tmp_path)


def quiet(_m):
    pass


def test_schedule_warms_up_then_decays():
    s = InverseSqrtSchedule(1e-3, 100)
    lrs = [float(s(i)) for i in (0, 49, 99, 399, 9999)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[1] == pytest.approx(5e-4)
    assert lrs[2] == pytest.approx(1e-3) and lrs[3] == pytest.approx(5e-4)
    assert lrs[4] == pytest.approx(1e-4)


def test_train_saves_model_history_and_learns(tiny_run, tmp_path):
    run, tree = fresh_run(tiny_run, tmp_path)
    tree["train"].update(max_steps=30, eval_every=15)
    result = train_model(config_from_dict(tree), run, "teacher", log=quiet)
    assert result.steps == 30 and result.stopped_because == "max_steps"
    model, tok, meta = load_model_dir(run / "teacher")
    assert meta["model_type"] == "teacher" and meta["kd"] == "none" and meta["steps"] == 30
    assert meta["vocab_size"] == tok.vocab_size and meta["params"] == model.count_params()
    saved = json.loads((run / "teacher/train_history.json").read_text())
    hist = saved["evals"]
    assert [h["step"] for h in hist] == [15, 30]
    assert [h["step"] for h in saved["train"]] == list(range(3, 31, 3))  # every log_every steps
    assert saved["train"][-1]["loss"] < saved["train"][0]["loss"]
    assert hist[1]["valid_loss"] < hist[0]["valid_loss"]  # it learns
    assert (run / "teacher/config.yaml").exists() and list((run / "teacher/logs").iterdir())
    # the saved weights are the best checkpoint's (lowest loss here means best BLEU may tie)
    assert meta["final_weights"].startswith("best checkpoint")


def test_without_periodic_validation_the_history_still_has_curves(tiny_run, tmp_path):
    run, tree = fresh_run(tiny_run, tmp_path)
    tree["train"].update(max_steps=9, eval_every=0)
    train_model(config_from_dict(tree), run, "teacher", log=quiet)
    saved = json.loads((run / "teacher/train_history.json").read_text())
    assert [h["step"] for h in saved["train"]] == [3, 6, 9]
    (final,) = saved["evals"]  # one validation loss at the end
    assert final["step"] == 9 and math.isfinite(final["valid_loss"]) and "train_loss" in final


def test_existing_checkpoints_need_resume(tiny_run, tmp_path):
    run, tree = fresh_run(tiny_run, tmp_path)
    tree["train"].update(max_steps=3, eval_every=0)
    train_model(config_from_dict(tree), run, "teacher", log=quiet)
    with pytest.raises(UserError, match="--resume"):
        train_model(config_from_dict(tree), run, "teacher", log=quiet)
    tree["train"]["max_steps"] = 6
    assert train_model(config_from_dict(tree), run, "teacher", resume=True, log=quiet).steps == 6


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tiny_run, tmp_path):
    run, tree = fresh_run(tiny_run, tmp_path)
    tree["train"].update(max_steps=20, eval_every=0, checkpoint_every=3)
    calls = tf.Variable(0)

    def poisoned(logits, tgt_out, src, tgt_in):  # the 8th step's loss is NaN
        calls.assign_add(1)
        loss, n = label_smoothed_ce(logits, tgt_out, 0.1)
        return tf.where(calls == 8, tf.constant(np.nan, tf.float32), loss), n

    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 8.*last good checkpoint"):
        train_model(config_from_dict(tree), run, "teacher", log=quiet, loss_fn=poisoned)
    ckpt = tf.train.latest_checkpoint(str(run / "teacher/checkpoints"))
    assert ckpt.endswith("ckpt-6")
    reader = tf.train.load_checkpoint(ckpt)
    for name in reader.get_variable_to_shape_map():
        if name.startswith("model/") and reader.get_variable_to_dtype_map()[name].is_floating:
            assert np.isfinite(reader.get_tensor(name)).all()


def test_nan_loss_skip_mode_counts_and_continues(tiny_run, tmp_path):
    run, tree = fresh_run(tiny_run, tmp_path)
    tree["train"].update(max_steps=10, eval_every=0, on_nan="skip")
    calls = tf.Variable(0)

    def poisoned(logits, tgt_out, src, tgt_in):
        calls.assign_add(1)
        loss, n = label_smoothed_ce(logits, tgt_out, 0.1)
        return tf.where(calls % 4 == 0, tf.constant(np.inf, tf.float32), loss), n

    r = train_model(config_from_dict(tree), run, "teacher", log=quiet, loss_fn=poisoned)
    assert r.steps == 10
    _, _, meta = load_model_dir(run / "teacher")
    assert meta["skipped_nan_updates"] == 3  # calls 4, 8, 12 of 13


def test_killed_run_resumes_from_last_checkpoint(tiny_run, tmp_path):
    run, tree = fresh_run(tiny_run, tmp_path)
    # far more steps than it will live for: it is killed once step 10 is checkpointed
    tree["train"].update(max_steps=5000, eval_every=0, checkpoint_every=5, keep_checkpoints=2)
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tree))
    cmd = [sys.executable, "-m", "nmt_kd.cli", "train", "--config", str(cfg_path), "--run-dir", str(run)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1")
    log_path = tmp_path / "killed.log"  # a file, not a pipe: a full pipe would stall training
    ckpt_dir = run / "teacher/checkpoints"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(lambda: (checkpoint_state_step(ckpt_dir) or 0) >= 10, proc, log_path,
                       "a checkpoint of step >= 10 in the state file")
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    killed_log = log_path.read_text(errors="replace")[-3000:]
    assert proc.returncode == -signal.SIGKILL, f"it ended by itself ({proc.returncode}):\n{killed_log}"
    assert not (run / "teacher/model.keras").exists(), killed_log  # it really died mid-run
    last = checkpoint_state_step(ckpt_dir)
    r = subprocess.run(cmd + ["--resume", "--set", "train.max_steps=400"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, f"killed run:\n{killed_log}\nresumed run:\n{r.stderr[-3000:]}"
    assert f"resumed from {ckpt_dir}/ckpt-{last} at step {last}," in r.stdout, \
        f"the newest checkpoint in the state file was ckpt-{last}:\n{r.stdout[-2000:]}"
    assert 10 <= last < 400
    meta = json.loads((run / "teacher/model.json").read_text())
    assert meta["steps"] == 400
    model, tok, _ = load_model_dir(run / "teacher")
    src = np.array([[5, 6, 7, 3]], np.int32)
    logits = model((src, np.array([[2, 5, 6]], np.int32)), training=False)
    assert np.isfinite(logits.numpy()).all()
    assert math.isfinite(meta["train_seconds"])


def test_early_stopping_on_validation_loss(tiny_run, tmp_path):
    run, tree = fresh_run(tiny_run, tmp_path)
    # a learning rate of zero can never improve the first validation loss
    tree["train"].update(max_steps=50, eval_every=4, early_stop_metric="loss", patience=2,
                         learning_rate=0.0)
    r = train_model(config_from_dict(tree), run, "teacher", log=quiet)
    assert r.stopped_because == "early_stop" and r.steps == 12
    assert [h["step"] for h in r.history] == [4, 8, 12]


def test_final_model_is_the_average_of_the_last_checkpoints(tiny_run, tmp_path):
    run, tree = fresh_run(tiny_run, tmp_path)
    tree["train"].update(max_steps=9, eval_every=0, checkpoint_every=3, keep_checkpoints=3,
                         average_last=2)
    train_model(config_from_dict(tree), run, "teacher", log=quiet)
    model, _, meta = load_model_dir(run / "teacher")
    assert meta["final_weights"] == "average of last 2 checkpoints"
    ckpts = sorted((run / "teacher/checkpoints").glob("ckpt-*.index"))
    assert [p.name for p in ckpts] == ["ckpt-3.index", "ckpt-6.index", "ckpt-9.index"]
    vocab = model.get_config()["vocab_size"]
    emb = [i for i, v in enumerate(model.weights) if len(v.shape) == 2 and v.shape[0] == vocab]
    assert len(emb) == 1  # the one tied embedding matrix
    key = f"model_weights/{emb[0]}/.ATTRIBUTES/VARIABLE_VALUE"
    readers = [tf.train.load_checkpoint(str(run / f"teacher/checkpoints/ckpt-{s}")) for s in (6, 9)]
    expected = (readers[0].get_tensor(key) + readers[1].get_tensor(key)) / 2
    np.testing.assert_allclose(model.weights[emb[0]].numpy(), expected, rtol=1e-6, atol=1e-7)


def test_average_command_matches_in_training_average(tiny_run, tmp_path):
    from nmt_kd.train import average_model_dir

    run, tree = fresh_run(tiny_run, tmp_path)
    tree["train"].update(max_steps=9, eval_every=0, checkpoint_every=3, keep_checkpoints=3,
                         average_last=3)
    train_model(config_from_dict(tree), run, "teacher", log=quiet)
    inside, _, _ = load_model_dir(run / "teacher")
    out = average_model_dir(config_from_dict(tree), run, "teacher", 3, "teacher_avg", log=quiet)
    after, _, meta = load_model_dir(out)
    assert "ckpt-3, ckpt-6, ckpt-9" in meta["final_weights"]
    for a, b in zip(inside.get_weights(), after.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(UserError, match="averaging needs two or more"):
        average_model_dir(config_from_dict(tree), run, "teacher", 1, "x", log=quiet)


def test_checkpoint_holds_every_weight_and_optimizer_variable(tiny_run, tmp_path):
    import keras

    from nmt_kd.models.registry import build_model
    from nmt_kd.train import make_optimizer, training_checkpoint

    run, tree = fresh_run(tiny_run, tmp_path)
    tree["train"].update(max_steps=5, eval_every=0, checkpoint_every=5)
    cfg = config_from_dict(tree)
    train_model(cfg, run, "teacher", log=quiet)
    saved, tok, _ = load_model_dir(run / "teacher")
    keras.utils.set_random_seed(123)  # a different initialisation that the restore must overwrite
    fresh = build_model("teacher", cfg.model, tok.vocab_size)
    opt = make_optimizer(cfg.train)
    opt.build(fresh.trainable_variables)
    status = training_checkpoint(fresh, opt).restore(tf.train.latest_checkpoint(str(run / "teacher/checkpoints")))
    status.assert_existing_objects_matched()
    assert int(opt.iterations.numpy()) == 5
    assert len(fresh.weights) == len(saved.weights) > 10
    for a, b in zip(fresh.weights, saved.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(float(np.abs(v.numpy()).sum()) > 0 for v in opt.variables if "momentum" in v.path)


def test_resumed_run_ends_where_an_uninterrupted_run_ends(tiny_run, tmp_path):
    run_a, tree = fresh_run(tiny_run, tmp_path / "a")
    tree["train"].update(max_steps=8, eval_every=0, checkpoint_every=4)
    train_model(config_from_dict(tree), run_a, "teacher", log=quiet)
    run_b, _ = fresh_run(tiny_run, tmp_path / "b")
    tree_b = copy.deepcopy(tree)
    tree_b["train"]["max_steps"] = 4
    train_model(config_from_dict(tree_b), run_b, "teacher", log=quiet)
    (run_b / "teacher/model.keras").unlink()
    train_model(config_from_dict(tree), run_b, "teacher", resume=True, log=quiet)
    a, _, _ = load_model_dir(run_a / "teacher")
    b, _, _ = load_model_dir(run_b / "teacher")
    for va, vb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(va.numpy(), vb.numpy(), rtol=1e-4, atol=1e-5)


def test_continued_training_starts_from_a_trained_models_weights(tiny_run, tmp_path):
    """--init-from: a new run starts from a trained model's weights (its first validation is
    that model's, not a fresh one's) with the optimizer at step 0; a model of another shape
    or tokenizer is refused with its directory named; a resumed checkpoint takes precedence."""
    run, tree = fresh_run(tiny_run, tmp_path)
    tree["train"].update(max_steps=40, eval_every=0)
    first = train_model(config_from_dict(tree), run, "teacher", name="first", log=quiet)
    trained = first.history[-1]["valid_loss"]
    tree["train"].update(max_steps=1, eval_every=1, learning_rate=1e-9, warmup_steps=1)
    cont = train_model(config_from_dict(tree), run, "teacher", name="cont", init_from=run / "first",
                       log=quiet)
    fresh = train_model(config_from_dict(tree), run, "teacher", name="fresh", log=quiet)
    # one update at lr 1e-9 changes nothing: the continued run validates as the trained model
    assert cont.history[0]["valid_loss"] == pytest.approx(trained, rel=1e-3)
    assert fresh.history[0]["valid_loss"] > trained + 0.5
    meta = json.loads((run / "cont/model.json").read_text())
    assert meta["init_from"] == str(run / "first") and meta["init_from_steps"] == 40
    assert meta["steps"] == 1  # its own count: the optimizer started at step 0
    # resumed: the checkpoint wins, not the init model (an untrained one here would be worse)
    tree["train"]["max_steps"] = 2
    again = train_model(config_from_dict(tree), run, "teacher", name="cont", resume=True,
                        init_from=run / "fresh", log=quiet)
    assert again.steps == 2 and again.history[-1]["valid_loss"] == pytest.approx(trained, rel=1e-2)
    bad = copy.deepcopy(tree)
    bad["model"]["teacher"]["ff_dim"] = bad["model"]["teacher"].get("ff_dim", 64) * 2
    with pytest.raises(UserError, match="first: its weights do not fit"):
        train_model(config_from_dict(bad), run, "teacher", name="bad", init_from=run / "first", log=quiet)
    other = tmp_path / "other"
    other.mkdir()
    for f in ("model.keras", "model.json"):
        (other / f).write_bytes((run / "first" / f).read_bytes())
    from sentencepiece import sentencepiece_model_pb2 as spm_pb  # another tokenizer, same size:
    proto = spm_pb.ModelProto()                                  # one piece's score changed
    proto.ParseFromString((run / "first/spm.model").read_bytes())
    proto.pieces[len(proto.pieces) // 2].score -= 1.0
    (other / "spm.model").write_bytes(proto.SerializeToString())
    with pytest.raises(UserError, match="other/spm.model: not this run's tokenizer"):
        train_model(config_from_dict(tree), run, "teacher", name="other", init_from=other, log=quiet)
