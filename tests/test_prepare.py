import subprocess
import sys

import pytest
from conftest import toy_pairs, write_pair_files

from nmt_kd.config import config_from_dict
from nmt_kd.data.clean import normalize, word_ratio
from nmt_kd.data.prepare import prepare_data
from nmt_kd.errors import CorpusError
from nmt_kd.fileio import read_json, read_lines, sha256_file


def quiet(_msg):
    pass


def test_normalize():
    assert normalize("  Cafe\u0301\tau\r\x00lait \ufeff ") == "Café au lait"
    assert normalize("\u200fשלום\u200f") == "\u200fשלום\u200f"  # RTL marks are kept
    assert word_ratio("a", "a b") == 1.5


def test_single_corpus_split_is_deterministic_and_disjoint(tmp_path, toy_config_tree):
    cfg = config_from_dict(toy_config_tree)
    m1 = prepare_data(cfg, tmp_path / "r1", log=quiet)
    m2 = prepare_data(cfg, tmp_path / "r2", log=quiet)
    assert m1["counts"] == m2["counts"] and m1["hashes"] == m2["hashes"]
    assert m1["counts"]["valid"] == 40 and m1["counts"]["test"] == 40
    assert sum(m1["counts"].values()) == 600 - sum(m1["removed_from_train"].values())
    d = tmp_path / "r1" / "data"
    train, test = set(read_lines(d / "train.src")), set(read_lines(d / "test.src"))
    assert not train & test
    for split in ("train", "valid", "test"):  # line-aligned, and really each other's translation
        src, tgt = read_lines(d / f"{split}.src"), read_lines(d / f"{split}.tgt")
        assert len(src) == len(tgt) == m1["counts"][split]
        assert dict(toy_pairs(600)).get(src[0]) == tgt[0]
        assert m1["hashes"][f"{split}.src"] == sha256_file(d / f"{split}.src")
    tree = dict(toy_config_tree, data=dict(toy_config_tree["data"], split_seed=99))
    m3 = prepare_data(config_from_dict(tree), tmp_path / "r3", log=quiet)
    assert m3["hashes"]["test.src"] != m1["hashes"]["test.src"]
    assert (d / "config.yaml").exists()


def test_given_valid_test_are_never_filtered(tmp_path):
    pairs = toy_pairs(300)
    tr = write_pair_files(tmp_path, pairs[:200] + pairs[:5] + [("", "leer"), ("x " * 300, "y")], "train")
    # valid/test deliberately hold a duplicate, an empty target and a very long line.
    va = write_pair_files(tmp_path, pairs[200:250] + pairs[200:201] + [("nothing", "")], "valid")
    te = write_pair_files(tmp_path, pairs[250:300] + [("w " * 400, "z")], "test")
    cfg = config_from_dict({"data": {
        "train_src": str(tr[0]), "train_tgt": str(tr[1]), "valid_src": str(va[0]),
        "valid_tgt": str(va[1]), "test_src": str(te[0]), "test_tgt": str(te[1]), "max_words": 50}})
    m = prepare_data(cfg, tmp_path / "run", log=quiet)
    assert m["counts"] == {"train": 200, "valid": 52, "test": 51}
    assert m["removed_from_train"] == {"empty": 1, "duplicate": 5, "too_long": 1}
    assert read_lines(tmp_path / "run/data/valid.tgt")[-1] == ""
    assert read_lines(tmp_path / "run/data/test.src")[-1] == "w " * 400  # kept verbatim


def test_eval_overlap_removed_from_train(tmp_path):
    pairs = toy_pairs(120)
    tr = write_pair_files(tmp_path, pairs[:100] + pairs[100:103], "train")
    va = write_pair_files(tmp_path, pairs[100:110], "valid")
    te = write_pair_files(tmp_path, pairs[110:120], "test")
    cfg = config_from_dict({"data": {
        "train_src": str(tr[0]), "train_tgt": str(tr[1]), "valid_src": str(va[0]),
        "valid_tgt": str(va[1]), "test_src": str(te[0]), "test_tgt": str(te[1])}})
    m = prepare_data(cfg, tmp_path / "run", log=quiet)
    assert m["removed_from_train"] == {"overlaps_valid_test": 3}
    assert m["counts"]["train"] == 100


