import importlib.util
import json

import pytest
from click.testing import CliRunner

from deepcoder_core.cli import cli
from deepcoder_core.humaneval import humaneval_problems
from deepcoder_core.problems import (
    DIFFICULTIES,
    Problem,
    ProblemError,
    bundled_problems,
    bundled_problems_path,
    filter_problems,
    load_problems,
    problem_stats,
    read_problems,
    resolve_problems,
    sample_problems,
    save_problems,
)

from .helpers import problem_record

GOOD = problem_record(tags=["basics"], split="train")


def _record(**changes):
    record = dict(GOOD)
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------------------- loading


def test_round_trip_through_dict():
    problem = Problem.from_dict(GOOD)
    assert problem.tags == ["basics"] and problem.schema == 2
    assert Problem.from_dict(problem.to_dict()) == problem
    old = Problem.from_dict({**GOOD, "schema": 1})  # schema 1 (no context) is still read
    assert old.schema == 1 and old.context is None and old.to_dict()["schema"] == 1
    with_context = Problem.from_dict({**GOOD, "context": "import math\n"})
    assert with_context.to_dict()["context"] == "import math\n"


def test_loads_jsonl_json_list_and_object(tmp_path):
    second = _record(id="add2")
    jsonl = _jsonl(tmp_path / "p.jsonl", [GOOD, second])
    as_list = tmp_path / "p.json"
    as_list.write_text(json.dumps([GOOD, second], indent=2))
    as_object = tmp_path / "wrapped.json"
    as_object.write_text(json.dumps({"name": "set", "problems": [GOOD, second]}, indent=2))
    for path in (jsonl, as_list, as_object):
        assert [p.id for p in load_problems(path)] == ["add", "add2"], path


def test_missing_field_names_file_and_line(tmp_path):
    records = [GOOD, _record(id="b"), _record(id="c", tests=...)]
    path = _jsonl(tmp_path / "problems.jsonl", records)
    with pytest.raises(ProblemError) as info:
        load_problems(path)
    assert str(info.value) == f"{path}:3: missing field 'tests'"


def test_errors_in_a_json_list_carry_the_line_of_the_record(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([GOOD, _record(id="x", difficulty="trivial")], indent=2))
    problems, errors = read_problems(path)
    line = path.read_text().splitlines().index("  {", 2) + 1  # where the 2nd object starts
    assert [p.id for p in problems] == ["add"]
    assert errors == [
        f"{path}:{line}: problem 'x': difficulty 'trivial' must be one of easy, medium, hard"
    ]


def test_duplicate_ids_name_both_lines(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, _record(id="other"), GOOD])
    _, errors = read_problems(path)
    assert errors == [f"{path}:3: duplicate id 'add' (first defined at line 1)"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tags": "basics"}, "field 'tags' must be a list of non-empty strings"),
        ({"split": "test"}, "split 'test' must be one of train, eval or null"),
        ({"title": 3}, "field 'title' must be a string, got int"),
        ({"prompt": "  "}, "field 'prompt' is empty"),
        ({"entry_point": "not valid"}, "entry_point 'not valid' is not a Python identifier"),
        ({"tests": "def check(:"}, "field 'tests' is not valid Python"),
        ({"tests": "x = 1"}, "has neither a check(candidate) nor an assert"),
        ({"canonical_solution": "def other(): pass"}, "does not define entry_point 'add'"),
        ({"entry_point": None}, "'entry_point' is missing"),
        (
            {"difficulty_level": "easy"},
            "unknown field 'difficulty_level'; did you mean 'difficulty'?",
        ),
        ({"schema": 3}, "schema 3 is not supported"),
        ({"context": "def (:"}, "field 'context'"),
        ({"id": "a b"}, "must not contain whitespace"),
    ],
)
def test_invalid_records_are_rejected_with_a_reason(change, message):
    with pytest.raises(ProblemError, match=None) as info:
        Problem.from_dict(_record(**change), "f.jsonl:4")
    assert str(info.value).startswith("f.jsonl:4: ")
    assert message in str(info.value)


def test_broken_json_reports_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    _, errors = read_problems(path)
    assert errors[0].startswith(f"{path}:2: invalid JSON")
    as_list = tmp_path / "p.json"
    as_list.write_text('[\n  {"id": 1,\n')
    _, errors = read_problems(as_list)
    assert errors[0].startswith(f"{as_list}:") and "invalid JSON" in errors[0]


def test_non_object_records_and_unreadable_files(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, [1, 2]])
    assert read_problems(path)[1] == [f"{path}:2: expected a JSON object, got list"]
    missing = tmp_path / "nope.jsonl"
    assert "cannot read problems file" in read_problems(missing)[1][0]


def test_jsonl_without_trailing_newline_is_fine(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD))
    assert [p.id for p in load_problems(path)] == ["add"]


# ---------------------------------------------------------------------------- selecting


def test_filter_sample_and_stats():
    problems = bundled_problems()
    easy_math = filter_problems(problems, category="math", difficulty="easy")
    assert easy_math and all(p.category == "math" and p.difficulty == "easy" for p in easy_math)
    tagged = filter_problems(problems, tags=["dynamic-programming", "strings"])
    assert [p.id for p in tagged] == ["edit-distance"]
    assert filter_problems(problems, split="eval") == bundled_problems("eval")

    first = sample_problems(problems, 5, seed=3)
    assert first == sample_problems(problems, 5, seed=3)
    assert first != sample_problems(problems, 5, seed=4)
    assert len({p.id for p in first}) == 5
    with pytest.raises(ProblemError, match="cannot sample 99 problems from 35"):
        sample_problems(problems, 99)

    stats = problem_stats(problems)
    assert stats["total"] == len(problems) == sum(stats["by_category"].values())
    assert stats["prompt_chars"]["min"] <= stats["prompt_chars"]["median"]
    assert problem_stats([])["prompt_chars"] is None


