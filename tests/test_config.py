from pathlib import Path

import pytest
import yaml

from nmt_kd.config import Config, config_to_dict, load_config, save_config, section_hash
from nmt_kd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_and_file_values(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  max_steps: 7\n  learning_rate: 1\nvocab:\n  size: 500\n"))
    assert cfg.train.max_steps == 7
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert cfg.vocab.size == 500
    assert cfg.decode.beam == Config().decode.beam  # untouched default


def test_unknown_key_names_key_section_and_file(tmp_path):
    p = write(tmp_path, "train:\n  max_stpes: 7\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "max_stpes" in msg and "'train'" in msg and str(p) in msg


def test_unknown_nested_key_and_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"d_modle.*model\.teacher"):
        load_config(write(tmp_path, "model:\n  teacher:\n    d_modle: 64\n"))
    with pytest.raises(ConfigError, match="'trian'.*top level"):
        load_config(write(tmp_path, "trian:\n  max_steps: 1\n"))


def test_wrong_types_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="train.max_steps must be an integer"):
        load_config(write(tmp_path, "train:\n  max_steps: lots\n"))
    with pytest.raises(ConfigError, match="data.dedupe must be true or false"):
        load_config(write(tmp_path, "data:\n  dedupe: 1\n"))
    with pytest.raises(ConfigError, match="must be one of"):
        load_config(write(tmp_path, "train:\n  precision: fp8\n"))
    with pytest.raises(ConfigError, match="pipeline.lanes must be at least 1"):
        load_config(write(tmp_path, "pipeline:\n  lanes: 0\n"))


@pytest.mark.parametrize("text, fragment", [
    ("distill:\n  temperature: 0\n", "temperature must be > 0"),
    ("distill:\n  temperature: -1.5\n", "temperature must be > 0"),
    ("distill:\n  alpha: 1.2\n", "alpha must be in [0, 1]"),
    ("distill:\n  alpha: -0.1\n", "alpha must be in [0, 1]"),
])
def test_kd_hyperparameters_validated_at_load(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert fragment in str(e.value)


def test_overrides_parse_yaml_scalars_and_nest(tmp_path):
    cfg = load_config(
        write(tmp_path, "train:\n  max_steps: 7\n"),
        ["train.max_steps=100", "model.teacher.pre_norm=false", "eval.beams=[1, 4]",
         "data.test_set_name=foo/bar"],
    )
    assert cfg.train.max_steps == 100
    assert cfg.model.teacher.pre_norm is False
    assert cfg.eval.beams == (1, 4)
    assert cfg.data.test_set_name == "foo/bar"


def test_override_typo_is_an_error():
    with pytest.raises(ConfigError, match="max_step"):
        load_config(None, ["train.max_step=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train"])


def test_students_list(tmp_path):
    cfg = load_config(write(tmp_path, "pipeline:\n  students:\n    - {name: a, arch: student_cnn, kd: word}\n"))
    assert cfg.pipeline.students[0].arch == "student_cnn"
    with pytest.raises(ConfigError, match="kd must be one of"):
        load_config(write(tmp_path, "pipeline:\n  students:\n    - {name: a, kd: words}\n"))
    cfg = load_config(write(tmp_path, "pipeline:\n  students:\n    - {name: a, max_steps: 30}\n    - {name: b}\n"))
    from nmt_kd.pipeline import _student_config

    a, b = cfg.pipeline.students
    assert _student_config(cfg, a).student_train.max_steps == 30
    assert _student_config(cfg, b).student_train.max_steps == cfg.student_train.max_steps != 30
    assert _student_config(cfg, a).train == cfg.train  # the teacher's section is untouched
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        load_config(write(tmp_path, "pipeline:\n  students:\n    - {name: a, max_steps: 0}\n"))


@pytest.mark.parametrize("payload, executes", [
    ("!!python/object/apply:os.system ['touch {m}']", True),
    ("!!python/object/apply:subprocess.check_call [['touch', '{m}']]", True),
    ("!!python/name:os.system ''", False),
], ids=["os.system", "subprocess", "name"])
def test_python_tags_cannot_execute(tmp_path, capsys, payload, executes):
    from nmt_kd import cli

    marker = tmp_path / "pwned"
    p = write(tmp_path, f"data: {payload.format(m=marker)}\n")
    yaml.unsafe_load(p.read_text())  # under an unsafe loader the payload is live...
    assert marker.exists() == executes
    if executes:
        marker.unlink()
    with pytest.raises(ConfigError, match=rf"{p}:1: not valid YAML .*only plain YAML is read"):
        load_config(p)  # ...here it is refused
    # the CLI: one line, exit 2, nothing executed, nothing written
    assert cli.main(["prepare", "--config", str(p), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"nmt-kd: error: {p}:1: not valid YAML")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.max_steps=3", "eval.beams=[1]"])
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml")
    assert again == cfg
    assert section_hash(again.train) == section_hash(cfg.train)
    assert section_hash(load_config(None, ["train.max_steps=4"]).train) != section_hash(cfg.train)


def test_every_shipped_config_loads():
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert files, "no configs shipped"
    for f in files:
        cfg = load_config(f)
        assert config_to_dict(cfg)["data"]["source"] == yaml.safe_load(f.read_text())["data"]["source"]


@pytest.mark.parametrize("section", ["train", "student_train"])
@pytest.mark.parametrize("key,value,rule", [
    ("checkpoint_every", -1, r">= 0 \(0: off\)"), ("log_every", 0, ">= 1"), ("keep_checkpoints", 0, ">= 1"),
    ("learning_rate", -0.001, r">= 0 \(0: the weights do not change\)"), ("adam_epsilon", 0, "> 0"),
    ("warmup_steps", -5, r">= 0 \(0: off\)"), ("label_smoothing", 1.0, r"in \[0, 1\)"),
    ("max_minutes", -1, r">= 0 \(0: off\)"), ("adam_beta2", 1.5, r"in \[0, 1\)"),
])
def test_training_values_out_of_range_name_their_section(tmp_path, section, key, value, rule):
    # a value that would divide by zero or train nothing is refused when the config is read,
    # and the message names the section it came from (both sections share TrainConfig)
    with pytest.raises(ConfigError, match=rf"^.*: {section}\.{key} must be {rule}, got "):
        load_config(write(tmp_path, f"{section}:\n  {key}: {value}\n"))


def test_zero_still_means_off_for_the_optional_limits(tmp_path):
    cfg = load_config(write(tmp_path, "student_train:\n  checkpoint_every: 0\n  eval_every: 0\n"
                                      "  max_steps: 0\n  max_minutes: 0\n  clip_norm: 0\n  learning_rate: 0\n"))
    assert cfg.student_train.checkpoint_every == 0 and cfg.student_train.eval_every == 0
    assert cfg.student_train.learning_rate == 0  # frozen weights (tests of the search use it)


def test_a_student_rows_own_train_keys_have_the_sections_ranges():
    from nmt_kd.config import StudentTrainOverrides
    with pytest.raises(ConfigError, match=r"pipeline\.students\[\]\.train\.keep_checkpoints must be >= 1, got 0"):
        StudentTrainOverrides(keep_checkpoints=0)
    with pytest.raises(ConfigError, match=r"pipeline\.students\[\]\.train\.learning_rate must be >= 0"):
        StudentTrainOverrides(learning_rate=-1e-3)
    assert StudentTrainOverrides(checkpoint_every=0, max_tokens=8192).changes() == {
        "max_tokens": 8192, "checkpoint_every": 0}  # 0: off, as in student_train
