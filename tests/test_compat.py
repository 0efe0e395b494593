"""On-disk formats: model directories and a training checkpoint written by an earlier version
of the package (tests/data/compat_v1, made by tests/data/make_compat_models.py) still load,
translate exactly as they did then, and a run resumes from the checkpoint.

Never regenerate compat_v1 to make this test pass: a failure here means that files users
already have would stop working. A deliberate format change needs a new compat_vN next to
the old one, and a conversion or a clear error for the old files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

COMPAT = Path(__file__).resolve().parent / "data" / "compat_v1"
EXPECTED = json.loads((COMPAT / "expected.json").read_text(encoding="utf-8"))


def materialize(directory: Path) -> Path:
    """A private copy of compat_v1's run directory, with spm.model back in vocab/ and in every
    model directory (stored once in compat_v1 to keep the fixture small)."""
    run = directory / "run"
    shutil.copytree(COMPAT / "run", run)
    for d in [run / "vocab", *(run / name for name in EXPECTED["models"])]:
        shutil.copyfile(COMPAT / "spm.model", d / "spm.model")
    return run


@pytest.fixture(scope="module")
def compat_run(tmp_path_factory) -> Path:
    return materialize(tmp_path_factory.mktemp("compat"))


@pytest.mark.parametrize("name", list(EXPECTED["models"]))
def test_model_dir_loads_and_translates_as_recorded(compat_run, tmp_path, name):
    from nmt_kd.cli import main
    from nmt_kd.models.persistence import load_model_dir

    want = EXPECTED["models"][name]
    model_dir = compat_run / name
    meta = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
    assert meta["model_type"] == want["arch"]
    assert meta["tokenizer_sha256"] == hashlib.sha256((COMPAT / "spm.model").read_bytes()).hexdigest()

    lines = tmp_path / "lines.txt"
    lines.write_text("".join(x + "\n" for x in EXPECTED["lines"]), encoding="utf-8")
    hyp = tmp_path / "hyp.txt"
    assert main(["translate", "--model", str(model_dir), "--input", str(lines), "--output",
                 str(hyp), "--beam", "1", *EXPECTED["decode_set"]]) == 0
    assert hyp.read_text(encoding="utf-8").splitlines() == want["translations"]

    model, tokenizer, loaded_meta = load_model_dir(model_dir)
    assert loaded_meta["model_type"] == want["arch"]
    assert model.get_config()["vocab_size"] == tokenizer.vocab_size
    src = np.array([[5, 9, 14, 3], [7, 11, 3, 0]], np.int32)
    tgt = np.array([[2, 6, 13], [2, 8, 0]], np.int32)
    logits = np.asarray(model((src, tgt), training=False))
    got = logits.reshape(-1, logits.shape[-1])[:, :6]
    np.testing.assert_allclose(got, np.array(want["logits"]), atol=1e-4)


def test_training_resumes_from_the_recorded_checkpoint(tmp_path, capsys):
    from nmt_kd.cli import main

    run = materialize(tmp_path)
    name = EXPECTED["checkpoint_model"]
    steps = EXPECTED["checkpoint_steps"]
    arch = EXPECTED["models"][name]["arch"]
    assert main(["train", "--config", str(run / name / "config.yaml"), "--model", arch,
                 "--name", name, "--run-dir", str(run), "--resume",
                 "--set", f"student_train.max_steps={steps + 3}",
                 "--set", "student_train.log_every=1"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {run / name / 'checkpoints' / f'ckpt-{steps}'} at step {steps}" in out
    meta = json.loads((run / name / "model.json").read_text(encoding="utf-8"))
    assert meta["steps"] == steps + 3 and meta["model_type"] == arch
