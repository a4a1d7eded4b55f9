"""Hostile input through the real CLI: ``deepcoder process`` and ``deepcoder problems``.

Every case ends in a one-line error (exit 2) naming the file, or in a per-record report
(file:line: reason) with the good records kept: never a traceback, a hang or a lost record.
"""

import copy
import gzip
import json
import time
import tracemalloc

import pytest
from click.testing import CliRunner

from deepcoder_core.cli import cli
from deepcoder_core.config import ProcessingConfig
from deepcoder_core.io import jsonl_lines
from deepcoder_core.models import qwen3_tokenizer_path
from deepcoder_core.problems import MAX_ID_CHARS, Problem, ProblemError, read_problems
from deepcoder_core.spans import RecordError, parse_record

from .helpers import problem_record
from .trajectory_factory import fireact, trajectory

QWEN3 = str(qwen3_tokenizer_path())
NESTED = "[" * 10**6 + "]" * 10**6


@pytest.fixture(scope="module", autouse=True)
def _warm(tmp_path_factory):
    """Load the tokenizer and the worker once, so each test times only its own input."""
    path = tmp_path_factory.mktemp("warm") / "t.jsonl"
    path.write_text(json.dumps(trajectory(0, success=True)) + "\n")
    result = _process(path, path.parent / "out")
    assert result.exit_code == 0, result.output


def _process(path, out, *args):
    return CliRunner().invoke(
        cli,
        ["process", "--trajectories", str(path), "--out", str(out), "--tokenizer", QWEN3]
        + ["--set", "processing.agreement_sample=0", *args],
    )


def _good(n):
    return [json.dumps(trajectory(i, success=True, seed=3)) for i in range(n)]


def _write(path, lines, encoding="utf-8"):
    path.write_text("".join(line + "\n" for line in lines), encoding=encoding)
    return path


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def _kept(out):
    from datasets import load_from_disk

    return load_from_disk(str(out))["trajectory_id"]


# ---------------------------------------------------------------------------- process