def test_empty_after_filtering_names_the_filter(tmp_path):
    tr = write_pair_files(tmp_path, [("a b c d e f g h", "x"), ("one two three four five six", "y")], "t")
    cfg = config_from_dict({"data": {"train_src": str(tr[0]), "train_tgt": str(tr[1]),
                                     "valid_size": 0, "test_size": 0}})
    with pytest.raises(CorpusError, match="empty after filtering.*length_ratio removed 2.*'length_ratio'"):
        prepare_data(cfg, tmp_path / "run", log=quiet)
    assert not (tmp_path / "run/data/manifest.json").exists()


def test_split_too_small_is_a_clear_error(tmp_path):
    tr = write_pair_files(tmp_path, toy_pairs(50), "t")
    cfg = config_from_dict({"data": {"train_src": str(tr[0]), "train_tgt": str(tr[1])}})
    with pytest.raises(CorpusError, match="too few to cut valid_size=1000"):
        prepare_data(cfg, tmp_path / "run", log=quiet)


def test_bad_lines_skipped_and_counted_in_manifest(tmp_path, toy_corpus):
    src, tgt = toy_corpus
    src.write_bytes(src.read_bytes().replace(b"\n", b"\xff\n", 1))
    tree = {"data": {"train_src": str(src), "train_tgt": str(tgt), "valid_size": 20,
                     "test_size": 20, "on_bad_line": "skip"}}
    m = prepare_data(config_from_dict(tree), tmp_path / "run", log=quiet)
    assert m["read"]["pairs"] == 599
    assert sum(m["read"]["skipped"].values()) == 1
    tree["data"]["on_bad_line"] = "error"
    with pytest.raises(CorpusError, match=rf"{src}:1: invalid UTF-8"):
        prepare_data(config_from_dict(tree), tmp_path / "run2", log=quiet)


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nmt_kd.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_cli_prepare_shortcut_writes_data_vocab_and_manifest(tmp_path, toy_corpus):
    src, tgt = toy_corpus
    run = tmp_path / "run"
    r = run_cli("prepare", "--src", str(src), "--tgt", str(tgt), "--run-dir", str(run),
                "--set", "data.valid_size=30", "--set", "data.test_size=30", "--set", "vocab.size=60")
    assert r.returncode == 0, r.stderr
    m = read_json(run / "data/manifest.json")
    assert m["counts"]["valid"] == 30 and m["counts"]["train"] == 540
    assert (run / "vocab/spm.model").stat().st_size > 0
    assert "prepare: 540 train / 30 valid / 30 test" in r.stdout


@pytest.mark.parametrize("args, fragment", [
    (["prepare", "--src", "/nonexistent/a.en", "--tgt", "/nonexistent/a.de"], "not found: /nonexistent/a.en"),
    (["prepare", "--src", "x.en"], "--src and --tgt must be given together"),
    (["prepare", "--config", "/nonexistent.yaml"], "config file not found"),
])
def test_cli_user_errors_are_one_line_without_traceback(tmp_path, args, fragment):
    r = run_cli(*args, "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("nmt-kd: error:") and fragment in r.stderr


def test_cli_mismatched_files(tmp_path):
    s, t = write_pair_files(tmp_path, toy_pairs(10), "m")
    t.write_text("".join(f"{i}\n" for i in range(7)), encoding="utf-8")
    r = run_cli("prepare", "--src", str(s), "--tgt", str(t), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{s} has 10 lines but {t} has 7" in r.stderr


def test_cli_help_lists_subcommands():
    r = run_cli("--help")
    assert r.returncode == 0 and "prepare" in r.stdout and "pipeline" in r.stdout
