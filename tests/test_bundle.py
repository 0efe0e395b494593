"""A model directory as one file: packed with float16 weights, unpacked only with the hash the
config names, and a pipeline that starts from it takes its tokenizer and does not train."""

import copy

import numpy as np
import pytest
from conftest import clone_run

from nmt_kd import bundle
from nmt_kd.config import config_from_dict
from nmt_kd.errors import UserError
from nmt_kd.fileio import read_json, sha256_file


@pytest.fixture(scope="module")
def teacher_bundle(tiny_run, tmp_path_factory):
    from nmt_kd.train import train_model

    run, tree = clone_run(tiny_run, tmp_path_factory.mktemp("bundle"))
    result = train_model(config_from_dict(tree), run, "teacher", log=lambda _m: None)
    path = run.parent / "teacher.nmtkd"
    return run, tree, result.model_dir, path, bundle.pack(result.model_dir, path)


def test_pack_then_unpack_gives_the_same_model_with_float16_weights(teacher_bundle, tmp_path):
    from nmt_kd.models.persistence import load_model_dir

    run, _tree, model_dir, path, digest = teacher_bundle
    assert digest == sha256_file(path)
    import zipfile

    params = read_json(model_dir / "model.json")["params"]
    stored = zipfile.ZipFile(path).getinfo("weights.npz").file_size
    assert 2 * params <= stored < 2 * params + 16_384  # two bytes per weight, plus npz headers
    out = tmp_path / "teacher"
    bundle.unpack(path, out, digest)
    (a, tok_a, _), (b, tok_b, meta) = load_model_dir(model_dir, "fp32"), load_model_dir(out, "fp32")
    assert tok_a.model_bytes() == tok_b.model_bytes()
    assert meta["init_sha256"] == digest and meta["model_type"] == "teacher"
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        assert wb.dtype == np.float32
        np.testing.assert_array_equal(wb, wa.astype(np.float16).astype(np.float32))
    src = np.array([[5, 9, 12, 3]], np.int32)
    tgt = np.array([[2, 7, 8]], np.int32)
    np.testing.assert_allclose(b((src, tgt), training=False), a((src, tgt), training=False), atol=2e-2)


def test_a_bundle_is_refused_without_its_hash_or_with_another(teacher_bundle, tmp_path):
    _run, _tree, _model_dir, path, digest = teacher_bundle
    with pytest.raises(UserError, match="needs train.init_sha256"):
        bundle.unpack(path, tmp_path / "a", None)
    damaged = tmp_path / "damaged.nmtkd"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"damaged.nmtkd: sha256 is .* but train.init_sha256 says {digest}"):
        bundle.unpack(damaged, tmp_path / "b", digest)
    assert not (tmp_path / "b").exists()
    (tmp_path / "junk.nmtkd").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a model bundle"):
        bundle.unpack(tmp_path / "junk.nmtkd", tmp_path / "c", sha256_file(tmp_path / "junk.nmtkd"))


