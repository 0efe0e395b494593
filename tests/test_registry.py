"""The architecture registry: built-in entries, registration, config sections of registered
architectures, CLI choices and export refusals (no training here; see test_toy_architecture)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from nmt_kd.config import (
    CNNConfig,
    ConfigError,
    ModelConfig,
    RNNConfig,
    TransformerConfig,
    config_from_dict,
    config_to_dict,
)
from nmt_kd.errors import UserError
from nmt_kd.models.registry import (
    EXPORT_FORMATS,
    Architecture,
    architecture_names,
    architecture_of,
    get_architecture,
    register_architecture,
    require_export,
    unregister_architecture,
)


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    width: int = 4
    kind: str = "plain"


@pytest.fixture
def fake():
    arch = register_architecture(Architecture("student_fake", "student", FakeConfig,
                                              "nowhere:Fake", exports=("savedmodel",)))
    yield arch
    unregister_architecture("student_fake")


def test_builtin_entries():
    assert architecture_names()[:4] == ("teacher", "student_rnn", "student_cnn", "student_transformer")
    assert architecture_names("teacher")[:1] == ("teacher",)
    assert get_architecture("teacher").config is TransformerConfig
    assert get_architecture("student_rnn").config is RNNConfig
    assert get_architecture("student_cnn").config is CNNConfig
    # every built-in section is a typed field of ModelConfig, and nothing else is
    assert ModelConfig.builtin_sections() == {a: get_architecture(a).config
                                              for a in ("teacher", "student_rnn", "student_cnn",
                                                        "student_transformer")}
    # the Transformer student: the teacher's model class and config fields, a student's defaults
    st = get_architecture("student_transformer")
    assert st.role == "student" and st.model_class() is get_architecture("teacher").model_class()
    assert issubclass(st.config, TransformerConfig) and "ctranslate2" in st.exports
    assert (st.config().encoder_layers, st.config().decoder_layers) == (6, 1)
    assert "tflite" not in get_architecture("teacher").exports
    assert "ctranslate2" in get_architecture("teacher").exports  # CTranslate2 takes the teacher
    assert all(set(EXPORT_FORMATS) - {"ctranslate2"} == set(get_architecture(a).exports)
               for a in ("student_rnn", "student_cnn"))
    assert architecture_of({"model_type": "student_cnn"}).name == "student_cnn"
    assert architecture_of({"model_type": "ensemble"}) is None
    with pytest.raises(UserError, match="unknown model architecture 'nope'; choose one of teacher"):
        get_architecture("nope")


def test_builtin_model_kwargs_are_the_old_hand_mapping():
    mcfg = ModelConfig(max_positions=77)
    t = mcfg.teacher
    assert get_architecture("teacher").model_kwargs(mcfg) == dict(
        d_model=t.d_model, num_encoder_layers=t.encoder_layers, num_decoder_layers=t.decoder_layers,
        num_heads=t.heads, ff_dim=t.ff_dim, dropout=t.dropout,
        attention_dropout=t.attention_dropout, activation=t.activation, pre_norm=t.pre_norm,
        max_positions=77)
    assert get_architecture("student_rnn").model_kwargs(mcfg) == dataclasses.asdict(mcfg.student_rnn)
    assert get_architecture("student_cnn").model_kwargs(mcfg) == {
        **dataclasses.asdict(mcfg.student_cnn), "max_positions": 77}


def test_the_config_of_builtins_is_unchanged():
    tree = config_to_dict(config_from_dict({}))
    assert list(tree["model"]) == ["max_positions", "teacher", "student_rnn", "student_cnn",
                                   "student_transformer"]
    with pytest.raises(ConfigError, match="known keys: max_positions, teacher, student_rnn, student_cnn, student_transformer$"):
        config_from_dict({"model": {"others": []}})


def test_a_registered_architecture_has_its_own_config_section(fake):
    cfg = config_from_dict({"model": {"student_fake": {"width": 9}},
                            "pipeline": {"students": [{"name": "f", "arch": "student_fake"}]}})
    assert cfg.model.section("student_fake") == FakeConfig(width=9)
    assert cfg.model.section("student_rnn") is cfg.model.student_rnn
    tree = config_to_dict(cfg)
    assert tree["model"]["student_fake"] == {"width": 9, "kind": "plain"} and "others" not in tree["model"]
    assert config_from_dict(tree) == cfg  # round trip through config.yaml's plain values
    assert config_from_dict({}).model.section("student_fake") == FakeConfig()  # defaults
    with pytest.raises(ConfigError, match=r"model\.student_fake\.width must be an integer"):
        config_from_dict({"model": {"student_fake": {"width": "wide"}}})
    with pytest.raises(ConfigError, match="unknown key 'widht' in section 'model.student_fake'"):
        config_from_dict({"model": {"student_fake": {"widht": 3}}})
    with pytest.raises(ConfigError, match="known keys: .*student_transformer, student_fake"):
        config_from_dict({"model": {"student_fak": {}}})


def test_students_must_name_a_registered_student(fake):
    with pytest.raises(ConfigError, match="arch must be one of student_rnn, student_cnn, student_transformer, student_fake"):
        config_from_dict({"pipeline": {"students": [{"name": "t", "arch": "teacher"}]}})


def test_registration_rules(fake):
    assert register_architecture(fake) is fake  # the same entry again: no-op
    other = Architecture("student_fake", "student", FakeConfig, "elsewhere:Fake")
    with pytest.raises(ValueError, match="already registered"):
        register_architecture(other)
    assert register_architecture(other, replace=True) is other
    with pytest.raises(ValueError, match="role"):
        Architecture("x", "assistant", FakeConfig, "m:C")
    with pytest.raises(ValueError, match="export formats"):
        Architecture("x", "student", FakeConfig, "m:C", exports=("onnx",))
    with pytest.raises(ValueError, match="identifier"):
        Architecture("ensemble", "student", FakeConfig, "m:C")
    with pytest.raises(ValueError, match="typed RNNConfig"):
        Architecture("student_rnn", "student", FakeConfig, "m:C")


def test_register_as_a_class_decorator():
    @register_architecture(name="student_deco", role="student", config=FakeConfig)
    class Deco:
        pass

    try:
        assert get_architecture("student_deco").model_class() is Deco
        assert architecture_of({}, Deco()).name == "student_deco"
    finally:
        unregister_architecture("student_deco")


def test_export_refusals_name_the_architecture_and_what_it_supports(fake):
    with pytest.raises(UserError, match="students"):
        require_export("tflite", "runs/x/teacher", {"model_type": "teacher"})
    with pytest.raises(UserError, match="'student_fake' cannot be exported as bundle; it exports as savedmodel"):
        require_export("bundle", "d", {"model_type": "student_fake"})
    with pytest.raises(UserError, match="not a registered architecture"):
        require_export("savedmodel", "d", {"model_type": "mystery"})
    assert require_export("tflite", "d", {"model_type": "student_rnn"}).name == "student_rnn"


def test_cli_choices_come_from_the_registry(fake):
    from nmt_kd.cli import build_parser

    args = build_parser().parse_args(["train", "--config", "c.yaml", "--model", "student_fake"])
    assert args.model == "student_fake"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--model", "m", "--out", "o", "--format", "onnx"])


def test_the_registry_and_the_parser_do_not_start_tensorflow():
    code = ("import sys; import nmt_kd.models.registry; from nmt_kd.cli import build_parser; "
            "build_parser(); print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