def test_a_million_nested_arrays_is_one_bad_record(tmp_path):
    good = _good(2)
    path = _write(tmp_path / "t.jsonl", [good[0], NESTED, good[1]])
    result = _process(path, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert f"{path}:2: JSON nested too deeply" in result.output
    summary = _summary(tmp_path / "out")
    assert summary["bad_input"]["by_reason"] == {"too_deep": 1}
    assert _kept(tmp_path / "out") == ["traj-3-0", "traj-3-1"]


def test_a_byte_order_mark_keeps_the_first_record(tmp_path):
    path = _write(tmp_path / "t.jsonl", _good(3), encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    result = _process(path, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert _summary(tmp_path / "out")["bad_input"]["count"] == 0
    assert _kept(tmp_path / "out") == ["traj-3-0", "traj-3-1", "traj-3-2"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file: no trajectories"),
        (b"\n  \n\n", "no trajectories: every line is blank"),
        (gzip.compress(b'{"text": "a"}\n'), "not UTF-8 JSONL (looks gzip-compressed: decompress"),
        (b"\x28\xb5\x2f\xfd" + b"\0" * 20, "looks zstd-compressed"),
    ],
    ids=["empty", "blank", "gzip", "zstd"],
)
def test_a_file_without_trajectories_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_bytes(content)
    result = _process(path, tmp_path / "out")
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: {path}: ") and message in line
    assert not (tmp_path / "out").exists()


def test_a_line_over_the_size_limit_is_skipped_unread(tmp_path):
    limit = ProcessingConfig().max_record_bytes
    good = _good(2)
    big = trajectory(7, success=True, seed=3)
    big["messages"][1]["content"] = "x y " * (limit // 4)
    path = _write(tmp_path / "t.jsonl", [good[0], json.dumps(big), good[1]])
    started = time.perf_counter()
    result = _process(path, tmp_path / "out")
    assert time.perf_counter() - started < 5  # tokenizing the record would take 30 s
    assert result.exit_code == 0, result.output
    size = len(json.dumps(big)) + 1
    assert f"{path}:2: record too large ({size:,} bytes > {limit:,})" in result.output
    assert "raise it (--set processing.max_record_bytes=N)" in result.output
    assert _summary(tmp_path / "out")["bad_input"]["by_reason"] == {"too_large": 1}
    assert _kept(tmp_path / "out") == ["traj-3-0", "traj-3-1"]


def test_an_oversized_line_never_sits_in_memory_whole(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"x" * 20_000_000 + b'\n{"b": 2}\n')
    bad = []
    tracemalloc.start()
    lines = list(jsonl_lines(path, errors=bad, max_line_bytes=1_000_000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [n for n, _ in lines] == [1, 3]
    assert str(bad[0]) == f"{path}:2: record too large (20,000,001 bytes > 1,000,000)"
    assert peak < 5_000_000


def test_a_field_of_the_wrong_type_names_its_type(tmp_path):
    good = _good(2)
    steps = {**trajectory(5, success=True, seed=3), "steps": "oops"}
    messages = {**trajectory(6, success=True, seed=3), "messages": {"role": "user"}}
    success = {**trajectory(7, success=True, seed=3), "success": "false"}
    thought = trajectory(8, success=True, seed=3)
    thought["steps"][0]["thought"] = 42
    calls = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": 1}]}
    lines = [good[0], *map(json.dumps, [steps, messages, success, thought, calls]), good[1]]
    path = _write(tmp_path / "t.jsonl", lines)
    result = _process(path, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "missing field" not in result.output
    for line, message in [
        (2, "field steps has type str, expected list"),
        (3, "field messages has type dict, expected list"),
        (4, "field success has type str, expected bool"),
        (5, "field steps[0].thought has type int, expected str or null"),
        (6, "field 'messages[1].tool_calls' has type int, expected list"),
    ]:
        assert f"{path}:{line}: {message}" in result.output
    assert _summary(tmp_path / "out")["bad_input"]["by_reason"] == {"wrong_type": 5}
    assert _kept(tmp_path / "out") == ["traj-3-0", "traj-3-1"]


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict | list):
        for key, child in value.items() if isinstance(value, dict) else enumerate(value):
            yield from _paths(child, (*prefix, key))


def test_any_field_of_any_json_type_is_a_record_error():
    """Every field of every format, replaced by a value of each JSON type."""
    chat = [{"role": "user", "content": "q"}, {"role": "tool", "content": "o"}]
    assistant = {"role": "assistant", "content": [{"type": "text", "text": "a"}]}
    assistant["tool_calls"] = [{"function": {"name": "f", "arguments": {"x": 1}}}]
    records = [
        trajectory(1, steps=3, success=True, think=True),
        fireact(0)[0],
        {"text": "hello"},
        {"messages": [chat[0], {**assistant, "reasoning_content": "r"}, chat[1]]},
        {"system": "s", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]},
    ]
    for record in records:
        for path in list(_paths(record))[1:]:
            for value in (None, 1, 2.5, True, "s", [], [1], {}, {"a": 1}):
                changed = copy.deepcopy(record)
                target = changed
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = value
                try:
                    parse_record(changed)
                except RecordError:
                    pass


@pytest.mark.parametrize("num_proc", [1, 2, 3])
def test_forked_workers_report_hostile_lines_alike(tmp_path, num_proc):
    good = _good(8)
    wrong = json.dumps({**trajectory(9, success=True, seed=3), "steps": "oops"})
    nested = "[" * 5_000 + "]" * 5_000  # under the size limit, over the decoder's depth
    lines = [good[0], nested, *good[1:4], wrong, "x" * 30_000, *good[4:], "[1]"]
    path = _write(tmp_path / "t.jsonl", lines, encoding="utf-8-sig")
    out = tmp_path / "out"
    settings = ["--set", "processing.batch_size=2", "--set", "processing.max_record_bytes=20000"]
    result = _process(path, out, "--num-proc", str(num_proc), *settings)
    assert result.exit_code == 0, result.output
    summary = _summary(out)
    assert summary["num_proc"] == num_proc
    assert summary["bad_input"]["lines"] == [
        {"line": 2, "reason": "JSON nested too deeply to decode"},
        {"line": 6, "reason": "field steps has type str, expected list"},
        {"line": 7, "reason": "record too large (30,001 bytes > 20,000)"},
        {"line": 12, "reason": "expected a JSON object, got list"},
    ]
    clean = _process(_write(tmp_path / "clean.jsonl", good), tmp_path / "clean", *settings)
    assert clean.exit_code == 0, clean.output
    assert summary["drops"] == _summary(tmp_path / "clean")["drops"]
    assert _kept(out) == _kept(tmp_path / "clean")


# ---------------------------------------------------------------------------- problems

GOOD = problem_record()


def _problem(**changes):
    return json.dumps({**GOOD, **changes})


def _problems(*args):
    return CliRunner().invoke(cli, ["problems", *map(str, args)])


def test_deep_nesting_in_problems_is_an_error_per_record(tmp_path):
    lines = [
        _problem(id="a"),
        _problem(id="deep-tests", tests="assert " + "-" * 100_000 + "1"),
        _problem(
            id="deep-solution",
            canonical_solution="def add(a, b):\n    return " + "a+" * 200_000 + "a",
        ),
        NESTED,
        _problem(id="b"),
    ]
    path = _write(tmp_path / "p.jsonl", lines)
    result = _problems("validate", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines() == [
        f"{path}:2: problem 'deep-tests': field 'tests' is nested too deeply (or is too large) "
        "for Python's parser",
        f"{path}:3: problem 'deep-solution': field 'canonical_solution' is nested too deeply "
        "(or is too large) for Python's parser",
        f"{path}:4: JSON nested too deeply to decode",
        f"Error: 3 error(s) in {path}; 2 valid problem(s)",
    ]
    result = _problems("stats", path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith(f"Error: {path}:2: problem 'deep-tests'")
    assert "(and 2 more errors)" in result.output and len(result.output.splitlines()) == 1


def test_a_deep_element_of_a_json_list_names_its_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("[\n" + _problem(id="a") + ",\n" + NESTED + ",\n" + _problem(id="b") + "\n]")
    problems, errors = read_problems(path)
    assert [p.id for p in problems] == ["a"]
    assert errors == [f"{path}:3: JSON nested too deeply to decode"]
    result = _problems("stats", path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"Error: {path}:3: JSON nested too deeply to decode" in result.output


@pytest.mark.parametrize(
    ("pid", "message"),
    [
        ("nul\x00id", r"id 'nul\x00id' must not contain whitespace or control characters"),
        ("tab\tid", r"id 'tab\tid' must not contain whitespace or control characters"),
        ("rtl\u202eid", r"id 'rtl\u202eid' must not contain whitespace or control characters"),
        ("zero\u200bwidth", "must not contain whitespace or control characters"),
        ("x" * (MAX_ID_CHARS + 1), f"is {MAX_ID_CHARS + 1} characters long (at most 200)"),
    ],
    ids=["nul", "tab", "rtl-override", "zero-width", "long"],
)
def test_a_problem_id_must_be_printable_and_short(tmp_path, pid, message):
    path = _write(tmp_path / "p.jsonl", [_problem(id="a"), _problem(id=pid), _problem(id="b")])
    result = _problems("validate", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    first = result.output.splitlines()[0]
    assert first.startswith(f"{path}:2: id ") and message in first
    assert "\x00" not in result.output and "2 valid problem(s)" in result.output
    assert Problem.from_dict(json.loads(_problem(id="HumanEval/163"))).id == "HumanEval/163"


def test_values_in_messages_are_quoted_short():
    with pytest.raises(ProblemError) as info:
        Problem.from_dict(json.loads(_problem(difficulty="x" * 1_000_000)), "p.jsonl:1")
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty problems file: expected JSONL"),
        (b" \n\n", "empty problems file"),
        (gzip.compress(b"{}\n"), "not UTF-8 JSON or JSONL (looks gzip-compressed: decompress"),
    ],
    ids=["empty", "blank", "gzip"],
)
def test_a_file_without_problems_is_an_error(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    for command, code in (("validate", 1), ("stats", 2)):
        result = _problems(command, path)
        assert result.exit_code == code and "Traceback" not in result.output
        assert f"{path}: {message}" in result.output


def test_problems_tolerate_a_byte_order_mark_and_line_separators(tmp_path):
    """U+2028 inside a string is legal JSON (save_problems writes it raw); a BOM is dropped."""
    path = _write(
        tmp_path / "p.jsonl",
        [_problem(id="a", prompt="one\u2028two\x85"), _problem(id="b")],
        encoding="utf-8-sig",
    )
    problems, errors = read_problems(path)
    assert errors == [] and [p.id for p in problems] == ["a", "b"]
    assert problems[0].prompt == "one\u2028two\x85"


def test_a_line_that_is_not_utf8_keeps_the_other_problems(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(
        b"\n".join(
            [_problem(id="a").encode(), b'{"id": "caf\xe9"}', _problem(id="b").encode(), b""]
        )
    )
    problems, errors = read_problems(path)
    assert [p.id for p in problems] == ["a", "b"]
    assert errors == [f"{path}:2: invalid UTF-8 at byte {len(_problem(id='a')) + 12}"]
