"""Evaluation: pass@k against hand-computed values, the text measures, metrics, and full runs
with scripted teachers (threaded and batched), resume, report files, HumanEval offline."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from deepcoder_core import hookimpl
from deepcoder_core.cli import cli
from deepcoder_core.config import load_config
from deepcoder_core.evaluate import (
    EvalError,
    agreement,
    evaluate,
    group_metrics,
    normalize_code,
    pass_at_k,
    rouge_l,
    token_f1,
    words,
)
from deepcoder_core.plugins import get_plugin_manager
from deepcoder_core.problems import Problem
from deepcoder_core.protocols import Completion, Usage
from deepcoder_core.records import Trajectory
from deepcoder_core.teachers import TeacherError

# ---------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 0, 1, 0.0),  # c = 0: never
        (5, 0, 5, 0.0),  # c = 0 and n = k
        (5, 5, 5, 1.0),  # all correct, n = k
        (3, 1, 3, 1.0),  # n = k with one correct: every draw of 3 holds it
        (10, 3, 1, 0.3),  # pass@1 = c / n
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_stable_for_large_n_matches_exact_binomials():
    n, c, k = 200, 13, 100
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 1, 4), (0, 0, 1), (3, 4, 1), (3, 1, 0)])
def test_pass_at_k_rejects_impossible_inputs(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# ---------------------------------------------------------------------------- text measures


def test_token_f1_and_rouge_l_hand_computed():
    a = words("the cat sat on the mat")
    b = words("the cat on the mat")
    # overlap 5 tokens: P = 5/6, R = 5/5 -> F1 = 2*(5/6)/(5/6 + 1) = 10/11
    assert token_f1(a, b) == pytest.approx(10 / 11)
    # LCS = "the cat on the mat" (5): the same P and R
    assert rouge_l(a, b) == pytest.approx(10 / 11)
    # order matters for ROUGE-L, not for F1
    assert token_f1(words("a b c"), words("c b a")) == 1.0
    assert rouge_l(words("a b c"), words("c b a")) == pytest.approx(1 / 3)
    assert token_f1([], []) == rouge_l([], []) == 1.0
    assert token_f1(["x"], []) == rouge_l(["x"], []) == 0.0


def test_normalize_code_ignores_layout_and_comments():
    assert normalize_code("x=1  # one\nprint( x )") == normalize_code("x = 1\nprint(x)")
    assert normalize_code("not python (") == "not python ("


def _step(thought, tool=None, code=None, ok=True, reasoning=None):
    action = {"tool": tool, "input": code} if tool else None
    return {
        "thought": thought,
        "reasoning": reasoning,
        "action": action,
        "observation": "out" if action else None,
        "observation_ok": ok if action else None,
    }


def _trajectory(problem_id="p", **fields):
    return Trajectory.from_dict({"id": f"{problem_id}#0", "problem_id": problem_id, **fields})


def test_agreement_aligns_steps_by_position():
    teacher = _trajectory(
        steps=[_step("check the sum", "python", "print(1+1)"), _step("done")],
        final_answer="def f():\n    return 2",
    )
    student = _trajectory(
        steps=[
            _step("check the sum", "python", "print( 1 + 1 )"),  # same action, other layout
            _step("try again", "python", "print(3)"),
            _step("done"),
        ],
        final_answer="def f():\n    return 2  # two",
    )
    result = agreement(student, teacher)
    # positions: 3; reasoning scores 1, F1("try again","done")=0, step 3 missing -> 0
    assert result["reasoning_f1"] == pytest.approx(1 / 3)
    # action positions: 0 (both), 1 (student only): exact 0/2, normalized 1/2
    assert result["action_exact"] == 0.0
    assert result["action_match"] == 0.5
    assert result["answer_match"] == 1.0
    same = agreement(teacher, teacher)
    assert same == {k: 1.0 for k in same}


def test_group_metrics_counts_tool_and_format_errors_and_pass_at_k():
    def record(pid, success, steps, error=None):
        return _trajectory(
            pid,
            success=success,
            steps=steps,
            final_answer="def f(): pass",
            tests_passed=2 if success else 1,
            tests_total=2,
            error=error,
        )

    bad_format = {"thought": "", "action": None, "observation_ok": False, "reasoning": None}
    records = [
        record("a", True, [_step("t", "python", "1", ok=True), _step("final")]),
        record("a", False, [_step("t", "python", "1/0", ok=False), bad_format]),
        record("b", False, [_step("x")], error="teacher error (timeout): slow"),
        record("b", False, [_step("y")]),
    ]
    metrics = group_metrics(records, [1, 2], lambda text: len(text.split()))
    assert metrics["problems"] == 2 and metrics["trajectories"] == 4
    assert metrics["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert metrics["pass@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["tool_error_rate"] == 0.5  # 1 failed call of 2
    assert metrics["format_error_rate"] == pytest.approx(1 / 6)  # 1 bad reply of 6
    assert metrics["teacher_error_rate"] == 0.25
    assert metrics["mean_steps"] == pytest.approx(6 / 4)
    assert metrics["tests_pass_rate"] == pytest.approx((1 + 0.5 + 0.5 + 0.5) / 4)
    assert metrics["action_tokens"] == pytest.approx(4 / 4)  # "python\n1" = 2 words, twice


# ---------------------------------------------------------------------------- full runs

PROBLEMS = [
    Problem(
        id="add",
        title="Add",
        prompt="Write add(a, b).",
        category="math",
        difficulty="easy",
        tests="def check(candidate):\n    assert candidate(1, 2) == 3\n",
        entry_point="add",
    ),
    Problem(
        id="upper",
        title="Upper",
        prompt="Write up(s) returning s upper-cased.",
        category="strings",
        difficulty="medium",
        tests="def check(candidate):\n    assert candidate('a') == 'A'\n    assert candidate('') == ''\n",
        entry_point="up",
    ),
]

ANSWERS = {
    "add": "Thought: easy\nFinal Answer:\n```python\ndef add(a, b):\n    return a + b\n```",
    "upper": "Thought: guess\nFinal Answer:\n```python\ndef up(s):\n    return s\n```",
}


def _answer(messages):
    prompt = messages[1]["content"]
    pid = "add" if "add(" in prompt else "upper"
    if len(messages) == 2:  # first step: one tool call that fails
        return Completion(
            "<think>let me test</think>Thought: try\nAction: python\nAction Input: 1/0",
            usage=Usage(10, 5),
        )
    return Completion(ANSWERS[pid], usage=Usage(10, 5))


class ScriptedTeacher:
    """Remote-style teacher: ``complete`` only (threaded schedule)."""

    calls = 0

    def __init__(self, model="scripted"):
        self.model = model

    def complete(self, messages, **params):
        type(self).calls += 1
        return _answer(messages)


class BatchTeacher(ScriptedTeacher):
    """Local-style teacher: ``complete_batch`` (batched schedule)."""

    batches = 0

    def complete_batch(self, batch, **params):
        type(self).batches += 1
        return [_answer(m) for m in batch]


class FailingTeacher(ScriptedTeacher):
    def complete(self, messages, **params):
        raise ConnectionError("server went away")


class RefusingTeacher(ScriptedTeacher):
    """A fatal teacher error (a bad key): every later call would fail the same way."""

    def complete(self, messages, **params):
        raise TeacherError("fake: authentication failed", kind="auth", fatal=True)


class RefusingBatchTeacher(RefusingTeacher):
    def complete_batch(self, batch, **params):
        return [self.complete(m) for m in batch]


class OracleTeacher:
    """Answers HumanEval and bundled problems with their canonical solutions."""

    model = "oracle"

    def __init__(self):
        from deepcoder_core.humaneval import humaneval_problems
        from deepcoder_core.problems import bundled_problems

        self.solutions = {
            p.prompt.strip(): p.canonical_solution
            for p in [*humaneval_problems(), *bundled_problems()]
        }

    def complete(self, messages, **params):
        prompt = messages[1]["content"]
        code = next(c for p, c in self.solutions.items() if prompt.startswith(p))
        return Completion(f"Thought: known\nFinal Answer:\n```python\n{code}\n```")


class _Plugin:
    @hookimpl
    def register_teachers(self, register):
        register("scripted", ScriptedTeacher)
        register("batch", BatchTeacher)
        register("failing", FailingTeacher)
        register("refusing", RefusingTeacher)
        register("refusing-batch", RefusingBatchTeacher)
        register("oracle", OracleTeacher)


@pytest.fixture
def config(tmp_path):
    get_plugin_manager().add(_Plugin(), name="test-eval-teachers")
    ScriptedTeacher.calls = 0
    BatchTeacher.batches = 0
    return load_config(
        None,
        ["tools.enabled=[python]", "agent.max_steps=3", f"paths.out={tmp_path / 'run'}"],
        environ={},
    )


def test_evaluate_two_models_report_and_resume(config, tmp_path):
    out = tmp_path / "report"
    models = {
        "remote": {"teacher": "scripted", "options": {}},
        "local": {"teacher": "batch", "options": {"model": "b"}},
    }
    report = evaluate(
        config, models=models, problems=PROBLEMS, out=out, samples=2, ks=[1, 2], progress=False
    )
    for name in models:
        overall = report["models"][name]["overall"]
        assert overall["pass@1"] == 0.5 and overall["pass@2"] == 0.5  # add solved, upper not
        assert overall["tool_error_rate"] == 1.0  # 1/0 fails every time
        assert overall["mean_steps"] == 2.0
        assert overall["reasoning_tokens"] > 0
        by_difficulty = report["models"][name]["by_difficulty"]
        assert by_difficulty["easy"]["pass@1"] == 1.0 and by_difficulty["medium"]["pass@1"] == 0.0
        assert report["models"][name]["per_problem"]["add"] == {
            "n": 2,
            "c": 2,
            "category": "math",
            "difficulty": "easy",
        }
    assert BatchTeacher.batches == 2  # 4 runs stepped together, two steps
    assert ScriptedTeacher.calls == 8

    saved = json.loads((out / "report.json").read_text())
    assert saved["models"]["local"]["overall"]["pass@2"] == 0.5
    markdown = (out / "report.md").read_text()
    # pass@1 with its interval: add always solved, upper never, so resampling the two
    # problems gives 0, 1/2 or 1
    assert "| remote | 2 | 4 | 0.500 [0.000, 1.000] | 0.500 |" in markdown
    assert markdown.startswith("# Evaluation report\n\n2 problems, 2 sample(s)")  # no "from `None`"
    assert saved["models"]["remote"]["overall"]["intervals"]["pass@1"] == [0.0, 1.0]
    assert saved["charts_skipped"] == {
        "agreement.png": "no teacher trajectory of these problems to compare with"
    }
    assert not (out / "agreement.png").exists()
    assert "Not drawn: `agreement.png`, no teacher trajectory" in markdown
    assert "## By category" in markdown and "![pass_at_k](pass_at_k.png)" in markdown
    for chart in saved["charts"]:
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "trajectories" / "remote.jsonl").read_text().splitlines()
    assert len(lines) == 4

    # resume: the same settings reuse every trajectory, no teacher call
    ScriptedTeacher.calls = 0
    again = evaluate(
        config, models=models, problems=PROBLEMS, out=out, samples=2, ks=[1, 2], progress=False
    )
    assert ScriptedTeacher.calls == 0
    assert again["models"]["remote"]["overall"] == report["models"]["remote"]["overall"]


def test_evaluate_agreement_with_teacher_trajectories(config, tmp_path):
    first = evaluate(
        config,
        models={"teacher": {"teacher": "scripted"}},
        problems=PROBLEMS,
        out=tmp_path / "a",
        samples=1,
        ks=[1],
        progress=False,
    )
    assert "agreement" not in first["models"]["teacher"]["overall"]
    reference = tmp_path / "a" / "trajectories" / "teacher.jsonl"
    report = evaluate(
        config,
        models={"student": {"teacher": "batch"}},
        problems=PROBLEMS,
        out=tmp_path / "b",
        samples=1,
        ks=[1],
        teacher_trajectories=reference,
        progress=False,
    )
    agree = report["models"]["student"]["overall"]["agreement"]
    assert agree["trajectories"] == 2
    assert agree["reasoning_f1"] == agree["action_exact"] == agree["answer_match"] == 1.0
    assert "reason F1" in (tmp_path / "b" / "report.md").read_text()


def test_reference_trajectories_skip_lines_that_are_not_trajectories(tmp_path, capsys):
    from deepcoder_core.evaluate import reference_trajectories

    solved = _trajectory("a", success=True)
    lines = [
        json.dumps({**solved.to_dict(), "success": 1}),
        "{not json",
        json.dumps(_trajectory("a").to_dict()),
        json.dumps(solved.to_dict()),
    ]
    path = tmp_path / "teacher.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert reference_trajectories(path) == {"a": solved}
    warning = capsys.readouterr().err
    assert "skipped 2 bad lines, first: " in warning
    assert ":1: field success has type int, expected bool" in warning


def test_teacher_failures_are_recorded_not_raised(config, tmp_path):
    report = evaluate(
        config,
        models={"down": {"teacher": "failing"}},
        problems=PROBLEMS[:1],
        out=tmp_path / "r",
        samples=1,
        ks=[1],
        progress=False,
    )
    overall = report["models"]["down"]["overall"]
    assert overall["pass@1"] == 0.0 and overall["teacher_error_rate"] == 1.0


@pytest.mark.parametrize("teacher", ["refusing", "refusing-batch"])
def test_a_fatal_teacher_error_stops_that_model(config, tmp_path, teacher):
    with pytest.raises(EvalError, match=r"model 'm': fake: authentication failed"):
        evaluate(
            config,
            models={"m": {"teacher": teacher}},
            problems=PROBLEMS,
            out=tmp_path,
            samples=1,
            ks=[1],
            progress=False,
        )


def test_evaluation_does_not_import_generation():
    """The agent schedules live in deepcoder_core.agent: eval does not depend on stage 1."""
    import ast
    from pathlib import Path

    import deepcoder_core.evaluate

    for path in Path(deepcoder_core.evaluate.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            assert all(m.split(".")[-1] != "generate" for m in modules), path


def test_evaluate_rejects_k_above_samples_and_unknown_teacher(config, tmp_path):
    with pytest.raises(EvalError, match=r"pass@5 needs at least 5 samples"):
        evaluate(
            config,
            models={"m": {"teacher": "scripted"}},
            problems=PROBLEMS,
            out=tmp_path,
            samples=2,
            ks=[1, 5],
        )
    with pytest.raises(EvalError, match=r"model 'm': unknown teacher 'nope'"):
        evaluate(
            config,
            models={"m": {"teacher": "nope"}},
            problems=PROBLEMS,
            out=tmp_path,
            samples=1,
            ks=[1],
            progress=False,
        )


def test_eval_cli_on_humaneval_offline(config, tmp_path):
    """`deepcoder problems import humaneval` then `deepcoder eval` on the file and the bundled
    set in one report, no network. Canonical solutions pass, wrong ones fail."""
    runner = CliRunner()
    problems = tmp_path / "humaneval.jsonl"
    imported = runner.invoke(cli, ["problems", "import", "humaneval", "--out", str(problems)])
    assert imported.exit_code == 0, imported.output
    out = tmp_path / "he"
    result = runner.invoke(
        cli,
        [
            "eval",
            "--teacher",
            "oracle",
            "--teacher",
            "wrong=scripted",
            "--problems",
            str(problems),
            "--problems",
            "bundled",
            "--limit",
            "2",
            "--out",
            str(out),
            "--quiet",
            "--set",
            "tools.enabled=[]",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "oracle: pass@1 1.000" in result.output
    assert "wrong: pass@1 0.000" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["problems"]["source"] == f"{problems}, bundled"
    oracle = report["models"]["oracle"]
    assert list(oracle["per_problem"])[:2] == ["HumanEval/0", "HumanEval/1"]
    assert len(oracle["per_problem"]) == 4
    assert {k: v["pass@1"] for k, v in oracle["by_suite"].items()} == {
        str(problems): 1.0,
        "bundled": 1.0,
    }
    assert "## By problem set" in (out / "report.md").read_text()
    assert (out / "by_suite.png").exists()


def test_eval_cli_errors_are_one_line(config, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "no models to evaluate" in result.output and "Traceback" not in result.output
    result = runner.invoke(
        cli, ["eval", "--model", str(tmp_path / "missing"), "--out", str(tmp_path)]
    )
    assert "does not exist" in result.output
    result = runner.invoke(cli, ["eval", "--teacher", "scripted", "--k", "1,x"])
    assert "--k 1,x: expected comma-separated integers" in result.output


def test_model_specs_from_flags(tmp_path, httpserver):
    from deepcoder_core.evaluate import model_specs

    httpserver.expect_request("/v1/models").respond_with_json({"data": [{"id": "qwen3-student"}]})
    config = load_config(
        None, ["teacher.options={model: t, device: cuda, dtype: bfloat16}"], environ={}
    )
    folder = tmp_path / "student"
    folder.mkdir()
    url = httpserver.url_for("/")
    specs = model_specs(config, [f"distilled={folder}", str(folder)], [url], ["hf"], True)
    assert specs["distilled"] == {
        "teacher": "hf",
        "options": {
            "model": str(folder),
            "device": "cuda",
            "dtype": "bfloat16",
            "chat_template_kwargs": {"enable_thinking": True},
        },
    }
    assert specs["student"]["options"]["model"] == str(folder)
    assert specs["server"] == {
        "teacher": "openai",
        "options": {
            "base_url": url.rstrip("/") + "/v1",
            "model": "qwen3-student",
            "chat_template_kwargs": {"enable_thinking": True},
        },
    }
    assert specs["hf"] == {
        "teacher": "hf",
        "options": {"model": "t", "device": "cuda", "dtype": "bfloat16"},
    }
    with pytest.raises(EvalError, match="two models are named 'student'"):
        model_specs(config, [str(folder), f"student={folder}"], [], [], None)
    with pytest.raises(EvalError, match="no answer from"):
        model_specs(config, [], ["http://127.0.0.1:9/v1"], [], None)
