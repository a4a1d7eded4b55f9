import dataclasses
import types
import typing
from typing import Annotated

import pytest
import yaml

from deepcoder_core.config import Config, ConfigError, Range, load_config, snapshot

REPO_CONFIG = "configs/config.yaml"


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_layers_yaml_env_set_flags(tmp_path):
    path = write(
        tmp_path, "training:\n  learning_rate: 1.0e-4\n  max_steps: 7\nloss:\n  name: kl\n"
    )
    env = {"DEEPCODER_TRAINING__MAX_STEPS": "9", "DEEPCODER_LOAD_PLUGINS": "x"}
    config = load_config(
        path,
        ["training.learning_rate=3e-5"],
        flags={"loss.name": "focal", "teacher.name": None},
        environ=env,
    )
    assert config.training.learning_rate == 3e-5  # --set beats YAML
    assert config.training.max_steps == 9  # environment beats YAML
    assert config.loss.name == "focal"  # named flag beats all
    assert config.teacher.name == "hf"  # None flag leaves the default


def test_unknown_key_names_file_path_and_suggestion(tmp_path):
    path = write(tmp_path, "training:\n  learnig_rate: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(
        f"{path}: training.learnig_rate: unknown key; did you mean 'learning_rate'?"
    )


def test_wrong_type_names_key_path(tmp_path):
    path = write(tmp_path, "agent:\n  max_steps: many\n")
    with pytest.raises(ConfigError, match=r"c.yaml: agent.max_steps: expected int, got 'many'"):
        load_config(path, environ={})


def test_bad_set_and_env_name_their_source():
    with pytest.raises(
        ConfigError, match=r"command line: loss.temprature: unknown key; did you mean 'temperature'"
    ):
        load_config(None, ["loss.temprature=2"], environ={})
    with pytest.raises(ConfigError, match=r"environment \(DEEPCODER_\*\): eval.k: expected a list"):
        load_config(None, environ={"DEEPCODER_EVAL__K": "5"})


def test_invalid_yaml_gives_line(tmp_path):
    path = write(tmp_path, "training:\n  max_steps: [1,\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: invalid YAML"):
        load_config(path, environ={})


def test_options_are_free_form_and_secrets_are_redacted(tmp_path):
    path = write(tmp_path, "teacher:\n  name: groq\n  options: {model: m, api_key: sk-live-123}\n")
    config = load_config(path, environ={})
    assert config.teacher.options["model"] == "m"
    out = snapshot(config, tmp_path / "snap" / "config.yaml")
    text = out.read_text()
    assert "sk-live-123" not in text
    assert yaml.safe_load(text)["teacher"]["options"] == {"model": "m", "api_key": "<redacted>"}


def test_repository_config_is_valid_and_complete():
    raw = yaml.safe_load(open(REPO_CONFIG))
    config = load_config(REPO_CONFIG, environ={})
    assert set(raw) == set(config.to_dict()), "configs/config.yaml must hold every section"


@pytest.mark.parametrize("path", ["configs/groq.yaml", "configs/sglang-qwen3.yaml"])
def test_ready_made_configs_validate(path):
    config = load_config(path, environ={})
    assert config.paths.out.startswith("runs/")


def _unwrap(hint):
    """The type of one value: ``Count | None`` -> ``Count``, ``list[Count]`` -> ``Count``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType, list):
        return _unwrap(args[0])
    return hint


def _numeric_fields(cls=Config, prefix=""):
    """(dotted key, hint) of every int and float field of every section, nested ones too."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        hint = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(hint):
            yield from _numeric_fields(hint, f"{prefix}{f.name}.")
        elif _base(hint) in (int, float):
            yield f"{prefix}{f.name}", hint


def _base(hint):
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


def test_every_numeric_field_has_a_range():
    fields = dict(_numeric_fields())
    assert {"loss.temperature", "training.max_steps", "student.lora.r", "eval.k"} <= set(fields)
    unchecked = [
        key
        for key, hint in fields.items()
        if typing.get_origin(hint) is not Annotated
        or not any(isinstance(extra, Range) for extra in typing.get_args(hint)[1:])
    ]
    assert not unchecked, f"numeric fields without a Range: {unchecked}"


def test_every_default_lies_in_its_range():
    # The defaults never go through the checks when a file leaves them out: build them explicitly.
    defaults = dataclasses.asdict(Config())
    assert load_config(None, [f"{k}={v}" for k, v in _flat(defaults)], environ={}) == Config()


def _flat(data, prefix=""):
    """``key.path, YAML value`` of every leaf, as --set gives it (free-form mappings left out)."""
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("options", "init", "detector_options"):
            yield from _flat(value, f"{prefix}{key}.")
        elif not isinstance(value, dict):
            yield f"{prefix}{key}", yaml.safe_dump(value, default_flow_style=True).strip()


def test_sandbox_section_defaults_and_choices_match_the_sandbox():
    from deepcoder_core import sandbox
    from deepcoder_core.config import ISOLATION_LEVELS

    config = load_config(REPO_CONFIG, environ={})
    assert (config.sandbox.isolation, config.sandbox.scratch_mb) == ("namespaces", 64)
    assert ISOLATION_LEVELS == sandbox.ISOLATION_LEVELS
    assert load_config(None, ["sandbox.isolation=rlimits"], environ={}).sandbox.isolation == (
        "rlimits"
    )
