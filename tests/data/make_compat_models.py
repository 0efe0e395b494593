"""Make tests/data/compat_v1/: tiny models of every architecture, saved as the package saves
them, and what they translate, so that `tests/test_compat.py` can check that later code
still loads today's files (model directories, config.yaml, a training checkpoint).

Run once, with the code whose on-disk formats are to be guarded (it was run at the commit
that added it), from the repository root:

    python tests/data/make_compat_models.py [OUT]        # default OUT: tests/data/compat_v1

OUT/run/ is a run directory as `nmt-kd prepare` + `nmt-kd train` leave it (data/, vocab/,
one directory per model with model.keras, spm.model, model.json, config.yaml,
train_history.json); `checkpoint_model`'s directory keeps its checkpoints/ for the resume
check. TensorBoard logs/ and the encoded/ shard cache are left out (nothing reads them back
as a format; the cache is rebuilt). The SentencePiece model, the same bytes in vocab/ and in
every model directory, is stored once as OUT/spm.model (the test copies it back into place). OUT/expected.json: each model's greedy translation of
`lines`, through the `nmt-kd translate` command, and a few teacher-forced logits.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from conftest import toy_pairs, write_pair_files  # noqa: E402

LINES = ["The dog runs.", "A small child plays with a red ball.", "The woman sits in the house."]
TRAIN = {"max_tokens": 256, "max_len": 32, "max_steps": 150, "eval_every": 0, "checkpoint_every": 0,
         "keep_checkpoints": 1, "log_every": 10, "warmup_steps": 5, "learning_rate": 0.01}
TREE = {
    "data": {"source": "files", "valid_size": 20, "test_size": 20},
    "vocab": {"size": 60},
    "model": {"max_positions": 64,
              "teacher": {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "heads": 2,
                          "ff_dim": 32, "dropout": 0.0},
              "student_rnn": {"embed_dim": 8, "hidden": 16, "dropout": 0.0},
              "student_cnn": {"embed_dim": 8, "hidden": 16, "encoder_layers": 1,
                              "decoder_layers": 1, "dropout": 0.0}},
    "train": TRAIN,
    "student_train": TRAIN,
    "decode": {"max_len_cap": 32, "batch_size": 8, "beam": 1},
}
# model directory name -> (architecture, model-config overrides)
MODELS = {
    "teacher": ("teacher", {}),
    "rnn_gru": ("student_rnn", {"cell": "gru", "attention": "luong"}),
    "rnn_lstm": ("student_rnn", {"cell": "lstm", "attention": "bahdanau"}),
    "cnn": ("student_cnn", {}),
}
CHECKPOINT_MODEL = "rnn_gru"
DECODE_SET = ["--set", "decode.max_len_cap=32", "--set", "decode.batch_size=8"]


def logits_probe(model_dir: Path) -> list[list[float]]:
    """Teacher-forced logits of a fixed batch (first 6 entries of each position), 6 places."""
    import numpy as np

    from nmt_kd.models.persistence import load_model_dir

    model, _, _ = load_model_dir(model_dir)
    src = np.array([[5, 9, 14, 3], [7, 11, 3, 0]], np.int32)
    tgt = np.array([[2, 6, 13], [2, 8, 0]], np.int32)
    out = np.asarray(model((src, tgt), training=False))
    return [[round(float(x), 6) for x in row[:6]] for row in out.reshape(-1, out.shape[-1])]


def main(out: Path) -> None:
    from nmt_kd.cli import main as cli
    from nmt_kd.config import config_from_dict
    from nmt_kd.data.prepare import prepare_data
    from nmt_kd.tokenizer import build_vocab
    from nmt_kd.train import train_model

    quiet = lambda _m: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src, tgt = write_pair_files(tmp / "raw", toy_pairs(240, seed=7))
        tree = copy.deepcopy(TREE)
        tree["data"].update(train_src=str(src), train_tgt=str(tgt))
        run = tmp / "run"
        cfg = config_from_dict(tree)
        prepare_data(cfg, run, log=quiet)
        build_vocab(cfg.vocab, run, log=quiet)
        for name, (arch, overrides) in MODELS.items():
            t = copy.deepcopy(tree)
            t["model"][arch].update(overrides)
            train_model(config_from_dict(t), run, arch, name=name, log=quiet)
        shutil.rmtree(run / "encoded", ignore_errors=True)
        for name in MODELS:
            shutil.rmtree(run / name / "logs", ignore_errors=True)
            if name != CHECKPOINT_MODEL:
                shutil.rmtree(run / name / "checkpoints", ignore_errors=True)
        (tmp / "lines.txt").write_text("".join(x + "\n" for x in LINES), encoding="utf-8")
        expected = {"lines": LINES, "decode_set": DECODE_SET, "checkpoint_model": CHECKPOINT_MODEL,
                    "checkpoint_steps": TRAIN["max_steps"], "models": {}}
        for name, (arch, overrides) in MODELS.items():
            hyp = tmp / f"{name}.hyp"
            rc = cli(["translate", "--model", str(run / name), "--input", str(tmp / "lines.txt"),
                      "--output", str(hyp), "--beam", "1", *DECODE_SET])
            assert rc == 0, rc
            expected["models"][name] = {
                "arch": arch, "overrides": overrides,
                "translations": hyp.read_text(encoding="utf-8").splitlines(),
                "logits": logits_probe(run / name)}
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        shutil.copytree(run, out / "run")
        # one spm.model for all (a 240 kB file, the same bytes in vocab/ and every model
        # directory): `tests/test_compat.py` puts the copies back (see `materialize`)
        copies = [out / "run" / "vocab" / "spm.model"] + [out / "run" / n / "spm.model" for n in MODELS]
        assert len({c.read_bytes() for c in copies}) == 1
        shutil.copyfile(copies[0], out / "spm.model")
        for c in copies:
            c.unlink()
        (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "compat_v1")