def test_pipeline_starts_from_a_bundle_instead_of_training(teacher_bundle, tiny_run, tmp_path):
    from nmt_kd.pipeline import run_pipeline

    _run, _tree, model_dir, path, digest = teacher_bundle
    run, tree = clone_run(tiny_run, tmp_path)
    tree = copy.deepcopy(tree)
    tree["train"].update(init=str(path), init_sha256=digest)
    logs = []
    ran = run_pipeline(config_from_dict(tree), run, until="teacher", log=logs.append)
    assert ran == ["prepare", "vocab", "teacher"]
    assert any("trained with this run's valid and test splits held out" in m for m in logs)
    assert not any("WARNING" in m for m in logs)
    assert (run / "vocab/spm.model").read_bytes() == (model_dir / "spm.model").read_bytes()
    assert read_json(run / "teacher/model.json")["init_sha256"] == digest
    assert not (run / "teacher/checkpoints").exists()  # nothing was trained
    # another run (other training pairs, other test split): the teacher may have trained on
    # this test split; said, not hidden
    for split, line in (("train", "one more pair"), ("test", "a different test set")):
        for side in ("src", "tgt"):
            with open(run / f"data/{split}.{side}", "a", encoding="utf-8") as f:
                f.write(line + "\n")
    logs = []
    run_pipeline(config_from_dict(tree), run, until="teacher", force=("teacher",), log=logs.append)
    assert any("WARNING" in m and "not with this run's valid and test splits held out" in m for m in logs)
    # with lanes, a teacher stage taken from a bundle waits for the data: its held-out check
    # reads the splits (a lane that ran it before `prepare` finished warned falsely)
    from nmt_kd.pipeline import _producers, build_stages, stage_hash
    stages = build_stages(config_from_dict(tree), run, lambda _m: None)
    teacher = next(s for s in stages if s.name == "teacher")
    assert "prepare" in [s.name for s in _producers(teacher, stages)]
    assert stage_hash(teacher, run) == read_json(run / "teacher/done.json")["hash"]  # not hashed
    tree["train"]["init_sha256"] = "0" * 64
    with pytest.raises(UserError, match="sha256 is"):
        run_pipeline(config_from_dict(tree), run, until="teacher", log=lambda _m: None)


def test_pipeline_starts_two_teachers_and_their_ensemble_from_two_bundles(teacher_bundle, tiny_run, tmp_path):
    """train.init as a list: one bundle per pipeline.teacher_seeds entry, each unpacked into its
    own teacher directory; a count that does not match and bundles with different tokenizers
    are refused, naming the problem."""
    import shutil
    import zipfile

    from nmt_kd.pipeline import run_pipeline

    _run, _tree, model_dir, path, digest = teacher_bundle
    second = tmp_path / "second.nmtkd"
    shutil.copy(path, second)  # the same weights under another name: enough to check the wiring
    run, tree = clone_run(tiny_run, tmp_path)
    tree = copy.deepcopy(tree)
    tree.setdefault("pipeline", {}).update(teacher_seeds=[1, 2], kd_teacher="ensemble")
    tree["train"].update(init=[str(path), str(second)], init_sha256=[digest, sha256_file(second)])
    logs = []
    ran = run_pipeline(config_from_dict(tree), run, until="teacher", log=logs.append)
    assert ran == ["prepare", "vocab", "teacher", "teacher.seed2", "teacher_ensemble"]
    assert read_json(run / "teacher/model.json")["init_from"] == str(path)
    assert read_json(run / "teacher.seed2/model.json")["init_from"] == str(second)
    assert (run / "vocab/spm.model").read_bytes() == (model_dir / "spm.model").read_bytes()
    assert not (run / "teacher.seed2/checkpoints").exists()
    assert any(m.startswith("teacher.seed2: taken from") for m in logs)

    one = copy.deepcopy(tree)
    one["train"].update(init=str(path), init_sha256=digest)
    with pytest.raises(UserError, match=r"names 1 bundle\(s\), but the pipeline has 2 teacher"):
        run_pipeline(config_from_dict(one), tmp_path / "r1", log=lambda _m: None)
    from nmt_kd.errors import ConfigError
    with pytest.raises(ConfigError, match="must be a list of as many hashes"):
        config_from_dict({**tree, "train": {**tree["train"], "init_sha256": [digest]}})

    other = tmp_path / "other_tokenizer.nmtkd"  # same model, another SentencePiece model
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(other, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data + b"\n" if item.filename == "spm.model" else data)
    tree["train"].update(init=[str(path), str(other)], init_sha256=[digest, sha256_file(other)])
    run2, _ = clone_run(tiny_run, tmp_path / "r2")
    with pytest.raises(UserError, match="other_tokenizer.nmtkd: its SentencePiece model differs from that of"):
        run_pipeline(config_from_dict(tree), run2, until="teacher", log=lambda _m: None)
