"""Hostile config files and command-line input: one clear error line (exit 2), never a
traceback or a hang. Most cases once ended in a traceback, a hang, or a bad value accepted
until a later stage failed on it."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from deepcoder_core.cli import cli
from deepcoder_core.config import ConfigError, load_config


def write(tmp_path, text: str | bytes, name: str = "c.yaml"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def alias_bomb(levels: int, width: int = 10) -> str:
    """Billion laughs: each level's anchor is a list of ``width`` aliases of the level below."""
    lines = ["teacher:", "  options:", '    l0: &l0 "lol"']
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"    l{level}: &l{level} [{aliases}]")
    return "\n".join(lines) + "\n"


def one_line_error(result, *fragments: str) -> str:
    """The CLI failed with exit 2, one ``Error:`` line naming ``fragments``, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------- YAML itself


def test_alias_bomb_is_refused_quickly_naming_the_file(tmp_path):
    # 10^6 values once expanded: before the fix this loaded (slowly) and every later copy of
    # the config (asdict, snapshot, fingerprints) paid for it again.
    path = write(tmp_path, alias_bomb(6))
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"c\.yaml: .*anchors and aliases"):
        load_config(path, environ={})
    assert time.perf_counter() - started < 2


@pytest.mark.timeout(30)
def test_billion_laughs_does_not_hang_any_command(tmp_path):
    path = write(tmp_path, alias_bomb(9))
    for args in (["config"], ["run"], ["train", "--data", "d", "--out", "o"]):
        started = time.perf_counter()
        result = CliRunner().invoke(cli, [*args, "--config", str(path)])
        one_line_error(result, str(path), "anchors and aliases")
        assert time.perf_counter() - started < 5, args


def test_recursive_alias_is_refused(tmp_path):
    path = write(tmp_path, "teacher:\n  options:\n    loop: &a [*a]\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: .*refers to itself"):
        load_config(path, environ={})


def test_modest_anchors_still_work(tmp_path):
    path = write(
        tmp_path,
        "tools:\n  options:\n    python: &limits {memory_mb: 256}\n    retrieve: *limits\n",
    )
    options = load_config(path, environ={}).tools.options
    assert options == {"python": {"memory_mb": 256}, "retrieve": {"memory_mb": 256}}


def flow_bomb(levels: int = 6, width: int = 10) -> str:
    """:func:`alias_bomb` as one flow mapping, the way --set and variables are written."""
    items = ["l0: &l0 lol"]
    for level in range(1, levels + 1):
        items.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "{" + ", ".join(items) + "}"


def test_alias_bomb_in_set_and_environment_is_refused():
    with pytest.raises(ConfigError, match=r"--set teacher.options: .*anchors and aliases"):
        load_config(None, [f"teacher.options={flow_bomb()}"], environ={})
    with pytest.raises(ConfigError, match=r"DEEPCODER_TEACHER__OPTIONS: .*anchors and aliases"):
        load_config(None, environ={"DEEPCODER_TEACHER__OPTIONS": flow_bomb()})


def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
    path = write(tmp_path, b"training:\n  max_steps: 3\n  seed: 1 # caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}:3: invalid UTF-8 at byte 40")
    assert "save the file as UTF-8" in message
    result = CliRunner().invoke(cli, ["config", "--config", str(path)])
    one_line_error(result, str(path), "byte 40")


def test_nesting_too_deep_is_one_error(tmp_path):
    path = write(tmp_path, "teacher:\n  options:\n    x: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: .*nested too deeply"):
        load_config(path, environ={})


def test_endless_or_huge_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"/dev/zero: .*larger than"):
        load_config("/dev/zero", environ={})
    path = write(tmp_path, "teacher:\n  options:\n    blob: " + "x" * 5_000_000 + "\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: .*larger than"):
        load_config(path, environ={})


def test_empty_section_means_defaults(tmp_path):
    # Every key of a section commented out leaves `training:` holding null.
    path = write(tmp_path, "training:\n  # max_steps: 3\nloss:\n  name: ce\n")
    config = load_config(path, environ={})
    assert config.training.max_steps == 40 and config.loss.name == "ce"


# ---------------------------------------------------------------------------- value ranges


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("loss.temperature: 0", "loss.temperature: must be a number > 0, got 0"),
        ("loss.temperature: .nan", "loss.temperature: must be a finite number, got nan"),
        ("loss.temperature: -.inf", "loss.temperature: must be a finite number, got -inf"),
        ("training.max_steps: -1", "training.max_steps: must be an integer >= 1, got -1"),
        ("training.max_steps: 0", "training.max_steps: must be an integer >= 1, got 0"),
        ("training.warmup_ratio: 1.5", "training.warmup_ratio: must be a number in [0, 1), got"),
        ("training.learning_rate: 0", "training.learning_rate: must be a number > 0"),
        ("training.seed: -3", "training.seed: must be an integer in [0, 4294967295], got -3"),
        ("processing.min_reasoning_ratio: 2", "processing.min_reasoning_ratio: must be a number"),
        ("processing.max_length: 4", "processing.max_length: must be an integer >= 8"),
        ("generation.top_p: 0", "generation.top_p: must be a number in (0, 1], got 0"),
        ("generation.limit: 0", "generation.limit: must be an integer >= 1, got 0"),
        ("agent.tool_timeout: 0", "agent.tool_timeout: must be a number > 0"),
        ("student.lora.dropout: 1", "student.lora.dropout: must be a number in [0, 1), got 1"),
        ("eval.k: [1, 0]", "eval.k[1]: must be an integer >= 1, got 0"),
        ("server.port: 70000", "server.port: must be an integer in [1, 65535], got 70000"),
        ("teacher_logits.top_k: 0", "teacher_logits.top_k: must be an integer >= 1"),
        ("loss.nonfinite: ignore", "loss.nonfinite: 'ignore' is not one of raise, skip"),
        ("sandbox.isolation: none", "sandbox.isolation: 'none' is not one of namespaces, rlimits"),
        ("sandbox.scratch_mb: 0", "sandbox.scratch_mb: must be an integer >= 1, got 0"),
    ],
)
def test_out_of_range_value_names_file_and_key_path(tmp_path, assignment, expected):
    dotted, value = assignment.split(": ", 1)
    *sections, key = dotted.split(".")
    text, indent = "", ""
    for section in sections:
        text += f"{indent}{section}:\n"
        indent += "  "
    path = write(tmp_path, f"{text}{indent}{key}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}: {expected}"), str(info.value)


def test_range_checks_apply_to_set_flags_and_environment():
    with pytest.raises(ConfigError, match=r"^command line: loss.temperature: must be a number > 0"):
        load_config(None, ["loss.temperature=0"], environ={})
    with pytest.raises(ConfigError, match=r"^command line: training.max_steps: must be an integer"):
        load_config(None, flags={"training.max_steps": -1}, environ={})
    with pytest.raises(ConfigError, match=r"^environment \(DEEPCODER_\*\): loss.temperature"):
        load_config(None, environ={"DEEPCODER_LOSS__TEMPERATURE": "nan"})


def test_temperature_zero_is_refused_by_deepcoder_config_and_train():
    # Before: `deepcoder config` accepted it and training failed after generate and process.
    for args in (["config"], ["train", "--data", "d", "--out", "o"]):
        result = CliRunner().invoke(cli, [*args, "--set", "loss.temperature=0"])
        one_line_error(result, "command line: loss.temperature: must be a number > 0")


def test_huge_integer_for_a_float_is_an_error_not_a_traceback():
    with pytest.raises(ConfigError, match="loss.ce_weight: must be a finite number"):
        load_config(None, [f"loss.ce_weight={10**400}"], environ={})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["eval.k=[1, 5]"], "eval.k: pass@5 needs eval.samples >= 5 (it is 1)"),
        (["eval.k=[]"], "eval.k: empty; give at least one k"),
        (["processing.min_tokens=4096"], "processing.min_tokens (4096) > processing.max_length"),
        (
            ["processing.min_reasoning_ratio=0.6", "processing.min_action_ratio=0.6"],
            "min_reasoning_ratio + processing.min_action_ratio",
        ),
        (
            ["server.restart_backoff=90"],
            "server.restart_backoff (90.0) > server.restart_backoff_max",
        ),
    ],
)
def test_settings_that_contradict_each_other(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides, environ={})
    assert expected in str(info.value) and str(info.value).startswith("command line: ")


def test_contradiction_is_blamed_on_its_layer_and_a_later_layer_may_resolve_it(tmp_path):
    path = write(tmp_path, "eval:\n  k: [1, 5]\n")
    with pytest.raises(ConfigError, match=rf"^{path}: eval.k: pass@5 needs eval.samples >= 5"):
        load_config(path, environ={})
    assert load_config(path, flags={"eval.samples": 5}, environ={}).eval.samples == 5
    with pytest.raises(ConfigError, match=r"^environment \(DEEPCODER_\*\): eval.k: pass@5"):
        load_config(path, environ={"DEEPCODER_EVAL__SAMPLES": "2"})


# ---------------------------------------------------------------------------- tools run


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "0"])
def test_tools_run_rejects_a_timeout_that_is_not_a_positive_number(timeout):
    result = CliRunner().invoke(
        cli, ["tools", "run", "python", "--timeout", timeout, "-"], input="1"
    )
    one_line_error(result, f"--timeout {timeout}", "finite number of seconds > 0")


def test_tools_run_option_that_is_not_yaml_is_one_line():
    result = CliRunner().invoke(
        cli, ["tools", "run", "python", "-o", "memory_mb=[1,", "-"], input="1"
    )
    one_line_error(result, "--option memory_mb", "not valid YAML")


def test_tools_run_input_that_is_not_utf8_names_file_and_byte(tmp_path):
    source = write(tmp_path, b"print('caf\xe9')\n", "snippet.py")
    result = CliRunner().invoke(cli, ["tools", "run", "python", "--input", str(source)])
    one_line_error(result, str(source), "invalid UTF-8 at byte 10")


def test_tools_run_config_is_validated(tmp_path):
    path = write(tmp_path, "sandbox:\n  scratch_mb: 0\n")
    result = CliRunner().invoke(
        cli, ["tools", "run", "python", "--config", str(path), "-"], input="1"
    )
    one_line_error(result, str(path), "sandbox.scratch_mb")
