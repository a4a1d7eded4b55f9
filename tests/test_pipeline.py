"""`deepcoder run` end to end on tiny random models and two problems."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from deepcoder_core import models
from deepcoder_core.cli import cli
from deepcoder_core.problems import bundled_problems

from .trajectory_factory import trajectory, write_jsonl


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny random teacher with the real Qwen3 tokenizer, two problems, and a config using them."""
    root = tmp_path_factory.mktemp("pipeline")
    teacher = root / "teacher"
    model = models.random_causal_lm(models.tiny_qwen3_config(), seed=1)
    model.save_pretrained(teacher)
    models.load_tokenizer(models.qwen3_tokenizer_path()).save_pretrained(teacher)
    problems = root / "problems.jsonl"
    chosen = [p for p in bundled_problems() if p.difficulty == "easy"][:2]
    problems.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in chosen))
    config = {
        "teacher": {"name": "hf", "options": {"model": str(teacher)}},
        "student": {
            "path": None,
            "init": {"from_teacher": None, "config": models.tiny_qwen3_config()},
        },
        "agent": {"max_steps": 2, "max_new_tokens": 24, "token_budget": 64},
        "tools": {"enabled": ["python"]},
        "generation": {"problems": str(problems), "split": None, "concurrency": 2},
        "processing": {"tokenizer": str(teacher), "successful_only": False, "min_tokens": 4},
        "teacher_logits": {"top_k": 8},
        "loss": {"name": "kl"},
        "training": {"max_steps": 4, "gradient_accumulation_steps": 1, "save_steps": 2},
        "eval": {"problems": str(problems), "split": None, "k": [1]},
        "paths": {"cache": str(root / "cache")},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return root, path


def _run(config_path: Path, out: Path, *extra: str):
    result = CliRunner().invoke(
        cli,
        ["run", "--config", str(config_path), "--out", str(out), *extra],
        catch_exceptions=False,
    )
    return result


def test_whole_pipeline_then_skip_then_force(tiny_setup):
    root, config_path = tiny_setup
    out = root / "run"
    started = time.time()
    first = _run(config_path, out)
    assert first.exit_code == 0, first.output
    assert time.time() - started < 120

    state = json.loads((out / "state.json").read_text())["stages"]
    assert [s for s in state if state[s]["status"] == "done"] == [
        "generate",
        "process",
        "teacher-logits",
        "train",
        "eval",
        "report",
    ]
    trajectories = [
        json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()
    ]
    assert len(trajectories) == 2 and all(t["schema"] == 1 for t in trajectories)
    assert json.loads((out / "dataset" / "summary.json").read_text())["examples"] >= 1
    assert (out / "teacher_logits").is_dir()
    assert (out / "train" / "student" / "config.json").exists()
    assert (out / "baseline" / "config.json").exists()
    metrics = (out / "train" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) >= 4
    report = json.loads((out / "eval" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "baseline", "student"}
    assert f"problems from `{root / 'problems.jsonl'}`" in (out / "eval" / "report.md").read_text()
    text = (out / "report.md").read_text()
    assert "| teacher |" in text and "| student |" in text and "| baseline |" in text
    assert (out / "plots" / "pass_rates.png").exists() and (
        out / "plots" / "span_divergence.png"
    ).exists()
    assert "sk-" not in (out / "config.yaml").read_text()

    second = _run(config_path, out)
    assert second.exit_code == 0, second.output
    assert second.output.count("up to date, skipped") == 6

    third = _run(config_path, out, "--force", "train")
    assert third.exit_code == 0, third.output
    assert "generate: up to date" in third.output and "process: up to date" in third.output
    assert "train: up to date" not in third.output and "eval: up to date" not in third.output


def test_killed_during_training_resumes(tiny_setup):
    root, config_path = tiny_setup
    out = root / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    slow = ["--set", "training.max_steps=40", "--set", "training.save_steps=1"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deepcoder_core",
            "run",
            "--config",
            str(config_path),
            "--out",
            str(out),
            *slow,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 150
    try:
        while time.time() < deadline:
            checkpoints = list((out / "train" / "checkpoints").glob("checkpoint-*"))
            if len(checkpoints) >= 1 and proc.poll() is None:
                break
            if proc.poll() is not None:
                pytest.fail(
                    f"run ended before training was interrupted:\n{proc.stdout.read().decode()}"
                )
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    state = json.loads((out / "state.json").read_text())["stages"]
    assert state["train"]["status"] == "running"

    resumed = _run(config_path, out, *slow)
    assert resumed.exit_code == 0, resumed.output
    assert "generate: up to date" in resumed.output
    state = json.loads((out / "state.json").read_text())["stages"]
    assert state["train"]["status"] == "done" and state["train"]["summary"]["steps"] == 40
    steps = [
        json.loads(line)["step"]
        for line in (out / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps))  # no step logged twice after the resume


def test_groq_without_key_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    result = CliRunner().invoke(cli, ["run", "--teacher", "groq", "--loss", "focal"])
    assert result.exit_code != 0
    assert "GROQ_API_KEY" in result.output
    assert "Traceback" not in result.output


def test_unknown_loss_suggests():
    result = CliRunner().invoke(cli, ["run", "--loss", "fcoal"])
    assert result.exit_code != 0
    assert "unknown loss 'fcoal'; did you mean 'focal'?" in result.output


# ---------------------------------------------------------------------------- fail early


@pytest.fixture
def recording(tmp_path):
    """A trajectories file the replay teacher can be built from."""
    path = tmp_path / "recorded.jsonl"
    write_jsonl(path, [trajectory(i) for i in range(2)])
    return path


def _fails_before_generation(out: Path, *args: str, message: str) -> str:
    result = CliRunner().invoke(cli, ["run", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and message in result.output, result.output
    assert not out.exists()  # stopped before generating, or writing, anything
    return result.output


def test_replay_teacher_without_student_stops_before_generation(tmp_path, recording):
    # Before: generation and processing ran, then train died with a traceback.
    replay = ["--teacher", "replay", "--loss", "ce"]
    replay += ["--set", f"teacher.options.trajectories={recording}"]
    replay += ["--set", "processing.tokenizer=qwen3"]
    _fails_before_generation(
        tmp_path / "a", *replay, message="no student to train: set student.path"
    )
    pruned = ["--set", "student.init.from_teacher={layers: [0]}"]
    _fails_before_generation(
        tmp_path / "b", *replay, *pruned, message="teacher 'replay' is not one; set student.path"
    )
    random_student = ["--set", "student.init.config={model_type: qwen3}"]
    _fails_before_generation(
        tmp_path / "c", *replay, *random_student, message="set student.tokenizer (e.g. qwen3)"
    )


def test_remote_teacher_without_student_or_cache_stops_before_generation(tmp_path):
    remote = ["--teacher", "openai", "--set", "student.tokenizer=qwen3"]
    _fails_before_generation(tmp_path / "a", *remote, "--loss", "ce", message="no student to train")
    remote += ["--student", str(tmp_path / "student")]
    _fails_before_generation(
        tmp_path / "b",
        *remote,
        "--loss",
        "kl",
        "--set",
        "teacher_logits.enabled=false",
        message="set teacher_logits.enabled: true",
    )


def test_bad_weighting_options_and_eval_settings_stop_before_generation(tmp_path, tiny_setup):
    _, config_path = tiny_setup
    base = ["--config", str(config_path)]
    _fails_before_generation(
        tmp_path / "a",
        *base,
        "--weighting",
        "curriculum",
        "--set",
        "weighting.options={schedule: wobbly}",
        message="weighting 'curriculum'",
    )
    _fails_before_generation(
        tmp_path / "b", *base, "--set", "eval.models=[teacher, studnet]", message="eval.models"
    )
    for key in ("overflow", "format"):
        _fails_before_generation(
            tmp_path / key, *base, "--set", f"processing.{key}=cut", message=f"processing.{key}"
        )
    _fails_before_generation(
        tmp_path / "c",
        *base,
        "--set",
        f"eval.problems={tmp_path / 'missing.jsonl'}",
        message="eval.problems",
    )


def test_processing_that_keeps_nothing_stops_after_process(tiny_setup):
    # The tiny random teacher never solves a problem: successful_only drops every trajectory.
    root, config_path = tiny_setup
    out = root / "kept-nothing"
    result = CliRunner().invoke(
        cli,
        ["run", "--config", str(config_path), "--out", str(out)]
        + ["--set", "processing.successful_only=true", "--set", "generation.limit=1"]
        + ["--set", "agent.max_steps=1", "--set", "agent.max_new_tokens=8"],
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: processing kept no example of the 1 trajectories read")
    assert "(dropped: unsuccessful 1)" in message
    assert "set processing.successful_only: false" in message
    state = json.loads((out / "state.json").read_text())["stages"]
    assert state["generate"]["status"] == "done"
    assert state["process"]["status"] == "running"  # not done: a re-run does it again
    assert "train" not in state and not (out / "train").exists()


def test_sandbox_section_reaches_the_sandbox_in_commands_that_run_code(tmp_path, monkeypatch):
    import deepcoder_core.sandbox

    calls = []
    monkeypatch.setattr(deepcoder_core.sandbox, "configure", lambda **kw: calls.append(kw))
    path = tmp_path / "c.yaml"
    path.write_text("sandbox:\n  isolation: rlimits\n  scratch_mb: 16\n")
    expected = {"isolation": "rlimits", "scratch_mb": 16}
    missing = str(tmp_path / "missing.jsonl")
    commands = {
        # each stops right after its config is loaded and applied
        "run": ["run", "--loss", "fcoal"],
        "generate": ["generate", "--problems", missing, "--out", str(tmp_path / "t.jsonl")],
        "eval": ["eval", "--teacher", "hf", "--problems", missing],
        "tools run": ["tools", "run", "nosuchtool", "-"],
    }
    for name, args in commands.items():
        calls.clear()
        result = CliRunner().invoke(cli, [*args, "--config", str(path)], input="1")
        assert result.exit_code == 2 and "Traceback" not in result.output, (name, result.output)
        assert calls == [expected], name


# ---------------------------------------------------------------------------- stage plumbing


def test_discard_removes_the_output_and_the_files_beside_it(tmp_path):
    from deepcoder_core.pipeline import _discard

    output = tmp_path / "trajectories.jsonl"
    beside = [tmp_path / "trajectories.summary.json", tmp_path / "trajectories.config.yaml"]
    for path in (output, *beside):
        path.write_text("{}")
    _discard(output)
    assert list(tmp_path.iterdir()) == []


def test_eval_stage_names_its_problem_set(tmp_path, monkeypatch):
    """Before, eval/report.md of a run said "problems from `None`"."""
    import deepcoder_core.evaluate
    from deepcoder_core.config import load_config
    from deepcoder_core.pipeline import RunContext, _eval

    calls = []
    monkeypatch.setattr(deepcoder_core.evaluate, "evaluate", lambda *a, **kw: calls.append(kw))
    student = ["student.path=" + str(tmp_path / "student")]
    for problems, source in ((None, "bundled"), (tmp_path / "p.jsonl", str(tmp_path / "p.jsonl"))):
        if problems is not None:
            problems.write_text(json.dumps(bundled_problems("eval")[0].to_dict()) + "\n")
        setting = [f"eval.problems={problems}"] if problems else []
        _eval(RunContext(load_config(None, [*student, *setting], environ={}), tmp_path))
        assert calls[-1]["source"] == source


def _stage_errors():
    from deepcoder_core.errors import StageError
    from deepcoder_core.evaluate import EvalError
    from deepcoder_core.generate import GenerationError
    from deepcoder_core.process import ProcessError

    message = "the teacher refused: bad key"
    return [
        (GenerationError(message), 2),
        (EvalError(message), 2),
        (ProcessError(message), 2),
        (StageError(message, exit_code=3), 3),
    ]


@pytest.mark.parametrize(("error", "exit_code"), _stage_errors())
def test_a_stage_error_ends_the_run_in_one_line(tmp_path, recording, monkeypatch, error, exit_code):
    def failing_generate(*args, **kwargs):
        raise error

    monkeypatch.setattr("deepcoder_core.generate.generate", failing_generate)
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--teacher", "replay", "--loss", "ce"]
    args += ["--student", str(tmp_path / "student"), "--set", "processing.tokenizer=qwen3"]
    args += ["--set", f"teacher.options.trajectories={recording}"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)  # a traceback would raise
    assert result.exit_code == exit_code, result.output
    assert result.output.strip().splitlines()[-1] == f"Error: {error}"
    assert json.loads((out / "state.json").read_text())["stages"]["generate"]["status"] == "running"