def test_bundled_set_covers_the_contract():
    problems = bundled_problems()
    stats = problem_stats(problems)
    assert len(problems) >= 30
    assert len(stats["by_category"]) >= 5
    assert set(stats["by_difficulty"]) == set(DIFFICULTIES)
    train, held_out = bundled_problems("train"), bundled_problems("eval")
    assert len(train) + len(held_out) == len(problems)
    assert {p.category for p in held_out} == {p.category for p in train}
    for p in problems:
        assert p.entry_point and p.canonical_solution
        assert 4 <= p.tests.count("    assert ") <= 8, p.id
    assert resolve_problems("bundled", split="eval") == held_out
    assert resolve_problems(None) == problems


# ---------------------------------------------------------------------------- checking


def _check_solution():
    if importlib.util.find_spec("deepcoder_core.checking") is None:
        pytest.skip("deepcoder_core/checking.py (sandbox slice) is not written yet")
    from deepcoder_core.checking import check_solution

    return check_solution


def test_every_bundled_canonical_solution_passes_and_a_wrong_one_fails():
    check_solution = _check_solution()
    for p in bundled_problems():
        result = check_solution(p, p.canonical_solution, timeout=10.0)
        assert result.success, (p.id, result)
        wrong = f"def {p.entry_point}(*args, **kwargs):\n    return None\n"
        assert not check_solution(p, wrong, timeout=10.0).success, p.id


def test_humaneval_conversion_keeps_helpers_for_the_checker():
    check_solution = _check_solution()
    problems = {p.id: p for p in humaneval_problems()}
    for task in ("HumanEval/0", "HumanEval/32", "HumanEval/38", "HumanEval/163"):
        p = problems[task]
        assert check_solution(p, p.canonical_solution, timeout=10.0).success, task
    # the body alone (no helpers from the prompt) still passes: tests carry `poly`
    p = problems["HumanEval/32"]
    body_only = p.canonical_solution[p.canonical_solution.index("def find_zero") :]
    assert check_solution(p, body_only, timeout=10.0).success


# ---------------------------------------------------------------------------- HumanEval


def test_humaneval_import(tmp_path):
    problems = humaneval_problems()
    assert len(problems) == 164
    first = problems[0]
    assert first.id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert "def check(candidate)" in first.tests
    assert "def has_close_elements" in first.prompt
    assert first.canonical_solution.startswith("from typing import List")
    assert {p.split for p in problems} == {"eval"}
    assert set(problem_stats(problems)["by_difficulty"]) == set(DIFFICULTIES)
    assert "def poly" in next(p for p in problems if p.id == "HumanEval/32").tests
    out = save_problems(problems[:3], tmp_path / "he.jsonl")
    assert load_problems(out) == problems[:3]


# ---------------------------------------------------------------------------- CLI


def test_cli_validate_stats_list_sample(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["problems", "validate", "bundled"])
    assert result.exit_code == 0 and "all valid" in result.output

    result = runner.invoke(cli, ["problems", "stats", "bundled", "--json"])
    stats = json.loads(result.output)
    assert stats["total"] == len(bundled_problems())

    result = runner.invoke(cli, ["problems", "stats", str(bundled_problems_path())])
    assert result.exit_code == 0 and "difficulty" in result.output and "easy" in result.output

    result = runner.invoke(
        cli, ["problems", "list", "bundled", "--split", "eval", "--difficulty", "hard"]
    )
    listed = [line.split()[0] for line in result.output.splitlines()]
    expected = [p.id for p in filter_problems(bundled_problems("eval"), difficulty="hard")]
    assert listed == expected

    out = tmp_path / "s.jsonl"
    result = runner.invoke(
        cli, ["problems", "sample", "bundled", "-n", "4", "--seed", "7", "--out", str(out)]
    )
    assert result.exit_code == 0
    assert [p.id for p in load_problems(out)] == [
        p.id for p in sample_problems(bundled_problems(), 4, seed=7)
    ]
    result = runner.invoke(cli, ["problems", "sample", "bundled", "-n", "500"])
    assert result.exit_code == 2 and "cannot sample 500" in result.output


def test_cli_reports_every_error_without_traceback(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [_record(tests=...), GOOD, GOOD])
    runner = CliRunner()
    result = runner.invoke(cli, ["problems", "validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:1: missing field 'tests'" in result.output
    assert f"{path}:3: duplicate id 'add' (first defined at line 2)" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli, ["problems", "stats", str(path)])
    assert result.exit_code == 2 and "missing field 'tests'" in result.output
    assert "and 1 more errors" in result.output


def test_cli_import_humaneval(tmp_path):
    out = tmp_path / "humaneval.jsonl"
    result = CliRunner().invoke(cli, ["problems", "import", "humaneval", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(load_problems(out)) == 164
    result = CliRunner().invoke(cli, ["problems", "stats", str(out), "--json"])
    assert json.loads(result.output)["by_tag"] == {"humaneval": 164}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" + json.dumps(GOOD) + " " + json.dumps(GOOD) + "]", "invalid JSON: Expecting ','"),
        ('{"problems": {"a": 1}}', '"problems" must be a list'),
        ("42", "expected a JSON list of problems"),
    ],
)
def test_malformed_json_documents(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    _, errors = read_problems(path)
    assert len(errors) == 1 and message in errors[0] and errors[0].startswith(f"{path}")
